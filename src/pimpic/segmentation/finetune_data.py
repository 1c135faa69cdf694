"""Training data for fine-tuning: label-balanced crops from the cache, with augmentation.

Pipeline per training volume (MONAI dictionary transforms on ``{"image", "label"}`` arrays with
a channel axis ``(1, X, Y, Z)``; docs/method.md §6.2), by default the authors' released recipe:

1. ``CropForegroundd`` to the body (image > 0) when ``crop_foreground``;
2. when ``augment`` and ``aug_stage == "volume"`` (released): on the whole volume,
   ``RandAffined`` with probability ``affine_prob`` (rotation ±``rotate_rad``, scaling
   ±``scale``, shift ±``shift_vox`` voxels) and ``RandGaussianNoised`` with probability
   ``noise_prob`` (std ``noise_std``) — the "Random + Aug" baseline's augmentation;
3. ``RandCropByPosNegLabeld``: ``samples_per_volume`` crops of the patch size, centred on a
   foreground voxel with probability ``pos_ratio / (pos_ratio + 1)``, otherwise on a background
   voxel — inside the body (image > 0) when ``crop_foreground``; ``SpatialPadd`` for volumes
   smaller than the patch;
4. when ``augment`` and ``aug_stage == "patch"``: the same affine and noise on every crop;
5. when ``intensity_aug``: nnU-Net-style intensity augmentation of every crop — brightness
   (multiplicative), contrast, gamma and low-resolution simulation — for cohorts that mix
   contrast phases (not in the paper).

Determinism: every item re-seeds the transform chain from ``(seed, epoch, index)``, so the
crops of an epoch do not depend on the number of DataLoader workers and a resumed run sees
exactly the data the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, list_data_collate
from monai.transforms import (
    Compose,
    CropForegroundd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
    SpatialPadd,
)
from torch.utils.data import Dataset

from pimpic.data.cache import Cache
from pimpic.segmentation.config import FinetuneConfig


def _affine_and_noise(cfg: FinetuneConfig, size: tuple[int, int, int] | None) -> list[Any]:
    return [
        RandAffined(
            keys=("image", "label"), prob=cfg.affine_prob, spatial_size=size,
            rotate_range=(cfg.rotate_rad,) * 3, scale_range=(cfg.scale,) * 3,
            translate_range=(cfg.shift_vox,) * 3, mode=("bilinear", "nearest"),
            padding_mode="border",
        ),
        RandGaussianNoised(keys=("image",), prob=cfg.noise_prob, mean=0.0, std=cfg.noise_std),
    ]


def _intensity() -> list[Any]:
    """Brightness, contrast, gamma and low resolution with nnU-Net's default probabilities."""
    return [
        RandScaleIntensityd(keys=("image",), factors=0.25, prob=0.15),           # brightness
        RandScaleIntensityFixedMeand(keys=("image",), factors=0.25, prob=0.15),  # contrast
        RandSimulateLowResolutiond(keys=("image",), prob=0.25, zoom_range=(0.5, 1.0)),
        RandAdjustContrastd(keys=("image",), gamma=(0.7, 1.5), prob=0.3),        # gamma
    ]


def train_transform(cfg: FinetuneConfig, patch_size: int) -> Any:
    """The MONAI ``Compose`` producing ``samples_per_volume`` patches per volume."""
    size = (patch_size,) * 3
    chain: list[Any] = []
    if cfg.crop_foreground:
        chain.append(CropForegroundd(keys=("image", "label"), source_key="image",
                                     allow_smaller=True))
    if cfg.augment and cfg.aug_stage == "volume":
        chain += _affine_and_noise(cfg, None)
    body = "image" if cfg.crop_foreground else None  # centres on image > 0 only
    crop: Any
    if cfg.class_ratios is None:
        crop = RandCropByPosNegLabeld(
            keys=("image", "label"), label_key="label", spatial_size=size, pos=cfg.pos_ratio,
            neg=1.0, num_samples=cfg.samples_per_volume, allow_smaller=True, image_key=body,
            image_threshold=0.0)
    else:
        crop = RandCropByLabelClassesd(
            keys=("image", "label"), label_key="label", spatial_size=size,
            ratios=list(cfg.class_ratios), num_classes=len(cfg.class_ratios),
            num_samples=cfg.samples_per_volume, allow_smaller=True, warn=False, image_key=body,
            image_threshold=0.0)
    chain += [crop, SpatialPadd(keys=("image", "label"), spatial_size=size)]
    if cfg.augment and cfg.aug_stage == "patch":
        chain += _affine_and_noise(cfg, size)
    if cfg.intensity_aug:
        chain += _intensity()
    return Compose(chain)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed unique to (run seed, epoch, item)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class PatchDataset(Dataset[Any]):
    """One epoch of training items: item ``i`` = the crops of volume ``order[i]``.

    Args:
        cache_root: the cache folder (volumes are read lazily, memory-mapped).
        case_ids: the fine-tuning cases.
        order: indices into ``case_ids`` for this epoch (length = steps × batch size).
        transform: from :func:`train_transform`.
        seed, epoch: seed the transform chain per item (see the module docstring).

    ``__getitem__`` returns a list of ``samples_per_volume`` dicts with ``image (1, p, p, p)``
    float32 and ``label (1, p, p, p)`` tensors (flattened into a batch by
    ``monai.data.list_data_collate``).
    """

    def __init__(self, cache_root: str | Path, case_ids: Sequence[str], order: Sequence[int],
                 transform: Any, seed: int, epoch: int) -> None:
        self.cache_root = Path(cache_root)
        self.case_ids = list(case_ids)
        self.order = list(order)
        self.transform = transform
        self.seed = seed
        self.epoch = epoch
        self._cache: Cache | None = None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> Any:
        if self._cache is None:
            self._cache = Cache(self.cache_root)
        cid = self.case_ids[self.order[index]]
        image = np.asarray(self._cache.image(cid), dtype=np.float32)[None]
        label = self._cache.label(cid)
        assert label is not None  # checked before training
        data = {"image": torch.from_numpy(image),
                "label": torch.from_numpy(np.asarray(label, dtype=np.uint8)[None].astype(np.int64))}
        self.transform.set_random_state(seed=item_seed(self.seed, self.epoch, index))
        return self.transform(data)


def epoch_order(n_cases: int, n_items: int, seed: int, epoch: int) -> list[int]:
    """``n_items`` case indices: concatenated seeded permutations, so every case is seen once per
    pass and an epoch may span several passes (``steps_per_epoch`` larger than one pass)."""
    rng = np.random.default_rng([seed, epoch, 7])
    passes = math.ceil(n_items / n_cases)
    order = np.concatenate([rng.permutation(n_cases) for _ in range(passes)])[:n_items]
    return [int(i) for i in order]


def epoch_loader(cache_root: str | Path, case_ids: Sequence[str], cfg: FinetuneConfig,
                 patch_size: int, steps: int, epoch: int, transform: Any) -> Any:
    """A DataLoader yielding ``steps`` batches of ``batch_size × samples_per_volume`` patches."""
    order = epoch_order(len(case_ids), steps * cfg.batch_size, cfg.seed, epoch)
    ds = PatchDataset(cache_root, case_ids, order, transform, cfg.seed, epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, drop_last=False,
                      num_workers=cfg.num_workers, collate_fn=list_data_collate,
                      persistent_workers=False)
