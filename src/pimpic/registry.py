"""The method registry: the one place that knows which pretext tasks exist.

Each file in :mod:`pimpic.pretraining.methods` declares its method(s) by calling
:func:`register` with a :class:`MethodSpec` — name, display name, colour, the loss parts it
logs, how to build its sampler and its module (encoder + heads). Config validation, the CLI
(``pimpic methods``), the report and the figures read this registry; nothing else lists
methods. Adding a method is adding one file to that package: it is found by
:func:`discover`, which imports every module there whose name does not start with ``_``.

A pretext task is two pieces, kept apart because they run in different processes:

* a **sampler** — a picklable callable ``sampler(image, rng) -> dict[str, np.ndarray]`` that runs
  in DataLoader workers (:data:`pimpic.data.loader.Sampler`). ``image`` is one preprocessed
  volume ``(X, Y, Z)`` (memory-mapped; read only what you need), ``rng`` a seeded
  ``numpy.random.Generator``. It returns arrays for ONE volume, e.g.
  ``{"patches": (N, 1, p, p, p) float32, "boxes": (N, 2, 3) int64}``. The loader stacks V
  volumes, so the module receives ``(V, ...)`` tensors.
* a **module** — an ``nn.Module`` holding the shared backbone (:mod:`pimpic.models.backbone`:
  the paper's :class:`~pimpic.models.Encoder` or an nnU-Net encoder) as ``.encoder`` plus its
  own heads; ``forward(batch) -> dict[str, Tensor]`` returns scalar tensors, ``"loss"`` (what
  the engine back-propagates) and any named parts (``"pim"``, ``"pic"``, ``"overlap_error"``,
  ``"embedding_std"`` ...), which the engine logs. Losses stay within one volume (and one
  rank): the engine needs no cross-rank gather. Heads take the pyramid levels they need by
  stride, never by position.

Optionally a module may define ``after_step()`` (e.g. VoCo-EMA's teacher update), called by the
engine after each optimiser step.

A method's own hyperparameters are a frozen dataclass in its module (its fields' ranges written
on them, :func:`pimpic.config.ranged`), named by ``MethodSpec(options=..., options_key=...)``.
Each becomes a section of the pretraining config (``voco: {grid: [2, 2]}`` in YAML,
``--set voco.grid=[2,2]``), validated when the config is built, listed by ``pimpic methods``
and read by the method's builders with ``cfg.options(VoCoConfig)``. Method modules import
:mod:`pimpic.pretraining.config` only for type checking: discovery never imports a config
schema, so building a config (which looks the methods up here) never re-enters itself.

This module imports nothing heavy; the method modules (torch) are imported on the first
look-up.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pimpic.errors import PimpicError

if TYPE_CHECKING:
    from torch import nn

    from pimpic.data.loader import Sampler
    from pimpic.pretraining.config import PretrainConfig

#: the package whose modules declare the methods
METHODS_PACKAGE = "pimpic.pretraining.methods"
#: colour of a method that declares none (matplotlib's grey)
DEFAULT_COLOUR = "#7f7f7f"


@dataclass(frozen=True)
class MethodSpec:
    """How to build one pretext task from a config, and how to show it.

    Args:
        name: the config value (``method: pimpic``).
        build_sampler: config → the picklable per-volume sampler.
        build_module: (backbone, config) → the pretext module (backbone as ``.encoder`` +
            heads); the backbone follows :mod:`pimpic.models.backbone`.
        display_name: the name in tables and figures (default: ``name``).
        colour: the matplotlib colour in figures.
        loss_names: the loss parts the module returns besides ``loss`` (plotted as curves;
            diagnostics such as ``embedding_std`` are not listed).
        description: one line for ``pimpic methods``.
        crops_per_volume: encoder inputs one volume contributes to a step — what
            ``patches_per_s`` counts; None means ``cfg.patches``.
        options: the method's own options, a frozen dataclass whose defaults are the method's
            (None: it has none).
        options_key: the options' key in a pretraining config (default: ``name``); methods
            sharing options (``voco`` and ``voco-ema``) share the key.
    """

    name: str
    build_sampler: Callable[[PretrainConfig], Sampler]
    build_module: Callable[[nn.Module, PretrainConfig], nn.Module]
    display_name: str = ""
    colour: str = DEFAULT_COLOUR
    loss_names: tuple[str, ...] = ()
    description: str = ""
    crops_per_volume: Callable[[PretrainConfig], int] | None = None
    options: type[Any] | None = None
    options_key: str = ""

    def __post_init__(self) -> None:
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)
        if self.options is not None and not self.options_key:
            object.__setattr__(self, "options_key", self.name)

    def crops(self, cfg: PretrainConfig) -> int:
        """Crops per volume and step under ``cfg``."""
        return self.crops_per_volume(cfg) if self.crops_per_volume else cfg.patches


_REGISTRY: dict[str, MethodSpec] = {}
_discovered = False


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec``; a second, different method under the same name is an error, and so are
    two different option schemas under one options key."""
    known = _REGISTRY.get(spec.name)
    if known is not None and known.build_module is not spec.build_module:
        raise ValueError(f"method {spec.name!r} is registered twice")
    shared = _options().get(spec.options_key)
    if spec.options is not None and shared is not None and shared is not spec.options:
        raise ValueError(f"method {spec.name!r}: options key {spec.options_key!r} already names "
                         f"{shared.__name__}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def discover() -> None:
    """Import every method module of :data:`METHODS_PACKAGE` once (they register themselves).

    The methods are then in the package's module order, however the modules were imported
    before (a module imported first must not move its methods, or its options' section in a
    saved config, ahead); methods registered from elsewhere come last."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(METHODS_PACKAGE)
    modules = [f"{METHODS_PACKAGE}.{info.name}" for info in pkgutil.iter_modules(package.__path__)
               if not info.name.startswith("_")]
    for module in modules:
        importlib.import_module(module)
    rank = {module: i for i, module in enumerate(modules)}
    specs = sorted(_REGISTRY.values(),
                   key=lambda spec: rank.get(spec.build_module.__module__, len(rank)))
    _REGISTRY.clear()
    _REGISTRY.update((spec.name, spec) for spec in specs)
    _discovered = True


def rediscover() -> None:
    """Look for method modules again on the next look-up (after the package's path changed)."""
    global _discovered
    _discovered = False


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order."""
    discover()
    return tuple(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The method registered as ``name``; an unknown name is a PimpicError listing the known."""
    discover()
    if name not in _REGISTRY:
        raise PimpicError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_options() -> dict[str, type[Any]]:
    """Every method's options schema by its options key, in registration order."""
    discover()
    return _options()


def _options() -> dict[str, type[Any]]:
    return {spec.options_key: spec.options for spec in _REGISTRY.values()
            if spec.options is not None}
