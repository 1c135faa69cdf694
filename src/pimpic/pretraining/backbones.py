"""The backbone a pretraining config names: the paper's U-Net encoder or nnU-Net's (both follow
the pyramid contract of :mod:`pimpic.models.backbone`)."""

from __future__ import annotations

import dataclasses

from torch import nn

from pimpic.errors import PimpicError
from pimpic.models.unet import Encoder
from pimpic.nnunet.network import build_encoder
from pimpic.nnunet.plans import load_plan
from pimpic.patch import check_strides
from pimpic.pretraining.config import PretrainConfig

NO_PLANS = ("backbone nnunet: set nnunet_plans to an nnU-Net plans file (or pretrain on an "
            "nnU-Net preprocessed folder, which has one)")


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


def build_backbone(cfg: PretrainConfig) -> nn.Module:
    """The encoder ``cfg.backbone`` names: ``unet`` (the paper's, from ``in_channels``,
    ``width``, ``depth``; the config checked its patch) or ``nnunet`` (from ``nnunet_plans``
    and ``nnunet_configuration``), checked here to divide ``patch_size`` on every axis
    (``plan`` must be resolved first: :func:`resolve_patch`)."""
    if cfg.backbone == "nnunet":
        if not cfg.nnunet_plans:
            raise PimpicError(NO_PLANS)
        encoder = build_encoder(cfg.nnunet_plans, cfg.nnunet_configuration, cfg.in_channels)
        check_strides(encoder.levels, cfg.patch_size, "nnU-Net encoder")
        return encoder
    return Encoder(cfg.in_channels, cfg.width, cfg.depth)
