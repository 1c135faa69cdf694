"""PiM — Patch Intersection Measurement (paper eq. 1, docs/method.md §4).

Each patch gets a descriptor from the deep pyramid levels, head f maps it to a unit vector, and
the cosine similarity ``C = P Pᵀ`` of two patches is trained to equal their ground-truth overlap
``S`` (:func:`pimpic.pretraining.geometry.overlap_matrix`). Non-overlapping pairs (``S = 0``) are
the negatives: they are pushed to orthogonality.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

#: keeps the log finite when |S − C| reaches 1
EPS = 1e-6


def pim_descriptor(features: Sequence[Tensor]) -> Tensor:
    """Patch descriptor ``(N, F)`` from a feature pyramid ``[f1, …, f5]`` (docs/method.md §4).

    Each of the last three levels ``f_l (N, C_l, D_l, H_l, W_l)`` (``f3, f4, f5`` for the
    5-level encoder) is averaged over its **channel** axis, keeping the spatial grid, flattened
    in (D, H, W) order, and the three are concatenated ``[f3 | f4 | f5]``. A 64³ patch gives
    ``16³ + 8³ + 4³ = 4672`` values. Shallower pyramids use all their levels.
    """
    if not features:
        raise ValueError("pim_descriptor needs at least one feature level")
    return torch.cat([f.mean(dim=1).flatten(1) for f in features[-3:]], dim=1)


def pim_loss(
    projections: Tensor, overlap: Tensor, reduction: Literal["all", "lower"] = "all"
) -> Tensor:
    """``L_PiM = − mean log(1 − clamp(|S − P Pᵀ|, 0, 1) + 1e-6)`` (docs/method.md §4).

    Args:
        projections: ``(N, d)`` L2-normalised head-f outputs ``P`` of one volume's patches, or
            ``(V, N, d)`` for V volumes (overlaps never cross volumes).
        overlap: ``(N, N)`` (or ``(V, N, N)``) ground-truth overlap ``S``.
        reduction: ``"all"`` (reference) averages over all N×N entries, diagonal and both
            triangles included; ``"lower"`` is the paper's formula, the strict lower triangle.
            With V volumes the result is the mean of the per-volume losses (equal N).

    Returns:
        Scalar loss, computed in at least float32 (robust under autocast).
    """
    dtype = torch.promote_types(projections.dtype, torch.float32)
    p = projections.to(dtype)
    s = overlap.to(device=p.device, dtype=dtype)
    c = p @ p.transpose(-1, -2)
    terms = -torch.log(1.0 - (s - c).abs().clamp(0.0, 1.0) + EPS)
    if reduction == "all":
        return terms.mean()
    if reduction == "lower":
        n = terms.shape[-1]
        if n < 2:
            return terms.sum() * 0.0
        i, j = torch.tril_indices(n, n, offset=-1, device=terms.device)
        return terms[..., i, j].mean()
    raise ValueError(f"unknown PiM reduction {reduction!r}; choose 'all' or 'lower'")
