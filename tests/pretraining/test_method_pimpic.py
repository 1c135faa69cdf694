"""The pimpic / pim / pic pretext modules wired to the encoder, heads, sampler and losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pimpic.models import Encoder
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.losses import pic_loss, pim_loss
from pimpic.pretraining.methods.pimpic import PiMPiC, descriptor_dim
from pimpic.pretraining.samplers.overlap import OverlapPatchSampler
from pimpic.registry import get_method


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions gain nothing from threads and suffer badly on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**kw: object) -> PretrainConfig:
    base: dict[str, object] = {"width": 2, "depth": 4, "patch_size": 16, "patches": 6,
                               "proj_dim": 8}
    base.update(kw)
    return PretrainConfig(**base)  # type: ignore[arg-type]


def _batch(cfg: PretrainConfig, volumes: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    spec = get_method(cfg.method)
    sampler = spec.build_sampler(cfg)
    rng = np.random.default_rng(seed)
    image = rng.random((30, 30, 30)).astype(np.float32)
    items = [sampler(image, rng) for _ in range(volumes)]
    return {k: torch.as_tensor(np.stack([it[k] for it in items])) for k in ("patches", "boxes")}


def _module(cfg: PretrainConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_method(cfg.method).build_module(Encoder(1, cfg.width, cfg.depth), cfg)


def test_descriptor_dim() -> None:
    assert descriptor_dim(64, 5) == 16**3 + 8**3 + 4**3 == 4672
    assert descriptor_dim(32, 5) == 8**3 + 4**3 + 2**3
    assert descriptor_dim(16, 2) == 16**3 + 8**3


@pytest.mark.parametrize("method,keys", [
    ("pimpic", {"loss", "pim", "pic", "overlap_error", "embedding_std", "pairs"}),
    ("pim", {"loss", "pim", "overlap_error", "embedding_std"}),
    ("pic", {"loss", "pic", "pairs"}),
])
def test_forward_backward_each_method(method: str, keys: set[str]) -> None:
    cfg = _cfg(method=method)
    module = _module(cfg)
    assert isinstance(get_method(method).build_sampler(cfg), OverlapPatchSampler)
    out = module(_batch(cfg, volumes=2))
    assert set(out) == keys
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name, prm in module.named_parameters():
        assert prm.grad is not None, name
    if method == "pimpic":
        assert out["loss"].item() == pytest.approx(out["pim"].item() + out["pic"].item(), rel=1e-6)
        assert out["pairs"].item() > 0
        assert 0 <= out["overlap_error"].item() <= 2


def test_heads_have_the_documented_sizes() -> None:
    cfg = _cfg(width=4, depth=5, patch_size=32, proj_dim=16)
    module = PiMPiC(Encoder(1, 4, 5), cfg)
    assert module.head_f.net[0].in_features == descriptor_dim(32, 5)
    assert module.head_f.net[0].out_features == 32 and module.head_f.net[-1].out_features == 16
    assert module.head_g.net[0].in_features == 7 * 4
    assert module.head_g.net[0].out_features == 16
    assert not hasattr(PiMPiC(Encoder(1, 4, 5), cfg, use_pic=False), "head_g")


def test_matches_the_functional_core_per_volume() -> None:
    """In eval mode (BatchNorm uses running stats) V volumes = the per-volume computations."""
    cfg = _cfg(pim_weight=0.5, pic_weight=2.0, pic_variant="paper", pim_reduction="lower")
    module = _module(cfg).eval()
    batch = _batch(cfg, volumes=2, seed=3)
    with torch.no_grad():
        out = module(batch)
        singles = [module({k: v[i:i + 1] for k, v in batch.items()}) for i in range(2)]
    assert out["pim"].item() == pytest.approx(np.mean([s["pim"].item() for s in singles]),
                                              rel=1e-5)
    counts = [s["pairs"].item() for s in singles]
    assert out["pairs"].item() == sum(counts)
    pic = sum(s["pic"].item() * c for s, c in zip(singles, counts, strict=True)) / sum(counts)
    assert out["pic"].item() == pytest.approx(pic, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * out["pim"].item() + 2 * out["pic"].item(),
                                               rel=1e-5)
    # the module's PiM is pim_loss on head f's output: sanity on a trivial case
    assert pim_loss(torch.eye(3), torch.eye(3)).item() < 1e-5
    assert pic_loss(torch.zeros(0, 4, 3)).item() == 0.0


def test_no_qualifying_pair_gives_zero_pic_with_grads() -> None:
    cfg = _cfg(method="pic", patches=2)
    module = _module(cfg)
    boxes = torch.tensor([[[[0, 0, 0], [16, 16, 16]], [[16, 16, 16], [32, 32, 32]]]])
    batch = {"patches": torch.rand(1, 2, 1, 16, 16, 16), "boxes": boxes}
    out = module(batch)
    assert out["pic"].item() == 0.0 and out["pairs"].item() == 0
    out["loss"].backward()
    assert all(p.grad is not None for p in module.parameters())


def test_pim_learns_overlap_on_fixed_batch() -> None:
    """A few Adam steps reduce the PiM loss on a fixed batch (the pipeline trains)."""
    cfg = _cfg(method="pim", patches=8)
    module = _module(cfg)
    batch = _batch(cfg, seed=1)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = module(batch)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_loop_benchmark_module_matches_vectorised() -> None:
    """The benchmark's per-pair loop PiC is the same method: equal losses and gradients."""
    from pimpic.benchmarks.pretrain_step import LoopPiMPiC

    cfg = _cfg(patches=5)
    batch = _batch(cfg, volumes=2, seed=4)
    outs, grads = [], []
    for cls in (PiMPiC, LoopPiMPiC):
        torch.manual_seed(0)
        module = cls(Encoder(1, cfg.width, cfg.depth), cfg).double()
        out = module({"patches": batch["patches"].double(), "boxes": batch["boxes"]})
        out["loss"].backward()
        outs.append(out)
        grad = next(module.encoder.parameters()).grad
        assert grad is not None
        grads.append(grad.clone())
    assert outs[0]["pairs"].item() == outs[1]["pairs"].item() > 0
    assert outs[0]["pic"].item() == pytest.approx(outs[1]["pic"].item(), rel=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)


def test_pretrain_step_benchmark_runs() -> None:
    from pimpic.benchmarks.pretrain_step import run

    res = run(patch_size=16, width=2, patches=4, steps=1, depth=4)
    for key in ("median_step_s", "patches_per_s", "peak_rss_mb", "loop_median_step_s",
                "speedup_vs_loop", "pairs_per_step"):
        assert res[key] > 0, key
