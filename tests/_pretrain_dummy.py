"""A tiny pretext task for engine tests (independent of the real methods)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from pimpic.registry import MethodSpec


@dataclass
class RandomCrops:
    """Random full-size crops (padded when the volume is small); picklable."""

    patch_size: int
    num_patches: int

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p = self.patch_size
        dims = np.maximum(np.asarray(image.shape), p)
        out = np.zeros((self.num_patches, 1, p, p, p), np.float32)
        starts = rng.integers(0, dims - p + 1, size=(self.num_patches, 3))
        for k, s in enumerate(starts):
            crop = np.asarray(image[s[0]:s[0] + p, s[1]:s[1] + p, s[2]:s[2] + p], np.float32)
            out[k, 0, :crop.shape[0], :crop.shape[1], :crop.shape[2]] = crop
        boxes = np.stack([starts, starts + p], 1).astype(np.int64)
        # a fingerprint of the volume, so tests can tell which volume a rank read
        return {"patches": out, "boxes": boxes,
                "fingerprint": np.asarray([float(np.asarray(image[::4, ::4, ::4]).sum())])}


class DummyModule(nn.Module):
    """Loss = mean square of the deepest features + a small head; ``nan_at`` injects NaN."""

    nan_at: ClassVar[int | None] = None
    seen: ClassVar[list[float]] = []
    last: ClassVar[DummyModule | None] = None

    def __init__(self, encoder: nn.Module, cfg: object) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.widths[-1], 2)  # type: ignore[index]
        self.calls = 0
        DummyModule.last = self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        DummyModule.seen.extend(batch["fingerprint"].flatten().tolist())
        x = batch["patches"].flatten(0, 1)
        last = self.encoder(x)[-1]
        z = self.head(last.mean((2, 3, 4)))
        loss = (last ** 2).mean() + (z ** 2).mean()
        if DummyModule.nan_at is not None and self.calls >= DummyModule.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "zmean": z.mean().detach()}


SPEC = MethodSpec(
    name="pimpic",
    build_sampler=lambda cfg: RandomCrops(cfg.patch_size, cfg.patches),
    build_module=lambda encoder, cfg: DummyModule(encoder, cfg),
    description="test dummy",
)


def install(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Route every method name to the dummy for the duration of one test."""
    import pimpic.registry as base

    monkeypatch.setattr(base, "get_method", lambda name: SPEC)
    DummyModule.nan_at = None
    DummyModule.seen = []
