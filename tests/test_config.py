"""Config validation: every numeric field carries its range, refused values name the field;
YAML and ``--set`` reach nested configs and each method's options."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import pytest

from pimpic import config as C
from pimpic import registry
from pimpic.errors import PimpicError
from pimpic.pretraining.config import PretrainConfig, SamplerConfig
from pimpic.pretraining.methods.voco import VoCoConfig
from pimpic.pretraining.methods.vox2vec import Vox2VecConfig
from pimpic.protocol.grid import ExperimentConfig
from pimpic.segmentation.config import FinetuneConfig

SCHEMAS = [PretrainConfig, FinetuneConfig, SamplerConfig, ExperimentConfig,
           *registry.method_options().values()]


def _numeric(tp: Any) -> bool:
    args = typing.get_args(tp)
    if not args:
        return tp in (int, float)
    return typing.get_origin(tp) is not typing.Literal and any(_numeric(a) for a in args)


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda x: x.__name__)
def test_every_numeric_field_carries_its_range(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    numeric = {f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name])}
    ranged = {f.name for f in dataclasses.fields(cls) if "range" in f.metadata}
    assert numeric - ranged == set(), "write the field as ranged(default, RANGE)"
    cls()  # the defaults pass their own ranges


def test_the_method_options_are_those_the_methods_declare() -> None:
    assert registry.method_options() == {"voco": VoCoConfig, "vox2vec": Vox2VecConfig}


BAD = [
    (PretrainConfig, "checkpoint_every", 0),
    (PretrainConfig, "lr", -1.0),
    (PretrainConfig, "lr", math.nan),
    (PretrainConfig, "num_workers", -1),
    (PretrainConfig, "log_every", 0),
    (PretrainConfig, "tau", 0.0),
    (PretrainConfig, "min_overlap", 1.5),
    (PretrainConfig, "seed", -1),
    (PretrainConfig, "weight_decay", math.inf),
    (FinetuneConfig, "val_every", 0),
    (FinetuneConfig, "batch_size", 0),
    (FinetuneConfig, "max_epochs", 0),
    (FinetuneConfig, "max_steps", 0),
    (FinetuneConfig, "steps_per_epoch", 0),
    (FinetuneConfig, "fraction", 0),
    (FinetuneConfig, "fraction", 101),
    (FinetuneConfig, "num_classes", 1),
    (FinetuneConfig, "sw_overlap", 1.0),
    (FinetuneConfig, "patience", 0),
    (FinetuneConfig, "lr", -1e-5),
    (FinetuneConfig, "num_workers", -2),
    (SamplerConfig, "foreground_threshold", 2.0),
    (SamplerConfig, "overlap_margin", -0.1),
    (VoCoConfig, "grid", (0, 2)),
    (VoCoConfig, "ema_momentum", 1.5),
    (Vox2VecConfig, "tau", 0.0),
    (ExperimentConfig, "seeds", (-1,)),
]


@pytest.mark.parametrize(("cls", "name", "value"), BAD,
                         ids=[f"{c.__name__}.{n}={v}" for c, n, v in BAD])
def test_out_of_range_values_are_refused(cls: type, name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be .*got"):
        cls(**{name: value})


def test_refusals_reach_the_user_as_one_line_naming_the_field() -> None:
    with pytest.raises(PimpicError) as err:
        C.build_config(FinetuneConfig, overrides=["val_every=0"])
    assert str(err.value) == "config: val_every must be ≥ 1, got 0"
    with pytest.raises(PimpicError, match=r"config\.sampler: overlap_margin must be ≥ 0"):
        C.build_config(PretrainConfig, overrides=["sampler.overlap_margin=-1"])
    with pytest.raises(PimpicError, match=r"max_steps must be ≥ 1 \(or null\), got 0"):
        C.build_config(FinetuneConfig, overrides=["max_steps=0"])


def test_boundaries_are_accepted() -> None:
    FinetuneConfig(lr=0.0, fraction=100, sw_overlap=0.0, freeze_encoder_epochs=0,
                     max_steps=None, steps_per_epoch=None, num_classes=2, num_workers=0)
    PretrainConfig(lr=0.0, num_workers=0, min_overlap=1.0, pim_weight=0.0)
    VoCoConfig(ema_momentum=1.0, grid=(1, 1))
    ExperimentConfig(seeds=(0, 7), fractions=(100,))


def test_range_describes_itself() -> None:
    assert C.PERCENT.describe() == "in (0, 100]"
    assert C.Range(0, 1, high_open=True).describe() == "in [0, 1)"
    assert C.POSITIVE.describe() == "> 0" and C.FINITE.describe() == "finite"
    assert not C.AT_LEAST_1.admits(True)  # a bool is not a count
    assert not C.AT_LEAST_1.admits(())


def test_a_setting_added_later_takes_its_default_on_resume() -> None:
    """A run folder written before a setting existed resumes: the missing key is compared as the
    default, which is the behaviour the old run had; a real change is still reported."""
    now = C.to_dict(FinetuneConfig())
    old = {k: v for k, v in now.items() if k != "dice_batch"}
    assert C.config_differences(old, now) == ["dice_batch: run has None, now False"]
    assert C.config_differences(old, now, defaults=now) == []
    changed = C.to_dict(FinetuneConfig(dice_batch=True))
    assert C.config_differences(old, changed, defaults=now) == [
        "dice_batch: run has False, now True"]


# ------------------------------------------------------------------ coercion of YAML and --set


def test_override_strings_are_coerced_to_the_schema_types() -> None:
    cfg = C.build_config(PretrainConfig, None, [
        "steps=1e3", "lr=3e-4", "amp=no", "sampler.intensity_aug=true", "voco.grid=[2, 3]",
        "pim_reduction=lower", "patch_size=32"])
    assert (cfg.steps, cfg.lr, cfg.amp, cfg.patch_size) == (1000, 3e-4, False, 32)
    assert cfg.sampler.intensity_aug is True and cfg.options(VoCoConfig).grid == (2, 3)
    assert cfg.pim_reduction == "lower"


def test_optional_and_tuple_fields() -> None:
    cfg = C.build_config(FinetuneConfig, None, ["steps_per_epoch=null", "max_steps=5"])
    assert cfg.steps_per_epoch is None and cfg.max_steps == 5
    exp = C.from_dict(ExperimentConfig, {"cache": "c", "methods": "random,pimpic",
                                         "fractions": "5, 100", "seeds": 3})
    assert exp.methods == ("random", "pimpic") and exp.fractions == (5, 100)
    assert exp.seeds == (3,)


@pytest.mark.parametrize(("override", "match"), [
    ("steps=1.5", "steps: expected an integer, got 1.5"),
    ("steps=true", "steps: expected an integer, got True"),
    ("amp=maybe", "amp: expected true/false"),
    ("lr=fast", "lr: expected a number"),
    ("pim_reduction=upper", "pim_reduction: 'upper' is not one of 'all', 'lower'"),
    ("voco.grid=[1, 2, 3]", "voco.grid: expected 2 values, got 3"),
    ("nope=1", "unknown key\\(s\\) nope"),
    ("sampler.nope=1", "config.sampler: unknown key\\(s\\) nope"),
    ("steps", "--set 'steps': expected key=value"),
    ("log_every=.inf", "log_every: expected an integer, got inf"),  # C10b
    ("patches=.nan", "patches: expected an integer, got nan"),  # C11b
    ("steps=-inf", "steps: expected an integer, got '-inf'"),
    ("lr=nan", "lr: expected a number, got 'nan'"),
])
def test_coercion_errors_name_the_key(override: str, match: str) -> None:
    with pytest.raises(PimpicError, match=match):
        C.build_config(PretrainConfig, None, [override])


def test_non_finite_integers_in_yaml_and_class_ratios_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """C53b (``steps: .inf`` in YAML), C49 (``max_epochs=.inf``), C41 (all-zero ratios)."""
    path = tmp_path / "c.yaml"
    path.write_text("steps: .inf\n")
    with pytest.raises(PimpicError, match=r"c\.yaml.*steps: expected an integer, got inf"):
        C.build_config(PretrainConfig, path)
    with pytest.raises(PimpicError, match="max_epochs: expected an integer, got inf"):
        C.build_config(FinetuneConfig, None, ["max_epochs=.inf"])
    with pytest.raises(PimpicError, match="class_ratios: all zero"):
        C.build_config(FinetuneConfig, None, ["class_ratios=[0,0,0]"])


def test_yaml_then_overrides_then_flags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text("steps: 100\nsampler:\n  anchor: foreground\n  overlap_margin: 0.5\n")
    cfg = C.build_config(PretrainConfig, path, ["sampler.overlap_margin=0.6", "steps=7"])
    assert cfg.steps == 7 and cfg.sampler.anchor == "foreground"
    assert cfg.sampler.overlap_margin == 0.6
    C.save_config(cfg, tmp_path / "saved.yaml")
    assert C.build_config(PretrainConfig, tmp_path / "saved.yaml") == cfg


def test_method_options_are_sections_of_their_own(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``voco:`` and ``vox2vec:`` read and write as nested configs do, where they always stood
    (saved config.yaml files compare key by key on resume), though the methods declare them."""
    path = tmp_path / "c.yaml"
    path.write_text("voco:\n  grid: [2, 2]\nvox2vec:\n  tau: 0.2\n")
    cfg = C.build_config(PretrainConfig, path, ["voco.num_random=3"])
    assert cfg.options(VoCoConfig) == VoCoConfig(grid=(2, 2), num_random=3)
    assert cfg.options(Vox2VecConfig) == Vox2VecConfig(tau=0.2)
    data = C.to_dict(cfg)
    keys = list(data)
    assert keys[keys.index("sampler"):keys.index("lr") + 1] == ["sampler", "voco", "vox2vec", "lr"]
    assert data["voco"] == {"grid": [2, 2], "num_random": 3, "proj_dim": 2048,
                            "reg_weight": 1.0, "ema_momentum": 0.996}
    assert C.from_dict(PretrainConfig, data) == cfg
    assert C.to_dict(PretrainConfig())["vox2vec"] == C.to_dict(Vox2VecConfig())
    with pytest.raises(PimpicError, match=r"config\.voco: num_random must be ≥ 1, got 0"):
        C.build_config(PretrainConfig, None, ["voco.num_random=0"])
    with pytest.raises(PimpicError, match=r"unknown key\(s\) method_options"):
        C.from_dict(PretrainConfig, {"method_options": {}})
    with pytest.raises(ValueError, match=r"unknown section\(s\) nope; known: voco, vox2vec"):
        PretrainConfig(method_options={"nope": VoCoConfig()})
    with pytest.raises(ValueError, match="voco: expected a VoCoConfig, got Vox2VecConfig"):
        PretrainConfig(method_options={"voco": Vox2VecConfig()})
