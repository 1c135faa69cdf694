"""VoCo baseline (Wu et al., CVPR 2024; docs/method.md §7): ``voco`` and ``voco-ema``.

Sampling (per volume, :class:`~pimpic.pretraining.samplers.voco.VoCoSampler`): base crops on
a ``gx × gy`` grid and random crops inside it; the target ``y[i, k]`` is the fraction of random
crop ``i`` inside base ``k`` (see the sampler's module).

Model (:class:`VoCoModule`): embedding = global average pool of the deepest encoder feature
``f_depth`` → 3-layer projector (Linear → BN → ReLU ×2 → Linear, width ``proj_dim``; BN without
affine or running statistics and truncated-normal init as in the CVPR code). Loss: see
:mod:`pimpic.pretraining.losses.voco`.

* ``voco`` — the CVPR paper's version ("v1"): bases and random crops go through the student;
  logits against the student's stop-gradient bases; count-weighted ``L_pos``.
* ``voco-ema`` — the public repository's variant: the logits compare the student's random
  crops with the bases embedded by a momentum teacher (EMA of encoder + projector,
  ``t ← m·t + (1 − m)·s`` in :meth:`VoCoModule.after_step`); the orthogonality term stays on the
  student's bases; overlap-weighted ``L_pos``. The teacher's parameters have
  ``requires_grad=False``: the optimiser never updates them and DDP does not reduce them.

No spatial or intensity augmentation of the crops (the repository flips/rotates each crop
independently; the CVPR paper does not describe it).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pimpic.config import AT_LEAST_1, NON_NEGATIVE, PROBABILITY, check_ranges, ranged
from pimpic.models.backbone import levels_of
from pimpic.pretraining.losses.voco import voco_loss
from pimpic.pretraining.methods._shared import embedding_std
from pimpic.pretraining.samplers.voco import VoCoSampler
from pimpic.registry import MethodSpec, register

if TYPE_CHECKING:
    from pimpic.pretraining.config import PretrainConfig


@dataclasses.dataclass(frozen=True)
class VoCoConfig:
    """VoCo's options (``voco:`` in a pretraining config, shared by ``voco`` and ``voco-ema``):
    base-crop grid and random crops per volume."""

    grid: tuple[int, int] = ranged((4, 4), AT_LEAST_1)
    #: random crops per volume (each compared against all bases)
    num_random: int = ranged(4, AT_LEAST_1)
    #: projector width (3-layer MLP on global-average-pooled deepest features)
    proj_dim: int = ranged(2048, AT_LEAST_1)
    #: weight of the base-orthogonality regulariser
    reg_weight: float = ranged(1.0, NON_NEGATIVE)
    #: momentum of the teacher for ``voco-ema``
    ema_momentum: float = ranged(0.996, PROBABILITY)

    def __post_init__(self) -> None:
        check_ranges(self)


class VoCoProjector(nn.Module):
    """``Linear(in, d) → BN → ReLU → Linear(d, d) → BN → ReLU → Linear(d, d)``, ``(M, in) →
    (M, d)``. BN has no affine parameters and no running statistics (batch statistics in train
    and eval mode alike), weights are truncated-normal (std 0.02) — as in the CVPR code."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin in (in_dim, dim):
            layers += [nn.Linear(cin, dim),
                       nn.BatchNorm1d(dim, affine=False, track_running_stats=False),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dim, dim))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


def embed(encoder: nn.Module, projector: nn.Module, crops: Tensor) -> Tensor:
    """Crops ``(M, 1, p, p, p)`` → embeddings ``(M, d)``: global average pool of the deepest
    pyramid level, then the projector."""
    deepest = encoder(crops)[-1]
    out: Tensor = projector(deepest.mean(dim=(2, 3, 4)))
    return out


class _Teacher(nn.Module):
    """The momentum copy of encoder + projector (``voco-ema``); never trained directly."""

    def __init__(self, encoder: nn.Module, projector: VoCoProjector) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.projector = copy.deepcopy(projector)
        self.requires_grad_(False)

    def forward(self, crops: Tensor) -> Tensor:
        return embed(self.encoder, self.projector, crops)


class VoCoModule(nn.Module):
    """The VoCo pretext module. ``forward(batch)`` takes the stacked sampler output
    (``bases (V, K, 1, p, p, p)``, ``randoms (V, n, 1, p, p, p)``, ``targets (V, n, K)``) and
    returns scalars ``loss``, ``pred``, ``pos``, ``neg``, ``reg``, ``embedding_std``.

    Args:
        encoder: the shared encoder (student).
        proj_dim: projector width.
        reg_weight: weight of the base-orthogonality term.
        ema_momentum: ``None`` for ``voco``; the teacher momentum ``m`` for ``voco-ema``.
    """

    def __init__(self, encoder: nn.Module, proj_dim: int = 2048, reg_weight: float = 1.0,
                 ema_momentum: float | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = VoCoProjector(levels_of(encoder)[-1].width, proj_dim)
        self.reg_weight = reg_weight
        self.ema_momentum = ema_momentum
        self.teacher = _Teacher(encoder, self.projector) if ema_momentum is not None else None

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        bases, randoms, targets = batch["bases"], batch["randoms"], batch["targets"]
        v, k = bases.shape[:2]
        n = randoms.shape[1]
        # one encoder pass for all crops of all volumes (BatchNorm statistics over all of them)
        crops = torch.cat([bases.flatten(0, 1), randoms.flatten(0, 1)])
        z = embed(self.encoder, self.projector, crops)
        zb = z[: v * k].view(v, k, -1)
        zq = z[v * k:].view(v, n, -1)
        if self.teacher is None:
            out = voco_loss(zq, zb, targets, reg_weight=self.reg_weight)
        else:
            # the teacher sees the same crops, so its BatchNorm statistics match the student's
            with torch.no_grad():
                tb = self.teacher(crops)[: v * k].view(v, k, -1)
            out = voco_loss(zq, tb, targets, reg_bases=zb, reg_weight=self.reg_weight,
                            overlap_weighted=True)
        out["embedding_std"] = embedding_std(z)
        return out

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA teacher update ``t ← m·t + (1 − m)·s`` (no-op for plain ``voco``)."""
        if self.teacher is None or self.ema_momentum is None:
            return
        m = self.ema_momentum
        student = [*self.encoder.parameters(), *self.projector.parameters()]
        teacher = [*self.teacher.encoder.parameters(), *self.teacher.projector.parameters()]
        for t, s in zip(teacher, student, strict=True):
            t.lerp_(s.detach(), 1.0 - m)


def build_sampler(cfg: PretrainConfig) -> VoCoSampler:
    voco = cfg.options(VoCoConfig)
    return VoCoSampler(cfg.patch_shape, voco.grid, voco.num_random, cfg.sampler.pad_value)


def build_voco(encoder: nn.Module, cfg: PretrainConfig) -> VoCoModule:
    voco = cfg.options(VoCoConfig)
    return VoCoModule(encoder, voco.proj_dim, voco.reg_weight)


def build_voco_ema(encoder: nn.Module, cfg: PretrainConfig) -> VoCoModule:
    voco = cfg.options(VoCoConfig)
    return VoCoModule(encoder, voco.proj_dim, voco.reg_weight, voco.ema_momentum)


def _crops(cfg: PretrainConfig) -> int:
    """Base crops plus random crops per volume."""
    voco = cfg.options(VoCoConfig)
    return voco.grid[0] * voco.grid[1] + voco.num_random


#: the parts of :func:`~pimpic.pretraining.losses.voco.voco_loss`
LOSS_NAMES = ("pred", "pos", "neg", "reg")

register(MethodSpec("voco", build_sampler, build_voco, display_name="VoCo", colour="#ff7f0e",
                    loss_names=LOSS_NAMES, crops_per_volume=_crops, options=VoCoConfig,
                    description="VoCo (CVPR 2024): predict a random crop's overlap with grid "
                    "base crops"))
register(MethodSpec("voco-ema", build_sampler, build_voco_ema, display_name="VoCo-EMA",
                    colour="#bcbd22", loss_names=LOSS_NAMES, crops_per_volume=_crops,
                    options=VoCoConfig, options_key="voco",
                    description="VoCo with the public repository's momentum (EMA) teacher for "
                    "the bases"))
