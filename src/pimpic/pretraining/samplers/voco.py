"""VoCo's sampler (docs/method.md §7): base crops on a grid and random crops inside it.

A region of ``gx·p × gy·p × p`` voxels at a random position is read from the memory-mapped
volume (padded where it leaves the volume). The ``gx × gy`` grid cells (``p³`` each, in-plane
grid, full depth of the region) are the base crops; ``num_random`` random ``p³`` crops lie
inside the region. With a box-shaped patch ``(p_x, p_y, p_z)`` the region is
``gx·p_x × gy·p_y × p_z`` and every crop is a ``p_x × p_y × p_z`` box. The target ``y[i, k]``
is the fraction of random crop ``i`` inside base ``k``, counted in voxels of the preprocessed
(1.5 mm) grid — no whole-volume resize as in the original — so ``Σ_k y[i, k] = 1``. No spatial
or intensity augmentation of the crops (the repository flips/rotates each crop independently;
the CVPR paper does not describe it).
"""

from __future__ import annotations

import numpy as np

from pimpic.patch import PatchSize, patch_shape
from pimpic.pretraining.geometry import box_overlaps
from pimpic.pretraining.samplers.common import crop, random_start


class VoCoSampler:
    """Base crops on a grid and random crops inside it, for one volume.

    Args:
        patch_size: crop edge ``p``, or the three edges of a box crop (voxels).
        grid: ``(gx, gy)`` base crops in-plane; the region is ``gx·p × gy·p × p``.
        num_random: random crops per volume.
        pad_value: intensity of voxels outside the volume.

    ``sampler(image (X, Y, Z), rng)`` returns ``bases (K, 1, p, p, p)`` and
    ``randoms (n, 1, p, p, p)`` float32, ``targets (n, K)`` float32 overlap fractions, and
    ``base_boxes (K, 2, 3)`` / ``random_boxes (n, 2, 3)`` int64 in the volume's voxel
    coordinates (may extend outside it where padded). Bases are ordered x-major
    (``k = i·gy + j`` for grid cell ``(i, j)``).
    """

    def __init__(self, patch_size: PatchSize, grid: tuple[int, int], num_random: int,
                 pad_value: float = 0.0) -> None:
        self.patch_size = patch_shape(patch_size)
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_random = int(num_random)
        self.pad_value = float(pad_value)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p = np.asarray(self.patch_size, dtype=np.int64)
        gx, gy = self.grid
        size = np.array([gx, gy, 1], dtype=np.int64) * p
        origin = random_start(np.asarray(image.shape), size, rng)
        region = crop(image, np.stack([origin, origin + size]), self.pad_value)

        ii, jj = np.meshgrid(np.arange(gx), np.arange(gy), indexing="ij")
        base_starts = np.stack([ii.ravel() * p[0], jj.ravel() * p[1],
                                np.zeros(gx * gy, np.int64)], 1)
        rand_starts = rng.integers(0, size - p + 1, size=(self.num_random, 3)).astype(np.int64)
        base_local = np.stack([base_starts, base_starts + p], axis=1)
        rand_local = np.stack([rand_starts, rand_starts + p], axis=1)

        def cut(starts: np.ndarray) -> np.ndarray:
            crops = [region[x:x + p[0], y:y + p[1], z:z + p[2]] for x, y, z in starts]
            return np.stack(crops)[:, None].astype(np.float32)

        return {
            "bases": cut(base_starts),
            "randoms": cut(rand_starts),
            "targets": box_overlaps(rand_local, base_local, self.patch_size).numpy(),
            "base_boxes": base_local + origin,
            "random_boxes": rand_local + origin,
        }
