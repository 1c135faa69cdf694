"""Benchmark: one full PiMPiC training step, vectorised PiC vs. a per-pair Python loop.

A step is forward (encoder on all patches, PiM, PiC), backward and an Adam update, on random
patches whose boxes come from the reference sampler (docs/method.md §2) in a virtual volume of
``2p`` per axis, so the number of PiC pairs is realistic. The loop variant reproduces how the
released implementation computed PiC: a Python loop over pairs and levels, one host sync
(``.item()``) per pair, one slice and masked mean per region. Both variants start from the
same weights and see the same batches.

CLI: ``pimpic bench pretrain-step --patch-size 32 --width 8 --patches 16 --steps 6``.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pimpic.config import PretrainConfig
from pimpic.models import Encoder
from pimpic.pretraining.losses import pic_loss
from pimpic.pretraining.methods.pimpic import PIC_LEVELS, PiMPiC
from pimpic.pretraining.samplers.overlap import reference_boxes


def _loop_region_means(f: Tensor, box: list[list[int]], scale: int) -> tuple[Tensor, Tensor]:
    """Overlap and rest means ``(C,)`` of one patch's features ``f (C, D, H, W)``."""
    lo = [s // scale for s in box[0]]
    hi = [-(-e // scale) for e in box[1]]
    inside = torch.zeros(f.shape[1:], dtype=torch.bool, device=f.device)
    inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    overlap = f[:, inside]
    rest = f[:, ~inside]
    zero = f.new_zeros(f.shape[0])
    return (overlap.mean(1) if overlap.shape[1] else zero,
            rest.mean(1) if rest.shape[1] else zero)


class LoopPiMPiC(PiMPiC):
    """:class:`PiMPiC` with PiC's region means computed pair by pair (the released style)."""

    def _pic(self, feats: list[Tensor], boxes: Tensor, overlap: Tensor,
             n: int) -> tuple[Tensor, int]:
        rows = []
        for vol in range(boxes.shape[0]):
            for i in range(n):
                for j in range(i + 1, n):
                    if overlap[vol, i, j].item() < self.cfg.min_overlap:  # host sync per pair
                        continue
                    bi, bj = boxes[vol, i].tolist(), boxes[vol, j].tolist()
                    lo = [max(bi[0][a], bj[0][a]) for a in range(3)]
                    hi = [min(bi[1][a], bj[1][a]) for a in range(3)]
                    per_level = []
                    for lvl in range(PIC_LEVELS):
                        fl = feats[lvl]
                        sides = []
                        for k, b in ((vol * n + i, bi), (vol * n + j, bj)):
                            local = [[lo[a] - b[0][a] for a in range(3)],
                                     [hi[a] - b[0][a] for a in range(3)]]
                            sides.append(_loop_region_means(fl[k], local, 2**lvl))
                        per_level.append(torch.stack([sides[0][0], sides[1][0],
                                                      sides[0][1], sides[1][1]]))
                    rows.append(torch.cat(per_level, dim=1))
        if not rows:
            return super()._pic(feats, boxes, overlap, n)
        means = torch.stack(rows)
        q = self.head_g(means.reshape(4 * len(rows), -1))
        return pic_loss(q.reshape(len(rows), 4, -1), self.cfg.tau, self.cfg.pic_variant), len(rows)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(module: PiMPiC, batches: list[dict[str, Tensor]], device: torch.device,
                warmup: int) -> tuple[list[float], list[float]]:
    opt = torch.optim.Adam(module.parameters(), lr=1e-5)
    times, pairs = [], []
    for k, batch in enumerate(batches):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = module(batch)
        out["loss"].backward()
        opt.step()
        _sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
            pairs.append(float(out["pairs"]))
    return times, pairs


def run(patch_size: int = 32, width: int = 8, patches: int = 16, steps: int = 6, depth: int = 5,
        naive: bool = False, device: str = "cpu", compare: bool = True, warmup: int = 1,
        seed: int = 0) -> dict[str, Any]:
    """Time ``steps`` training steps (after ``warmup`` untimed ones) of the pimpic method.

    Args:
        patch_size, width, depth, patches: encoder and batch (one volume of ``patches``).
        naive: time the per-pair loop implementation as the main result.
        device: ``cpu``, ``cuda`` or ``auto``.
        compare: with ``naive=False``, also time the loop and report ``speedup_vs_loop``.

    Returns:
        ``median_step_s``, ``patches_per_s``, ``peak_rss_mb`` (process peak resident memory),
        ``pairs_per_step``, the configuration, and with ``compare`` ``loop_median_step_s`` and
        ``speedup_vs_loop``; on CUDA also ``peak_gpu_mb``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    cfg = PretrainConfig(method="pimpic", width=width, depth=depth, patch_size=patch_size,
                         patches=patches)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    batches = [{
        "patches": torch.rand(1, patches, 1, patch_size, patch_size, patch_size,
                              generator=gen).to(dev),
        "boxes": torch.as_tensor(
            reference_boxes((2 * patch_size,) * 3, patch_size, patches, rng))[None].to(dev),
    } for _ in range(warmup + steps)]

    def measure(cls: type[PiMPiC]) -> tuple[float, float]:
        torch.manual_seed(seed)
        module = cls(Encoder(cfg.in_channels, width, depth), cfg).to(dev)
        times, pairs = _time_steps(module, batches, dev, warmup)
        return statistics.median(times), statistics.mean(pairs)

    main_cls = LoopPiMPiC if naive else PiMPiC
    median, pairs = measure(main_cls)
    result: dict[str, Any] = {
        "implementation": "loop" if naive else "vectorised",
        "device": str(dev), "threads": torch.get_num_threads(),
        "patch_size": patch_size, "width": width, "depth": depth, "patches": patches,
        "steps": steps, "pairs_per_step": pairs,
        "median_step_s": median, "patches_per_s": patches / median,
    }
    if compare and not naive:
        loop_median, _ = measure(LoopPiMPiC)
        result["loop_median_step_s"] = loop_median
        result["speedup_vs_loop"] = loop_median / median
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result
