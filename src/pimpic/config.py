"""Configuration as data: frozen dataclasses are the schema.

Each stage (pretraining, fine-tuning, experiment) has a frozen dataclass whose defaults
reproduce the paper. A config is built from defaults, then an optional YAML file, then
``--set key=value`` overrides (dotted keys reach nested dataclasses), validated here at the
boundary, and saved with every run (``config.yaml`` in the run folder).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pimpic import registry
from pimpic.errors import PimpicError
from pimpic.io import atomic_open

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-able dict of a (nested) config dataclass; tuples become lists."""
    out: dict[str, Any] = plain(dataclasses.asdict(cfg))
    return out


def plain(obj: Any) -> Any:
    """Tuples as lists, recursively: a value as it comes back from JSON or YAML."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` → ``{"a.b": 1, "c": {}}``: dotted keys for comparing configs
    (an empty mapping stays a value, so ``{}`` vs ``{"x": 1}`` still differs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any],
                       ignore: Iterable[str] | typing.Callable[[str], bool] = (),
                       defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``key: run has A, now B`` for every dotted key whose value differs, except ``ignore``d
    (dotted keys, or a predicate on them).

    A key that ``saved`` lacks takes its value from ``defaults``: a setting added after the run
    was made defaults to the behaviour the run had, so an older run folder still resumes."""
    a, b = {**flatten(defaults or {}), **flatten(saved)}, flatten(now)
    skip = ignore if callable(ignore) else set(ignore).__contains__
    return [f"{k}: run has {a.get(k)!r}, now {b.get(k)!r}"
            for k in sorted(set(a) | set(b)) if not skip(k) and a.get(k) != b.get(k)]


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    if not isinstance(data, Mapping):
        raise PimpicError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PimpicError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise PimpicError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except PimpicError as err:
                errors.append(str(err))
        arms = [a for a in args if a is not type(None)]
        if len(arms) > 1:  # name every alternative, not only the first one tried
            raise PimpicError(f"{where}: expected {_describe_types(arms)}, got {value!r}")
        raise PimpicError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise PimpicError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise PimpicError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise PimpicError(f"{where}: expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise PimpicError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise PimpicError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise PimpicError(f"{where}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise PimpicError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise PimpicError(f"{where}: expected a number, got {value!r}") from None
        if math.isnan(f):
            raise PimpicError(f"{where}: expected a number, got {value!r}")
        return f
    if tp is str:
        return str(value)
    return value


def _describe_types(types_: Sequence[Any]) -> str:
    """``[int, tuple[int, int, int], Literal["plan"]]`` → ``an integer, 3 integers or 'plan'``."""
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    plural = {int: "integers", float: "numbers"}
    words = []
    for tp in types_:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Literal:
            words.append(" or ".join(map(repr, args)))
        elif origin is tuple and args and args[-1] is not Ellipsis:
            inner = plural.get(args[0], "values") if len(set(args)) == 1 else "values"
            words.append(f"{len(args)} {inner}")
        elif origin in (tuple, list):
            words.append("a list")
        else:
            words.append(names.get(tp, getattr(tp, "__name__", str(tp))))
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → nested ``{"a": {"b": "1"}, "c": "x"}`` (values typed later)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise PimpicError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise PimpicError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PimpicError(f"{path}: malformed YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise PimpicError(f"{path}: expected a mapping at the top level")
    return data


def build_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Defaults ← ``base`` ← YAML file ← ``--set`` overrides, validated into ``cls``."""
    data: dict[str, Any] = dict(base or {})
    where = "config"
    if yaml_path is not None:
        data = merge(data, load_yaml(yaml_path))
        where = str(yaml_path)
    data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data, where)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_open(path) as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


# --------------------------------------------------------------------------------------------
# Range checks: each schema lists its numeric fields with the values they may take, so a bad
# value is refused when the config is built — before any run folder exists.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field may take: an interval, open or closed at either end.

    A tuple value is checked element by element; ``optional`` also accepts None. NaN and
    infinities are always refused.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    #: words the field also takes instead of a number (e.g. ``patch_size: plan``)
    words: tuple[str, ...] = ()

    def describe(self) -> str:
        return self._interval() + "".join(f" or {w!r}" for w in self.words)

    def _interval(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return "finite"

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, str):
            return value in self.words
        if isinstance(value, (tuple, list)):
            return all(self.admits(v) for v in value) and bool(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1)
PERCENT = Range(0, 100, low_open=True)
FINITE = Range()


def check_ranges(cfg: Any, rules: Mapping[str, Range]) -> None:
    """Raise ValueError naming the first field of ``cfg`` whose value ``rules`` refuses."""
    for name, rule in rules.items():
        value = getattr(cfg, name)
        if not rule.admits(value):
            many = isinstance(value, (tuple, list))
            raise ValueError(f"{'each of ' if many else ''}{name} must be {rule.describe()}"
                             f"{' (or null)' if rule.optional else ''}, "
                             f"got {list(value) if many else value!r}")


# --------------------------------------------------------------------------------------------
# The schemas. Defaults reproduce the paper and the released code (docs/method.md §2–§8);
# every deviation is a named option.
# --------------------------------------------------------------------------------------------

#: a pretraining crop: one edge (a cube) or three edges (a box), in voxels
PatchSize = int | tuple[int, int, int]


def patch_shape(patch_size: PatchSize | Sequence[int] | str) -> tuple[int, int, int]:
    """``64`` → ``(64, 64, 64)``; three edges stay three edges. ``plan`` has no shape until the
    nnU-Net plan is read (:func:`pimpic.pretraining.backbones.resolve_patch`)."""
    if isinstance(patch_size, str):
        raise PimpicError(f"patch_size {patch_size!r} must be resolved to voxels first (the "
                          "pretraining engine reads it from the nnU-Net plan)")
    if isinstance(patch_size, int):
        return (patch_size,) * 3
    edges = tuple(int(p) for p in patch_size)
    if len(edges) != 3:
        raise PimpicError(f"patch_size must be one edge or 3 edges, got {list(edges)}")
    return edges[0], edges[1], edges[2]


def patch_text(patch_size: Any) -> str:
    """A patch size as the user writes it: ``64`` or ``[32, 64, 64]``."""
    return str(list(patch_size)) if isinstance(patch_size, (tuple, list)) else str(patch_size)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Overlapping-patch sampler (docs/method.md §2). Defaults = the reference sampler."""

    #: ``uniform``: anchor start ~ U{0, dim − p − 1} (reference); ``foreground``: anchor centred
    #: on a random voxel above ``foreground_threshold`` (no patches of pure air).
    anchor: typing.Literal["uniform", "foreground"] = "uniform"
    foreground_threshold: float = 0.05
    #: jitter half-width m = floor(overlap_margin · p); reference (4p)//5 ⇔ 0.8. Smaller → more
    #: overlap, larger → more non-overlapping pairs.
    overlap_margin: float = 0.8
    #: per-patch random intensity scale/shift/noise so overlapping voxels differ (option)
    intensity_aug: bool = False
    #: Gaussian noise added to the whole volume before cropping, with this probability per
    #: volume (released code: 0.9, std 0.01; overlapping voxels get the same noise)
    volume_noise_prob: float = 0.0
    volume_noise_std: float = 0.01
    #: value used to pad volumes smaller than the patch (0 = the bottom of the HU window)
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, SAMPLER_RULES)


SAMPLER_RULES = {"foreground_threshold": PROBABILITY, "overlap_margin": NON_NEGATIVE,
                 "pad_value": FINITE, "volume_noise_prob": PROBABILITY,
                 "volume_noise_std": NON_NEGATIVE}


@dataclasses.dataclass(frozen=True)
class VoCoConfig:
    """VoCo baseline (docs/method.md §7): base-crop grid and random crops per volume."""

    grid: tuple[int, int] = (4, 4)
    #: random crops per volume (each compared against all bases)
    num_random: int = 4
    #: projector width (3-layer MLP on global-average-pooled deepest features)
    proj_dim: int = 2048
    #: weight of the base-orthogonality regulariser
    reg_weight: float = 1.0
    #: momentum of the teacher for ``voco-ema``
    ema_momentum: float = 0.996

    def __post_init__(self) -> None:
        check_ranges(self, VOCO_RULES)


VOCO_RULES = {"grid": AT_LEAST_1, "num_random": AT_LEAST_1, "proj_dim": AT_LEAST_1,
              "reg_weight": NON_NEGATIVE, "ema_momentum": PROBABILITY}


@dataclasses.dataclass(frozen=True)
class Vox2VecConfig:
    """vox2vec baseline (docs/method.md §7): voxel-level contrast over an FPN of features."""

    proj_dim: int = 128
    #: positive voxels sampled per crop pair
    num_voxels: int = 1024
    tau: float = 0.1

    def __post_init__(self) -> None:
        check_ranges(self, VOX2VEC_RULES)


VOX2VEC_RULES = {"proj_dim": AT_LEAST_1, "num_voxels": AT_LEAST_1, "tau": POSITIVE}


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised pretraining. Defaults = the paper (K=32, d=128, 64³, N=32, Adam 1e-5)."""

    #: a registered method (:mod:`pimpic.registry`; ``pimpic methods`` lists them)
    method: str = "pimpic"
    # encoder: ``unet`` is the paper's (``width``, ``depth``); ``nnunet`` is the encoder nnU-Net
    # builds from ``nnunet_plans`` (a plans JSON; empty: the plans of the nnU-Net preprocessed
    # folder pretrained on) and ``nnunet_configuration`` (width and depth come from the plan)
    backbone: typing.Literal["unet", "nnunet"] = "unet"
    nnunet_plans: str = ""
    nnunet_configuration: str = "3d_fullres"
    in_channels: int = 1
    width: int = 32
    depth: int = 5
    #: pretraining crop in voxels: an edge ``p`` (a ``p³`` cube, the paper's 64), three edges
    #: ``[d, h, w]`` in the volume's axis order (an anisotropic box, e.g. ``[32, 64, 64]``), or
    #: ``plan`` (backbone nnunet: the plan's own patch size, e.g. ``[40, 224, 192]`` — several
    #: times a 64³ crop's voxels, memory and step time)
    patch_size: int | tuple[int, int, int] | typing.Literal["plan"] = 64
    # batch: ``patches`` patches from each of ``volumes`` volumes per step and rank
    patches: int = 32
    volumes: int = 1
    # heads and losses
    proj_dim: int = 128
    tau: float = 1.0
    pim_weight: float = 1.0
    pic_weight: float = 1.0
    pim_reduction: typing.Literal["all", "lower"] = "all"
    pic_variant: typing.Literal["reference", "paper"] = "reference"
    min_overlap: float = 0.01
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    voco: VoCoConfig = dataclasses.field(default_factory=VoCoConfig)
    vox2vec: Vox2VecConfig = dataclasses.field(default_factory=Vox2VecConfig)
    # optimisation
    lr: float = 1e-5
    weight_decay: float = 0.0
    steps: int = 20000
    seed: int = 0
    # engine
    device: str = "auto"
    amp: bool = True
    #: channels-last 3D layout (≈2× faster steps on CPU; a layout, the computation is the same)
    channels_last: bool = True
    compile: bool = False
    num_workers: int = 2
    checkpoint_every: int = 500
    log_every: int = 10

    def __post_init__(self) -> None:
        known = registry.method_names()
        if self.method not in known:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(known)} "
                             "(the methods in pimpic/pretraining/methods/)")
        if isinstance(self.patch_size, list):  # built in Python from a list: the YAML form
            object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if isinstance(self.patch_size, tuple) and len(self.patch_size) != 3:
            raise ValueError(f"patch_size must be one edge or 3 edges, got "
                             f"{list(self.patch_size)}")
        check_ranges(self, PRETRAIN_RULES)
        if self.backbone == "nnunet":
            # nnunet_plans may stay empty when pretraining on an nnU-Net preprocessed folder:
            # the engine takes the folder's plans (and, for patch_size plan, their patch size)
            if not self.nnunet_configuration:
                raise ValueError("backbone nnunet needs nnunet_configuration (e.g. 3d_fullres)")
        elif self.patch_size == "plan":
            raise ValueError("patch_size plan takes the patch of an nnU-Net plan; it needs "
                             "backbone nnunet")
        elif any(p % 2**self.depth for p in self.patch_shape):
            raise ValueError(f"patch_size {patch_text(self.patch_size)} must be divisible by "
                             f"2^depth = {2**self.depth}"
                             f"{' on every axis' if self.anisotropic else ''}")

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """The pretraining crop's edge on each axis (a cube's edge three times)."""
        return patch_shape(self.patch_size)

    @property
    def anisotropic(self) -> bool:
        """Is the crop a box rather than a cube?"""
        return len(set(self.patch_shape)) > 1


#: one line per numeric field of :class:`PretrainConfig` (a new field needs its line here)
PRETRAIN_RULES = {
    "in_channels": AT_LEAST_1, "width": AT_LEAST_1, "depth": AT_LEAST_1,
    "patch_size": Range(1, words=("plan",)), "patches": AT_LEAST_1, "volumes": AT_LEAST_1,
    "proj_dim": AT_LEAST_1, "tau": POSITIVE, "pim_weight": NON_NEGATIVE,
    "pic_weight": NON_NEGATIVE, "min_overlap": PROBABILITY, "lr": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE, "steps": AT_LEAST_1, "seed": NON_NEGATIVE,
    "num_workers": NON_NEGATIVE, "checkpoint_every": AT_LEAST_1, "log_every": AT_LEAST_1,
}


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Supervised fine-tuning (docs/method.md §6.2). Defaults = the authors' released recipe.

    Per step ``batch_size`` volumes × ``samples_per_volume`` label-balanced crops (2 × 16 = 32),
    an epoch = one pass over the labelled volumes, Dice loss, Adam 1e-5, light augmentation on
    the whole (foreground-cropped) volume before cropping, model selection and early stopping
    (patience 15 epochs) on the validation Dice loss. pimpic's own choices are named options.
    """

    fraction: int = 100
    seed: int = 0
    #: network outputs; None: one per label value of the cache (its dataset's labels), which
    #: is what a run records. A number must agree with the labels (a check, not a choice)
    num_classes: int | None = None
    # used only without an encoder (from scratch); otherwise the encoder's metadata decides
    width: int = 32
    depth: int = 5
    patch_size: int = 64
    #: ``released``: up-blocks 8K, 4K, 2K, K, K, align_corners=True, 1×1×1 head (21.3 M
    #: parameters at K = 32); ``symmetric``: up-blocks 16K … K, 3×3×3 head (47.1 M)
    decoder: typing.Literal["released", "symmetric"] = "released"
    loss: typing.Literal["dice", "dicece"] = "dice"
    #: Dice over the whole batch (one Dice per class over all crops, as nnU-Net's batch Dice)
    #: instead of one per crop: a structure absent from most crops (a tumour) is then not
    #: punished into never being predicted; not in the released recipe
    dice_batch: bool = False
    lr: float = 1e-5
    #: the encoder's own learning rate (None: ``lr``), e.g. lower to keep pretrained features;
    #: the schedule scales both alike; not in the released recipe
    encoder_lr: float | None = None
    lr_schedule: typing.Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    #: volumes per batch; each gives ``samples_per_volume`` label-balanced crops
    batch_size: int = 2
    samples_per_volume: int = 16
    #: positive : negative crop ratio (RandCropByPosNegLabeld)
    pos_ratio: float = 1.0
    #: crop centres drawn per class (background, organ, tumour, …) in these proportions
    #: (MONAI ``RandCropByLabelClassesd``; a class absent from a volume is skipped there), as
    #: nnU-Net oversamples small foreground classes; None: ``pos_ratio`` crops on any foreground
    #: voxel (released)
    class_ratios: tuple[float, ...] | None = None
    #: crop every volume (train, validation, test) to its body (image > 0) and draw negative
    #: crops inside it, as the released code; False: negative crops may be centred in air
    crop_foreground: bool = True
    #: an epoch = this many optimiser steps (None: one pass over the training cases)
    steps_per_epoch: int | None = None
    #: the released code's epoch cap
    max_epochs: int = 500
    max_steps: int | None = None
    patience: int = 15
    freeze_encoder_epochs: int = 0
    val_criterion: typing.Literal["dice_loss", "dice"] = "dice_loss"
    val_every: int = 1
    #: the "Random + Aug" augmentation; ``aug_stage=volume`` applies it to the whole volume
    #: before cropping (released), ``patch`` to every crop
    augment: bool = True
    aug_stage: typing.Literal["volume", "patch"] = "volume"
    affine_prob: float = 0.1
    rotate_rad: float = 0.1
    scale: float = 0.1
    shift_vox: float = 0.0
    noise_prob: float = 0.2
    noise_std: float = 0.01
    #: nnU-Net-style intensity augmentation of every crop (brightness, contrast, gamma,
    #: low-resolution simulation): for cohorts that mix contrast phases; not in the paper
    intensity_aug: bool = False
    #: sliding window: validation overlap, test overlap (evaluation), blending
    val_sw_overlap: float = 0.25
    sw_overlap: float = 0.5
    sw_mode: typing.Literal["constant", "gaussian"] = "constant"
    sw_batch_size: int = 4
    device: str = "auto"
    #: bf16 autocast on CUDA
    amp: bool = True
    #: bf16 autocast on CPU as well: lower precision, not run-to-run reproducible and NaN-prone
    #: on some CPUs (docs/reproducibility.md), so off; faster only on some CPUs
    cpu_bf16: bool = False
    #: channels-last 3D memory layout for training and inference (≈2× faster on CPU; a layout,
    #: not a change of the computation)
    channels_last: bool = True
    num_workers: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        check_ranges(self, FINETUNE_RULES)
        if (self.class_ratios is not None and self.num_classes is not None
                and len(self.class_ratios) != self.num_classes):
            raise ValueError(f"class_ratios: {len(self.class_ratios)} values for num_classes="
                             f"{self.num_classes} (one per class, background first)")
        if self.class_ratios is not None and not any(self.class_ratios):
            raise ValueError("class_ratios: all zero, so no class would ever be sampled; give "
                             "at least one class a positive ratio")


#: one line per numeric field of :class:`FinetuneConfig` (a new field needs its line here)
FINETUNE_RULES = {
    "fraction": PERCENT, "seed": NON_NEGATIVE, "num_classes": Range(2, optional=True),
    "width": AT_LEAST_1, "depth": AT_LEAST_1, "patch_size": AT_LEAST_1,
    "lr": NON_NEGATIVE, "encoder_lr": Range(0, optional=True),
    "weight_decay": NON_NEGATIVE, "batch_size": AT_LEAST_1, "samples_per_volume": AT_LEAST_1,
    "pos_ratio": NON_NEGATIVE,
    "class_ratios": Range(0, optional=True),
    "steps_per_epoch": Range(1, optional=True), "max_epochs": AT_LEAST_1,
    "max_steps": Range(1, optional=True), "patience": AT_LEAST_1,
    "freeze_encoder_epochs": NON_NEGATIVE, "val_every": AT_LEAST_1,
    "affine_prob": PROBABILITY, "rotate_rad": Range(0, math.pi),
    "scale": Range(0, 1, high_open=True), "shift_vox": NON_NEGATIVE,
    "noise_prob": PROBABILITY, "noise_std": NON_NEGATIVE,
    "val_sw_overlap": Range(0, 1, high_open=True), "sw_overlap": Range(0, 1, high_open=True),
    "sw_batch_size": AT_LEAST_1, "num_workers": NON_NEGATIVE, "log_every": AT_LEAST_1,
}
