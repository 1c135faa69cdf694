"""VoCo loss against a naive per-entry loop reference (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pimpic.pretraining.losses.voco import (
    voco_base_regularizer,
    voco_logits,
    voco_loss,
    voco_prediction_loss,
)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def naive_voco(query, bases, targets, reg_bases=None, reg_weight=1.0, overlap_weighted=False):
    """Literal loops over volumes, random crops and bases."""
    reg_bases = bases if reg_bases is None else reg_bases
    v_count, n, k = targets.shape
    pos_v, neg_v, reg_v = [], [], []
    for v in range(v_count):
        pos_sum, pos_w, neg_sum, neg_c = 0.0, 0.0, 0.0, 0
        for i in range(n):
            for j in range(k):
                y = float(targets[v, i, j])
                logit = torch.relu(_cos(query[v, i], bases[v, j].detach()))
                if y > 0:
                    w = y if overlap_weighted else 1.0
                    pos_sum = pos_sum - w * torch.log(1 - (y - logit).abs() + 1e-6)
                    pos_w += w
                else:
                    neg_sum = neg_sum + logit**2
                    neg_c += 1
        pos_v.append(pos_sum / pos_w if pos_w else torch.zeros(()))
        neg_v.append(neg_sum / neg_c if neg_c else torch.zeros(()))
        pairs = [torch.relu(_cos(reg_bases[v, i], reg_bases[v, j].detach())) ** 2
                 for i in range(k) for j in range(k) if i != j]
        reg_v.append(sum(pairs) / len(pairs))
    pos = sum(pos_v) / v_count
    neg = sum(neg_v) / v_count
    reg = sum(reg_v) / v_count
    return {"loss": pos + neg + reg_weight * reg, "pos": pos, "neg": neg, "reg": reg}


def _inputs(seed: int, v: int = 2, n: int = 3, k: int = 4, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(v, n, d, generator=g, requires_grad=True)
    bases = torch.randn(v, k, d, generator=g, requires_grad=True)
    # realistic targets: each random crop's overlaps sum to 1, with some exact zeros
    raw = torch.rand(v, n, k, generator=g) * (torch.rand(v, n, k, generator=g) > 0.4)
    raw[..., 0] += 0.1
    targets = raw / raw.sum(-1, keepdim=True)
    return query, bases, targets


@pytest.mark.parametrize("overlap_weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voco_loss_matches_naive(seed: int, overlap_weighted: bool) -> None:
    query, bases, targets = _inputs(seed)
    out = voco_loss(query, bases, targets, reg_weight=0.7, overlap_weighted=overlap_weighted)
    ref = naive_voco(query, bases, targets, reg_weight=0.7, overlap_weighted=overlap_weighted)
    for key in ("loss", "pos", "neg", "reg"):
        assert torch.allclose(out[key], ref[key], atol=1e-6), key
    assert torch.allclose(out["pred"], ref["pos"] + ref["neg"], atol=1e-6)

    gq, gb = torch.autograd.grad(out["loss"], [query, bases])
    rq, rb = torch.autograd.grad(ref["loss"], [query, bases])
    assert torch.allclose(gq, rq, atol=1e-6)
    assert torch.allclose(gb, rb, atol=1e-6)


def test_separate_reg_bases_matches_naive() -> None:
    query, bases, targets = _inputs(3)
    student = torch.randn_like(bases, requires_grad=True)
    out = voco_loss(query, bases.detach(), targets, reg_bases=student)
    ref = naive_voco(query, bases.detach(), targets, reg_bases=student)
    assert torch.allclose(out["loss"], ref["loss"], atol=1e-6)
    (g,) = torch.autograd.grad(out["loss"], [student])
    (r,) = torch.autograd.grad(ref["loss"], [student])
    assert torch.allclose(g, r, atol=1e-6)


def test_prediction_terms_do_not_reach_bases() -> None:
    query, bases, targets = _inputs(4)
    pos, neg = voco_prediction_loss(voco_logits(query, bases), targets)
    (pos + neg).backward()
    assert bases.grad is None
    assert query.grad is not None and torch.isfinite(query.grad).all()


def test_logits_are_relu_cosine() -> None:
    query, bases, _ = _inputs(5)
    logits = voco_logits(query, bases)
    ref = F.relu(F.cosine_similarity(query[:, :, None], bases[:, None], dim=-1))
    assert torch.allclose(logits, ref, atol=1e-6)
    assert (logits >= 0).all() and (logits <= 1 + 1e-6).all()


def test_perfect_prediction_is_near_zero_and_orthogonal_bases_have_no_reg() -> None:
    # bases along the axes, query = the overlap vector itself → cos = y / ||y||; with a one-hot
    # target the logit equals y exactly.
    bases = torch.eye(4)[None]
    targets = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])
    query = targets.clone()
    out = voco_loss(query, bases, targets)
    assert float(out["pos"]) == pytest.approx(-math.log(1 + 1e-6), abs=1e-6)
    assert float(out["neg"]) == 0.0
    assert float(out["reg"]) == 0.0


def test_single_base_regularizer_is_zero_with_graph() -> None:
    bases = torch.randn(2, 1, 3, requires_grad=True)
    reg = voco_base_regularizer(bases)
    assert float(reg.detach()) == 0.0
    reg.backward()
    assert bases.grad is not None
