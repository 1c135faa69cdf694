"""The structures a dataset names: read from its ``dataset.json``, carried through everything.

A dataset's ``labels`` map names label values, as MSD (``{"0": "background", "1": "pancreas"}``)
or nnU-Net v2 (``{"background": 0, "brainstem": 1}``) write it; an nnU-Net *region* names a
list of values (``{"whole tumour": [1, 2, 3]}``). :func:`parse_labels` turns it into a
:class:`LabelSet`:

* the **classes** the network predicts: one per label value, ``0 … K − 1`` (the values must be
  consecutive, as nnU-Net requires), so a predicted class *is* the dataset's label value;
* the **structures** scored (Dice, HD95, tables, tests, figures): one per named foreground
  label or region, in the dataset's order.

One view is kept as those data sets have always had it: a dataset whose two foreground labels
are 1 and a tumour (its name says tumour, tumor, cancer, lesion, ...) — MSD Task03 liver,
Task07 pancreas, KiTS19, pimpic's synthetic cohort — is scored as ``organ`` (1), ``tumour``
(2) and ``whole`` organ (1 ∪ 2) (:data:`ORGAN_TUMOUR`). KiTS19 ships no ``dataset.json``; its
labels are :data:`KITS19`.

The set is written into the cache manifest, the fine-tuning run and the model file
(:meth:`LabelSet.to_json`); a cache or model made before labels were recorded reads as the
organ + tumour view it was scored with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pimpic.errors import PimpicError

#: the view of a two-label organ + tumour dataset, and of one that names none
ORGAN_TUMOUR_VIEW = "organ_tumour"
NAMED_VIEW = "named"
#: words that mark label 2 of a two-label dataset as a tumour inside organ 1
TUMOUR_WORDS = ("tumour", "tumor", "cancer", "lesion", "carcinoma", "neoplasm", "metasta")


@dataclass(frozen=True)
class Structure:
    """One scored structure.

    Args:
        key: its column suffix (``dice_<key>``, ``hd95_<key>``): lower case, ``[a-z0-9_]``.
        name: how tables and figures name it.
        values: the label values it covers (a region covers several).
    """

    key: str
    name: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class LabelSet:
    """A dataset's labels: its own names (background first, in dataset order) and the
    structures scored from them."""

    #: ``(name, values)`` as the dataset writes them, background first
    labels: tuple[tuple[str, tuple[int, ...]], ...]
    structures: tuple[Structure, ...]
    view: str = NAMED_VIEW

    @property
    def values(self) -> tuple[int, ...]:
        """Every label value, background included, ascending."""
        return tuple(sorted({v for _, vs in self.labels for v in vs}))

    @property
    def num_classes(self) -> int:
        """Network outputs: one class per label value (values are ``0 … K − 1``)."""
        return max(self.values) + 1

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.structures)

    def names_by_class(self) -> tuple[str, ...]:
        """The name of each class ``0 … K − 1``: the label naming that value alone, else the
        value itself (a value named only inside regions)."""
        alone = {vs[0]: n for n, vs in self.labels if len(vs) == 1}
        return tuple(alone.get(c, str(c)) for c in range(self.num_classes))

    def names(self) -> str:
        """``"1 brainstem, 2 spinal_cord"``: the foreground as a message names it."""
        return ", ".join(f"{'|'.join(map(str, vs))} {n}" for n, vs in self.labels if vs != (0,))

    def to_json(self) -> dict[str, Any]:
        """The form written to the cache manifest, ``run.json`` and the model file."""
        return {"labels": {n: list(vs) if len(vs) > 1 else vs[0] for n, vs in self.labels},
                "structures": [{"key": s.key, "name": s.name, "values": list(s.values)}
                               for s in self.structures],
                "view": self.view}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelSet:
        """Inverse of :meth:`to_json`."""
        labels = tuple((str(n), _as_values(v)) for n, v in data["labels"].items())
        structures = tuple(Structure(str(s["key"]), str(s["name"]), _as_values(s["values"]))
                           for s in data["structures"])
        return cls(labels, structures, str(data.get("view", NAMED_VIEW)))

    def matches(self, other: LabelSet) -> bool:
        """Can ``other`` be scored as this set? The same structures (keys and values) and,
        beyond the organ + tumour view, the same label names (compared case-insensitively)."""
        def named(ls: LabelSet) -> list[tuple[str, tuple[int, ...]]]:
            return [(n.lower(), vs) for n, vs in ls.labels if vs != (0,)]

        same = ([(s.key, s.values) for s in self.structures]
                == [(s.key, s.values) for s in other.structures])
        return same and (self.view == ORGAN_TUMOUR_VIEW or named(self) == named(other))


def _as_values(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)


def organ_tumour(organ: str = "organ", tumour: str = "tumour") -> LabelSet:
    """The organ (1) + tumour (2) + whole organ (1 ∪ 2) view, under the dataset's names."""
    return LabelSet(
        labels=(("background", (0,)), (organ, (1,)), (tumour, (2,))),
        structures=(Structure("organ", "Organ", (1,)), Structure("tumour", "Tumour", (2,)),
                    Structure("whole", "Whole organ", (1, 2))),
        view=ORGAN_TUMOUR_VIEW)


#: what a cache, run or model that records no labels was scored as
ORGAN_TUMOUR = organ_tumour()
#: KiTS19 (no dataset.json): 0 background, 1 kidney, 2 tumour
KITS19 = organ_tumour("kidney", "tumor")


def structure_key(name: str) -> str:
    """A label name as a column suffix: lower case, runs of other characters → ``_``."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def parse_labels(labels: Any, where: object, by_name: bool) -> LabelSet:
    """The :class:`LabelSet` of a ``dataset.json`` ``labels`` map.

    Args:
        labels: MSD ``{"0": "background", ...}`` (``by_name=False``) or nnU-Net
            ``{"background": 0, "region": [1, 2], ...}`` (``by_name=True``); None: the dataset
            names no labels, read as the organ + tumour view.
        where: the file it came from, for messages.
        by_name: which way round the map is.

    Raises:
        PimpicError: not a map, a non-integer or negative value, no background 0, values not
            consecutive, or two names that make the same column.
    """
    if labels is None:
        return ORGAN_TUMOUR
    if not isinstance(labels, dict):
        raise PimpicError(f"{where}: 'labels' must be a mapping")
    pairs: list[tuple[str, tuple[int, ...]]] = []
    try:
        for k, v in labels.items():
            name, value = (k, v) if by_name else (v, k)
            values = (tuple(int(x) for x in value) if isinstance(value, list)
                      else (int(value),))
            pairs.append((str(name), values))
    except (TypeError, ValueError):
        raise PimpicError(f"{where}: 'labels' has a non-integer label value") from None
    every = sorted({v for _, vs in pairs for v in vs})
    if not every or min(every) < 0:
        raise PimpicError(f"{where}: 'labels' must name non-negative values, background 0 "
                          "included")
    if (0,) not in [vs for _, vs in pairs]:
        raise PimpicError(f"{where}: 'labels' names no background (value 0)")
    if every != list(range(every[-1] + 1)):
        missing = sorted(set(range(every[-1] + 1)) - set(every))
        raise PimpicError(f"{where}: label values must be consecutive 0 … {every[-1]} (as "
                          f"nnU-Net requires); {missing[:5]} not named")
    pairs.sort(key=lambda p: p[1] != (0,))  # background first, the rest in dataset order
    fg = [(n, vs) for n, vs in pairs if vs != (0,)]
    if any(0 in vs for _, vs in fg):
        raise PimpicError(f"{where}: label value 0 is the background; a structure may not "
                          "include it")
    if (len(fg) == 2 and [vs for _, vs in fg] == [(1,), (2,)]
            and any(w in fg[1][0].lower() for w in TUMOUR_WORDS)):
        return organ_tumour(fg[0][0], fg[1][0])
    structures = []
    seen: dict[str, str] = {}
    for name, vs in fg:
        key = structure_key(name) or f"label_{'_'.join(map(str, vs))}"
        if key in seen:
            raise PimpicError(f"{where}: labels {seen[key]!r} and {name!r} give the same "
                              f"column name {key!r}; rename one")
        seen[key] = name
        structures.append(Structure(key, name, vs))
    return LabelSet(tuple(pairs), tuple(structures), NAMED_VIEW)


def class_names(num_classes: int) -> LabelSet:
    """The set of a model that records no labels: the organ + tumour view for 3 classes (what
    it was trained for), else one structure per class, ``label_1`` …"""
    if num_classes == 3:
        return ORGAN_TUMOUR
    names: list[tuple[str, tuple[int, ...]]] = [("background", (0,))]
    names += [(f"label_{c}", (c,)) for c in range(1, num_classes)]
    return LabelSet(tuple(names), tuple(Structure(n, n, vs) for n, vs in names[1:]))


def structures_of(keys: Sequence[str]) -> tuple[Structure, ...]:
    """Structures from column suffixes alone (a ``results.csv`` read without its cache): the
    organ + tumour view's names where they match, else the key itself."""
    known = {s.key: s for s in ORGAN_TUMOUR.structures}
    return tuple(known.get(k, Structure(k, k, ())) for k in keys)
