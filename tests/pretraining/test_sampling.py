"""The overlapping-patch sampler (METHOD.md §2)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pimpic.errors import PimpicError
from pimpic.pretraining.config import SamplerConfig
from pimpic.pretraining.geometry import overlap_matrix
from pimpic.pretraining.samplers.overlap import (
    OverlapPatchSampler,
    crop,
    jitter_margin,
    reference_boxes,
)


def test_margin_matches_reference_integer_formula() -> None:
    for p in range(1, 300):
        assert jitter_margin(p, 0.8) == (4 * p) // 5
    assert jitter_margin(64, 0.8) == 51
    assert jitter_margin(10, 0.5) == 5


@pytest.mark.parametrize("shape,p", [((40, 50, 60), 16), ((16, 16, 16), 16), ((17, 30, 16), 8)])
def test_reference_boxes_inside_and_full_size(shape: tuple[int, int, int], p: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        boxes = reference_boxes(shape, p, 12, rng)
        assert boxes.shape == (12, 2, 3) and boxes.dtype == np.int64
        assert np.all(boxes[:, 1] - boxes[:, 0] == p)
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] <= np.array(shape))


def test_every_patch_overlaps_the_hidden_anchor() -> None:
    shape, p = (100, 90, 80), 20
    m = jitter_margin(p, 0.8)
    for seed in range(30):
        # replay the anchor draw: it is the first thing drawn from the generator
        anchor = np.random.default_rng(seed).integers(0, np.array(shape) - p)
        boxes = reference_boxes(shape, p, 16, np.random.default_rng(seed))
        assert np.all(np.abs(boxes[:, 0] - anchor) <= m)
        assert np.all(np.abs(boxes[:, 0] - anchor) < p)  # hence overlaps the anchor patch
        assert np.all(boxes[:, 0] <= shape[0] - p - 1)  # the reference never draws the last start


def _disjoint_fraction(shape: tuple[int, int, int], p: int, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    iu = np.triu_indices(32, 1)
    fracs = [(overlap_matrix(reference_boxes(shape, p, 32, rng), p).numpy()[iu] == 0).mean()
             for _ in range(reps)]
    return float(np.mean(fracs))


def test_about_twenty_percent_disjoint_pairs_on_a_ct_sized_volume() -> None:
    # a typical 1.5 mm abdominal CT grid: borders clip the jitter, ~20 % of pairs are disjoint
    assert 0.17 < _disjoint_fraction((256, 256, 160), 64, 150, seed=123) < 0.24


def test_disjoint_fraction_matches_analytic_value_far_from_borders() -> None:
    # unclipped: per axis |Δstart| ≥ p with Δ the difference of two U{0..2m−1};
    # a pair is disjoint when that happens on any axis
    p, m = 64, 51
    q = (2 * m - p) * (2 * m - p + 1) / (2 * m) ** 2
    expected = 1 - (1 - q) ** 3  # ≈ 0.369
    assert abs(_disjoint_fraction((4000,) * 3, p, 150, seed=1) - expected) < 0.02


def test_wider_margin_gives_more_negatives() -> None:
    def frac(margin: float) -> float:
        rng = np.random.default_rng(7)
        out = []
        for _ in range(50):
            s = overlap_matrix(reference_boxes((200,) * 3, 32, 16, rng, margin=margin), 32)
            out.append(float((s == 0).float().mean()))
        return float(np.mean(out))

    assert frac(0.4) < frac(0.8) < frac(1.2)


def test_sampler_crops_equal_image_and_is_deterministic() -> None:
    image = np.random.default_rng(0).random((30, 34, 40)).astype(np.float16)
    sampler = OverlapPatchSampler(16, 8, SamplerConfig())
    out = sampler(image, np.random.default_rng(5))
    # a float16 cache stays float16 (the engine casts on the device); augmentation needs float32
    assert out["patches"].shape == (8, 1, 16, 16, 16) and out["patches"].dtype == np.float16
    aug = OverlapPatchSampler(16, 8, SamplerConfig(intensity_aug=True))
    assert aug(image, np.random.default_rng(5))["patches"].dtype == np.float32
    assert out["boxes"].shape == (8, 2, 3) and out["boxes"].dtype == np.int64
    for patch, b in zip(out["patches"], out["boxes"], strict=True):
        expected = image[b[0, 0]:b[1, 0], b[0, 1]:b[1, 1], b[0, 2]:b[1, 2]].astype(np.float32)
        np.testing.assert_array_equal(patch[0], expected)
    again = sampler(image, np.random.default_rng(5))
    np.testing.assert_array_equal(out["boxes"], again["boxes"])
    np.testing.assert_array_equal(out["patches"], again["patches"])
    other = sampler(image, np.random.default_rng(6))
    assert not np.array_equal(out["boxes"], other["boxes"])


def test_sampler_reads_memmap_and_pickles(tmp_path) -> None:
    arr = np.random.default_rng(1).random((24, 24, 24)).astype(np.float16)
    np.save(tmp_path / "image.npy", arr)
    image = np.load(tmp_path / "image.npy", mmap_mode="r")
    sampler = pickle.loads(pickle.dumps(OverlapPatchSampler(8, 4, SamplerConfig())))
    out = sampler(image, np.random.default_rng(0))
    b = out["boxes"][0]
    np.testing.assert_array_equal(out["patches"][0, 0],
                                  arr[b[0, 0]:b[1, 0], b[0, 1]:b[1, 1], b[0, 2]:b[1, 2]])


def test_small_volume_is_padded_virtually() -> None:
    image = np.ones((10, 20, 6), dtype=np.float32)
    sampler = OverlapPatchSampler(16, 5, SamplerConfig(pad_value=-1.0))
    out = sampler(image, np.random.default_rng(0))
    boxes = out["boxes"]
    padded = np.array([16, 20, 16])
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] <= padded)
    assert np.all(boxes[:, 0, 0] == 0) and np.all(boxes[:, 0, 2] == 0)  # dim == p → start 0
    patch = out["patches"][0, 0]
    # centred padding: x offset 3 (of 6 pad voxels), z offset 5 (of 10)
    assert np.all(patch[:3] == -1) and np.all(patch[13:] == -1)
    assert np.all(patch[3:13, :, 5:11] == 1) and np.all(patch[3:13, :, :5] == -1)


def test_crop_pads_out_of_volume_parts() -> None:
    image = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    out = crop(image, np.array([[-1, 0, 1], [2, 4, 3]]), pad_value=-5)
    assert out.shape == (3, 4, 2)
    assert np.all(out[0] == -5) and np.all(out[:, 3] == -5)
    np.testing.assert_array_equal(out[1:, :3], image[:2, :3, 1:3])


def test_foreground_anchor_avoids_air() -> None:
    image = np.zeros((96, 96, 96), dtype=np.float32)
    image[60:80, 10:30, 40:60] = 1.0
    sampler = OverlapPatchSampler(16, 8, SamplerConfig(anchor="foreground", overlap_margin=0.5))
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = sampler(image, rng)
        assert out["patches"].mean() > 0.05  # uniform anchors would mostly sample air
    # no foreground: falls back to uniform anchors
    out = sampler(np.zeros((40, 40, 40), np.float32), rng)
    assert out["boxes"].shape == (8, 2, 3)


def test_intensity_aug_changes_overlapping_voxels() -> None:
    image = np.full((20, 20, 20), 0.5, dtype=np.float32)
    sampler = OverlapPatchSampler(16, 4, SamplerConfig(intensity_aug=True))
    out = sampler(image, np.random.default_rng(0))
    means = out["patches"].mean(axis=(1, 2, 3, 4))
    assert len(np.unique(np.round(means, 4))) == 4
    assert abs(float(out["patches"].std()) - 0.0) > 0.01


def _noise_of(out: dict[str, np.ndarray], image: np.ndarray, offset: np.ndarray,
              pad: float) -> np.ndarray:
    """(volume noise in padded coordinates, NaN where no patch saw it, how often each voxel
    was seen): each patch minus the noise-free crop of its box, pasted back."""
    shape = tuple(out["boxes"][:, 1].max(0))
    noise, seen = np.full(shape, np.nan), np.zeros(shape, int)
    for patch, box in zip(out["patches"], out["boxes"], strict=True):
        diff = patch[0] - crop(image, box - offset, pad)
        view = noise[box[0, 0]:box[1, 0], box[0, 1]:box[1, 1], box[0, 2]:box[1, 2]]
        known = ~np.isnan(view)
        # overlapping voxels carry the same noise in every patch: it was added to the volume
        np.testing.assert_array_equal(view[known], diff[known])
        view[:] = diff
        seen[box[0, 0]:box[1, 0], box[0, 1]:box[1, 1], box[0, 2]:box[1, 2]] += 1
    return noise, seen


def test_volume_noise_is_added_before_cropping() -> None:
    """The released pretraining's whole-volume Gaussian noise (docs/method.md §6.1): the same
    noise on a voxel in every patch that holds it, std ``volume_noise_std``, drawn with
    probability ``volume_noise_prob``, none on padding, and nothing drawn when off."""
    image = np.random.default_rng(0).random((30, 26, 12)).astype(np.float16)  # z padded
    off = OverlapPatchSampler(16, 8, SamplerConfig())
    on = OverlapPatchSampler(16, 8, SamplerConfig(volume_noise_prob=1.0, volume_noise_std=0.01))
    plain, noisy = off(image, np.random.default_rng(4)), on(image, np.random.default_rng(4))
    assert noisy["patches"].dtype == np.float32
    offset = np.array([0, 0, 2])  # centred virtual padding of z: 16 − 12 = 4
    noise, seen = _noise_of(noisy, image, offset, 0.0)
    assert (seen > 1).sum() > 1000  # the patches do overlap
    inside = noise[:, :, 2:14]
    assert np.all(noise[:, :, :2][~np.isnan(noise[:, :, :2])] == 0)  # padding: no noise
    assert np.all(noise[:, :, 14:][~np.isnan(noise[:, :, 14:])] == 0)
    values = inside[~np.isnan(inside)]
    assert abs(values.std() - 0.01) < 0.001 and abs(values.mean()) < 0.001
    # off: nothing drawn, so the boxes (and every later draw) are those of before
    np.testing.assert_array_equal(plain["boxes"], off(image, np.random.default_rng(4))["boxes"])
    # p = 0.5: some volumes get noise, others none
    half = OverlapPatchSampler(16, 8, SamplerConfig(volume_noise_prob=0.5))
    rng = np.random.default_rng(1)
    drawn = []
    for _ in range(20):
        out = half(image, rng)
        drawn.append(bool(np.nanmax(np.abs(_noise_of(out, image, offset, 0.0)[0])) > 0))
    assert 3 < sum(drawn) < 17


def test_bad_input_is_a_friendly_error() -> None:
    with pytest.raises(PimpicError):
        OverlapPatchSampler(16, 4, SamplerConfig())(np.zeros((4, 4)), np.random.default_rng(0))
    with pytest.raises(PimpicError):
        reference_boxes((8, 8, 8), 16, 2, np.random.default_rng(0))
