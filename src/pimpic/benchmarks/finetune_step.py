"""Benchmark: where fine-tuning spends its time — batches, training steps, validation.

On one prepared cache, with a given network (default: the demo's CPU network, width 4, depth
4, 32³ patches), it times

* **data**: building one batch (``batch_size`` volumes → ``samples_per_volume`` crops each)
  with the fine-tuning transform chain (:func:`pimpic.segmentation.finetune_data.train_transform`);
* **step**: forward + backward + Adam on real crops, as fp32, channels-last, and bf16 autocast
  (on CPUs with AVX-512-bf16/AMX the bf16 matrix units);
* **validation**: sliding-window inference of the first validation cases under the previous
  settings (overlap 0.5, Gaussian blending, no body crop, 4 windows per pass) and the released
  ones (overlap 0.25, constant, body crop), with larger window batches and bf16.

Each number is the median of ``repeats`` timed runs after one warm-up. The step variants start
from the same weights and see the same batch.

CLI: ``pimpic bench finetune-step CACHE``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import list_data_collate
from monai.losses import DiceCELoss

from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.models.unet import Encoder, SegmentationNet
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.finetune_data import PatchDataset, train_transform
from pimpic.segmentation.inference import predict_labels
from pimpic.training.device import autocast, flush_denormals

#: validation variants: name → (overlap, blending, body crop, windows per pass, bf16)
VALIDATION = {
    "before: 0.5 gaussian, whole volume, sw 4": (0.5, "gaussian", False, 4, False),
    "released: 0.25 constant, body crop, sw 4": (0.25, "constant", True, 4, False),
    "released + sw 16": (0.25, "constant", True, 16, False),
    "released + sw 16 + bf16": (0.25, "constant", True, 16, True),
}


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitive creation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(cache: str | Path, *, width: int = 4, depth: int = 4, patch_size: int = 32,
        batch_size: int = 2, samples_per_volume: int = 2, repeats: int = 5,
        val_cases: int = 2, seed: int = 0) -> dict[str, Any]:
    """Time batches, steps and validation on ``cache``; returns the numbers (seconds)."""
    c = Cache(cache)
    split = c.split()
    train, val = list(split.train), list(split.val)[:val_cases]
    if not train or not val:
        raise PimpicError(f"{c.root}: the benchmark needs training and validation cases")
    cfg = FinetuneConfig(width=width, depth=depth, patch_size=patch_size, batch_size=batch_size,
                         samples_per_volume=samples_per_volume, num_workers=0, seed=seed)
    device = torch.device("cpu")
    result: dict[str, Any] = {"cache": str(c.root), "threads": torch.get_num_threads(),
                              "width": width, "depth": depth, "patch_size": patch_size,
                              "patches_per_step": batch_size * samples_per_volume}
    with flush_denormals(device):
        ds = PatchDataset(c.root, train, list(range(len(train))) * 8,
                          train_transform(cfg, patch_size), seed, 1)
        counter = iter(range(10**6))

        def one_batch() -> dict[str, Any]:
            batch: dict[str, Any] = list_data_collate(
                [ds[next(counter) % len(ds)] for _ in range(batch_size)])
            return batch

        result["data_batch_s"] = _median_time(one_batch, repeats)
        batch = one_batch()
        x = batch["image"].as_tensor().float()
        y = batch["label"].as_tensor().long()
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        steps: dict[str, float] = {}
        for name, channels_last, bf16 in (("fp32", False, False),
                                          ("channels_last", True, False),
                                          ("bf16 autocast", False, True)):
            torch.manual_seed(seed)
            model = SegmentationNet(Encoder(1, width, depth), 3, cfg.decoder)
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)  # type: ignore[call-overload]
            xin = x.contiguous(memory_format=fmt)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(model: SegmentationNet = model, xin: torch.Tensor = xin,
                     opt: torch.optim.Optimizer = opt, bf16: bool = bf16) -> None:
                with autocast(device, False, cpu_bf16=bf16):
                    logits = model(xin)
                loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            steps[name] = _median_time(step, repeats)
        result["step_s"] = steps

        torch.manual_seed(seed)
        model = SegmentationNet(Encoder(1, width, depth), 3, cfg.decoder).eval()
        images = [np.asarray(c.image(cid), dtype=np.float32) for cid in val]
        validation: dict[str, float] = {}
        for name, (overlap, mode, crop, sw, bf16) in VALIDATION.items():

            def infer(overlap: float = overlap, mode: str = mode, crop: bool = crop,
                      sw: int = sw, bf16: bool = bf16) -> None:
                for image in images:
                    predict_labels(model, image, patch_size, overlap=overlap, mode=mode,
                                   crop_foreground=crop, sw_batch_size=sw, device=device,
                                   cpu_bf16=bf16)

            validation[name] = _median_time(infer, max(1, repeats // 2)) / len(images)
        result["validation_per_case_s"] = validation
        result["val_case_shapes"] = [list(i.shape) for i in images]
    return result


def format_result(result: dict[str, Any]) -> str:
    """A short plain-text table of :func:`run`'s numbers."""
    lines = [f"threads {result['threads']}, width {result['width']}, depth {result['depth']}, "
             f"{result['patch_size']}³ patches, {result['patches_per_step']} per step",
             f"{'data: one batch':<44} {result['data_batch_s']:>8.3f} s"]
    lines += [f"{'step: ' + k:<44} {v:>8.3f} s" for k, v in result["step_s"].items()]
    lines += [f"{'validation: ' + k:<44} {v:>8.3f} s/case"
              for k, v in result["validation_per_case_s"].items()]
    return "\n".join(lines)


__all__ = ["VALIDATION", "format_result", "run"]

