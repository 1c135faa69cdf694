"""Overlapping-patch sampling for PiM/PiC pretraining (docs/method.md §2).

Why the sampler matters
-----------------------
PiM learns to predict how much two patches overlap and PiC contrasts the overlap region of two
patches with their remaining parts. Both need, in every step, a set of patches **from one
volume** whose overlaps cover the whole range from "identical" to "disjoint". The sampler is
therefore part of the method, not a data-loading detail: its overlap distribution is the
distribution of PiM targets and the number of PiC pairs.

The reference sampler
---------------------
Per axis (sizes ``dim`` of the volume, ``p`` of the patch on that axis):

1. draw a hidden *anchor* start ``a ~ U{0, dim − p − 1}``;
2. draw each of the N patch starts from ``U{max(0, a − m), min(dim − p, a + m) − 1}`` with
   ``m = (4 p) // 5`` (51 for p = 64), i.e. ``overlap_margin = 0.8``.

A patch is a cube of edge ``p`` (the paper) or a box ``(p_x, p_y, p_z)`` (``patch_size`` with
three edges, e.g. an nnU-Net plan's anisotropic patch): every axis then has its own ``p``, and so
its own margin ``m``; the axes are drawn independently either way.

Every patch lies within ``m < p`` voxels of the anchor on every axis, so every patch overlaps
the anchor — but two patches on opposite sides of it need not overlap each other: with the
reference margin about 20 % of pairs are disjoint on a typical 1.5 mm abdominal CT grid
(e.g. 256×256×160 with p = 64). The fraction depends on the volume: the borders clip the
jitter, so small volumes give fewer negatives, and far from the borders it reaches
``1 − (1 − q)³ ≈ 37 %`` with ``q = (2m − p)(2m − p + 1) / (2m)²`` per axis. The disjoint
pairs are PiM's negatives (target 0); the rest have a continuum of overlaps and, above 1 %,
become PiC pairs. Patches are always full
size, so ``S[i, i] = 1``. (Both upper bounds are exclusive in the released implementation, so
the last start position is never drawn; we keep that for numerical parity.)

Options (all off by default)
----------------------------
* ``overlap_margin``: the jitter half-width ``m = floor(margin · p)``. Smaller margins give more
  and larger overlaps; margins ≥ 1 allow patches that miss the anchor and give more negatives.
* ``anchor="foreground"``: the anchor is centred on a random voxel brighter than
  ``foreground_threshold`` (found on a coarse, strided view of the volume so it stays cheap), so
  steps are not wasted on patches of air around the body. Falls back to uniform if none.
* ``intensity_aug``: per-patch random scale, shift and Gaussian noise, so overlapping voxels
  are no longer bit-identical and the network cannot solve PiM by matching raw intensities.
* Padding: a volume smaller than the patch on some axis is padded (centred, ``pad_value``) to
  the patch size. The padding is *virtual*: boxes refer to the padded volume, and only the
  voxels a patch needs are read from the (memory-mapped) volume and padded in the crop.

Reading
-------
The sampler receives a memory-mapped ``(X, Y, Z)`` volume and slices exactly the patch boxes,
so a step reads ``N · p³`` voxels, never the whole volume. It is a plain picklable object (no
open files, no torch state) so DataLoader workers can each hold a copy; randomness comes only
from the ``numpy.random.Generator`` the loader passes in, which makes every step reproducible
per seed, rank and worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from pimpic.config import plain
from pimpic.errors import PimpicError
from pimpic.patch import PatchSize, patch_shape, patch_text
from pimpic.pretraining.samplers.common import crop

if TYPE_CHECKING:
    from pimpic.pretraining.config import SamplerConfig

#: per-patch intensity augmentation: scale ~ U(1 ± 0.1), shift ~ U(± 0.1), noise σ = 0.02
#: (intensities are in [0, 1] after the HU window)
AUG_SCALE = 0.1
AUG_SHIFT = 0.1
AUG_NOISE = 0.02
#: stride of the coarse view used to find foreground anchors
FOREGROUND_STRIDE = 4


def jitter_margin(patch_size: int, margin: float) -> int:
    """``m = floor(margin · p)`` for a patch edge ``p``, exact for decimal margins (0.8 gives
    ``(4 p) // 5`` for every p; a binary float product like ``0.8 · 15`` must not round below an
    integer)."""
    return int(Fraction(repr(float(margin))) * patch_size // 1)


def _anchor_range(dim: int, patch: int) -> int:
    """Number of anchor positions ``dim − p`` (at least 1: a volume of exactly the patch size
    has the single start 0)."""
    return max(dim - patch, 1)


def reference_boxes(
    shape: tuple[int, ...],
    patch_size: PatchSize | Sequence[int],
    n: int,
    rng: np.random.Generator,
    margin: float = 0.8,
    anchor: np.ndarray | None = None,
) -> np.ndarray:
    """N overlapping ``[start, end)`` boxes in a volume of ``shape`` (docs/method.md §2).

    Args:
        shape: ``(X, Y, Z)`` volume size in voxels; every axis ≥ the patch's (pad first).
        patch_size: cubic patch edge ``p``, or the edges ``(p_x, p_y, p_z)`` of a box
            (voxels); each axis has its own margin ``m = floor(margin · p_axis)``.
        n: number of patches.
        rng: the source of randomness (draws: anchor per axis, then all starts at once).
        margin: jitter half-width as a fraction of ``p`` (reference 0.8 ⇒ ``m = (4p)//5``).
        anchor: optional ``(3,)`` anchor start to use instead of drawing one (foreground
            anchors); clipped to the valid range.

    Returns:
        ``(n, 2, 3)`` int64 boxes, all full size and inside the volume.
    """
    dims = np.asarray(shape[:3], dtype=np.int64)
    p = np.asarray(patch_shape(patch_size), dtype=np.int64)
    if np.any(dims < p):
        raise PimpicError(f"volume of shape {tuple(int(d) for d in dims)} is smaller than the "
                          f"patch size {patch_text(patch_size)}; pad it first")
    # per axis; for a cube these are the same numbers, drawn in the same order, as with one edge
    m = np.array([jitter_margin(int(e), margin) for e in p])
    top = np.array([_anchor_range(int(d), int(e)) for d, e in zip(dims, p, strict=True)])
    if anchor is None:
        a = rng.integers(0, top)  # anchors in [0, top)
    else:
        a = np.clip(np.asarray(anchor, dtype=np.int64), 0, top - 1)
    lo = np.maximum(0, a - m)
    hi = np.minimum(dims - p, a + m)
    hi = np.maximum(hi, lo + 1)  # dim == p (or m == 0): the only start is lo
    starts = rng.integers(lo, hi, size=(n, 3))
    return np.stack([starts, starts + p], axis=1).astype(np.int64)


@dataclass
class OverlapPatchSampler:
    """``sampler(image, rng) -> {"patches": (N, 1, p_x, p_y, p_z), "boxes": (N, 2, 3) int64}``.

    Patches are float32, or float16 when the cache stores float16 and no intensity augmentation
    is asked for (the engine casts batches to float32 on the device).

    Args:
        patch_size: cubic patch edge ``p``, or the three edges of a box (voxels).
        num_patches: patches per volume ``N`` (paper: 32).
        cfg: :class:`~pimpic.pretraining.config.SamplerConfig` (its defaults are the reference
            sampler).

    Boxes are in the voxel coordinates of the (virtually) padded volume, which equals the
    volume itself unless an axis is shorter than the patch; see the module docstring.
    """

    patch_size: PatchSize
    num_patches: int
    cfg: SamplerConfig

    def __post_init__(self) -> None:
        if min(patch_shape(self.patch_size)) < 1 or self.num_patches < 1:
            raise PimpicError(f"sampler: patch_size ({patch_text(self.patch_size)}) and "
                              f"num_patches ({self.num_patches}) must be ≥ 1")

    @property
    def shape(self) -> np.ndarray:
        """The patch's edge per axis, ``(3,)`` int64."""
        return np.asarray(patch_shape(self.patch_size), dtype=np.int64)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if image.ndim != 3:
            raise PimpicError(f"sampler: expected a 3-D (X, Y, Z) volume, got shape "
                              f"{tuple(image.shape)}")
        p = self.shape
        dims = np.asarray(image.shape, dtype=np.int64)
        padded = np.maximum(dims, p)
        offset = (padded - dims) // 2  # centred virtual padding
        anchor = self._foreground_anchor(image, offset, padded, rng)
        boxes = reference_boxes(tuple(padded), self.patch_size, self.num_patches, rng,
                                margin=self.cfg.overlap_margin, anchor=anchor)
        noise = self._volume_noise(boxes, offset, dims, rng)
        keep16 = image.dtype == np.float16 and not self.cfg.intensity_aug and noise is None
        dtype = np.float16 if keep16 else np.float32
        patches = np.empty((self.num_patches, 1, *(int(e) for e in p)), dtype=dtype)
        for k, box in enumerate(boxes):
            patches[k, 0] = crop(image, box - offset, self.cfg.pad_value, dtype)
            if noise is not None:
                lo, hi = box - noise[1]
                patches[k, 0] += noise[0][lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if self.cfg.intensity_aug:
            self._augment(patches, rng)
        return {"patches": patches, "boxes": boxes}

    def _foreground_anchor(self, image: np.ndarray, offset: np.ndarray, padded: np.ndarray,
                           rng: np.random.Generator) -> np.ndarray | None:
        """An anchor start that centres the anchor patch on a random bright voxel, or None
        (uniform anchor) when the option is off or the volume has no foreground."""
        if self.cfg.anchor != "foreground":
            return None
        s = FOREGROUND_STRIDE
        coarse = np.asarray(image[s // 2::s, s // 2::s, s // 2::s])
        idx = np.flatnonzero(coarse > self.cfg.foreground_threshold)
        if idx.size == 0:
            return None
        cell = np.array(np.unravel_index(idx[rng.integers(idx.size)], coarse.shape))
        centre = cell * s + s // 2 + offset
        p = self.shape
        anchor: np.ndarray = np.clip(centre - p // 2, 0, np.maximum(padded - p - 1, 0))
        return anchor

    def _volume_noise(self, boxes: np.ndarray, offset: np.ndarray, dims: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """The whole-volume Gaussian noise of the released pretraining, drawn (with probability
        ``volume_noise_prob``) only over the boxes' bounding region, which is all the patches
        see: ``(noise, its start)`` in padded coordinates, zero on padding; None when off or
        not drawn. Nothing is drawn from ``rng`` when the option is off."""
        if self.cfg.volume_noise_prob <= 0 or rng.random() >= self.cfg.volume_noise_prob:
            return None
        lo, hi = boxes[:, 0].min(axis=0), boxes[:, 1].max(axis=0)
        noise = rng.standard_normal(size=tuple(int(e) for e in hi - lo), dtype=np.float32)
        noise *= np.float32(self.cfg.volume_noise_std)
        # voxels of the virtual padding are not part of the volume: no noise there
        inside = [(np.arange(a, b) >= o) & (np.arange(a, b) < o + d)
                  for a, b, o, d in zip(lo, hi, offset, dims, strict=True)]
        noise *= inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
        return noise, lo

    @staticmethod
    def _augment(patches: np.ndarray, rng: np.random.Generator) -> None:
        """In place: ``x · scale + shift + noise`` with independent draws per patch."""
        n = patches.shape[0]
        scale = rng.uniform(1 - AUG_SCALE, 1 + AUG_SCALE, size=(n, 1, 1, 1, 1))
        shift = rng.uniform(-AUG_SHIFT, AUG_SHIFT, size=(n, 1, 1, 1, 1))
        patches *= scale.astype(np.float32)
        patches += shift.astype(np.float32)
        noise = rng.standard_normal(size=patches.shape, dtype=np.float32)
        noise *= AUG_NOISE
        patches += noise

    def describe(self) -> dict[str, Any]:
        """Plain-data description (for logs)."""
        return {"patch_size": plain(self.patch_size), "num_patches": self.num_patches,
                "anchor": self.cfg.anchor, "overlap_margin": self.cfg.overlap_margin,
                "intensity_aug": self.cfg.intensity_aug, "pad_value": self.cfg.pad_value,
                "volume_noise_prob": self.cfg.volume_noise_prob,
                "volume_noise_std": self.cfg.volume_noise_std}
