"""Adding a method is adding one file: a toy method dropped into the methods package is found by
the registry, accepted by config validation with its own option, listed by the CLI with that
option, trained by the engine, and named and coloured in the report and the figures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pimpic.pretraining.methods
from pimpic import registry
from pimpic.cli import app
from pimpic.config import build_config, load_yaml
from pimpic.errors import PimpicError
from pimpic.models import Encoder
from pimpic.pretraining.config import PretrainConfig
from pimpic.protocol import figures
from pimpic.protocol.grid import ExperimentConfig
from pimpic.protocol.results import format_results_table, method_colour, method_name

#: the whole method: its option, sampler, module (encoder + head), declaration — one file
TOY = '''
"""A toy pretext task: make the pooled deepest feature of random crops small."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pimpic.config import AT_LEAST_1, check_ranges, ranged
from pimpic.models import Encoder
from pimpic.registry import MethodSpec, register

if TYPE_CHECKING:
    from pimpic.pretraining.config import PretrainConfig


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """The toy's option (``toy:`` in a pretraining config)."""

    #: outputs of the toy head
    head_dim: int = ranged(4, AT_LEAST_1)

    def __post_init__(self) -> None:
        check_ranges(self)


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
    def __init__(self, encoder: Encoder, head_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.widths[-1], head_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.head(self.encoder(batch["crops"].flatten(0, 1))[-1].mean(dim=(2, 3, 4)))
        toy = z.pow(2).mean()
        return {"loss": toy, "toy": toy.detach()}


def build_sampler(cfg: PretrainConfig) -> ToySampler:
    return ToySampler(cfg.patch_size, cfg.patches)


def build_module(encoder: Encoder, cfg: PretrainConfig) -> ToyModule:
    return ToyModule(encoder, cfg.options(ToyConfig).head_dim)


register(MethodSpec("toy", build_sampler, build_module, display_name="Toy Method",
                    colour="#123456", loss_names=("toy",), description="a test's toy task",
                    options=ToyConfig))
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


def test_the_order_is_the_packages_whatever_was_imported_first() -> None:
    """A method module imported before discovery (a test, a benchmark) registers first; the
    order, and so the place of its options in a saved config, must not depend on that."""
    specs = [registry.get_method(name) for name in registry.method_names()]
    for spec in specs:
        registry.unregister(spec.name)
    for spec in sorted(specs, key=lambda spec: spec.name != "vox2vec"):
        registry.register(spec)  # vox2vec first, as if its module had been imported first
    assert registry.method_names()[0] == "vox2vec"
    registry.rediscover()
    assert registry.method_names() == ("pimpic", "pim", "pic", "voco", "voco-ema", "vox2vec")
    assert list(registry.method_options()) == ["voco", "vox2vec"]


def test_a_method_file_is_all_a_new_method_needs(toy_method: str, make_cache,
                                                 tmp_path: Path) -> None:
    from pimpic.pretraining.engine import pretrain

    assert toy_method in registry.method_names()
    spec = registry.get_method(toy_method)
    toy_config = spec.options
    assert toy_config is not None and registry.method_options()["toy"] is toy_config

    # its option is a section of the pretraining config: YAML, then --set, validated
    yaml_file = tmp_path / "toy.yaml"
    yaml_file.write_text("method: toy\ntoy:\n  head_dim: 3\n")
    assert build_config(PretrainConfig, yaml_file).options(toy_config).head_dim == 3
    cfg = build_config(PretrainConfig, yaml_file, [
        "toy.head_dim=5", "width=2", "depth=2", "patch_size=8", "patches=2", "steps=2",
        "num_workers=0", "log_every=1", "checkpoint_every=2", "device=cpu"])
    assert cfg.options(toy_config).head_dim == 5
    assert PretrainConfig().options(toy_config).head_dim == 4  # the toy's default
    with pytest.raises(PimpicError, match=r"toy\.yaml\.toy: head_dim must be ≥ 1, got 0"):
        build_config(PretrainConfig, yaml_file, ["toy.head_dim=0"])
    with pytest.raises(PimpicError, match=r"toy\.yaml\.toy: unknown key\(s\) nope"):
        build_config(PretrainConfig, yaml_file, ["toy.nope=1"])
    ExperimentConfig(cache="c", methods=("random", toy_method), pretrain=cfg)

    # the builders receive it
    assert spec.build_module(Encoder(1, 2, 2), cfg).head.out_features == 5

    listed = CliRunner().invoke(app, ["methods"])
    assert listed.exit_code == 0 and "toy" in listed.output and "Toy Method" in listed.output
    assert "toy.head_dim=4" in listed.output

    run = tmp_path / "run"
    assert pretrain(make_cache(n_cases=4, shape=(12, 12, 12)), run, cfg, progress=False).is_file()
    assert load_yaml(run / "config.yaml")["toy"] == {"head_dim": 5}

    rows = [{"method": m, "fraction": 100, "n_train_cases": 3, "seed": 0, "case": "c1",
             "dice_organ": 0.5, "dice_tumour": 0.2, "dice_whole": 0.6} for m in ("random", "toy")]
    assert "| Toy Method |" in format_results_table(rows)
    assert (method_name(toy_method), method_colour(toy_method)) == ("Toy Method", "#123456")
    assert figures.plot_pretrain_losses({toy_method: run}, tmp_path / "loss.png") is not None


def test_an_unregistered_method_is_refused_by_config_validation() -> None:
    with pytest.raises(ValueError, match="method 'toy' is not one of pimpic, pim, pic"):
        PretrainConfig(method="toy")


#: run in a fresh interpreter: which modules did discovery load that use the registry themselves?
DISCOVERY = """
import sys
from pimpic import registry
registry.discover()
users = sorted(name for name, module in list(sys.modules.items())
               if name.startswith("pimpic.") and name != "pimpic.registry"
               and not name.startswith(registry.METHODS_PACKAGE)
               and any(value is registry or getattr(value, "__module__", "") == "pimpic.registry"
                       for value in vars(module).values()))
print(len(registry.method_names()), users, "pimpic.pretraining.config" in sys.modules)
"""


def test_discovery_never_comes_back_to_a_config_schema() -> None:
    """Building a pretraining config looks the methods up, which imports every method module:
    none of them may load a module that uses the registry in turn (the config schemas; the
    methods name :class:`PretrainConfig` only for type checking)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", DISCOVERY], capture_output=True, text=True,
                         env=env, check=True)
    assert res.stdout.split() == ["6", "[]", "False"]
