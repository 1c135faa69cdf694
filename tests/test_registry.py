"""Adding a method is adding one file: a toy method dropped into the methods package is found by
the registry, accepted by config validation, listed by the CLI, trained by the engine, and
named and coloured in the report and the figures."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pimpic.pretraining.methods
from pimpic import registry
from pimpic.cli import app
from pimpic.errors import PimpicError
from pimpic.pretraining.config import PretrainConfig
from pimpic.protocol import figures
from pimpic.protocol.grid import ExperimentConfig
from pimpic.protocol.results import format_results_table, method_colour, method_name

#: the whole method: sampler, module (encoder + head), declaration — one file
TOY = '''
"""A toy pretext task: make the pooled deepest feature of random crops small."""

import numpy as np
import torch
from torch import nn

from pimpic.pretraining.config import PretrainConfig
from pimpic.models import Encoder
from pimpic.registry import MethodSpec, register


class ToySampler:
    def __init__(self, p: int, n: int) -> None:
        self.p, self.n = p, n

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        hi = np.maximum(np.array(image.shape) - self.p, 0) + 1
        starts = rng.integers(0, hi, size=(self.n, 3))
        crops = [np.asarray(image[x:x + self.p, y:y + self.p, z:z + self.p], np.float32)
                 for x, y, z in starts]
        return {"crops": np.stack(crops)[:, None]}


class ToyModule(nn.Module):
    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.widths[-1], 4)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.head(self.encoder(batch["crops"].flatten(0, 1))[-1].mean(dim=(2, 3, 4)))
        toy = z.pow(2).mean()
        return {"loss": toy, "toy": toy.detach()}


def build_sampler(cfg: PretrainConfig) -> ToySampler:
    return ToySampler(cfg.patch_size, cfg.patches)


def build_module(encoder: Encoder, cfg: PretrainConfig) -> ToyModule:
    return ToyModule(encoder)


register(MethodSpec("toy", build_sampler, build_module, display_name="Toy Method",
                    colour="#123456", loss_names=("toy",), description="a test's toy task"))
'''


@pytest.fixture
def toy_method(tmp_path: Path) -> Iterator[str]:
    """``toy.py`` in a folder that is part of the methods package for this test only."""
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "toy.py").write_text(textwrap.dedent(TOY))
    package_path = pimpic.pretraining.methods.__path__
    package_path.append(str(folder))
    registry.rediscover()
    try:
        yield "toy"
    finally:
        package_path.remove(str(folder))
        registry.unregister("toy")
        sys.modules.pop("pimpic.pretraining.methods.toy", None)
        registry.rediscover()


def test_the_built_in_methods_are_registered() -> None:
    assert registry.method_names() == ("pimpic", "pim", "pic", "voco", "voco-ema", "vox2vec")
    assert [registry.get_method(m).display_name for m in ("pimpic", "voco-ema")] == [
        "PiMPiC", "VoCo-EMA"]
    with pytest.raises(PimpicError, match="unknown method 'nope'; choose one of pimpic, pim"):
        registry.get_method("nope")


def test_a_method_file_is_all_a_new_method_needs(toy_method: str, make_cache,
                                                 tmp_path: Path) -> None:
    from pimpic.pretraining.engine import pretrain

    assert toy_method in registry.method_names()
    cfg = PretrainConfig(method=toy_method, width=2, depth=2, patch_size=8, patches=2, steps=2,
                         num_workers=0, log_every=1, checkpoint_every=2, device="cpu")
    ExperimentConfig(cache="c", methods=("random", toy_method), pretrain=cfg)

    listed = CliRunner().invoke(app, ["methods"])
    assert listed.exit_code == 0 and "toy" in listed.output and "Toy Method" in listed.output

    run = tmp_path / "run"
    assert pretrain(make_cache(n_cases=4, shape=(12, 12, 12)), run, cfg, progress=False).is_file()

    rows = [{"method": m, "fraction": 100, "n_train_cases": 3, "seed": 0, "case": "c1",
             "dice_organ": 0.5, "dice_tumour": 0.2, "dice_whole": 0.6} for m in ("random", "toy")]
    assert "| Toy Method |" in format_results_table(rows)
    assert (method_name(toy_method), method_colour(toy_method)) == ("Toy Method", "#123456")
    assert figures.plot_pretrain_losses({toy_method: run}, tmp_path / "loss.png") is not None


def test_an_unregistered_method_is_refused_by_config_validation() -> None:
    with pytest.raises(ValueError, match="method 'toy' is not one of pimpic, pim, pic"):
        PretrainConfig(method="toy")
