"""PiC region means and loss against per-pair loop implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pimpic.pretraining.geometry import intersection_pairs, overlap_matrix
from pimpic.pretraining.losses import pic_loss, region_means


def _naive_region_means(feature: torch.Tensor, pairs: torch.Tensor, local: torch.Tensor,
                        scale: int) -> torch.Tensor:
    out = torch.zeros(pairs.shape[0], 4, feature.shape[1], dtype=feature.dtype)
    grid = feature.shape[2:]
    for k in range(pairs.shape[0]):
        for side in range(2):
            f = feature[pairs[k, side]]
            box = local[k, side].tolist()
            lo = [max(0, math.floor(box[0][a] / scale)) for a in range(3)]
            hi = [min(grid[a], math.ceil(box[1][a] / scale)) for a in range(3)]
            inside = torch.zeros(grid, dtype=torch.bool)
            inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
            for slot, region in ((side, inside), (2 + side, ~inside)):
                cells = f[:, region]  # (C, count)
                total = cells.sum(dim=1)
                out[k, slot] = total / (cells.shape[1] + 1e-9)
    return out


def _naive_pic(q: torch.Tensor, tau: float, variant: str) -> float:
    losses = []
    for k in range(q.shape[0]):
        s = {(a, b): float(q[k, a] @ q[k, b]) / tau for a in range(4) for b in range(4)}
        e = {ab: math.exp(v) for ab, v in s.items()}
        if variant == "reference":
            num = 2 * e[0, 1]
            den = 2 * e[0, 1] + e[0, 2] + e[0, 3] + e[1, 2] + e[1, 3]
        else:
            num = e[0, 1]
            den = sum(e[a, b] for a in range(4) for b in range(a + 1, 4))
        losses.append(-math.log(num / den))
    return sum(losses) / len(losses)


def _setup(n: int, p: int, dim: int, seed: int, dtype: torch.dtype, c: int = 3):
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, dim - p + 1, size=(n, 3))
    boxes = torch.as_tensor(np.stack([starts, starts + p], axis=1))
    pairs, local = intersection_pairs(boxes, overlap_matrix(boxes, p))
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(n, c * 2**lvl, p // 2**lvl, p // 2**lvl, p // 2**lvl, generator=g,
                         dtype=dtype) for lvl in range(3)]
    return boxes, pairs, local, feats


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-9)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_means_match_naive(dtype: torch.dtype, tol: float, seed: int) -> None:
    _, pairs, local, feats = _setup(n=7, p=8, dim=13, seed=seed, dtype=dtype)
    assert pairs.shape[0] > 0
    for lvl, f in enumerate(feats):
        out = region_means(f, pairs, local, 2**lvl)
        assert out.shape == (pairs.shape[0], 4, f.shape[1]) and out.dtype == dtype
        torch.testing.assert_close(out, _naive_region_means(f, pairs, local, 2**lvl),
                                   atol=tol, rtol=tol)


def test_region_means_full_overlap_gives_zero_rest() -> None:
    boxes = torch.tensor([[[2, 2, 2], [10, 10, 10]]] * 3)
    pairs, local = intersection_pairs(boxes, overlap_matrix(boxes, 8))
    f = torch.rand(3, 2, 8, 8, 8) + 5.0  # large positive values: residue would show
    out = region_means(f, pairs, local, 1)
    assert torch.equal(out[:, 2:], torch.zeros_like(out[:, 2:]))
    torch.testing.assert_close(out[:, 0], f[pairs[:, 0]].mean(dim=(2, 3, 4)))
    torch.testing.assert_close(out, _naive_region_means(f, pairs, local, 1))


def test_region_means_border_boxes_and_coarse_levels() -> None:
    # a volume-corner patch and one shifted by 1 voxel: slivers that round outward at scale 4
    boxes = torch.tensor([[[0, 0, 0], [8, 8, 8]], [[1, 7, 0], [9, 15, 8]],
                          [[7, 0, 7], [15, 8, 15]]])
    pairs, local = intersection_pairs(boxes, overlap_matrix(boxes, 8), min_overlap=0.0)
    g = torch.Generator().manual_seed(3)
    for scale in (1, 2, 4, 8):
        f = torch.randn(3, 4, 8 // scale, 8 // scale, 8 // scale, generator=g, dtype=torch.float64)
        torch.testing.assert_close(region_means(f, pairs, local, scale),
                                   _naive_region_means(f, pairs, local, scale),
                                   atol=1e-9, rtol=1e-9)


def test_region_means_no_pairs_and_grad() -> None:
    f = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    empty = region_means(f, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, 2, 3,
                                                                              dtype=torch.long), 1)
    assert empty.shape == (0, 4, 3)
    boxes = torch.tensor([[[0, 0, 0], [4, 4, 4]], [[1, 1, 1], [5, 5, 5]]])
    pairs, local = intersection_pairs(boxes, overlap_matrix(boxes, 4))
    out = region_means(f, pairs, local, 1)
    out.sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()


def test_region_means_gradcheck() -> None:
    _, pairs, local, feats = _setup(n=4, p=4, dim=6, seed=5, dtype=torch.float64, c=2)
    f = feats[0].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: region_means(x, pairs, local, 1), (f,))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-9)])
@pytest.mark.parametrize("variant", ["reference", "paper"])
@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_pic_loss_matches_naive(dtype: torch.dtype, tol: float, variant: str, tau: float) -> None:
    g = torch.Generator().manual_seed(4)
    q = F.normalize(torch.randn(11, 4, 6, generator=g, dtype=dtype), dim=-1)
    loss = pic_loss(q, tau, variant)  # type: ignore[arg-type]
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(_naive_pic(q, tau, variant), abs=tol, rel=tol)


def test_pic_loss_no_pairs_is_zero_with_graph() -> None:
    q = torch.zeros(0, 4, 8, requires_grad=True)
    loss = pic_loss(q)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


def test_pic_loss_stable_at_low_temperature() -> None:
    q = F.normalize(torch.randn(5, 4, 8), dim=-1)
    assert torch.isfinite(pic_loss(q, tau=1e-3))
    with pytest.raises(ValueError):
        pic_loss(q, variant="other")  # type: ignore[arg-type]
