"""The backbone a pretraining config names: the paper's U-Net encoder or nnU-Net's (both follow
the pyramid contract of :mod:`pimpic.models.backbone`)."""

from __future__ import annotations

import dataclasses

from torch import nn

from pimpic.config import PretrainConfig
from pimpic.errors import PimpicError
from pimpic.models.backbone import check_patch
from pimpic.models.unet import Encoder
from pimpic.nnunet.network import build_encoder
from pimpic.nnunet.plans import load_plan

NO_PLANS = ("backbone nnunet: set nnunet_plans to an nnU-Net plans file (or pretrain on an "
            "nnU-Net preprocessed folder, which has one)")


def resolve_patch(cfg: PretrainConfig) -> PretrainConfig:
    """``cfg`` with ``patch_size: plan`` replaced by the patch size of the nnU-Net plan it
    names (three edges, in the plan's axis order); any other ``cfg`` unchanged."""
    if cfg.patch_size != "plan":
        return cfg
    if not cfg.nnunet_plans:
        raise PimpicError(f"patch_size plan: {NO_PLANS}")
    plan = load_plan(cfg.nnunet_plans, cfg.nnunet_configuration)
    d, h, w = plan.patch_size
    return dataclasses.replace(cfg, patch_size=(d, h, w))


def build_backbone(cfg: PretrainConfig) -> nn.Module:
    """The encoder ``cfg.backbone`` names: ``unet`` (the paper's, from ``in_channels``,
    ``width``, ``depth``) or ``nnunet`` (from ``nnunet_plans`` and ``nnunet_configuration``),
    checked to divide ``patch_size`` (``plan``: the plan's) on every axis."""
    if cfg.backbone == "nnunet":
        if not cfg.nnunet_plans:
            raise PimpicError(NO_PLANS)
        encoder = build_encoder(cfg.nnunet_plans, cfg.nnunet_configuration, cfg.in_channels)
        patch = resolve_patch(cfg)
        check_patch(encoder.levels, patch.patch_size if isinstance(patch.patch_size, int)
                    else patch.patch_shape, "nnU-Net encoder")
        return encoder
    return Encoder(cfg.in_channels, cfg.width, cfg.depth)
