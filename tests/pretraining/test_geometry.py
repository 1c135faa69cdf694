"""Overlap geometry: brute-force voxel counting and hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pimpic.pretraining.geometry import intersection_pairs, overlap_matrix, scale_boxes


def _random_boxes(rng: np.random.Generator, n: int, p: int, dim: int) -> torch.Tensor:
    starts = rng.integers(0, dim - p + 1, size=(n, 3))
    return torch.as_tensor(np.stack([starts, starts + p], axis=1))


@st.composite
def box_sets(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    p = draw(st.integers(1, 5))
    dim = draw(st.integers(p, 10))
    n = draw(st.integers(1, 6))
    starts = draw(st.lists(st.tuples(*[st.integers(0, dim - p)] * 3), min_size=n, max_size=n))
    s = torch.tensor(starts)
    return torch.stack([s, s + p], dim=1), p


def _brute_overlap(boxes: torch.Tensor, p: int, dim: int) -> np.ndarray:
    masks = []
    for b in boxes.tolist():
        m = np.zeros((dim, dim, dim), bool)
        m[b[0][0]:b[1][0], b[0][1]:b[1][1], b[0][2]:b[1][2]] = True
        masks.append(m)
    n = len(masks)
    return np.array([[(masks[i] & masks[j]).sum() / p**3 for j in range(n)] for i in range(n)])


@settings(max_examples=60, deadline=None)
@given(box_sets())
def test_overlap_properties(data: tuple[torch.Tensor, int]) -> None:
    boxes, p = data
    s = overlap_matrix(boxes, p)
    assert s.shape == (len(boxes), len(boxes))
    assert torch.equal(s, s.T)
    assert torch.all(s.diagonal() == 1)
    assert torch.all((s >= 0) & (s <= 1))
    np.testing.assert_allclose(s.numpy(), _brute_overlap(boxes, p, 15), atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(box_sets())
def test_overlap_matches_monai_iou_identity(data: tuple[torch.Tensor, int]) -> None:
    """For equal-size boxes, I/V = 2·IoU / (1 + IoU)."""
    from monai.data.box_utils import box_iou

    boxes, p = data
    corners = torch.cat([boxes[:, 0], boxes[:, 1]], dim=1).double()
    iou = torch.as_tensor(box_iou(corners, corners)).double()  # MONAI computes in float32
    s = overlap_matrix(boxes, p, dtype=torch.float64)
    torch.testing.assert_close(s, 2 * iou / (1 + iou), atol=1e-6, rtol=0)


def test_anisotropic_patch_and_batched_volumes() -> None:
    boxes = torch.tensor([[[0, 0, 0], [4, 2, 2]], [[2, 1, 0], [6, 3, 2]]])
    s = overlap_matrix(boxes, (4, 2, 2))
    assert s[0, 1].item() == pytest.approx(2 * 1 * 2 / 16)
    batched = overlap_matrix(torch.stack([boxes, boxes.flip(0)]), (4, 2, 2))
    assert batched.shape == (2, 2, 2)
    torch.testing.assert_close(batched[0], s)
    with pytest.raises(ValueError):
        overlap_matrix(boxes, (4, 2))


def _naive_pairs(boxes: torch.Tensor, s: torch.Tensor, min_overlap: float) -> tuple[list, list]:
    pairs, local = [], []
    b = boxes.tolist()
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            if s[i, j] >= min_overlap:
                lo = [max(b[i][0][a], b[j][0][a]) for a in range(3)]
                hi = [min(b[i][1][a], b[j][1][a]) for a in range(3)]
                pairs.append([i, j])
                local.append([
                    [[lo[a] - b[k][0][a] for a in range(3)], [hi[a] - b[k][0][a] for a in range(3)]]
                    for k in (i, j)
                ])
    return pairs, local


@pytest.mark.parametrize("min_overlap", [0.01, 0.2, 0.5])
def test_intersection_pairs_match_naive(min_overlap: float) -> None:
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 12, 8, 20)
    s = overlap_matrix(boxes, 8)
    pairs, local = intersection_pairs(boxes, s, min_overlap)
    ref_pairs, ref_local = _naive_pairs(boxes, s, min_overlap)
    assert pairs.dtype == torch.long and local.dtype == torch.long
    assert pairs.tolist() == ref_pairs
    assert local.tolist() == ref_local
    assert local.shape == (len(ref_pairs), 2, 2, 3)


def test_intersection_pairs_edge_cases() -> None:
    far = torch.tensor([[[0, 0, 0], [4, 4, 4]], [[10, 10, 10], [14, 14, 14]]])
    pairs, local = intersection_pairs(far, overlap_matrix(far, 4))
    assert pairs.shape == (0, 2) and local.shape == (0, 2, 2, 3)
    same = torch.tensor([[[3, 3, 3], [7, 7, 7]]] * 2)
    pairs, local = intersection_pairs(same, overlap_matrix(same, 4))
    assert pairs.tolist() == [[0, 1]]
    assert local[0, 0].tolist() == [[0, 0, 0], [4, 4, 4]] == local[0, 1].tolist()


def test_intersection_pairs_at_min_overlap_boundary() -> None:
    # S = 1/100 exactly: included (>=)
    boxes = torch.tensor([[[0, 0, 0], [10, 10, 10]], [[9, 0, 9], [19, 10, 19]]])
    s = overlap_matrix(boxes, 10, dtype=torch.float64)
    assert s[0, 1].item() == pytest.approx(0.01)
    assert intersection_pairs(boxes, s, 0.01)[0].tolist() == [[0, 1]]


def test_scale_boxes_floor_ceil() -> None:
    b = torch.tensor([[[0, 1, 3], [4, 5, 8]]])
    assert scale_boxes(b, 1).tolist() == b.tolist()
    assert scale_boxes(b, 2).tolist() == [[[0, 0, 1], [2, 3, 4]]]
    assert scale_boxes(b, 4).tolist() == [[[0, 0, 0], [1, 2, 2]]]
