"""Box geometry of overlapping patches (docs/method.md §2 and §5): pure tensor functions.

Boxes are integer voxel boxes ``(..., 2, 3)`` = ``[[start_xyz], [end_xyz]]`` with ``start``
inclusive and ``end`` exclusive, in the (padded) volume's voxel coordinates. Everything here is
vectorised over patches and pairs; nothing loops in Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def _patch_volume(patch_size: int | Sequence[int]) -> int:
    if isinstance(patch_size, int):
        return patch_size**3
    sizes = [int(s) for s in patch_size]
    if len(sizes) != 3:
        raise ValueError(f"patch_size must be an int or 3 ints, got {patch_size!r}")
    return math.prod(sizes)


def _intersection(boxes_a: Tensor, boxes_b: Tensor) -> tuple[Tensor, Tensor]:
    """Start and end ``(..., 3)`` of the intersection of broadcastable boxes ``(..., 2, 3)``.

    An empty intersection gets ``end = start`` on the axes where it is empty, so its volume is 0.
    """
    lo = torch.maximum(boxes_a[..., 0, :], boxes_b[..., 0, :])
    hi = torch.minimum(boxes_a[..., 1, :], boxes_b[..., 1, :])
    return lo, torch.maximum(hi, lo)


def box_overlaps(
    boxes_a: Tensor | np.ndarray, boxes_b: Tensor | np.ndarray,
    patch_size: int | Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """``O[i, k] = |a_i ∩ b_k| / |patch|`` between two sets of boxes.

    Args:
        boxes_a: ``(N, 2, 3)`` integer ``[start, end)`` voxel boxes (leading batch dimensions
            ``(V, N, 2, 3)`` give one matrix per volume).
        boxes_b: ``(K, 2, 3)`` (or ``(V, K, 2, 3)``), in the same coordinates.
        patch_size: edge length ``p`` of a cubic patch, or its 3 edge lengths (voxels).
        dtype: floating dtype of the result.

    Returns:
        ``(N, K)`` (or ``(V, N, K)``), on the boxes' device.
    """
    a = torch.as_tensor(boxes_a).long()
    b = torch.as_tensor(boxes_b).long()
    lo, hi = _intersection(a[..., :, None, :, :], b[..., None, :, :, :])
    inter = (hi - lo).prod(dim=-1)
    return inter.to(dtype) / _patch_volume(patch_size)


def overlap_matrix(
    boxes: Tensor | np.ndarray, patch_size: int | Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Ground-truth overlap ``S[i, j] = |box_i ∩ box_j| / |patch|`` (docs/method.md §2).

    The intersection volume is divided by the patch volume (not IoU), so ``S[i, i] = 1`` for
    full-size patches and ``0 ≤ S ≤ 1``.

    Args:
        boxes: ``(N, 2, 3)`` integer ``[start, end)`` voxel boxes; leading batch dimensions
            ``(V, N, 2, 3)`` give one matrix per volume.
        patch_size: edge length ``p`` of a cubic patch, or its 3 edge lengths (voxels).
        dtype: floating dtype of the result.

    Returns:
        ``(N, N)`` (or ``(V, N, N)``), on the boxes' device.
    """
    return box_overlaps(boxes, boxes, patch_size, dtype)


def intersection_pairs(
    boxes: Tensor | np.ndarray, overlap: Tensor, min_overlap: float = 0.01
) -> tuple[Tensor, Tensor]:
    """The PiC pairs of one volume and their intersection boxes in each patch's own frame.

    Args:
        boxes: ``(N, 2, 3)`` integer ``[start, end)`` voxel boxes of one volume.
        overlap: ``(N, N)`` from :func:`overlap_matrix`.
        min_overlap: a pair qualifies when ``overlap[i, j] >= min_overlap`` (0.01,
            docs/method.md §5).

    Returns:
        ``pairs (P, 2)`` long: all ``i < j`` that qualify, in lexicographic order;
        ``local (P, 2, 2, 3)`` long: ``local[k, 0]`` is the intersection box minus
        ``start_i`` (patch i's coordinates), ``local[k, 1]`` the same box minus ``start_j``.
    """
    boxes = torch.as_tensor(boxes).long()
    n = boxes.shape[0]
    # triu_indices enumerates row-major, i.e. lexicographic (i, j) order
    i, j = torch.triu_indices(n, n, offset=1, device=boxes.device)
    keep = overlap[i, j] >= min_overlap
    i, j = i[keep], j[keep]
    pairs = torch.stack([i, j], dim=1)
    lo, hi = _intersection(boxes[i], boxes[j])
    inter = torch.stack([lo, hi], dim=1)  # (P, 2, 3) in volume coordinates
    start_i = boxes[i, 0][:, None, :]
    start_j = boxes[j, 0][:, None, :]
    local = torch.stack([inter - start_i, inter - start_j], dim=1)
    return pairs, local


def scale_boxes(boxes: Tensor, scale: int | Sequence[int]) -> Tensor:
    """Map integer boxes ``(..., 2, 3)`` onto a grid downsampled by ``scale``.

    ``[start, end)`` → ``[floor(start / scale), ceil(end / scale))`` (docs/method.md §5): a cell is
    included as soon as any of its voxels is, so a non-empty box never maps to an empty one.
    ``scale`` is one factor for all axes or one per axis (an anisotropic pyramid level).
    """
    boxes = torch.as_tensor(boxes).long()
    k = scale if isinstance(scale, int) else torch.as_tensor(list(scale), device=boxes.device)
    start = torch.div(boxes[..., 0, :], k, rounding_mode="floor")
    end = -torch.div(-boxes[..., 1, :], k, rounding_mode="floor")
    return torch.stack([start, end], dim=-2)
