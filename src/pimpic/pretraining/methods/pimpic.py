"""PiMPiC pretext task and its ablations ``pim`` and ``pic`` (docs/method.md §2–§6).

Data flow of one step (V volumes × N patches, patch ``p³`` or a box ``p_x × p_y × p_z``)::

    patches (V, N, 1, p, p, p) ──encoder──▶ pyramid f1..f5 of all V·N patches at once
    PiM: channel-mean of f3..f5 ─▶ head f ─▶ P (V, N, d);  C = P Pᵀ vs S = overlap(boxes)
    PiC: pairs with S ≥ 0.01 per volume ─▶ region means on f1, f2, f3 (scales 1, 2, 4)
         ─▶ (P', 4, 7K) ─▶ head g on all 4P' rows ─▶ Q (P', 4, d) ─▶ contrastive loss

(f1..f5 are the paper U-Net's levels. Any backbone works: PiM reads its three deepest levels
and PiC its levels at strides 1, 2 and 4, found by stride (:mod:`pimpic.models.backbone`).)

Overlaps never cross volumes: pairs are formed per volume, then all volumes' pairs go through
head g together (one BatchNorm batch, as in the paper for V = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pimpic.models import ProjectionHead
from pimpic.models.backbone import (
    Level,
    grid_size,
    isotropic_levels,
    levels_of,
    pic_levels,
    pim_levels,
)
from pimpic.pretraining.geometry import intersection_pairs, overlap_matrix
from pimpic.pretraining.losses import pic_loss, pim_descriptor, pim_loss, region_means
from pimpic.pretraining.samplers.overlap import OverlapPatchSampler
from pimpic.registry import MethodSpec, register

if TYPE_CHECKING:
    from pimpic.pretraining.config import PretrainConfig


def descriptor_dim(patch_size: int | Sequence[int],
                   depth_or_levels: int | Sequence[Level]) -> int:
    """Length of :func:`~pimpic.pretraining.losses.pim_descriptor`: the cells of PiM's levels,
    ``Σ (p / 2^(l−1))³`` over the last three levels of a ``depth``-level U-Net (4672 for 64³,
    depth 5), or ``Σ Π_a (p_a / s_a)`` over the three deepest of a backbone's ``levels`` (a
    patch of three edges ``p_a``, levels of strides ``s_a`` per axis)."""
    levels = (isotropic_levels([1] * depth_or_levels) if isinstance(depth_or_levels, int)
              else depth_or_levels)
    return sum(math.prod(grid_size(levels[i], patch_size)) for i in pim_levels(levels))


class PiMPiC(nn.Module):
    """Encoder + head f (PiM) and/or head g (PiC).

    Args:
        encoder: the shared backbone (kept as ``.encoder``; :mod:`pimpic.models.backbone`).
        cfg: pretraining config (patch size, d, τ, loss weights and variants, min overlap).
        use_pim / use_pic: which terms this module computes (``pim`` and ``pic`` ablations
            build only their own head).

    ``forward(batch)`` with ``batch["patches"] (V, N, 1, p, p, p)`` and
    ``batch["boxes"] (V, N, 2, 3)`` returns scalar tensors ``loss`` and its parts (see
    :meth:`forward`).
    """

    def __init__(self, encoder: nn.Module, cfg: PretrainConfig, use_pim: bool = True,
                 use_pic: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.use_pim = use_pim
        self.use_pic = use_pic
        d = cfg.proj_dim
        levels = levels_of(encoder)
        self.pim_index = pim_levels(levels) if use_pim else []
        self.pic_index = pic_levels(levels) if use_pic else []
        self.pic_strides = [levels[i].stride for i in self.pic_index]
        if use_pim:
            self.head_f = ProjectionHead(descriptor_dim(cfg.patch_shape, levels), 2 * d, d)
        if use_pic:
            self.head_g = ProjectionHead(sum(levels[i].width for i in self.pic_index), d, d)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Returns ``loss`` (weighted sum of the computed terms) and, when computed: ``pim``,
        ``overlap_error`` (mean |C − S| over all entries), ``embedding_std`` (mean over
        dimensions of the std of P across patches: near 0 means collapse), ``pic`` and
        ``pairs`` (number of PiC pairs, float). Diagnostics are detached."""
        patches, boxes = batch["patches"], batch["boxes"]
        v, n = patches.shape[:2]
        feats = self.encoder(patches.reshape(v * n, *patches.shape[2:]))
        boxes = boxes.to(patches.device).long()
        overlap = overlap_matrix(boxes, self.cfg.patch_shape)  # (V, N, N)
        out: dict[str, Tensor] = {}
        loss = patches.new_zeros((), dtype=torch.float32)
        if self.use_pim:
            pim, extras = self._pim(feats, overlap, v, n)
            out["pim"] = pim
            out.update(extras)
            loss = loss + self.cfg.pim_weight * pim
        if self.use_pic:
            pic, n_pairs = self._pic(feats, boxes, overlap, n)
            out["pic"] = pic
            out["pairs"] = torch.tensor(float(n_pairs), device=patches.device)
            loss = loss + self.cfg.pic_weight * pic
        if not self.use_pim:
            # PiC never reads the deep levels; a zero term keeps their parameters in the graph
            # so DDP (which expects a gradient for every parameter) needs no unused-param scan
            for i, f in enumerate(feats):
                if i not in self.pic_index:
                    loss = loss + f.sum() * 0.0
        out["loss"] = loss
        return out

    def _pim(self, feats: list[Tensor], overlap: Tensor, v: int,
             n: int) -> tuple[Tensor, dict[str, Tensor]]:
        proj = self.head_f(pim_descriptor([feats[i] for i in self.pim_index])).reshape(v, n, -1)
        loss = pim_loss(proj, overlap, self.cfg.pim_reduction)
        with torch.no_grad():
            p = proj.float()
            sim = p @ p.transpose(-1, -2)
            extras = {
                "overlap_error": (sim - overlap).abs().mean(),
                "embedding_std": p.reshape(v * n, -1).std(dim=0).mean()
                if v * n > 1 else p.new_zeros(()),
            }
        return loss, extras

    def _pic(self, feats: list[Tensor], boxes: Tensor, overlap: Tensor,
             n: int) -> tuple[Tensor, int]:
        pairs, local = [], []
        for vol in range(boxes.shape[0]):
            pv, lv = intersection_pairs(boxes[vol], overlap[vol], self.cfg.min_overlap)
            pairs.append(pv + vol * n)  # index into the flattened V·N feature batch
            local.append(lv)
        all_pairs, all_local = torch.cat(pairs), torch.cat(local)
        n_pairs = int(all_pairs.shape[0])
        if n_pairs == 0:
            # keep every PiC parameter in the graph (DDP expects all of them to get a grad)
            zero = torch.stack([t.sum().float() for t in [*self.head_g.parameters(), *feats]])
            zero = zero.sum() * 0.0
            return zero, 0
        means = torch.cat([region_means(feats[i], all_pairs, all_local, stride)
                           for i, stride in zip(self.pic_index, self.pic_strides, strict=True)],
                          dim=2)  # (P, 4, 7K)
        q = self.head_g(means.reshape(4 * n_pairs, -1))
        return pic_loss(q.reshape(n_pairs, 4, -1), self.cfg.tau, self.cfg.pic_variant), n_pairs


def build_sampler(cfg: PretrainConfig) -> OverlapPatchSampler:
    """The overlapping-patch sampler of docs/method.md §2 for this config."""
    return OverlapPatchSampler(cfg.patch_shape, cfg.patches, cfg.sampler)


def _builder(use_pim: bool, use_pic: bool) -> Callable[[nn.Module, PretrainConfig], nn.Module]:
    def build(encoder: nn.Module, cfg: PretrainConfig) -> nn.Module:
        return PiMPiC(encoder, cfg, use_pim=use_pim, use_pic=use_pic)
    return build


register(MethodSpec("pimpic", build_sampler, _builder(True, True), display_name="PiMPiC",
                    colour="#d62728", loss_names=("pim", "pic"),
                    description="PiM + PiC (the paper's method)"))
register(MethodSpec("pim", build_sampler, _builder(True, False), display_name="PiM",
                    colour="#1f77b4", loss_names=("pim",),
                    description="PiM only: overlap measurement (ablation)"))
register(MethodSpec("pic", build_sampler, _builder(False, True), display_name="PiC",
                    colour="#2ca02c", loss_names=("pic",),
                    description="PiC only: intersection contrast (ablation)"))
