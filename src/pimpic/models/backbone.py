"""The backbone contract: an encoder that returns a feature pyramid and describes its levels.

A backbone (:class:`Backbone`) is an ``nn.Module`` whose ``forward(x (B, C, D, H, W))`` returns
the list of its pyramid levels, finest first, and whose ``levels`` attribute describes them: one
:class:`Level` per entry, with its ``stride`` (voxels of the input per cell, per axis) and its
``width`` (channels). ``architecture()`` is what its weight file records about it — a JSON
mapping with a ``name`` — from which the backbone table rebuilds it
(:func:`pimpic.pretraining.backbones.build_encoder`); :func:`check_backbone` checks a module
against the contract. The pretext tasks never index the pyramid by position; they ask for the
levels they need by stride:

* PiC (docs/method.md §5) takes the levels at strides 1, 2 and 4 (:func:`pic_levels`);
* PiM (§4) takes the three deepest levels (:func:`pim_levels`) — strides 4, 8, 16 for the
  paper's U-Net;
* VoCo takes the deepest level, vox2vec all of them, each at its own stride.

Two backbones are registered: the paper's U-Net encoder (:class:`pimpic.models.unet.Encoder`, the
default, strides ``2^l`` on every axis) and nnU-Net's encoders built from a plans file
(:mod:`pimpic.nnunet.network`; strides from the plan, possibly anisotropic, e.g. ``(1, 2, 2)``).
A level's *nominal* stride is its largest per-axis stride, so an in-plane-only downsampling
``(1, 2, 2)`` counts as stride 2; the region means of PiC still map boxes per axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from pimpic.errors import PimpicError
from pimpic.patch import patch_shape

#: the nominal strides whose levels PiC reads (f1, f2, f3 of the paper's U-Net)
PIC_STRIDES = (1, 2, 4)
#: how many of the deepest levels PiM reads (f3, f4, f5 of the paper's U-Net)
PIM_DEPTH = 3


@dataclass(frozen=True)
class Level:
    """One pyramid level: ``stride`` input voxels per cell along (D, H, W), ``width`` channels."""

    stride: tuple[int, int, int]
    width: int

    @property
    def nominal(self) -> int:
        """The level's stride as one number: its largest per-axis stride."""
        return max(self.stride)


@runtime_checkable
class Backbone(Protocol):
    """What every backbone offers besides being an ``nn.Module`` (see the module doc).

    Members:
        in_channels: image channels it reads.
        levels: its pyramid, finest first.
        architecture(): the JSON mapping its weight file records (``name``: the backbone
            table's key, then what rebuilds it, e.g. ``in_channels``, ``width``, ``depth``).
    """

    in_channels: int
    levels: tuple[Level, ...]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def architecture(self) -> dict[str, Any]: ...


def check_backbone(module: Any, patch_size: int | Sequence[int]) -> None:
    """Refuse, with an ``AssertionError`` naming what differs, a module that breaks the contract
    on a zero patch of ``patch_size``: one output per level, ``level.width`` channels each, and
    the patch's size divided by ``level.stride`` on every axis."""
    assert isinstance(module, Backbone), f"{type(module).__name__}: not a Backbone"
    levels = levels_of(module)
    edges = patch_shape(patch_size)
    with torch.no_grad():
        out = module(torch.zeros(1, module.in_channels, *edges))
    assert len(out) == len(levels), f"{len(out)} outputs for {len(levels)} levels"
    for i, (f, level) in enumerate(zip(out, levels, strict=True)):
        want = (1, level.width, *(e // s for e, s in zip(edges, level.stride, strict=True)))
        assert tuple(f.shape) == want, f"level {i + 1}: output {tuple(f.shape)}, expected {want}"


def levels_of(encoder: Any) -> tuple[Level, ...]:
    """A backbone's ``levels`` (untyped ``nn.Module`` attribute access, typed here once)."""
    return tuple(encoder.levels)


def architecture_of(encoder: Any) -> dict[str, Any]:
    """A backbone's ``architecture()`` (untyped ``nn.Module`` attribute access, typed here)."""
    return dict(encoder.architecture())


def isotropic_levels(widths: Sequence[int]) -> tuple[Level, ...]:
    """Levels of a pyramid that halves every axis per level (the paper's U-Net)."""
    return tuple(Level((2**i,) * 3, int(w)) for i, w in enumerate(widths))


def levels_at(levels: Sequence[Level], strides: Sequence[int], what: str) -> list[int]:
    """Indices of the levels with nominal ``strides`` (first match each), or a one-line error
    naming the strides the pyramid lacks."""
    index: dict[int, int] = {}
    for i, level in enumerate(levels):
        index.setdefault(level.nominal, i)
    missing = [s for s in strides if s not in index]
    if missing:
        have = ", ".join(str(level.nominal) for level in levels)
        raise PimpicError(f"{what} needs pyramid levels at strides {', '.join(map(str, strides))};"
                          f" this backbone has strides {have} (missing "
                          f"{', '.join(map(str, missing))})")
    return [index[s] for s in strides]


def pic_levels(levels: Sequence[Level]) -> list[int]:
    """The levels PiC reads: strides 1, 2, 4."""
    return levels_at(levels, PIC_STRIDES, "PiC")


def pim_levels(levels: Sequence[Level]) -> list[int]:
    """The levels PiM reads: the three deepest (all of them for a shallower pyramid)."""
    return list(range(max(0, len(levels) - PIM_DEPTH), len(levels)))


def grid_size(level: Level, patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    """Cells of ``level`` for a patch of ``patch_size`` voxels (an int: a cube)."""
    d, h, w = patch_shape(patch_size)
    return d // level.stride[0], h // level.stride[1], w // level.stride[2]
