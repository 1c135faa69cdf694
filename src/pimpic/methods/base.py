"""The contract between a pretext task and the engine.

A pretext task is two pieces, kept apart because they run in different processes:

* a **sampler** — a picklable callable ``sampler(image, rng) -> dict[str, np.ndarray]`` that runs
  in DataLoader workers. ``image`` is one preprocessed volume ``(X, Y, Z)`` (memory-mapped; read
  only what you need), ``rng`` a seeded ``numpy.random.Generator``. It returns arrays for ONE
  volume, e.g. ``{"patches": (N, 1, p, p, p) float32, "boxes": (N, 2, 3) int64}``.
  The loader stacks V volumes, so the module receives ``(V, ...)`` tensors.
* a **module** — an ``nn.Module`` holding the shared backbone (:mod:`pimpic.models.backbone`:
  the paper's :class:`~pimpic.models.Encoder` or an nnU-Net encoder) as ``.encoder`` plus its
  own heads; ``forward(batch) -> dict[str, Tensor]`` returns scalar tensors, ``"loss"`` (what
  the engine back-propagates) and any named parts (``"pim"``, ``"pic"``, ``"overlap_error"``,
  ``"embedding_std"`` ...), which the engine logs. Losses stay within one volume (and one
  rank): the engine needs no cross-rank gather. Heads take the pyramid levels they need by
  stride, never by position.

Optionally a module may define ``after_step()`` (e.g. VoCo-EMA's teacher update), called by the
engine after each optimiser step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from pimpic.config import PretrainConfig

Sampler = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class MethodSpec:
    """How to build one pretext task from a config."""

    name: str
    build_sampler: Callable[[PretrainConfig], Sampler]
    #: ``(backbone, cfg) -> module``; the backbone follows :mod:`pimpic.models.backbone`
    build_module: Callable[[nn.Module, PretrainConfig], nn.Module]
    description: str = ""
    #: encoder inputs (crops) one volume contributes to a step — what ``patches_per_s`` counts;
    #: None means ``cfg.patches``
    crops_per_volume: Callable[[PretrainConfig], int] | None = None

    def crops(self, cfg: PretrainConfig) -> int:
        """Crops per volume and step under ``cfg``."""
        return self.crops_per_volume(cfg) if self.crops_per_volume else cfg.patches


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """Look a method up by name (``pimpic``, ``pim``, ``pic``, ``voco``, ``voco-ema``,
    ``vox2vec``), importing the module that registers it."""
    import importlib

    from pimpic.errors import PimpicError

    modules = {"pimpic": "pimpic", "pim": "pimpic", "pic": "pimpic", "voco": "voco",
               "voco-ema": "voco", "vox2vec": "vox2vec"}
    if name not in modules:
        raise PimpicError(f"unknown method {name!r}; choose one of {', '.join(modules)}")
    importlib.import_module(f"pimpic.methods.{modules[name]}")
    return _REGISTRY[name]


def scalar_outputs(out: dict[str, Any]) -> dict[str, float]:
    """The loggable floats of a module's output dict."""
    return {k: float(v.detach()) for k, v in out.items() if hasattr(v, "detach")}
