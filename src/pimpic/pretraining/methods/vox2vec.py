"""vox2vec baseline (Goncharov et al., MICCAI 2023; docs/method.md §7): voxel-level contrast.

Sampling (per volume, :class:`~pimpic.pretraining.samplers.vox2vec.Vox2VecSampler`):
``num_pairs`` pairs of ``p³`` crops. The first crop of a pair is placed uniformly (inside the
volume where it fits); the second is shifted by ``U{−p/2, …, p/2}`` voxels per axis and clamped
to the same range, so the two always share at least ``(p/2)³`` voxels.
There is no spatial augmentation (as in the original), so voxel correspondence is a pure
translation. Up to ``num_voxels`` positions of the overlap are drawn without replacement —
among the "body" voxels (intensity above ``foreground_threshold``, the analogue of the
original's body mask; all overlap voxels if none is) — and returned in both crops' local
coordinates, padded to exactly ``num_voxels`` with a validity mask. Each crop then gets an
independent intensity augmentation in the [0, 1] window: p 0.5 in-plane Gaussian blur
(σ ~ U(0.25, 1.5) voxels), p 0.5 Gaussian noise (σ ~ U(0, 0.05) ≈ 30 HU in the default
600 HU window), p 0.8 a random contrast ``x·a + b`` (a ~ U(0.8, 1.25), b ~ U(−0.1, 0.1)),
clipped to [0, 1] (the original's random HU re-windowing, on already-windowed data; the
original's sharpening branch is left out).

Model (:class:`Vox2VecModule`): the embedding of a voxel at ``v`` (crop coordinates) is the
concatenation over pyramid levels ``l = 1..depth`` of ``f_l[v // 2^(l−1)]`` (nearest cell,
as in the original), projected by ``Linear(C, C) → BN → ReLU → Linear(C, C) → BN → ReLU →
Linear(C, proj_dim)`` and L2-normalised (``C = Σ_l K·2^(l−1)``). BatchNorm statistics are taken
over the valid voxels only. Loss: symmetric InfoNCE, :mod:`pimpic.pretraining.losses.vox2vec`.

Deviation from the original: negatives are the sampled voxels of the same crop pair (the
original pools the negatives of its 10 pairs per CT), which keeps the similarity matrices
``2n × 2n`` per pair. Pairs per volume = ``patches // 2``, so a step sees as many crops as a
PiMPiC step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pimpic.config import AT_LEAST_1, POSITIVE, check_ranges, ranged
from pimpic.models import ProjectionHead
from pimpic.models.backbone import levels_of
from pimpic.pretraining.losses.vox2vec import vox2vec_infonce
from pimpic.pretraining.methods._shared import embedding_std
from pimpic.pretraining.samplers.vox2vec import Vox2VecSampler
from pimpic.registry import MethodSpec, register

if TYPE_CHECKING:
    from pimpic.pretraining.config import PretrainConfig


@dataclasses.dataclass(frozen=True)
class Vox2VecConfig:
    """vox2vec's options (``vox2vec:`` in a pretraining config): voxel-level contrast over
    the feature pyramid."""

    proj_dim: int = ranged(128, AT_LEAST_1)
    #: positive voxels sampled per crop pair
    num_voxels: int = ranged(1024, AT_LEAST_1)
    tau: float = ranged(0.1, POSITIVE)

    def __post_init__(self) -> None:
        check_ranges(self)


def pyramid_voxel_features(pyramid: list[Tensor], voxels: Tensor,
                           strides: Sequence[Sequence[int]] | None = None) -> Tensor:
    """Features of every pyramid level at given voxels, concatenated over levels.

    Args:
        pyramid: ``[f_1, …, f_L]`` with ``f_l (B, C_l, D/s_l, H/s_l, W/s_l)``.
        voxels: ``(B, n, 3)`` long, ``(d, h, w)`` coordinates in the crop's voxels.
        strides: each level's stride ``s_l`` per axis (the backbone's levels); default
            ``2^(l−1)`` on every axis (the paper's U-Net).

    Returns:
        ``(B, n, Σ C_l)``: ``f_l[b, :, v // s_l]`` (nearest coarser cell) per level.
    """
    out = []
    for level, f in enumerate(pyramid):
        b, c, _, h, w = f.shape
        stride = 2**level if strides is None else torch.as_tensor(
            list(strides[level]), dtype=voxels.dtype, device=voxels.device)
        idx = voxels.div(stride, rounding_mode="floor")
        lin = (idx[..., 0] * h + idx[..., 1]) * w + idx[..., 2]  # (B, n)
        out.append(f.flatten(2).gather(2, lin[:, None, :].expand(b, c, -1)))
    return torch.cat(out, dim=1).transpose(1, 2)


class Vox2VecModule(nn.Module):
    """The vox2vec pretext module. ``forward(batch)`` takes the stacked sampler output
    (``crops (V, P, 2, 1, p, p, p)``, ``voxels (V, P, 2, n, 3)``, ``valid (V, P, n)``) and returns
    scalars ``loss``, ``embedding_std`` and ``positives`` (valid voxel pairs per crop pair).

    Args:
        encoder: the shared encoder.
        proj_dim: output embedding size (128).
        tau: InfoNCE temperature (0.1).
    """

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, tau: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        levels = levels_of(encoder)
        channels = sum(level.width for level in levels)
        self.strides = [level.stride for level in levels]
        self.head = ProjectionHead(channels, channels, proj_dim)
        self.tau = tau

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        crops, voxels, valid = batch["crops"], batch["voxels"], batch["valid"].bool()
        n = voxels.shape[-2]
        pairs = crops.shape[0] * crops.shape[1]
        feats = pyramid_voxel_features(self.encoder(crops.flatten(0, 2)),
                                       voxels.reshape(-1, n, 3).long(),
                                       self.strides)  # (2·pairs, n, C)
        rows = valid.reshape(pairs, 1, n).expand(pairs, 2, n).reshape(-1)
        flat = feats.reshape(-1, feats.shape[-1])
        # BatchNorm statistics over real voxels only; padding rows are zeros (masked in the loss)
        if int(rows.sum()) >= 2:
            z_valid = self.head(flat[rows])
            z = z_valid.new_zeros(flat.shape[0], z_valid.shape[-1]).index_put((rows,), z_valid)
        else:
            z_valid = z = self.head(flat)
        z = z.view(pairs, 2, n, -1)
        valid = valid.reshape(pairs, n)
        loss = vox2vec_infonce(z[:, 0], z[:, 1], valid, self.tau)
        return {"loss": loss, "embedding_std": embedding_std(z_valid),
                "positives": valid.float().sum(dim=1).mean()}


def build_sampler(cfg: PretrainConfig) -> Vox2VecSampler:
    return Vox2VecSampler(cfg.patch_shape, max(1, cfg.patches // 2),
                          cfg.options(Vox2VecConfig).num_voxels,
                          cfg.sampler.foreground_threshold, cfg.sampler.pad_value)


def build_module(encoder: nn.Module, cfg: PretrainConfig) -> Vox2VecModule:
    vox2vec = cfg.options(Vox2VecConfig)
    return Vox2VecModule(encoder, vox2vec.proj_dim, vox2vec.tau)


register(MethodSpec("vox2vec", build_sampler, build_module, display_name="vox2vec",
                    colour="#9467bd", crops_per_volume=lambda cfg: 2 * max(1, cfg.patches // 2),
                    options=Vox2VecConfig,
                    description="vox2vec (MICCAI 2023): voxel-level InfoNCE over the feature "
                    "pyramid"))
