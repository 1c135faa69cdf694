"""vox2vec loss: symmetric voxel-level InfoNCE (Goncharov et al., MICCAI 2023).

For one pair of overlapping crops, ``z1[i]`` and ``z2[i]`` embed the same anatomical voxel seen
in view 1 and view 2 (the positive pair). With ``s_ab = z_a z_bᵀ / τ`` and the self-similarity
diagonals of ``s11`` and ``s22`` excluded:

* ``L1_i = −s12[i, i] + logsumexp_j([s11[i, :], s12[i, :]])``
* ``L2_i = −s12[i, i] + logsumexp_j([s21[i, :], s22[i, :]])``   (``s21 = s12ᵀ``)
* ``L = (mean_i L1_i + mean_i L2_i) / 2``

so the negatives of an anchor are all other sampled voxels of the same pair, in both views
(within-view negatives as in the original). Sampled positions are padded to a fixed count with
a validity mask; padded voxels are neither anchors nor negatives. The means are taken over all
valid anchors of the batch pooled (as the original averages over its whole batch of voxels);
pairs never see each other's voxels.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: a finite "minus infinity": masked logits vanish from logsumexp without NaN gradients
_MASKED = -1e9


def vox2vec_infonce(z1: Tensor, z2: Tensor, valid: Tensor, tau: float = 0.1) -> Tensor:
    """Symmetric InfoNCE over the sampled voxels of each crop pair.

    Args:
        z1: ``(B, n, D)`` L2-normalised voxel embeddings in view 1 (B crop pairs).
        z2: ``(B, n, D)`` the same voxels in view 2.
        valid: ``(B, n)`` bool, False for padding.
        tau: temperature.

    Returns:
        A scalar; zero (with a graph) when no voxel is valid.
    """
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[1]
    valid = valid.bool()
    s11 = z1 @ z1.transpose(-1, -2) / tau
    s12 = z1 @ z2.transpose(-1, -2) / tau
    s22 = z2 @ z2.transpose(-1, -2) / tau
    s21 = s12.transpose(-1, -2)
    eye = torch.eye(n, dtype=torch.bool, device=z1.device)
    bad_col = ~valid[:, None, :]  # (B, 1, n)
    s11 = s11.masked_fill(bad_col | eye, _MASKED)
    s22 = s22.masked_fill(bad_col | eye, _MASKED)
    s12m = s12.masked_fill(bad_col, _MASKED)
    s21m = s21.masked_fill(bad_col, _MASKED)
    pos = torch.diagonal(s12, dim1=-2, dim2=-1)  # (B, n)
    l1 = torch.logsumexp(torch.cat([s11, s12m], dim=-1), dim=-1) - pos
    l2 = torch.logsumexp(torch.cat([s21m, s22], dim=-1), dim=-1) - pos
    w = valid.float()
    return ((l1 + l2) * w).sum() / (2 * w.sum().clamp_min(1))
