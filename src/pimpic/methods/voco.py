"""VoCo baseline (Wu et al., CVPR 2024; docs/method.md §7): ``voco`` and ``voco-ema``.

Sampling (per volume, :class:`VoCoSampler`): a region of ``gx·p × gy·p × p`` voxels at a random
position is read from the memory-mapped volume (padded where it leaves the volume). The
``gx × gy`` grid cells (``p³`` each, in-plane grid, full depth of the region) are the base
crops; ``num_random`` random ``p³`` crops lie inside the region. The target ``y[i, k]`` is the
fraction of random crop ``i`` inside base ``k``, counted in voxels of the preprocessed
(1.5 mm) grid — no whole-volume resize as in the original — so ``Σ_k y[i, k] = 1``.

Model (:class:`VoCoModule`): embedding = global average pool of the deepest encoder feature
``f_depth`` → 3-layer projector (Linear → BN → ReLU ×2 → Linear, width ``proj_dim``; BN without
affine or running statistics and truncated-normal init as in the CVPR code). Loss: see
:mod:`pimpic.losses.voco`.

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pimpic.config import PretrainConfig
from pimpic.data.sampling import crop
from pimpic.losses.voco import voco_loss
from pimpic.methods.base import MethodSpec, register
from pimpic.models.backbone import levels_of


def random_start(shape: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random box start per axis: inside the volume where it fits, otherwise a random
    placement of the volume inside the (larger) box, so the box covers it and padding is split
    randomly between the two sides. ``(3,)`` int64."""
    room = np.asarray(shape, np.int64) - np.asarray(size, np.int64)
    return rng.integers(np.minimum(room, 0), np.maximum(room, 0) + 1).astype(np.int64)


def box_overlaps(boxes_a: np.ndarray, boxes_b: np.ndarray, patch_volume: int) -> np.ndarray:
    """``|a_i ∩ b_k| / patch_volume`` for boxes ``(n, 2, 3)`` and ``(K, 2, 3)`` → ``(n, K)``."""
    lo = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    hi = np.minimum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    inter = np.clip(hi - lo, 0, None).prod(axis=-1)
    return (inter / patch_volume).astype(np.float32)


class VoCoSampler:
    """Base crops on a grid and random crops inside it, for one volume.

    Args:
        patch_size: crop edge ``p`` (voxels).
        grid: ``(gx, gy)`` base crops in-plane; the region is ``gx·p × gy·p × p``.
        num_random: random crops per volume.
        pad_value: intensity of voxels outside the volume.

    ``sampler(image (X, Y, Z), rng)`` returns ``bases (K, 1, p, p, p)`` and
    ``randoms (n, 1, p, p, p)`` float32, ``targets (n, K)`` float32 overlap fractions, and
    ``base_boxes (K, 2, 3)`` / ``random_boxes (n, 2, 3)`` int64 in the volume's voxel
    coordinates (may extend outside it where padded). Bases are ordered x-major
    (``k = i·gy + j`` for grid cell ``(i, j)``).
    """

    def __init__(self, patch_size: int, grid: tuple[int, int], num_random: int,
                 pad_value: float = 0.0) -> None:
        self.patch_size = int(patch_size)
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_random = int(num_random)
        self.pad_value = float(pad_value)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p = self.patch_size
        gx, gy = self.grid
        size = np.array([gx * p, gy * p, p], dtype=np.int64)
        origin = random_start(np.asarray(image.shape), size, rng)
        region = crop(image, np.stack([origin, origin + size]), self.pad_value)

        ii, jj = np.meshgrid(np.arange(gx), np.arange(gy), indexing="ij")
        base_starts = np.stack([ii.ravel() * p, jj.ravel() * p, np.zeros(gx * gy, np.int64)], 1)
        rand_starts = rng.integers(0, size - p + 1, size=(self.num_random, 3)).astype(np.int64)
        base_local = np.stack([base_starts, base_starts + p], axis=1)
        rand_local = np.stack([rand_starts, rand_starts + p], axis=1)

        def cut(starts: np.ndarray) -> np.ndarray:
            crops = [region[x:x + p, y:y + p, z:z + p] for x, y, z in starts]
            return np.stack(crops)[:, None].astype(np.float32)

        return {
            "bases": cut(base_starts),
            "randoms": cut(rand_starts),
            "targets": box_overlaps(rand_local, base_local, p**3),
            "base_boxes": base_local + origin,
            "random_boxes": rand_local + origin,
        }


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
        return self.net(x)


def embed(encoder: nn.Module, projector: nn.Module, crops: Tensor) -> Tensor:
    """Crops ``(M, 1, p, p, p)`` → embeddings ``(M, d)``: global average pool of the deepest
    pyramid level, then the projector."""
    deepest = encoder(crops)[-1]
    return projector(deepest.mean(dim=(2, 3, 4)))


class _Teacher(nn.Module):
    """The momentum copy of encoder + projector (``voco-ema``); never trained directly."""

    def __init__(self, encoder: nn.Module, projector: VoCoProjector) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.projector = copy.deepcopy(projector)
        self.requires_grad_(False)

    def forward(self, crops: Tensor) -> Tensor:
        return embed(self.encoder, self.projector, crops)


def embedding_std(z: Tensor) -> Tensor:
    """Collapse monitor: per-dimension std over rows of the L2-normalised embeddings ``(M, d)``,
    averaged over dimensions (0 when collapsed, about ``1/√d`` when spread out)."""
    z = F.normalize(z.detach().float(), dim=-1)
    return z.std(dim=0).mean() if z.shape[0] > 1 else z.new_zeros(())


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
    return VoCoSampler(cfg.patch_size, cfg.voco.grid, cfg.voco.num_random, cfg.sampler.pad_value)


def build_voco(encoder: nn.Module, cfg: PretrainConfig) -> VoCoModule:
    return VoCoModule(encoder, cfg.voco.proj_dim, cfg.voco.reg_weight)


def build_voco_ema(encoder: nn.Module, cfg: PretrainConfig) -> VoCoModule:
    return VoCoModule(encoder, cfg.voco.proj_dim, cfg.voco.reg_weight, cfg.voco.ema_momentum)


def _crops(cfg: PretrainConfig) -> int:
    """Base crops plus random crops per volume."""
    return cfg.voco.grid[0] * cfg.voco.grid[1] + cfg.voco.num_random


register(MethodSpec("voco", build_sampler, build_voco,
                    "VoCo (CVPR 2024): predict a random crop's overlap with grid base crops",
                    crops_per_volume=_crops))
register(MethodSpec("voco-ema", build_sampler, build_voco_ema,
                    "VoCo with the public repository's momentum (EMA) teacher for the bases",
                    crops_per_volume=_crops))
