"""PiC — Patch Intersection Contrast (paper eq. 2, docs/method.md §5).

For every overlapping pair (i, j) of one volume, four region means are taken on the shallow
pyramid levels: the overlap region seen from patch i (``q0``) and from patch j (``q1``), and the
rest of patch i (``q2``) and of patch j (``q3``). Head g embeds them, and the loss pulls the two
views of the overlap together while pushing them away from the non-overlapping parts.

:func:`region_means` is the hot path: the released implementation loops over ~380 pairs × 3
levels per step with a device sync per pair. Here one batched contraction per level does all
pairs at once: a box is separable, ``1[d,h,w ∈ box] = m_D[d] · m_H[h] · m_W[w]``, so the overlap
sum is one batched matrix product against the per-axis W masks followed by a masked reduction
over (D, H), and the rest sum is the patch total minus the overlap sum. Pair-sides are laid out
per patch in ``K ≤ N − 1`` slots, so the largest intermediate is ``(N, C·D·H, K)`` — about half
the size of the level itself at the paper configuration — and nothing of that size is saved
for the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from pimpic.pretraining.geometry import scale_boxes

#: a mean over an empty region is ``0 / (0 + 1e-9) = 0`` (docs/method.md §5)
EMPTY_EPS = 1e-9


def _slots(patch: Tensor, n: int) -> tuple[Tensor, int]:
    """For each entry of ``patch (M,)`` its rank among the entries with the same patch index,
    and the largest count: lays the M pair-sides out as a dense ``(n, K)`` grid."""
    counts = torch.bincount(patch, minlength=n)
    order = torch.argsort(patch, stable=True)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(patch)
    slot[order] = torch.arange(patch.numel(), device=patch.device) - first[patch[order]]
    return slot, int(counts.max())


def region_means(feature: Tensor, pairs: Tensor, local: Tensor,
                 scale: int | Sequence[int]) -> Tensor:
    """The four PiC region means of every pair on one pyramid level (docs/method.md §5).

    Args:
        feature: ``(N, C, D, H, W)`` one pyramid level of all patches (rows indexed by
            ``pairs``).
        pairs: ``(P, 2)`` long patch indices ``(i, j)``.
        local: ``(P, 2, 2, 3)`` intersection boxes in patch i's and patch j's voxel coordinates
            (:func:`pimpic.pretraining.geometry.intersection_pairs`).
        scale: the level's downsampling factor ``2^(l−1)``, or its stride per axis for an
            anisotropic level; a box maps to ``[floor(start / scale), ceil(end / scale))``
            cells.

    Returns:
        ``(P, 4, C)``: ``[overlap_i, overlap_j, rest_i, rest_j]`` channel vectors, each the mean
        over its cells; an empty region (e.g. the rest of a patch that lies wholly inside the
        other) is the zero vector. Computed in at least float32 with autocast disabled, so
        sums over 64³ cells stay accurate.
    """
    n, c = feature.shape[:2]
    grid = feature.shape[2:]
    p = pairs.shape[0]
    dtype = torch.promote_types(feature.dtype, torch.float32)
    if p == 0:
        return feature.new_zeros((0, 4, c), dtype=dtype)
    device = feature.device
    with torch.autocast(device_type=device.type, enabled=False):
        f = feature.to(dtype)
        patch = pairs.to(device).reshape(-1)  # pair-side k = 2·pair + side
        boxes = scale_boxes(local.to(device).reshape(-1, 2, 3), scale)
        size = torch.tensor(grid, device=device)
        lo = torch.minimum(boxes[:, 0].clamp(min=0), size)
        hi = torch.maximum(torch.minimum(boxes[:, 1], size), lo)
        slot, k = _slots(patch, n)

        def mask(axis: int) -> Tensor:
            """``(N, K, grid[axis])`` 0/1 interval masks of every pair-side, laid out by slot."""
            ar = torch.arange(grid[axis], device=device)
            m = (ar >= lo[:, axis, None]) & (ar < hi[:, axis, None])
            out = torch.zeros((n, k, grid[axis]), device=device, dtype=dtype)
            out[patch, slot] = m.to(dtype)
            return out

        mask_d, mask_h, mask_w = mask(0), mask(1), mask(2)
        d, h, w = grid
        # contract W for all slots of a patch in one matmul, (N, C·D·H, W) @ (N, W, K); this
        # orientation keeps f's memory layout, so the backward needs no transposed copy of f
        g = torch.matmul(f.reshape(n, c * d * h, w), mask_w.transpose(1, 2))
        # then D and H together against the outer product of their masks, per slot
        mask_dh = (mask_d[:, :, :, None] * mask_h[:, :, None, :]).reshape(n, k, d * h)
        sums = (g.reshape(n, c, d * h, k) * mask_dh.transpose(1, 2)[:, None]).sum(dim=2)
        overlap_sum = sums[patch, :, slot]  # (2P, C)
        rest_sum = f.sum(dim=(2, 3, 4))[patch] - overlap_sum
        overlap_count = (hi - lo).prod(dim=1).to(dtype)
        rest_count = math.prod(grid) - overlap_count
        # total − overlap leaves rounding residue where the rest is empty; zero it exactly
        rest_sum = torch.where(rest_count[:, None] > 0, rest_sum, torch.zeros_like(rest_sum))
        overlap_mean = overlap_sum / (overlap_count[:, None] + EMPTY_EPS)
        rest_mean = rest_sum / (rest_count[:, None] + EMPTY_EPS)
        return torch.cat([overlap_mean.reshape(p, 2, c), rest_mean.reshape(p, 2, c)], dim=1)


def pic_loss(
    q: Tensor, tau: float = 1.0, variant: Literal["reference", "paper"] = "reference"
) -> Tensor:
    """PiC contrastive loss over pairs (docs/method.md §5).

    Args:
        q: ``(P, 4, d)`` L2-normalised head-g embeddings ``[q0, q1, q2, q3]`` per pair.
        tau: temperature; ``s_ab = ⟨q_a, q_b⟩ / tau``.
        variant: ``"reference"`` (released implementation):
            ``ℓ = −log(2e^{s01} / (2e^{s01} + e^{s02} + e^{s03} + e^{s12} + e^{s13}))`` — the
            positive counts twice and ``(q2, q3)`` is not in the denominator. ``"paper"``: the
            literal eq. 2, ``ℓ = −log(e^{s01} / Σ_{a<b} e^{s_ab})`` over all 6 unordered pairs.

    Returns:
        Scalar mean over pairs (log-sum-exp for stability, at least float32). With no pair
        (``P = 0``) a zero that still carries ``q``'s gradient graph.
    """
    if q.shape[0] == 0:
        return q.sum() * 0.0
    qf = q.to(torch.promote_types(q.dtype, torch.float32))
    s = torch.einsum("pad,pbd->pab", qf, qf) / tau
    s01, s02, s03 = s[:, 0, 1], s[:, 0, 2], s[:, 0, 3]
    s12, s13, s23 = s[:, 1, 2], s[:, 1, 3], s[:, 2, 3]
    if variant == "reference":
        positive = s01 + math.log(2.0)
        logits = torch.stack([positive, s02, s03, s12, s13], dim=1)
    elif variant == "paper":
        positive = s01
        logits = torch.stack([s01, s02, s03, s12, s13, s23], dim=1)
    else:
        raise ValueError(f"unknown PiC variant {variant!r}; choose 'reference' or 'paper'")
    return (torch.logsumexp(logits, dim=1) - positive).mean()
