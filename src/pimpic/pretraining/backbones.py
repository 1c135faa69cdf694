"""The backbone table: every backbone pimpic builds, rebuilt from the metadata that describes it.

A backbone (:class:`~pimpic.models.backbone.Backbone`) describes itself with
``architecture()``, a JSON mapping whose ``name`` is its key in :data:`BACKBONES`; the
table's builder turns that mapping back into the module. :func:`build_encoder` is the one
place a backbone is built — from a pretraining config (:func:`build_backbone`), a fine-tuning
config, an ``encoder.safetensors`` (:func:`pimpic.models.export.load_encoder`) or a
``model.safetensors`` (:func:`pimpic.segmentation.model_file.load_model`). A new backbone is
its file (the module, with ``levels``, ``in_channels``, ``architecture()`` and a builder from
that mapping) and one line in the table.

Registered: the paper's U-Net encoder (``unet3d-encoder``: ``in_channels``, ``width``,
``depth``) and nnU-Net's encoder (``nnunet-encoder``: the ``plans`` file, its
``configuration`` and ``in_channels``; its weight file records the plans by name only, so it is
rebuilt where that file is found, and fine-tuned by nnU-Net itself).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from pimpic.errors import PimpicError
from pimpic.models.backbone import Backbone, levels_of
from pimpic.models.unet import UNET, Encoder, unet_architecture
from pimpic.nnunet.network import NNUNET
from pimpic.nnunet.network import build_encoder as build_nnunet_encoder
from pimpic.nnunet.plans import load_plan
from pimpic.patch import check_strides
from pimpic.pretraining.config import PretrainConfig

NO_PLANS = ("backbone nnunet: set nnunet_plans to an nnU-Net plans file (or pretrain on an "
            "nnU-Net preprocessed folder, which has one)")


def _nnunet(arch: Mapping[str, Any]) -> nn.Module:
    return build_nnunet_encoder(arch["plans"], arch["configuration"],
                                int(arch.get("in_channels", 1)))


@dataclasses.dataclass(frozen=True)
class BackboneKind:
    """One entry of :data:`BACKBONES`.

    Args:
        title: how messages name it (``"nnU-Net encoder level 4"``).
        build: its ``architecture()`` mapping → a new, randomly initialised module.
    """

    title: str
    build: Callable[[Mapping[str, Any]], nn.Module]


#: the backbone table: ``architecture()["name"]`` → how to rebuild it
BACKBONES: dict[str, BackboneKind] = {
    UNET: BackboneKind("U-Net encoder", Encoder.from_architecture),
    NNUNET: BackboneKind("nnU-Net encoder", _nnunet),
}


def build_encoder(arch: Mapping[str, Any]) -> nn.Module:
    """The backbone ``arch`` describes (a backbone's ``architecture()``; no ``name``: the
    U-Net encoder, as files written before names were recorded)."""
    name = str(arch.get("name", UNET))
    if name not in BACKBONES:
        raise PimpicError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    module = BACKBONES[name].build(arch)
    if not isinstance(module, Backbone):
        raise TypeError(f"backbone {name!r}: {type(module).__name__} lacks in_channels, levels "
                        "or architecture() (pimpic.models.backbone.Backbone)")
    return module


def resolve_patch(cfg: PretrainConfig) -> PretrainConfig:
    """``cfg`` with ``patch_size: plan`` replaced by the patch size of the nnU-Net plan it
    names (three edges, in the plan's axis order); any other ``cfg`` unchanged. Done once,
    where a run starts: everything after it sees voxels."""
    if cfg.patch_size != "plan":
        return cfg
    if not cfg.nnunet_plans:
        raise PimpicError(f"patch_size plan: {NO_PLANS}")
    plan = load_plan(cfg.nnunet_plans, cfg.nnunet_configuration)
    d, h, w = plan.patch_size
    return dataclasses.replace(cfg, patch_size=(d, h, w))


def config_architecture(cfg: PretrainConfig) -> dict[str, Any]:
    """What describes the backbone ``cfg.backbone`` names: ``unet`` (the paper's, from
    ``in_channels``, ``width``, ``depth``) or ``nnunet`` (from ``nnunet_plans`` and
    ``nnunet_configuration``)."""
    if cfg.backbone == "nnunet":
        if not cfg.nnunet_plans:
            raise PimpicError(NO_PLANS)
        return {"name": NNUNET, "plans": cfg.nnunet_plans,
                "configuration": cfg.nnunet_configuration, "in_channels": cfg.in_channels}
    return unet_architecture(cfg.in_channels, cfg.width, cfg.depth)


def build_backbone(cfg: PretrainConfig) -> nn.Module:
    """The encoder a pretraining config names (:func:`config_architecture`), checked to
    divide ``patch_size`` on every axis (``plan`` must be resolved first:
    :func:`resolve_patch`)."""
    arch = config_architecture(cfg)
    encoder = build_encoder(arch)
    check_strides(levels_of(encoder), cfg.patch_size, BACKBONES[str(arch["name"])].title)
    return encoder
