"""VoCo loss: volume-contrast by overlap prediction against base crops (Wu et al., CVPR 2024).

Per volume, K base crops tile a region on a grid and n random crops lie inside it; the target
``y[i, k]`` is the fraction of random crop ``i`` inside base ``k`` (overlap volume / p³). The
logit is ``l[i, k] = ReLU(cos(q_i, sg(b_k)))`` — the bases are stop-gradient targets here.

Conventions (the CVPR "v1" code generation, see docs/research/peers.md §1 (a)):

* ``L_pos`` — on entries with ``y > 0``: ``−log(1 − |y − l| + ε)``, ε = 1e-6, averaged over the
  positive entries of the volume (all random crops × bases pooled; *count* weighting). With
  ``overlap_weighted=True`` (the public repository's "10k" variant, used by ``voco-ema``) each
  entry is weighted by ``y`` instead: ``Σ y·(−log(…)) / Σ y``.
* ``L_neg`` — on entries with ``y = 0``: ``l²``, averaged over the negative entries of the volume.
* ``L_reg`` — base orthogonality: ``ReLU(cos(b_i, sg(b_j)))²`` averaged over the ordered pairs
  ``i ≠ j`` of the volume. Its value equals the mean over ``i < j``; taking both orders gives
  every base a gradient through its own (non-detached) side.
* Every term is computed per volume and then averaged over the V volumes of the batch; crops of
  different volumes are never compared. ``pred = L_pos + L_neg``, ``loss = pred + w·L_reg``.

All functions accept un-normalised embeddings (cosine is taken here) and compute in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def voco_logits(query: Tensor, bases: Tensor) -> Tensor:
    """``ReLU(cos(query_i, sg(base_k)))``.

    Args:
        query: ``(V, n, D)`` random-crop embeddings.
        bases: ``(V, K, D)`` base-crop embeddings (detached here).

    Returns:
        ``(V, n, K)`` logits in ``[0, 1]``.
    """
    q = F.normalize(query.float(), dim=-1)
    b = F.normalize(bases.detach().float(), dim=-1)
    return F.relu(q @ b.transpose(-1, -2))


def voco_prediction_loss(
    logits: Tensor, targets: Tensor, *, overlap_weighted: bool = False, eps: float = EPS
) -> tuple[Tensor, Tensor]:
    """The overlap-prediction terms ``(L_pos, L_neg)``, each averaged over volumes.

    Args:
        logits: ``(V, n, K)`` from :func:`voco_logits`.
        targets: ``(V, n, K)`` overlap fractions ``y`` in ``[0, 1]``.
        overlap_weighted: weight positive entries by ``y`` (repository variant) instead of 1.
    """
    targets = targets.float()
    pos = targets > 0
    # logits and targets lie in [0, 1], so 1 − |y − l| ≥ 0 and the log stays finite
    pos_terms = -torch.log(1 - (targets - logits).abs() + eps)
    weight = torch.where(pos, targets, 0.0) if overlap_weighted else pos.float()
    wsum = weight.sum(dim=(1, 2))
    l_pos = (weight * pos_terms).sum(dim=(1, 2)) / wsum.clamp_min(1e-12)
    neg = (~pos).float()
    l_neg = (neg * logits**2).sum(dim=(1, 2)) / neg.sum(dim=(1, 2)).clamp_min(1)
    return l_pos.mean(), l_neg.mean()


def voco_base_regularizer(bases: Tensor) -> Tensor:
    """Base orthogonality ``mean_{i≠j} ReLU(cos(b_i, sg(b_j)))²``, averaged over volumes.

    Args:
        bases: ``(V, K, D)`` base-crop embeddings (gradient flows through the first argument).

    Returns:
        A scalar; zero (with a graph) when ``K < 2``.
    """
    k = bases.shape[1]
    b = F.normalize(bases.float(), dim=-1)
    if k < 2:
        return b.sum() * 0.0
    cos = b @ b.detach().transpose(-1, -2)
    off = ~torch.eye(k, dtype=torch.bool, device=bases.device)
    return (F.relu(cos[:, off]) ** 2).mean()


def voco_loss(
    query: Tensor,
    bases: Tensor,
    targets: Tensor,
    *,
    reg_bases: Tensor | None = None,
    reg_weight: float = 1.0,
    overlap_weighted: bool = False,
) -> dict[str, Tensor]:
    """The full VoCo objective.

    Args:
        query: ``(V, n, D)`` random-crop embeddings (student).
        bases: ``(V, K, D)`` base embeddings the logits compare against (stop-gradient; the
            student's own, or the EMA teacher's for ``voco-ema``).
        targets: ``(V, n, K)`` overlap fractions.
        reg_bases: ``(V, K, D)`` bases for the orthogonality term (default: ``bases``; for
            ``voco-ema`` the student's bases, so the term has a gradient).
        reg_weight: weight of ``L_reg``.
        overlap_weighted: see :func:`voco_prediction_loss`.

    Returns:
        Scalars ``loss``, ``pred`` (= ``pos + neg``), ``pos``, ``neg``, ``reg``.
    """
    logits = voco_logits(query, bases)
    l_pos, l_neg = voco_prediction_loss(logits, targets, overlap_weighted=overlap_weighted)
    reg = voco_base_regularizer(bases if reg_bases is None else reg_bases)
    pred = l_pos + l_neg
    return {"loss": pred + reg_weight * reg, "pred": pred, "pos": l_pos, "neg": l_neg,
            "reg": reg}
