"""An nnU-Net plans file, read for one configuration (``3d_fullres``, ``3d_lowres``, ...).

nnU-Net's planner writes ``nnUNetPlans.json`` (or ``nnUNetResEncUNetMPlans.json`` …) with one
entry per configuration: the patch size, target spacing, normalisation schemes and, under
``architecture``, the network class (``PlainConvUNet`` or ``ResidualEncoderUNet`` of
dynamic-network-architectures) with its constructor arguments — ``features_per_stage``,
``strides`` (per stage and axis), ``kernel_sizes``, .... A configuration may inherit from
another (``inherits_from``); :func:`load_plan` resolves that as nnU-Net does.

All sizes are in nnU-Net's *transposed* axis order (``transpose_forward``), which is also the
axis order of the arrays in its preprocessed folders.

The encoder's pyramid: stage ``s`` outputs at the cumulative stride ``Π_{t ≤ s} strides[t]``
per axis; :meth:`NnunetPlan.levels` lists them for :mod:`pimpic.models.backbone`. This module
reads JSON only; building the network needs ``nnunetv2`` (:mod:`pimpic.nnunet.network`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pimpic.errors import PimpicError
from pimpic.models.backbone import PIC_STRIDES, PIM_DEPTH, Level, levels_at
from pimpic.patch import total_stride as backbone_total_stride

#: the architectures pimpic can pretrain (their encoders return one feature map per stage)
SUPPORTED = ("PlainConvUNet", "ResidualEncoderUNet")


@dataclass(frozen=True)
class NnunetPlan:
    """One configuration of a plans file (inheritance resolved).

    Attributes:
        path: the plans JSON.
        name: the configuration (``3d_fullres``).
        plans: the whole plans mapping.
        config: the resolved configuration mapping.
    """

    path: Path
    name: str
    plans: dict[str, Any]
    config: dict[str, Any]

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.config["architecture"])

    @property
    def network_class(self) -> str:
        """Fully qualified class name, e.g. ``dynamic_network_architectures.architectures.unet.
        PlainConvUNet``."""
        return str(self.architecture["network_class_name"])

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        return dict(self.architecture["arch_kwargs"])

    @property
    def patch_size(self) -> list[int]:
        return [int(v) for v in self.config["patch_size"]]

    @property
    def spacing(self) -> list[float]:
        return [float(v) for v in self.config["spacing"]]

    @property
    def data_identifier(self) -> str:
        return str(self.config.get("data_identifier", ""))

    @property
    def stage_strides(self) -> list[list[int]]:
        """Each stage's own stride per axis (an int in the plan means all axes)."""
        strides = self.arch_kwargs["strides"]
        return [[int(s)] * 3 if isinstance(s, int) else [int(v) for v in s] for s in strides]

    @property
    def widths(self) -> list[int]:
        feats = self.arch_kwargs["features_per_stage"]
        n = int(self.arch_kwargs["n_stages"])
        return [int(feats)] * n if isinstance(feats, int) else [int(f) for f in feats]

    def levels(self) -> tuple[Level, ...]:
        """The encoder's pyramid: cumulative stride and width of every stage."""
        out, total = [], [1, 1, 1]
        for own, width in zip(self.stage_strides, self.widths, strict=True):
            total = [a * b for a, b in zip(total, own, strict=True)]
            out.append(Level((total[0], total[1], total[2]), width))
        return tuple(out)

    @property
    def normalization(self) -> list[str]:
        """The intensity normalisation scheme per channel, e.g. ``["CTNormalization"]``."""
        return [str(v) for v in self.config.get("normalization_schemes") or []]

    @property
    def ct_window(self) -> list[float] | None:
        """The HU range ``CTNormalization`` clips channel 0 to (the foreground's 0.5 and 99.5
        percentiles), or None for another scheme or plans without those properties."""
        if self.normalization[:1] != ["CTNormalization"]:
            return None
        props = self.plans.get("foreground_intensity_properties_per_channel", {}).get("0", {})
        if "percentile_00_5" not in props or "percentile_99_5" not in props:
            return None
        return [float(props["percentile_00_5"]), float(props["percentile_99_5"])]

    def describe(self) -> str:
        return f"{self.path.name}:{self.name}"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PimpicError(f"{path}: nnU-Net plans file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PimpicError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("configurations"), dict):
        raise PimpicError(f"{path}: not an nnU-Net plans file (no 'configurations' mapping)")
    return data


def _resolve(plans: dict[str, Any], name: str, path: Path, seen: tuple[str, ...] = ()
             ) -> dict[str, Any]:
    """The configuration with its ``inherits_from`` chain applied (child keys win)."""
    configs = plans["configurations"]
    if name not in configs:
        raise PimpicError(f"{path}: no configuration {name!r}; it has "
                          f"{', '.join(configs) or 'none'}")
    if name in seen:
        raise PimpicError(f"{path}: configuration {name!r} inherits from itself "
                          f"({' → '.join([*seen, name])})")
    config = copy.deepcopy(configs[name])
    parent = config.get("inherits_from")
    if parent:
        base = _resolve(plans, str(parent), path, (*seen, name))
        base.update(config)
        config = base
    return dict(config)


def load_plan(path: str | Path, configuration: str) -> NnunetPlan:
    """Read ``configuration`` of the plans file at ``path`` and check that pimpic can pretrain
    its encoder (a supported 3D architecture with a well-formed pyramid).

    Raises:
        PimpicError: missing or malformed file, unknown configuration, an architecture that is
            not PlainConvUNet/ResidualEncoderUNet, a 2D configuration, inconsistent stages.
    """
    path = Path(path)
    plans = _read(path)
    config = _resolve(plans, configuration, path)
    where = f"{path}:{configuration}"
    arch = config.get("architecture")
    if not isinstance(arch, dict) or "arch_kwargs" not in arch:
        raise PimpicError(f"{where}: no 'architecture' entry (plans made by nnU-Net < 2.4; "
                          "rerun nnUNetv2_plan_and_preprocess)")
    cls = str(arch.get("network_class_name", ""))
    if cls.rsplit(".", 1)[-1] not in SUPPORTED:
        raise PimpicError(f"{where}: network {cls or '?'} is not one of {', '.join(SUPPORTED)}")
    plan = NnunetPlan(path, configuration, plans, config)
    kwargs = plan.arch_kwargs
    if len(plan.patch_size) != 3 or "3d" not in str(kwargs.get("conv_op", "")).lower():
        raise PimpicError(f"{where}: a {len(plan.patch_size)}D configuration; pimpic pretrains "
                          "3D encoders (use 3d_fullres or 3d_lowres)")
    try:
        n = int(kwargs["n_stages"])
        ok = len(plan.stage_strides) == n == len(plan.widths)
        ok = ok and all(len(s) == 3 and min(s) >= 1 for s in plan.stage_strides)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PimpicError(f"{where}: malformed architecture (n_stages, strides and "
                          "features_per_stage must agree, 3 strides ≥ 1 per stage)")
    return plan


def check_pyramid(plan: NnunetPlan) -> None:
    """The pretext tasks need levels at strides 1, 2, 4 (PiC) and at least three levels
    (PiM); the plan's own patch must be divisible by the total stride on every axis. One-line
    error naming what is missing."""
    levels = plan.levels()
    where = plan.describe()
    if len(levels) < PIM_DEPTH:
        raise PimpicError(f"{where}: the encoder has {len(levels)} stage(s); PiM needs at "
                          f"least {PIM_DEPTH}")
    try:
        levels_at(levels, PIC_STRIDES, "PiC")
    except PimpicError as err:
        raise PimpicError(f"{where}: {err}") from None
    total = total_stride(plan)
    if any(p % s for p, s in zip(plan.patch_size, total, strict=True)):
        raise PimpicError(f"{where}: patch size {plan.patch_size} is not divisible by the "
                          f"encoder's total stride {list(total)}")


def total_stride(plan: NnunetPlan) -> tuple[int, int, int]:
    """The encoder's total stride per axis: a pretraining patch must be a multiple of it on
    every axis (a cube's edge: a multiple of the three's least common multiple)."""
    return backbone_total_stride(plan.levels())
