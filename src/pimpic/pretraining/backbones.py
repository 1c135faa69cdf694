"""The backbone a pretraining config names: the paper's U-Net encoder or nnU-Net's (both follow
the pyramid contract of :mod:`pimpic.models.backbone`)."""

from __future__ import annotations

from torch import nn

from pimpic.config import PretrainConfig
from pimpic.errors import PimpicError
from pimpic.models.backbone import check_patch
from pimpic.models.unet import Encoder
from pimpic.nnunet.network import build_encoder


def build_backbone(cfg: PretrainConfig) -> nn.Module:
    """The encoder ``cfg.backbone`` names: ``unet`` (the paper's, from ``in_channels``,
    ``width``, ``depth``) or ``nnunet`` (from ``nnunet_plans`` and ``nnunet_configuration``)."""
    if cfg.backbone == "nnunet":
        if not cfg.nnunet_plans:
            raise PimpicError("backbone nnunet: set nnunet_plans to an nnU-Net plans file (or "
                              "pretrain on an nnU-Net preprocessed folder, which has one)")

        encoder = build_encoder(cfg.nnunet_plans, cfg.nnunet_configuration, cfg.in_channels)
        check_patch(encoder.levels, cfg.patch_size, "nnU-Net encoder")
        return encoder
    return Encoder(cfg.in_channels, cfg.width, cfg.depth)
