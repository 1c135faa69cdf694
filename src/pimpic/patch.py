"""The pretraining and fine-tuning crop: its shape, how it is written, and the checks it must pass.

A patch size is one edge ``p`` (a ``p³`` cube) or three edges ``(d, h, w)`` in the volume's axis
order (a box), in voxels. It is normalised to three edges once, where it enters (a config, a
sampler), with :func:`patch_shape`; ``plan`` (pretraining on an nnU-Net plan's patch) has no
shape until :func:`pimpic.pretraining.backbones.resolve_patch` has read the plan.

A network's strides decide which patches it takes: the paper's U-Net (:func:`check_unet_patch`)
needs every edge divisible by ``2^depth``, any other backbone every level's stride dividing the
patch on its axis (:func:`check_strides`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pimpic.errors import PimpicError

if TYPE_CHECKING:
    from pimpic.models.backbone import Level

#: a pretraining crop: one edge (a cube) or three edges (a box), in voxels
PatchSize = int | tuple[int, int, int]


def patch_shape(patch_size: PatchSize | Sequence[int] | str) -> tuple[int, int, int]:
    """``64`` → ``(64, 64, 64)``; three edges stay three edges; ``plan`` is an error (it must be
    resolved to the plan's patch first)."""
    if isinstance(patch_size, str):
        raise PimpicError(f"patch_size {patch_size!r} must be resolved to voxels first (the "
                          "pretraining engine reads it from the nnU-Net plan)")
    if isinstance(patch_size, int):
        return (patch_size,) * 3
    edges = tuple(int(p) for p in patch_size)
    if len(edges) != 3:
        raise PimpicError(f"patch_size must be one edge or 3 edges, got {list(edges)}")
    return edges[0], edges[1], edges[2]


def patch_text(patch_size: Any) -> str:
    """A patch size as the user writes it: ``64`` or ``[32, 64, 64]``."""
    return str(list(patch_size)) if isinstance(patch_size, (tuple, list)) else str(patch_size)


def check_unet_patch(patch_size: PatchSize, depth: int, min_cells: int = 1) -> None:
    """The paper's U-Net of ``depth`` blocks pools ``depth`` times: every edge must be divisible
    by ``2^depth`` and leave at least ``min_cells`` voxels at the bottleneck (a one-line error
    otherwise)."""
    unit = 2**depth
    edges = patch_shape(patch_size)
    if any(e % unit or e < min_cells * unit for e in edges):
        box = len(set(edges)) > 1
        least = (f" and at least {min_cells * unit} (the depth-{depth} bottleneck needs "
                 f"≥ {min_cells} voxels)" if min_cells > 1 else "")
        raise PimpicError(f"patch_size {patch_text(patch_size)} must be divisible by "
                          f"2^depth = {unit}{' on every axis' if box else ''}{least}")


def total_stride(levels: Sequence[Level]) -> tuple[int, int, int]:
    """Per axis, the smallest edge every level's stride divides (the deepest level's stride
    for a pyramid whose strides accumulate)."""
    d, h, w = (math.lcm(*(level.stride[a] for level in levels)) for a in range(3))
    return d, h, w


def check_strides(levels: Sequence[Level], patch_size: PatchSize | Sequence[int] | str,
                  what: str = "backbone") -> None:
    """Every pyramid level's stride must divide the patch on its axis (a cube's edge on every
    axis): a one-line error naming the level, the axis and the multiple to use otherwise."""
    edges = patch_shape(patch_size)
    for i, level in enumerate(levels):
        bad = [a for a in range(3) if edges[a] % level.stride[a]]
        if bad:
            total = total_stride(levels)
            need = (f"a multiple of {math.lcm(*total)}" if isinstance(patch_size, int)
                    else f"multiples of {list(total)} (the total stride per axis)")
            raise PimpicError(f"patch_size {patch_text(patch_size)} is not divisible by the stride "
                              f"{list(level.stride)} of {what} level {i + 1} on axis "
                              f"{bad[0]}; use {need}")
