"""Benchmark: one full PiMPiC training step, vectorised PiC vs. a per-pair Python loop.

A step is forward (encoder on all patches, PiM, PiC), backward and an Adam update, on random
patches whose boxes come from the reference sampler (docs/method.md §2) in a virtual volume of
``2p`` per axis, so the number of PiC pairs is realistic. The loop variant reproduces how the
released implementation computed PiC: a Python loop over pairs and levels, one host sync
(``.item()``) per pair, one slice and masked mean per region. Both variants start from the
same weights and see the same batches.

CLI: ``pimpic bench pretrain-step --patch-size 32 --width 8 --patches 16 --steps 6``
(``--patch-size 16,32,32``: a box of three edges; ``plan``: the nnU-Net plan's patch).

``--backbone nnunet`` times the same step on an nnU-Net encoder: a plan given with
``--plans``/``--configuration``, or by default :func:`small_plan`, a 3d_fullres-like
PlainConvUNet plan (stage strides 1, 2, 2, 2, 2; two 3×3×3 conv–IN–LeakyReLU per stage, the
first one strided) with the paper U-Net's widths ``K·2^l`` — the same pyramid, nnU-Net's blocks.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pimpic.config import from_dict, plain
from pimpic.pretraining.backbones import build_backbone, resolve_patch
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.losses import pic_loss
from pimpic.pretraining.methods.pimpic import PiMPiC
from pimpic.pretraining.samplers.overlap import reference_boxes


def _loop_region_means(f: Tensor, box: list[list[int]],
                       scale: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Overlap and rest means ``(C,)`` of one patch's features ``f (C, D, H, W)``."""
    lo = [s // k for s, k in zip(box[0], scale, strict=True)]
    hi = [-(-e // k) for e, k in zip(box[1], scale, strict=True)]
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
                    for lvl, stride in zip(self.pic_index, self.pic_strides, strict=True):
                        fl = feats[lvl]
                        sides = []
                        for k, b in ((vol * n + i, bi), (vol * n + j, bj)):
                            local = [[lo[a] - b[0][a] for a in range(3)],
                                     [hi[a] - b[0][a] for a in range(3)]]
                            sides.append(_loop_region_means(fl[k], local, stride))
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


def small_plan(width: int = 8, depth: int = 5) -> dict[str, Any]:
    """A 3d_fullres-like nnU-Net plans mapping (one configuration, ``3d_fullres``) whose
    encoder has the paper U-Net's pyramid: ``depth`` stages of widths ``width·2^l``."""
    kwargs = {
        "n_stages": depth, "features_per_stage": [width * 2**i for i in range(depth)],
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * depth,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (depth - 1), "n_conv_per_stage": [2] * depth,
        "n_conv_per_stage_decoder": [2] * (depth - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [64, 64, 64],
              "spacing": [1.5, 1.5, 1.5], "normalization_schemes": ["CTNormalization"],
              "architecture": {
                  "network_class_name":
                      "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                  "arch_kwargs": kwargs,
                  "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    return {"dataset_name": "bench", "plans_name": "nnUNetPlans",
            "configurations": {"3d_fullres": config}}


def run(patch_size: int | Sequence[int] | str = 32, width: int = 8, patches: int = 16,
        steps: int = 6, depth: int = 5,
        naive: bool = False, device: str = "cpu", compare: bool = True, warmup: int = 1,
        seed: int = 0, backbone: str = "unet", plans: str | None = None,
        configuration: str = "3d_fullres") -> dict[str, Any]:
    """Time ``steps`` training steps (after ``warmup`` untimed ones) of the pimpic method.

    Args:
        patch_size, width, depth, patches: encoder and batch (one volume of ``patches``);
            ``patch_size`` is an edge, three edges or ``plan`` (``--backbone nnunet``).
        backbone: ``unet`` (``width``, ``depth``) or ``nnunet`` (``plans``/``configuration``,
            default :func:`small_plan` of ``width`` and ``depth``).
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
    import json
    import tempfile
    from pathlib import Path

    tmp = tempfile.TemporaryDirectory()
    if backbone == "nnunet" and plans is None:
        plans = str(Path(tmp.name) / "nnUNetPlans.json")
        Path(plans).write_text(json.dumps(small_plan(width, depth)))
    cfg = resolve_patch(from_dict(PretrainConfig, {
        "method": "pimpic", "width": width, "depth": depth, "patch_size": patch_size,
        "patches": patches, "backbone": backbone, "nnunet_plans": plans or "",
        "nnunet_configuration": configuration}, "bench pretrain-step"))
    n_params = sum(p.numel() for p in build_backbone(cfg).parameters())
    shape = cfg.patch_shape
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    batches = [{
        "patches": torch.rand(1, patches, 1, *shape, generator=gen).to(dev),
        "boxes": torch.as_tensor(reference_boxes(tuple(2 * e for e in shape), shape, patches,
                                                 rng))[None].to(dev),
    } for _ in range(warmup + steps)]

    def measure(cls: type[PiMPiC]) -> tuple[float, float]:
        torch.manual_seed(seed)
        module = cls(build_backbone(cfg), cfg).to(dev)
        times, pairs = _time_steps(module, batches, dev, warmup)
        return statistics.median(times), statistics.mean(pairs)

    main_cls = LoopPiMPiC if naive else PiMPiC
    median, pairs = measure(main_cls)
    result: dict[str, Any] = {
        "implementation": "loop" if naive else "vectorised", "backbone": backbone,
        "encoder_parameters": n_params,
        "device": str(dev), "threads": torch.get_num_threads(),
        "patch_size": plain(cfg.patch_size), "width": width, "depth": depth,
        "patches": patches,
        "steps": steps, "pairs_per_step": pairs,
        "median_step_s": median, "patches_per_s": patches / median,
    }
    if compare and not naive:
        loop_median, _ = measure(LoopPiMPiC)
        result["loop_median_step_s"] = loop_median
        result["speedup_vs_loop"] = loop_median / median
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tmp.cleanup()
    if dev.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result
