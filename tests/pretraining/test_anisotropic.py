"""Box-shaped (anisotropic) pretraining patches: ``patch_size`` with three edges.

Geometry against naive voxel-mask counting on tiny volumes, the samplers' boxes and crops, and
the promise that one edge ``p`` and the three edges ``(p, p, p)`` draw and compute the same bits
(so every number of a cube run is unchanged).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pimpic.config import build_config, from_dict
from pimpic.errors import PimpicError
from pimpic.models.backbone import Level
from pimpic.patch import check_strides
from pimpic.pretraining.backbones import build_backbone
from pimpic.pretraining.config import PretrainConfig, SamplerConfig
from pimpic.pretraining.geometry import intersection_pairs, overlap_matrix, scale_boxes
from pimpic.pretraining.losses import region_means
from pimpic.pretraining.samplers.overlap import (
    OverlapPatchSampler,
    jitter_margin,
    reference_boxes,
)
from pimpic.pretraining.samplers.voco import VoCoSampler
from pimpic.pretraining.samplers.vox2vec import Vox2VecSampler
from pimpic.registry import get_method

DIM = (9, 12, 10)  # a tiny volume: every box is counted voxel by voxel


@st.composite
def anisotropic_boxes(draw: st.DrawFn) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """N full-size boxes of one random ``(p_x, p_y, p_z)`` inside :data:`DIM`."""
    p = tuple(draw(st.integers(1, d)) for d in DIM)
    n = draw(st.integers(1, 6))
    starts = draw(st.lists(st.tuples(*[st.integers(0, d - e) for d, e in zip(DIM, p, strict=True)]),
                           min_size=n, max_size=n))
    s = torch.tensor(starts)
    return torch.stack([s, s + torch.tensor(p)], dim=1), (p[0], p[1], p[2])


def _mask(box: list[list[int]]) -> np.ndarray:
    m = np.zeros(DIM, bool)
    m[box[0][0]:box[1][0], box[0][1]:box[1][1], box[0][2]:box[1][2]] = True
    return m


@settings(max_examples=80, deadline=None)
@given(anisotropic_boxes())
def test_overlap_of_box_patches_counts_voxels(data: tuple[torch.Tensor, tuple[int, ...]]) -> None:
    boxes, p = data
    s = overlap_matrix(boxes, p, dtype=torch.float64)
    masks = [_mask(b) for b in boxes.tolist()]
    naive = np.array([[(a & b).sum() / math.prod(p) for b in masks] for a in masks])
    np.testing.assert_allclose(s.numpy(), naive, rtol=0, atol=1e-12)
    assert torch.all(s.diagonal() == 1) and torch.equal(s, s.T)


@settings(max_examples=60, deadline=None)
@given(anisotropic_boxes())
def test_intersection_pairs_of_box_patches_count_voxels(
        data: tuple[torch.Tensor, tuple[int, ...]]) -> None:
    boxes, p = data
    s = overlap_matrix(boxes, p)
    pairs, local = intersection_pairs(boxes, s, min_overlap=0.0)
    masks = [_mask(b) for b in boxes.tolist()]
    for (i, j), (li, lj) in zip(pairs.tolist(), local.tolist(), strict=True):
        shared = masks[i] & masks[j]
        # the intersection box, seen from each patch, holds exactly the shared voxels
        for k, lb in ((i, li), (j, lj)):
            start = boxes[k, 0].tolist()
            vol = [[a + o for a, o in zip(lb[0], start, strict=True)],
                   [a + o for a, o in zip(lb[1], start, strict=True)]]
            assert np.array_equal(_mask(vol), shared)


@settings(max_examples=40, deadline=None)
@given(anisotropic_boxes(), st.sampled_from([(1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 4, 2)]))
def test_region_means_of_box_patches_match_naive(
        data: tuple[torch.Tensor, tuple[int, int, int]], stride: tuple[int, int, int]) -> None:
    """PiC's region means on a level of per-axis ``stride``: the cells any shared voxel touches
    (``[floor(start / s_a), ceil(end / s_a))``) against a mask built cell by cell."""
    boxes, p = data
    if any(e % s for e, s in zip(p, stride, strict=True)):
        return
    pairs, local = intersection_pairs(boxes, overlap_matrix(boxes, p), min_overlap=0.0)
    grid = tuple(e // s for e, s in zip(p, stride, strict=True))
    f = torch.randn(len(boxes), 2, *grid, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    got = region_means(f, pairs, local, stride)
    cells = scale_boxes(local, stride).tolist()
    for k, (i, j) in enumerate(pairs.tolist()):
        for side, patch in enumerate((i, j)):
            inside = np.zeros(grid, bool)
            lo, hi = cells[k][side]
            inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
            for slot, region in ((side, inside), (2 + side, ~inside)):
                cells_in = f[patch][:, torch.as_tensor(region)]  # an empty region: mean 0
                ref = cells_in.mean(dim=1) if region.any() else torch.zeros(2).double()
                torch.testing.assert_close(got[k, slot], ref, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("p", [(8, 16, 12), (4, 4, 16)])
def test_reference_boxes_of_a_box_patch(p: tuple[int, int, int]) -> None:
    shape = (40, 50, 44)
    m = np.array([jitter_margin(e, 0.8) for e in p])
    for seed in range(20):
        top = np.array(shape) - np.array(p)
        anchor = np.random.default_rng(seed).integers(0, top)  # the first draw
        boxes = reference_boxes(shape, p, 16, np.random.default_rng(seed))
        assert np.all(boxes[:, 1] - boxes[:, 0] == p)
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] <= shape)
        # each axis jitters within its own margin m_a = (4 p_a) // 5 around the anchor
        assert np.all(np.abs(boxes[:, 0] - anchor) <= m)


def test_box_patches_still_give_disjoint_pairs() -> None:
    rng = np.random.default_rng(0)
    p = (16, 32, 32)
    iu = np.triu_indices(32, 1)
    s = np.stack([overlap_matrix(reference_boxes((96, 160, 160), p, 32, rng), p).numpy()[iu]
                  for _ in range(40)])
    assert 0.05 < (s == 0).mean() < 0.5 and (s > 0.01).mean() > 0.4


def test_one_edge_and_three_equal_edges_draw_the_same_bits() -> None:
    image = np.random.default_rng(0).random((30, 26, 40)).astype(np.float16)
    for cfg in (SamplerConfig(), SamplerConfig(anchor="foreground", intensity_aug=True)):
        a = OverlapPatchSampler(16, 6, cfg)(image, np.random.default_rng(3))
        b = OverlapPatchSampler((16, 16, 16), 6, cfg)(image, np.random.default_rng(3))
        assert all(np.array_equal(a[k], b[k]) for k in a)
    small = image[:10, :12]  # padded virtually on two axes
    a = OverlapPatchSampler(16, 4, SamplerConfig())(small, np.random.default_rng(1))
    b = OverlapPatchSampler((16, 16, 16), 4, SamplerConfig())(small, np.random.default_rng(1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    for cls, kw in ((VoCoSampler, {"grid": (2, 2), "num_random": 3}),
                    (Vox2VecSampler, {"num_pairs": 2, "num_voxels": 16})):
        a = cls(8, **kw)(image, np.random.default_rng(4))  # type: ignore[arg-type]
        b = cls((8, 8, 8), **kw)(image, np.random.default_rng(4))  # type: ignore[arg-type]
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_overlap_sampler_crops_box_patches_and_pads_them() -> None:
    image = np.random.default_rng(1).random((10, 40, 36)).astype(np.float32)
    out = OverlapPatchSampler((16, 8, 12), 5, SamplerConfig(pad_value=-1.0))(
        image, np.random.default_rng(0))
    assert out["patches"].shape == (5, 1, 16, 8, 12)
    # x is shorter than the patch: padded to 16, centred (offset 3), the only start is 0
    assert np.all(out["boxes"][:, 0, 0] == 0)
    for patch, b in zip(out["patches"][:, 0], out["boxes"], strict=True):
        assert np.all(patch[:3] == -1) and np.all(patch[13:] == -1)
        np.testing.assert_array_equal(patch[3:13], image[:, b[0, 1]:b[1, 1], b[0, 2]:b[1, 2]])


def test_voco_sampler_with_box_crops() -> None:
    image = np.random.default_rng(2).random((30, 40, 20)).astype(np.float32)
    p = (6, 8, 10)
    out = VoCoSampler(p, (2, 3), 4)(image, np.random.default_rng(0))
    assert out["bases"].shape == (6, 1, *p) and out["randoms"].shape == (4, 1, *p)
    region = out["base_boxes"].min(axis=(0, 1)), out["base_boxes"].max(axis=(0, 1))
    assert (region[1] - region[0]).tolist() == [12, 24, 10]
    np.testing.assert_allclose(out["targets"].sum(1), 1.0, atol=1e-6)
    for i, rb in enumerate(out["random_boxes"].tolist()):
        for k, bb in enumerate(out["base_boxes"].tolist()):
            shared = np.prod([max(0, min(rb[1][a], bb[1][a]) - max(rb[0][a], bb[0][a]))
                              for a in range(3)])
            assert out["targets"][i, k] == pytest.approx(shared / np.prod(p))


def test_vox2vec_sampler_with_box_crops() -> None:
    image = np.random.default_rng(3).random((30, 40, 20)).astype(np.float32)
    p = np.array([6, 16, 10])
    out = Vox2VecSampler(tuple(p), num_pairs=3, num_voxels=20, augment=False)(
        image, np.random.default_rng(0))
    assert out["crops"].shape == (3, 2, 1, *p)
    for pair in range(3):
        (s0, e0), (s1, e1) = out["boxes"][pair]
        assert np.array_equal(e0 - s0, p) and np.array_equal(e1 - s1, p)
        assert np.all(np.abs(s1 - s0) <= p // 2)  # shifted by at most half the edge per axis
        v0, v1 = out["voxels"][pair]
        assert np.array_equal(v0 + s0, v1 + s1) and np.all(v0 < p) and np.all(v1 < p)
        c0, c1 = out["crops"][pair, :, 0]
        assert np.array_equal(c0[tuple(v0.T)], c1[tuple(v1.T)])


# ----------------------------------------------------------------------- config and module


def test_patch_size_takes_one_edge_three_edges_or_plan() -> None:
    assert build_config(PretrainConfig, None, ["patch_size=32"]).patch_size == 32
    cfg = build_config(PretrainConfig, None, ["patch_size=[32,64,64]"])
    assert cfg.patch_size == (32, 64, 64) and cfg.patch_shape == (32, 64, 64) and cfg.anisotropic
    assert build_config(PretrainConfig, None, ["patch_size=32,64,96"]).patch_size == (32, 64, 96)
    assert PretrainConfig(patch_size=[32, 32, 64]).patch_size == (32, 32, 64)  # type: ignore[arg-type]
    assert PretrainConfig().patch_shape == (64, 64, 64) and not PretrainConfig().anisotropic
    plan = build_config(PretrainConfig, None, ["backbone=nnunet", "patch_size=plan"])
    assert plan.patch_size == "plan"


@pytest.mark.parametrize(("override", "match"), [
    ("patch_size=[32,64]", r"patch_size: expected an integer, 3 integers or 'plan', "
                           r"got \[32, 64\]"),
    ("patch_size=cube", "patch_size: expected an integer, 3 integers or 'plan', got 'cube'"),
    ("patch_size=[0,64,64]", r"each of patch_size must be ≥ 1 or 'plan', got \[0, 64, 64\]"),
    ("patch_size=[16,64,64]", r"patch_size \[16, 64, 64\] must be divisible by 2\^depth = 32 "
                              "on every axis"),
    ("patch_size=plan", "patch_size plan takes the patch of an nnU-Net plan; it needs "
                        "backbone nnunet"),
])
def test_bad_patch_sizes_are_one_line_errors(override: str, match: str) -> None:
    with pytest.raises(PimpicError, match=match) as err:
        build_config(PretrainConfig, None, [override])
    assert "\n" not in str(err.value)


def test_check_strides_names_the_axis_and_the_total_stride() -> None:
    levels = (Level((1, 1, 1), 4), Level((1, 2, 2), 8), Level((2, 4, 4), 16))
    check_strides(levels, (6, 8, 12))
    with pytest.raises(PimpicError, match=r"patch_size \[6, 10, 12\] is not divisible by the "
                       r"stride \[2, 4, 4\] of backbone level 3 on axis 1; use multiples of "
                       r"\[2, 4, 4\]"):
        check_strides(levels, (6, 10, 12))
    with pytest.raises(PimpicError, match=r"use a multiple of 4$"):
        check_strides(levels, 6)


def _cfg(method: str, patch: object) -> PretrainConfig:
    return from_dict(PretrainConfig, {
        "method": method, "width": 2, "depth": 3, "patch_size": patch, "patches": 4,
        "proj_dim": 8, "voco": {"grid": (2, 1), "num_random": 2, "proj_dim": 8},
        "vox2vec": {"num_voxels": 8, "proj_dim": 8}})


def _loss(cfg: PretrainConfig, shape: tuple[int, int, int]) -> torch.Tensor:
    spec = get_method(cfg.method)
    torch.manual_seed(0)
    module = spec.build_module(build_backbone(cfg), cfg)
    rng = np.random.default_rng(0)
    sample = spec.build_sampler(cfg)(rng.random(shape).astype(np.float32), rng)
    out: torch.Tensor = module({k: torch.as_tensor(v)[None] for k, v in sample.items()})["loss"]
    return out


@pytest.mark.parametrize("method", ["pimpic", "pim", "pic", "voco", "vox2vec"])
def test_cube_as_three_edges_gives_the_same_loss(method: str) -> None:
    """A module and sampler built from ``(p, p, p)`` compute exactly what ``p`` computes."""
    assert torch.equal(_loss(_cfg(method, 16), (24, 20, 28)),
                       _loss(_cfg(method, [16, 16, 16]), (24, 20, 28)))


@pytest.mark.parametrize("method", ["pimpic", "voco", "vox2vec"])
def test_methods_train_on_box_patches_of_the_paper_unet(method: str) -> None:
    loss = _loss(_cfg(method, [8, 16, 24]), (20, 30, 40))
    loss.backward()
    assert torch.isfinite(loss)
