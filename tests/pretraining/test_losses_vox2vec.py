"""vox2vec symmetric InfoNCE against a naive per-anchor loop reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pimpic.pretraining.losses.vox2vec import vox2vec_infonce


def naive_infonce(z1, z2, valid, tau):
    """For every valid anchor, spell out its positive and negatives, both directions."""
    terms = []
    for b in range(z1.shape[0]):
        idx = [i for i in range(z1.shape[1]) if bool(valid[b, i])]
        for za, zb in ((z1[b], z2[b]), (z2[b], z1[b])):
            for i in idx:
                pos = (za[i] * zb[i]).sum() / tau
                # negatives: other voxels in the anchor's own view, all voxels in the other view
                logits = [(za[i] * za[j]).sum() / tau for j in idx if j != i]
                logits += [(za[i] * zb[j]).sum() / tau for j in idx]
                terms.append(torch.logsumexp(torch.stack(logits), 0) - pos)
    return sum(terms) / len(terms)


def _inputs(seed: int, b: int = 3, n: int = 6, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(b, n, d, generator=g), dim=-1).requires_grad_()
    z2 = F.normalize(torch.randn(b, n, d, generator=g), dim=-1).requires_grad_()
    valid = torch.rand(b, n, generator=g) > 0.3
    valid[:, :2] = True
    return z1, z2, valid


@pytest.mark.parametrize("tau", [0.1, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infonce_matches_naive(seed: int, tau: float) -> None:
    z1, z2, valid = _inputs(seed)
    out = vox2vec_infonce(z1, z2, valid, tau)
    ref = naive_infonce(z1, z2, valid, tau)
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-6)
    g = torch.autograd.grad(out, [z1, z2])
    r = torch.autograd.grad(ref, [z1, z2])
    for a, e in zip(g, r, strict=True):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, e, atol=1e-6)


def test_all_valid_matches_naive() -> None:
    z1, z2, _ = _inputs(5)
    valid = torch.ones(z1.shape[:2], dtype=torch.bool)
    assert torch.allclose(vox2vec_infonce(z1, z2, valid, 0.1),
                          naive_infonce(z1, z2, valid, 0.1), atol=1e-6)


def test_padding_does_not_change_the_loss() -> None:
    z1, z2, valid = _inputs(6)
    base = vox2vec_infonce(z1, z2, valid, 0.1)
    z1b, z2b = z1.detach().clone(), z2.detach().clone()
    z1b[~valid] = 0.0  # what the module writes into padded rows
    z2b[~valid] = torch.randn_like(z2b[~valid])
    assert torch.allclose(vox2vec_infonce(z1b, z2b, valid, 0.1), base, atol=1e-6)


def test_no_valid_voxel_gives_zero_with_graph() -> None:
    z1, z2, valid = _inputs(7)
    loss = vox2vec_infonce(z1, z2, torch.zeros_like(valid), 0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


def test_matching_views_beat_random_views() -> None:
    z1, z2, valid = _inputs(8, n=16, d=32)
    good = vox2vec_infonce(z1, z1.detach(), valid, 0.1)
    bad = vox2vec_infonce(z1, z2, valid, 0.1)
    assert float(good.detach()) < float(bad.detach())
