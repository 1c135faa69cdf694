"""PiMPiC pretext task and its ablations ``pim`` and ``pic`` (docs/method.md §2–§6).

Data flow of one step (V volumes × N patches, patch ``p³``)::

    patches (V, N, 1, p, p, p) ──encoder──▶ pyramid f1..f5 of all V·N patches at once
    PiM: channel-mean of f3..f5 ─▶ head f ─▶ P (V, N, d);  C = P Pᵀ vs S = overlap(boxes)
    PiC: pairs with S ≥ 0.01 per volume ─▶ region means on f1, f2, f3 (scales 1, 2, 4)
         ─▶ (P', 4, 7K) ─▶ head g on all 4P' rows ─▶ Q (P', 4, d) ─▶ contrastive loss

Overlaps never cross volumes: pairs are formed per volume, then all volumes' pairs go through
head g together (one BatchNorm batch, as in the paper for V = 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pimpic.config import PretrainConfig
from pimpic.models import Encoder, ProjectionHead
from pimpic.pretraining.geometry import intersection_pairs, overlap_matrix
from pimpic.pretraining.losses import pic_loss, pim_descriptor, pim_loss, region_means
from pimpic.pretraining.samplers.overlap import OverlapPatchSampler
from pimpic.registry import MethodSpec, register

#: pyramid levels whose region means feed PiC (f1, f2, f3)
PIC_LEVELS = 3


def descriptor_dim(patch_size: int, depth: int) -> int:
    """Length of :func:`~pimpic.pretraining.losses.pim_descriptor` for a ``depth``-level encoder:
    ``Σ (p / 2^(l−1))³`` over the last three levels (4672 for 64³, depth 5)."""
    levels = range(max(1, depth - 2), depth + 1)
    return sum((patch_size // 2 ** (lvl - 1)) ** 3 for lvl in levels)


class PiMPiC(nn.Module):
    """Encoder + head f (PiM) and/or head g (PiC).

    Args:
        encoder: the shared :class:`~pimpic.models.Encoder` (kept as ``.encoder``).
        cfg: pretraining config (patch size, d, τ, loss weights and variants, min overlap).
        use_pim / use_pic: which terms this module computes (``pim`` and ``pic`` ablations
            build only their own head).

    ``forward(batch)`` with ``batch["patches"] (V, N, 1, p, p, p)`` and
    ``batch["boxes"] (V, N, 2, 3)`` returns scalar tensors ``loss`` and its parts (see
    :meth:`forward`).
    """

    def __init__(self, encoder: Encoder, cfg: PretrainConfig, use_pim: bool = True,
                 use_pic: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.use_pim = use_pim
        self.use_pic = use_pic
        d = cfg.proj_dim
        if use_pim:
            self.head_f = ProjectionHead(descriptor_dim(cfg.patch_size, encoder.depth), 2 * d, d)
        if use_pic:
            self.head_g = ProjectionHead(sum(encoder.widths[:PIC_LEVELS]), d, d)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Returns ``loss`` (weighted sum of the computed terms) and, when computed: ``pim``,
        ``overlap_error`` (mean |C − S| over all entries), ``embedding_std`` (mean over
        dimensions of the std of P across patches: near 0 means collapse), ``pic`` and
        ``pairs`` (number of PiC pairs, float). Diagnostics are detached."""
        patches, boxes = batch["patches"], batch["boxes"]
        v, n = patches.shape[:2]
        feats = self.encoder(patches.reshape(v * n, *patches.shape[2:]))
        boxes = boxes.to(patches.device).long()
        overlap = overlap_matrix(boxes, self.cfg.patch_size)  # (V, N, N)
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
            for f in feats[PIC_LEVELS:]:
                loss = loss + f.sum() * 0.0
        out["loss"] = loss
        return out

    def _pim(self, feats: list[Tensor], overlap: Tensor, v: int,
             n: int) -> tuple[Tensor, dict[str, Tensor]]:
        proj = self.head_f(pim_descriptor(feats)).reshape(v, n, -1)
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
        levels = feats[:PIC_LEVELS]
        means = torch.cat([region_means(f, all_pairs, all_local, 2**lvl)
                           for lvl, f in enumerate(levels)], dim=2)  # (P, 4, 7K)
        q = self.head_g(means.reshape(4 * n_pairs, -1))
        return pic_loss(q.reshape(n_pairs, 4, -1), self.cfg.tau, self.cfg.pic_variant), n_pairs


def build_sampler(cfg: PretrainConfig) -> OverlapPatchSampler:
    """The overlapping-patch sampler of docs/method.md §2 for this config."""
    return OverlapPatchSampler(cfg.patch_size, cfg.patches, cfg.sampler)


def _builder(use_pim: bool, use_pic: bool) -> Callable[[Encoder, PretrainConfig], nn.Module]:
    def build(encoder: Encoder, cfg: PretrainConfig) -> nn.Module:
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
