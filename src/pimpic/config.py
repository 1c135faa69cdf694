"""Configuration as data: frozen dataclasses are the schema, this module reads and writes them.

Each stage declares its own schema beside its code (:mod:`pimpic.pretraining.config`,
:mod:`pimpic.segmentation.config`, :mod:`pimpic.protocol.grid`; a pretext task's options in its
method module), with defaults that reproduce the paper. A config is built from defaults, then an
optional YAML file, then ``--set key=value`` overrides (dotted keys reach nested dataclasses),
validated at the boundary, and saved with every run (``config.yaml`` in the run folder).

A numeric field carries the values it may take (:func:`ranged`, checked by
:func:`check_ranges`); a field made with :func:`sections` holds sub-configs whose schemas are
known only at run time (each method's options), written as keys of their own.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pimpic.errors import PimpicError
from pimpic.io import atomic_open

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-able dict of a (nested) config dataclass; tuples become lists, and each
    of a :func:`sections` field's sections is a key of its own where the field stands."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if SECTIONS in f.metadata:
            out.update({key: to_dict(section) for key, section in value.items()})
        else:
            out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else plain(value)
    return out


def plain(obj: Any) -> Any:
    """Tuples as lists, recursively: a value as it comes back from JSON or YAML."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` → ``{"a.b": 1, "c": {}}``: dotted keys for comparing configs
    (an empty mapping stays a value, so ``{}`` vs ``{"x": 1}`` still differs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any],
                       ignore: Iterable[str] | typing.Callable[[str], bool] = (),
                       defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``key: run has A, now B`` for every dotted key whose value differs, except ``ignore``d
    (dotted keys, or a predicate on them).

    A key that ``saved`` lacks takes its value from ``defaults``: a setting added after the run
    was made defaults to the behaviour the run had, so an older run folder still resumes."""
    a, b = {**flatten(defaults or {}), **flatten(saved)}, flatten(now)
    skip = ignore if callable(ignore) else set(ignore).__contains__
    return [f"{k}: run has {a.get(k)!r}, now {b.get(k)!r}"
            for k in sorted(set(a) | set(b)) if not skip(k) and a.get(k) != b.get(k)]


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    if not isinstance(data, Mapping):
        raise PimpicError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    all_fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    fields = {f.name for f in all_fields if SECTIONS not in f.metadata}
    sections = {key: (f.name, schema) for f in all_fields if SECTIONS in f.metadata
                for key, schema in f.metadata[SECTIONS]().items()}
    unknown = sorted(set(data) - fields - set(sections))
    if unknown:
        raise PimpicError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(fields | set(sections)))}")
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k in fields:
            kwargs[k] = _coerce(hints[k], v, f"{where}.{k}")
        else:
            name, schema = sections[k]
            kwargs.setdefault(name, {})[k] = _coerce(schema, v, f"{where}.{k}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, PimpicError) as err:
        raise PimpicError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except PimpicError as err:
                errors.append(str(err))
        arms = [a for a in args if a is not type(None)]
        if len(arms) > 1:  # name every alternative, not only the first one tried
            raise PimpicError(f"{where}: expected {_describe_types(arms)}, got {value!r}")
        raise PimpicError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise PimpicError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise PimpicError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise PimpicError(f"{where}: expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise PimpicError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise PimpicError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise PimpicError(f"{where}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise PimpicError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise PimpicError(f"{where}: expected a number, got {value!r}") from None
        if math.isnan(f):
            raise PimpicError(f"{where}: expected a number, got {value!r}")
        return f
    if tp is str:
        return str(value)
    return value


def _describe_types(types_: Sequence[Any]) -> str:
    """``[int, tuple[int, int, int], Literal["plan"]]`` → ``an integer, 3 integers or 'plan'``."""
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    plural = {int: "integers", float: "numbers"}
    words = []
    for tp in types_:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Literal:
            words.append(" or ".join(map(repr, args)))
        elif origin is tuple and args and args[-1] is not Ellipsis:
            inner = plural.get(args[0], "values") if len(set(args)) == 1 else "values"
            words.append(f"{len(args)} {inner}")
        elif origin in (tuple, list):
            words.append("a list")
        else:
            words.append(names.get(tp, getattr(tp, "__name__", str(tp))))
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → nested ``{"a": {"b": "1"}, "c": "x"}`` (values typed later)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise PimpicError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise PimpicError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PimpicError(f"{path}: malformed YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise PimpicError(f"{path}: expected a mapping at the top level")
    return data


def build_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Defaults ← ``base`` ← YAML file ← ``--set`` overrides, validated into ``cls``."""
    data: dict[str, Any] = dict(base or {})
    where = "config"
    if yaml_path is not None:
        data = merge(data, load_yaml(yaml_path))
        where = str(yaml_path)
    data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data, where)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_open(path) as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


# --------------------------------------------------------------------------------------------
# Range checks: each numeric field carries the values it may take, so a bad value is refused
# when the config is built — before any run folder exists.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field may take: an interval, open or closed at either end.

    A tuple value is checked element by element; ``optional`` also accepts None. NaN and
    infinities are always refused.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    #: words the field also takes instead of a number (e.g. ``patch_size: plan``)
    words: tuple[str, ...] = ()

    def describe(self) -> str:
        return self._interval() + "".join(f" or {w!r}" for w in self.words)

    def _interval(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return "finite"

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, str):
            return value in self.words
        if isinstance(value, (tuple, list)):
            return all(self.admits(v) for v in value) and bool(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1)
PERCENT = Range(0, 100, low_open=True)
FINITE = Range()


def ranged(default: T, rule: Range) -> T:
    """A dataclass field defaulting to ``default`` whose values ``rule`` admits, e.g.
    ``lr: float = ranged(1e-5, NON_NEGATIVE)`` (checked by :func:`check_ranges`)."""
    out: T = dataclasses.field(default=default, metadata={RANGE: rule})
    return out


def check_ranges(cfg: Any) -> None:
    """Raise ValueError naming the first field of ``cfg`` whose value its range refuses."""
    for f in dataclasses.fields(cfg):
        rule = f.metadata.get(RANGE)
        value = getattr(cfg, f.name)
        if rule is not None and not rule.admits(value):
            many = isinstance(value, (tuple, list))
            raise ValueError(f"{'each of ' if many else ''}{f.name} must be {rule.describe()}"
                             f"{' (or null)' if rule.optional else ''}, "
                             f"got {list(value) if many else value!r}")


# --------------------------------------------------------------------------------------------
# Sections: sub-configs named at run time (a method's options, from the registry).
# --------------------------------------------------------------------------------------------

#: field metadata keys
RANGE, SECTIONS = "range", "sections"


def sections(schemas: Callable[[], Mapping[str, type]]) -> Any:
    """A field holding sub-configs whose schemas ``schemas()`` names only at run time, as
    ``{key: schema}``. In YAML, ``--set`` and :func:`to_dict` each section is a key of the
    enclosing config, as a nested dataclass field would be (``voco: {grid: [2, 2]}``,
    ``--set voco.grid=[2,2]``); in Python the field is a dict ``{key: instance}``, completed
    by :func:`fill_sections`."""
    return dataclasses.field(default_factory=dict, hash=False, metadata={SECTIONS: schemas})


def fill_sections(cfg: Any) -> None:
    """Complete ``cfg``'s :func:`sections` fields: every section its schemas name, at its
    defaults unless given; an unknown key or a value of another type is a ValueError."""
    names = {f.name for f in dataclasses.fields(cfg)}
    for f in dataclasses.fields(cfg):
        if SECTIONS not in f.metadata:
            continue
        given, schemas = dict(getattr(cfg, f.name)), f.metadata[SECTIONS]()
        unknown = sorted(set(given) - set(schemas))
        if unknown:
            raise ValueError(f"{f.name}: unknown section(s) {', '.join(unknown)}; known: "
                             f"{', '.join(schemas)}")
        clash = sorted(names & set(schemas))
        if clash:
            raise ValueError(f"{f.name}: section(s) {', '.join(clash)} named like a field")
        for key, schema in schemas.items():
            if key in given and not isinstance(given[key], schema):
                raise ValueError(f"{key}: expected a {schema.__name__}, got "
                                 f"{type(given[key]).__name__}")
        object.__setattr__(cfg, f.name, {key: given[key] if key in given else schema()
                                         for key, schema in schemas.items()})
