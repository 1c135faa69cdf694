"""The experiment grid: methods × label fractions × seeds, with the shared pretraining and
fine-tuning settings (:class:`ExperimentConfig`, ``pimpic experiment CONFIG.yaml``)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from pimpic import registry
from pimpic.config import (
    NON_NEGATIVE,
    PERCENT,
    Range,
    build_config,
    check_ranges,
    from_dict,
    merge,
    ranged,
    to_dict,
)
from pimpic.data.leakage import TRANSDUCTIVE
from pimpic.errors import PimpicError
from pimpic.pretraining.config import PretrainConfig
from pimpic.segmentation.config import FinetuneConfig

#: the from-scratch baseline of every grid ("Random + Aug"): fine-tuning without an encoder
BASELINE = "random"
#: config keys that may change between invocations on the same EXP folder (they only add cells
#: or change the report); everything else must match what the finished runs were made with
GRID_KEYS = ("methods", "fractions", "seeds", "overlay_fraction", "overlay_case")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment grid. Defaults = the paper's Table 1 (all methods, 5–100 % labels)."""

    #: the prepared cache (``pimpic prepare``); its split decides train/val/test
    cache: str = ""
    #: the pretraining pool: another cache (or an nnU-Net preprocessed folder) whose every case
    #: is pretrained on; empty: the training split of ``cache``. Refused when it holds any of
    #: the task's test cases, by case id or by content (:mod:`pimpic.data.leakage`)
    pretrain_cache: str = ""
    #: which cases of ``cache`` pretraining reads when there is no ``pretrain_cache``
    #: (:data:`pimpic.data.splits.POOLS`): ``train`` (the training split), ``train+unlabelled``
    #: (and the unlabelled cases of ``prepare --unlabelled``: a large archive without the
    #: evaluation patients) or ``all`` (every cached case, the validation and test patients'
    #: images included, never their labels: transductive pretraining, accepted by saying so
    #: here; the report says so in its header)
    pretrain_pool: typing.Literal["train", "train+unlabelled", "all"] = "train"
    methods: tuple[str, ...] = ("random", "voco", "vox2vec", "pim", "pic", "pimpic")
    fractions: tuple[int, ...] = ranged((5, 10, 20, 50, 100), PERCENT)
    seeds: tuple[int, ...] = ranged((0,), NON_NEGATIVE)
    #: shared pretraining settings; ``method`` is set per row of the grid
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    #: per-method pretraining overrides, e.g. ``{"voco": {"lr": 1e-4}}`` (baselines' own recipes)
    pretrain_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: shared fine-tuning settings; ``fraction`` and ``seed`` are set per cell
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    split: str = "test"
    lcc: bool = False
    #: a structure absent from a test case's ground truth: Dice 0 (released) or left out
    absent: typing.Literal["zero", "nan"] = "zero"
    #: the table's SD: population (0, released) or sample (1)
    sd_ddof: int = ranged(0, Range(0, 1))
    #: the fraction shown in the overlay figure (None: the smallest, where pretraining matters)
    overlay_fraction: int | None = ranged(None, Range(0, 100, low_open=True, optional=True))
    #: the test case shown in the overlay figure (None: the one with the largest organ)
    overlay_case: str | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods: at least one method is needed")
        known = (BASELINE, *registry.method_names())
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"methods: unknown {', '.join(bad)}; choose from {', '.join(known)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: listed twice")
        if not self.fractions or any(not 0 < f <= 100 for f in self.fractions):
            raise ValueError("fractions: need percentages in (0, 100]")
        if not self.seeds:
            raise ValueError("seeds: at least one seed is needed")
        check_ranges(self)
        unknown = sorted(set(self.pretrain_overrides) - set(registry.method_names()))
        if unknown:
            raise ValueError(f"pretrain_overrides: unknown method(s) {', '.join(unknown)}")
        for m in self.methods:
            if m != BASELINE and self.pretrain_config(m).backbone != "unet":
                raise ValueError(f"pretrain ({m}): pimpic fine-tunes the paper U-Net "
                                 "(backbone unet); fine-tune an nnU-Net backbone with nnU-Net "
                                 "after `pimpic export nnunet`")
        if self.overlay_fraction is not None and self.overlay_fraction not in self.fractions:
            raise ValueError(f"overlay_fraction {self.overlay_fraction} is not in fractions")

    def pretrain_config(self, method: str) -> PretrainConfig:
        """The pretraining config of ``method``: shared settings ← its overrides."""
        data = merge(to_dict(self.pretrain), self.pretrain_overrides.get(method, {}))
        data["method"] = method
        return from_dict(PretrainConfig, data, f"pretrain_overrides.{method}")

    def finetune_config(self, fraction: int, seed: int) -> FinetuneConfig:
        return dataclasses.replace(self.finetune, fraction=fraction, seed=seed)


def transductive(cfg: ExperimentConfig) -> bool:
    """Does the grid pretrain on the evaluation patients' images (``pretrain_pool: all``, the
    user's statement that this is deliberate)?"""
    return cfg.pretrain_pool == TRANSDUCTIVE and any(m != BASELINE for m in cfg.methods)


def load_experiment_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Defaults ← YAML ← ``--set`` overrides; ``cache`` is required."""
    cfg = build_config(ExperimentConfig, path, overrides)
    if not cfg.cache:
        raise PimpicError(f"{path or 'config'}: 'cache' (a prepared cache folder) is required")
    return cfg
