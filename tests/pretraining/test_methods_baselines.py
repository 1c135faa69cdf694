"""VoCo and vox2vec methods: samplers (geometry, padding, determinism), feature gathering, the
EMA teacher, and a forward/backward/step on tiny networks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pimpic.models import Encoder
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.geometry import box_overlaps
from pimpic.pretraining.methods.voco import VoCoConfig
from pimpic.pretraining.methods.vox2vec import Vox2VecConfig, pyramid_voxel_features
from pimpic.pretraining.samplers.voco import VoCoSampler
from pimpic.pretraining.samplers.vox2vec import Vox2VecSampler
from pimpic.registry import get_method

P = 16


def _volume(shape=(40, 44, 24), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float16)


def _cfg(method: str, **kw) -> PretrainConfig:
    return PretrainConfig(
        method=method, width=2, depth=3, patch_size=P, patches=4,
        method_options={
            "voco": VoCoConfig(grid=(2, 3), num_random=3, proj_dim=16, ema_momentum=0.9),
            "vox2vec": Vox2VecConfig(proj_dim=8, num_voxels=48)}, **kw)


def _batch(method: str, image: np.ndarray, volumes: int = 2) -> dict[str, torch.Tensor]:
    sampler = get_method(method).build_sampler(_cfg(method))
    samples = [sampler(image, np.random.default_rng(i)) for i in range(volumes)]
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in samples[0]}


# ---------------------------------------------------------------- geometry and crops

box = st.tuples(*[st.integers(-3, 8)] * 3, *[st.integers(1, 6)] * 3)


@settings(max_examples=40, deadline=None)
@given(st.lists(box, min_size=1, max_size=3), st.lists(box, min_size=1, max_size=3))
def test_box_overlaps_match_voxel_counting(a: list, b: list) -> None:
    def arr(boxes):
        return np.array([[s[:3], np.add(s[:3], s[3:])] for s in boxes], np.int64)

    ba, bb = arr(a), arr(b)
    got = box_overlaps(ba, bb, (7, 1, 1)).numpy()  # a 'patch' of 7 voxels
    for i, x in enumerate(ba):
        for k, y in enumerate(bb):
            grid = np.zeros((30, 30, 30), bool)
            grid[tuple(slice(s + 5, e + 5) for s, e in zip(*x, strict=True))] = True
            inside = grid[tuple(slice(s + 5, e + 5) for s, e in zip(*y, strict=True))]
            assert got[i, k] == pytest.approx(inside.sum() / 7, abs=1e-6)


# ---------------------------------------------------------------- VoCo sampler

def test_voco_sampler_shapes_targets_and_crops() -> None:
    image = _volume((40, 52, 24))  # holds the 32 × 48 × 16 region: no padding
    out = VoCoSampler(P, (2, 3), 5)(image, np.random.default_rng(0))
    assert out["bases"].shape == (6, 1, P, P, P) and out["bases"].dtype == np.float32
    assert out["randoms"].shape == (5, 1, P, P, P)
    assert out["targets"].shape == (5, 6) and out["targets"].dtype == np.float32
    # random crops lie inside the grid region, so their overlaps with the bases sum to 1
    assert np.allclose(out["targets"].sum(1), 1.0, atol=1e-6)
    assert np.allclose(out["targets"], box_overlaps(out["random_boxes"], out["base_boxes"], P))
    for crops, boxes in ((out["bases"], out["base_boxes"]), (out["randoms"], out["random_boxes"])):
        for crop, (s, e) in zip(crops, boxes, strict=True):
            assert np.array_equal(crop[0], image[s[0]:e[0], s[1]:e[1], s[2]:e[2]])
    # bases tile the region x-major, full depth
    starts = out["base_boxes"][:, 0] - out["base_boxes"][0, 0]
    assert starts.tolist() == [[i * P, j * P, 0] for i in range(2) for j in range(3)]


def test_voco_sampler_is_deterministic_and_picklable() -> None:
    image = _volume()
    sampler = pickle.loads(pickle.dumps(VoCoSampler(P, (2, 2), 3)))
    a, b = (sampler(image, np.random.default_rng(7)) for _ in range(2))
    c = sampler(image, np.random.default_rng(8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["random_boxes"], c["random_boxes"])


def test_voco_sampler_pads_small_volume() -> None:
    image = np.ones((20, 10, 9), np.float16)  # smaller than the 32 × 32 × 16 region
    out = VoCoSampler(P, (2, 2), 4, pad_value=-1.0)(image, np.random.default_rng(1))
    crops = np.concatenate([out["bases"], out["randoms"]])
    assert set(np.unique(crops)) == {-1.0, 1.0}
    assert np.allclose(out["targets"].sum(1), 1.0)
    # the region covers the whole volume: every volume voxel lands in exactly one base
    assert int((out["bases"] == 1.0).sum()) == image.size


# ---------------------------------------------------------------- vox2vec sampler

def test_vox2vec_sampler_voxels_correspond() -> None:
    image = _volume()
    sampler = Vox2VecSampler(P, num_pairs=3, num_voxels=40, augment=False)
    out = sampler(image, np.random.default_rng(0))
    assert out["crops"].shape == (3, 2, 1, P, P, P)
    assert out["voxels"].shape == (3, 2, 40, 3) and out["voxels"].dtype == np.int64
    assert out["valid"].shape == (3, 40) and out["valid"].all()
    for pair in range(3):
        (s0, e0), (s1, _) = out["boxes"][pair]
        assert (e0 - s0 == P).all() and (np.abs(s1 - s0) <= P // 2).all()
        v0, v1 = out["voxels"][pair]
        assert ((v0 >= 0) & (v0 < P) & (v1 >= 0) & (v1 < P)).all()
        assert np.array_equal(v0 + s0, v1 + s1)  # the same physical voxel
        assert len({tuple(v) for v in v0}) == 40  # without replacement
        c0, c1 = out["crops"][pair, :, 0]
        assert np.array_equal(c0[tuple(v0.T)], c1[tuple(v1.T)])
        assert np.array_equal(c0[tuple(v0.T)], image[tuple((v0 + s0).T)].astype(np.float32))


def test_vox2vec_sampler_pads_voxels_and_volume() -> None:
    image = np.full((10, 12, 20), 0.5, np.float16)  # smaller than the patch on two axes
    sampler = Vox2VecSampler(P, num_pairs=2, num_voxels=5000, pad_value=0.0, augment=False)
    out = sampler(image, np.random.default_rng(3))
    assert out["voxels"].shape == (2, 2, 5000, 3)
    for pair in range(2):
        valid = out["valid"][pair]
        # only in-volume (foreground) voxels are sampled; fewer than requested → padding
        assert 0 < valid.sum() <= image.size
        assert (out["voxels"][pair][:, ~valid] == 0).all()
        c0 = out["crops"][pair, 0, 0]
        assert (c0[tuple(out["voxels"][pair, 0][valid].T)] == 0.5).all()


def test_vox2vec_sampler_deterministic_and_augmented() -> None:
    image = _volume()
    sampler = pickle.loads(pickle.dumps(Vox2VecSampler(P, num_pairs=2, num_voxels=32)))
    a, b = (sampler(image, np.random.default_rng(5)) for _ in range(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["crops"].min() >= 0 and a["crops"].max() <= 1
    raw = Vox2VecSampler(P, num_pairs=2, num_voxels=32, augment=False)(
        image, np.random.default_rng(5))
    assert not np.array_equal(a["crops"], raw["crops"])


def test_pyramid_voxel_features_match_indexing() -> None:
    g = torch.Generator().manual_seed(0)
    pyramid = [torch.randn(2, 3 * 2**lv, 8 // 2**lv, 12 // 2**lv, 4 // 2**lv, generator=g)
               for lv in range(3)]
    voxels = torch.stack([torch.randint(0, s, (2, 5), generator=g) for s in (8, 12, 4)], -1)
    got = pyramid_voxel_features(pyramid, voxels)
    assert got.shape == (2, 5, 3 + 6 + 12)
    for b in range(2):
        for i in range(5):
            ref = torch.cat([f[b, :, voxels[b, i, 0] // 2**lv, voxels[b, i, 1] // 2**lv,
                               voxels[b, i, 2] // 2**lv] for lv, f in enumerate(pyramid)])
            assert torch.equal(got[b, i], ref)


# ---------------------------------------------------------------- modules

@pytest.mark.parametrize("method", ["voco", "voco-ema", "vox2vec"])
def test_module_forward_backward_and_step(method: str) -> None:
    torch.manual_seed(0)
    cfg = _cfg(method)
    module = get_method(method).build_module(Encoder(1, cfg.width, cfg.depth), cfg)
    batch = _batch(method, _volume())
    out = module(batch)
    expected = {"voco": {"loss", "pred", "reg", "embedding_std"},
                "vox2vec": {"loss", "embedding_std", "positives"}}[method.split("-")[0]]
    assert expected <= set(out)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    trainable = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-2)
    before = [p.detach().clone() for p in module.encoder.parameters()]
    out["loss"].backward()
    grads = [p.grad for p in module.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, module.encoder.parameters(),
                                                     strict=True))


def test_voco_ema_teacher_gets_no_grad_and_follows_momentum() -> None:
    torch.manual_seed(0)
    cfg = _cfg("voco-ema")
    module = get_method("voco-ema").build_module(Encoder(1, cfg.width, cfg.depth), cfg)
    teacher = module.teacher
    assert teacher is not None
    assert all(not p.requires_grad for p in teacher.parameters())
    student = [*module.encoder.parameters(), *module.projector.parameters()]
    tparams = list(teacher.parameters())
    assert len(student) == len(tparams)
    assert all(torch.equal(s, t) for s, t in zip(student, tparams, strict=True))  # a copy

    module(_batch("voco-ema", _volume()))["loss"].backward()
    assert all(p.grad is None for p in tparams)

    with torch.no_grad():
        for s in student:
            s.add_(torch.randn_like(s))
    old = [t.detach().clone() for t in tparams]
    module.after_step()
    m = cfg.options(VoCoConfig).ema_momentum
    for s, t, t0 in zip(student, tparams, old, strict=True):
        assert torch.allclose(t, m * t0 + (1 - m) * s, atol=1e-6)
    # the student is untouched and the method's state (saved by the engine) holds the teacher
    assert any(k.startswith("teacher.") for k in module.state_dict())


def test_plain_voco_has_no_teacher_and_after_step_is_a_noop() -> None:
    cfg = _cfg("voco")
    module = get_method("voco").build_module(Encoder(1, cfg.width, cfg.depth), cfg)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    module.after_step()
    assert module.teacher is None
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())


def test_crops_per_volume_counts_what_the_encoder_sees() -> None:
    from pimpic.pretraining.config import PretrainConfig
    from pimpic.registry import get_method

    cfg = PretrainConfig()
    assert get_method("pimpic").crops(cfg) == 32
    assert get_method("voco").crops(cfg) == 4 * 4 + 4  # bases + random crops
    assert get_method("voco-ema").crops(cfg) == 20
    assert get_method("vox2vec").crops(cfg) == 32  # 16 pairs of two crops
