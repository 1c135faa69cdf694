"""Losses: pure, vectorised, shape-documented (one per file)."""

from pimpic.pretraining.losses.pic import pic_loss, region_means
from pimpic.pretraining.losses.pim import pim_descriptor, pim_loss

__all__ = ["pic_loss", "pim_descriptor", "pim_loss", "region_means"]
