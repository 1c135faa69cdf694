"""vox2vec's sampler (docs/method.md §7): pairs of overlapping crops and the voxels they share.

``num_pairs`` pairs of ``p³`` crops per volume. The first crop of a pair is placed uniformly
(inside the volume where it fits, :func:`~pimpic.pretraining.samplers.common.random_start`); the
second is shifted by ``U{−p/2, …, p/2}`` voxels per axis and clamped to the same range, so the
two always share at least ``(p/2)³`` voxels. Voxel correspondence is a pure translation (no
spatial augmentation, as in the original). Each crop gets an independent intensity
augmentation (:func:`augment_intensity`). With a box-shaped patch ``(p_x, p_y, p_z)`` every
axis uses its own edge (crops are boxes, the shift is ``U{−p_a/2, …, p_a/2}`` on axis a).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from pimpic.patch import PatchSize, patch_shape
from pimpic.pretraining.samplers.common import crop, random_start


def augment_intensity(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random blur / noise / contrast of one crop ``(X, Y, Z)`` in [0, 1] (see module doc)."""
    out = crop.astype(np.float32)  # a copy: the crop may be a view of the memmap
    if rng.random() < 0.5:
        s = rng.uniform(0.25, 1.5)
        out = gaussian_filter(out, sigma=(s, s, 0.0), mode="nearest")
    if rng.random() < 0.5:
        noise = rng.standard_normal(out.shape, dtype=np.float32)
        out += noise * np.float32(rng.uniform(0.0, 0.05))
    if rng.random() < 0.8:
        out *= np.float32(rng.uniform(0.8, 1.25))
        out += np.float32(rng.uniform(-0.1, 0.1))
    return np.clip(out, 0.0, 1.0, out=out)


class Vox2VecSampler:
    """Pairs of overlapping crops and the voxels they share, for one volume.

    Args:
        patch_size: crop edge ``p``, or the three edges of a box crop (voxels).
        num_pairs: crop pairs per volume.
        num_voxels: voxel positions per pair (fixed; padded with ``valid = False``).
        foreground_threshold: voxels above it are "body" and preferred for sampling.
        pad_value: intensity outside the volume.
        augment: independent intensity augmentation per crop.

    ``sampler(image (X, Y, Z), rng)`` returns ``crops (P, 2, 1, p, p, p)`` float32,
    ``voxels (P, 2, n, 3)`` int64 (the same physical voxel in crop 0 and crop 1, local
    coordinates), ``valid (P, n)`` bool and ``boxes (P, 2, 2, 3)`` int64 (volume coordinates).
    """

    def __init__(self, patch_size: PatchSize, num_pairs: int = 1, num_voxels: int = 1024,
                 foreground_threshold: float = 0.05, pad_value: float = 0.0,
                 augment: bool = True) -> None:
        self.patch_size = patch_shape(patch_size)
        self.num_pairs = int(num_pairs)
        self.num_voxels = int(num_voxels)
        self.foreground_threshold = float(foreground_threshold)
        self.pad_value = float(pad_value)
        self.augment = augment

    def _pair(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = self.num_voxels
        shape = np.asarray(image.shape, np.int64)
        p = np.asarray(self.patch_size, np.int64)
        s0 = random_start(shape, p, rng)
        room = shape - p
        # per-axis bounds draw exactly what the scalar bounds of a cube drew
        s1 = np.clip(s0 + rng.integers(-(p // 2), p // 2 + 1, size=3),
                     np.minimum(room, 0), np.maximum(room, 0))
        crops = [crop(image, np.stack([s, s + p]), self.pad_value) for s in (s0, s1)]

        lo, hi = np.maximum(s0, s1), np.minimum(s0, s1) + p
        inter = crops[0][tuple(slice(a, b) for a, b in zip(lo - s0, hi - s0, strict=True))]
        flat = np.flatnonzero(inter > self.foreground_threshold)
        if flat.size == 0:
            flat = np.arange(inter.size)
        pick = rng.choice(flat, size=min(n, flat.size), replace=False)
        pos = np.zeros((n, 3), np.int64)
        pos[: pick.size] = np.stack(np.unravel_index(pick, inter.shape), axis=1) + lo
        valid = np.zeros(n, bool)
        valid[: pick.size] = True
        if self.augment:
            crops = [augment_intensity(c, rng) for c in crops]
        voxels = np.stack([pos - s0, pos - s1])
        voxels[:, ~valid] = 0
        return {
            "crops": np.stack(crops)[:, None].astype(np.float32),
            "voxels": voxels,
            "valid": valid,
            "boxes": np.stack([np.stack([s, s + p]) for s in (s0, s1)]),
        }

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        pairs = [self._pair(image, rng) for _ in range(self.num_pairs)]
        return {k: np.stack([pair[k] for pair in pairs]) for k in pairs[0]}
