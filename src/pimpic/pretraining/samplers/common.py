"""What every sampler needs: reading a box of a memory-mapped volume, placing a box at random."""

from __future__ import annotations

from typing import Any

import numpy as np


def crop(image: np.ndarray, box: np.ndarray, pad_value: float = 0.0,
         dtype: Any = np.float32) -> np.ndarray:
    """``image[box]`` as ``dtype``, reading only the voxels inside the volume.

    Args:
        image: ``(X, Y, Z)`` array (a memmap is read lazily).
        box: ``(2, 3)`` ``[start, end)`` in the image's voxel coordinates; parts outside the
            volume (negative starts, ends beyond the shape) are filled with ``pad_value``.

    Returns:
        ``(end − start)`` array of ``dtype`` (float32 by default; the sampler passes the
        cache's float16 through, since the float16→float32 conversion dominates patch reading
        on a CPU and the engine converts whole batches on the device instead).
    """
    box = np.asarray(box, dtype=np.int64)
    start, end = box[0], box[1]
    dims = np.asarray(image.shape[:3], dtype=np.int64)
    lo = np.clip(start, 0, dims)
    hi = np.clip(end, lo, dims)
    inner = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    size = tuple(int(s) for s in end - start)
    if tuple(int(s) for s in hi - lo) == size:
        return np.asarray(inner, dtype=dtype)
    out = np.full(size, pad_value, dtype=dtype)
    o = lo - start
    out[o[0]:o[0] + inner.shape[0], o[1]:o[1] + inner.shape[1], o[2]:o[2] + inner.shape[2]] = inner
    return out


def random_start(shape: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random box start per axis: inside the volume where it fits, otherwise a random
    placement of the volume inside the (larger) box, so the box covers it and padding is split
    randomly between the two sides. ``(3,)`` int64."""
    room = np.asarray(shape, np.int64) - np.asarray(size, np.int64)
    return rng.integers(np.minimum(room, 0), np.maximum(room, 0) + 1).astype(np.int64)
