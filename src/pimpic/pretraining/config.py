"""The pretraining schema: :class:`PretrainConfig` and the overlapping-patch sampler's
:class:`SamplerConfig`. Defaults reproduce the paper and the released code (docs/method.md
§2–§8); every deviation is a named option.

A pretext task's own options live in its method module and are declared in its
:class:`~pimpic.registry.MethodSpec`; each becomes a section of :class:`PretrainConfig` under
its key (``voco: {grid: [2, 2]}``, ``--set voco.grid=[2,2]``), read with
:meth:`PretrainConfig.options`. Method modules import this module only for type checking, so
the registry's discovery never comes back here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pimpic import registry
from pimpic.config import (
    AT_LEAST_1,
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Range,
    check_ranges,
    fill_sections,
    ranged,
    sections,
)
from pimpic.errors import PimpicError
from pimpic.patch import check_unet_patch, patch_shape

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Overlapping-patch sampler (docs/method.md §2). Defaults = the reference sampler."""

    #: ``uniform``: anchor start ~ U{0, dim − p − 1} (reference); ``foreground``: anchor centred
    #: on a random voxel above ``foreground_threshold`` (no patches of pure air).
    anchor: typing.Literal["uniform", "foreground"] = "uniform"
    foreground_threshold: float = ranged(0.05, PROBABILITY)
    #: jitter half-width m = floor(overlap_margin · p); reference (4p)//5 ⇔ 0.8. Smaller → more
    #: overlap, larger → more non-overlapping pairs.
    overlap_margin: float = ranged(0.8, NON_NEGATIVE)
    #: per-patch random intensity scale/shift/noise so overlapping voxels differ (option)
    intensity_aug: bool = False
    #: Gaussian noise added to the whole volume before cropping, with this probability per
    #: volume (released code: 0.9, std 0.01; overlapping voxels get the same noise)
    volume_noise_prob: float = ranged(0.0, PROBABILITY)
    volume_noise_std: float = ranged(0.01, NON_NEGATIVE)
    #: value used to pad volumes smaller than the patch (0 = the bottom of the HU window)
    pad_value: float = ranged(0.0, FINITE)

    def __post_init__(self) -> None:
        check_ranges(self)


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
    in_channels: int = ranged(1, AT_LEAST_1)
    width: int = ranged(32, AT_LEAST_1)
    depth: int = ranged(5, AT_LEAST_1)
    #: pretraining crop in voxels: an edge ``p`` (a ``p³`` cube, the paper's 64), three edges
    #: ``[d, h, w]`` in the volume's axis order (an anisotropic box, e.g. ``[32, 64, 64]``), or
    #: ``plan`` (backbone nnunet: the plan's own patch size, e.g. ``[40, 224, 192]`` — several
    #: times a 64³ crop's voxels, memory and step time)
    patch_size: int | tuple[int, int, int] | typing.Literal["plan"] = ranged(
        64, Range(1, words=("plan",)))
    # batch: ``patches`` patches from each of ``volumes`` volumes per step and rank
    patches: int = ranged(32, AT_LEAST_1)
    volumes: int = ranged(1, AT_LEAST_1)
    # heads and losses
    proj_dim: int = ranged(128, AT_LEAST_1)
    tau: float = ranged(1.0, POSITIVE)
    pim_weight: float = ranged(1.0, NON_NEGATIVE)
    pic_weight: float = ranged(1.0, NON_NEGATIVE)
    pim_reduction: typing.Literal["all", "lower"] = "all"
    pic_variant: typing.Literal["reference", "paper"] = "reference"
    min_overlap: float = ranged(0.01, PROBABILITY)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    #: each method's own options by its options key (``voco``, ``vox2vec``, ...), declared in
    #: its method module; in YAML each is a key of its own, as ``sampler`` is
    method_options: Mapping[str, Any] = sections(registry.method_options)
    # optimisation
    lr: float = ranged(1e-5, NON_NEGATIVE)
    weight_decay: float = ranged(0.0, NON_NEGATIVE)
    steps: int = ranged(20000, AT_LEAST_1)
    seed: int = ranged(0, NON_NEGATIVE)
    # engine
    device: str = "auto"
    amp: bool = True
    #: channels-last 3D layout (≈2× faster steps on CPU; a layout, the computation is the same)
    channels_last: bool = True
    compile: bool = False
    num_workers: int = ranged(2, NON_NEGATIVE)
    checkpoint_every: int = ranged(500, AT_LEAST_1)
    log_every: int = ranged(10, AT_LEAST_1)

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
        check_ranges(self)
        fill_sections(self)
        if self.backbone == "nnunet":
            # nnunet_plans may stay empty when pretraining on an nnU-Net preprocessed folder:
            # the engine takes the folder's plans (and, for patch_size plan, their patch size);
            # the encoder's strides are checked against the patch when it is built
            if not self.nnunet_configuration:
                raise ValueError("backbone nnunet needs nnunet_configuration (e.g. 3d_fullres)")
        elif self.patch_size == "plan":
            raise ValueError("patch_size plan takes the patch of an nnU-Net plan; it needs "
                             "backbone nnunet")
        else:
            check_unet_patch(self.patch_size, self.depth)

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """The pretraining crop's edge on each axis (a cube's edge three times)."""
        return patch_shape(self.patch_size)

    @property
    def anisotropic(self) -> bool:
        """Is the crop a box rather than a cube?"""
        return len(set(self.patch_shape)) > 1

    def options(self, schema: type[T]) -> T:
        """The options of type ``schema`` (a method's, e.g. ``VoCoConfig``) in this config."""
        for section in self.method_options.values():
            if type(section) is schema:
                out: T = section
                return out
        raise PimpicError(f"no registered method declares the options {schema.__name__}")
