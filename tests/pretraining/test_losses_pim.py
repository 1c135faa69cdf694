"""PiM descriptor and loss against obviously-correct loop implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pimpic.pretraining.losses import pim_descriptor, pim_loss


def _naive_descriptor(features: list[torch.Tensor]) -> torch.Tensor:
    rows = []
    for n in range(features[0].shape[0]):
        row = []
        for f in features[2:5]:
            _, c, d, h, w = f.shape
            for z in range(d):
                for y in range(h):
                    for x in range(w):
                        row.append(sum(f[n, k, z, y, x].item() for k in range(c)) / c)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def _naive_pim(p: torch.Tensor, s: torch.Tensor, reduction: str) -> float:
    n = p.shape[0]
    terms = []
    for i in range(n):
        for j in range(n):
            if reduction == "lower" and j >= i:
                continue
            c = sum(p[i, k].item() * p[j, k].item() for k in range(p.shape[1]))
            d = min(max(abs(s[i, j].item() - c), 0.0), 1.0)
            terms.append(-math.log(1 - d + 1e-6))
    return sum(terms) / len(terms)


def test_descriptor_matches_naive() -> None:
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(3, 2 * 2**lvl, 16 // 2**lvl, 16 // 2**lvl, 16 // 2**lvl,
                         generator=g, dtype=torch.float64) for lvl in range(5)]
    out = pim_descriptor(feats)
    assert out.shape == (3, 4**3 + 2**3 + 1)
    torch.testing.assert_close(out, _naive_descriptor(feats), atol=1e-9, rtol=0)


def test_descriptor_size_paper_config() -> None:
    feats = [torch.zeros(1, 1, 64 // 2**lvl, 64 // 2**lvl, 64 // 2**lvl) for lvl in range(5)]
    assert pim_descriptor(feats).shape == (1, 16**3 + 8**3 + 4**3)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-9)])
@pytest.mark.parametrize("reduction", ["all", "lower"])
def test_pim_loss_matches_naive(dtype: torch.dtype, tol: float, reduction: str) -> None:
    g = torch.Generator().manual_seed(1)
    p = F.normalize(torch.randn(9, 5, generator=g, dtype=dtype), dim=1)
    s = torch.rand(9, 9, generator=g, dtype=dtype)
    s = (s + s.T) / 2
    s.fill_diagonal_(1.0)
    s[s < 0.3] = 0  # some non-overlapping negatives
    loss = pim_loss(p, s, reduction)  # type: ignore[arg-type]
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(_naive_pim(p, s, reduction), abs=tol, rel=tol)


def test_pim_loss_batched_is_mean_over_volumes() -> None:
    g = torch.Generator().manual_seed(2)
    p = F.normalize(torch.randn(2, 6, 4, generator=g, dtype=torch.float64), dim=-1)
    s = torch.rand(2, 6, 6, generator=g, dtype=torch.float64)
    for red in ("all", "lower"):
        per = [pim_loss(p[v], s[v], red).item() for v in range(2)]
        assert pim_loss(p, s, red).item() == pytest.approx(sum(per) / 2, abs=1e-12)


def test_pim_loss_perfect_prediction_is_minimal_and_grads_flow() -> None:
    p = torch.eye(4, requires_grad=True)
    s = torch.eye(4)
    loss = pim_loss(p, s)
    assert loss.item() == pytest.approx(-math.log(1 + 1e-6), abs=1e-7)
    loss.backward()
    assert p.grad is not None
    with pytest.raises(ValueError):
        pim_loss(p, s, "upper")  # type: ignore[arg-type]
    assert pim_loss(p[:1], s[:1, :1], "lower").item() == 0.0
