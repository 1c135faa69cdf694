"""Train/validation/test split, nested label fractions, and the rules that keep a split fixed.

Sizes follow the authors' released code: the sorted case list is shuffled once with the seed,
then ``train = int(0.7 · n)``, ``val = int(0.1 · n)`` and test is the rest (281 cases →
196 / 28 / 57; fewer than 10 cases → no validation case). ``int`` of the floating-point product
is kept on purpose, as released: 0.7 · 90 is 62.999…, so 90 cases give 62 training cases.
Label fraction ``p`` is the first ``ceil(n_train · p / 100)`` cases of the shuffled training
list, so 5 % ⊂ 10 % ⊂ 20 % ⊂ 50 % ⊂ 100 %, unless the split stores its own fraction lists
(a released split file does; they are kept exactly). Pretraining sees the training images
by default; :meth:`Split.pool` names the other pools (:data:`POOLS`): training + unlabelled
cases, or every cached case (transductive: the evaluation patients' images, never their
labels).

A split file given with ``--splits`` is read in either format:

* pimpic's own: ``{"train": [ids], "val": [ids], "test": [ids]}`` (optionally ``"fractions":
  {"5": [ids], ...}``), as written to a cache's ``splits.json``;
* the released one: ``{"validation": [...], "test": [...], "train_<p>_percent": [...]}`` for
  p = 2, 5, 10, 20, 50, 100, each entry ``{"image": "./imagesTr/x.nii.gz", "label": ...}``. An
  entry's case id is derived from its image path as the MSD reader does (``x``), training is
  ``train_100_percent``, and each fraction list must lie inside the next larger one (refused
  otherwise); the lists are stored as given, not re-derived.

**A cache's split never moves on its own** (:func:`settle_split`): once ``splits.json`` exists,
``prepare`` keeps it byte for byte. A rerun that would change it — cases added to or gone from
the cache, another ``--seed``, another ``--splits`` file — is refused with a message naming
the cases; ``resplit=True`` (``prepare --resplit``) recomputes it from scratch, and says so.
Unlabelled cases added to a split of labelled cases (``prepare --unlabelled``) move nothing:
they join its ``unlabelled`` list, and train/val/test and the digest stay as they were.
:func:`split_digest` fingerprints a split so that results made on one split are never mixed
with results made on another.

Everything that reads a cache's split reads it as a :class:`Split` (:meth:`pimpic.data.cache.
Cache.split`): the train/val/test tuples, the stored fraction lists, seed and ratios, its
:attr:`~Split.digest`. The functions below that make, read and settle a split work on its JSON
form, the mapping ``splits.json`` holds, so that file keeps its format byte for byte.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pimpic.data.datasets import case_id_from_image
from pimpic.errors import PimpicError
from pimpic.io import read_json

FRACTIONS = (5, 10, 20, 50, 100)
PARTS = ("train", "val", "test")
#: lists of a saved split that hold cached cases outside train/val/test
EXTRA_PARTS = ("unlabelled", "unused")
_RELEASED_FRACTION = re.compile(r"^train_(\d+)_percent$")
#: the pretraining pools a cache offers (:meth:`Split.pool`): its training split (the
#: default), training + unlabelled cases (no evaluation patient), or every cached case
#: (transductive: validation and test images too, never their labels)
POOLS = ("train", "train+unlabelled", "all")


@dataclass(frozen=True)
class Split:
    """A saved split, read (:meth:`from_json` of a cache's ``splits.json``).

    Args:
        train, val, test: the case ids of each part, in their shuffled order.
        fractions: label-fraction lists the split stores, percent text (``"5"``) → ids;
            any other fraction is derived (:meth:`fraction`).
        seed: the seed of a seeded split (None: read from a split file).
        ratios: the train/val/test ratios of a seeded split (None: read from a file).
        unlabelled, unused: cached cases outside train/val/test (no label; left out by a
            ``--splits`` file).
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    fractions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    seed: int | None = None
    ratios: tuple[float, ...] | None = None
    unlabelled: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> Split:
        """The split of a parsed ``splits.json``; a malformed one is a one-line error."""
        if not isinstance(data, dict):
            raise PimpicError(f"{where}: a split must be a JSON object")

        def ids(key: str, value: Any) -> tuple[str, ...]:
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise PimpicError(f"{where}: '{key}' must be a list of case ids")
            return tuple(value)

        stored = data.get("fractions") or {}
        if not isinstance(stored, dict):
            raise PimpicError(f"{where}: 'fractions' must map a percentage to an id list")
        ratios = data.get("ratios")
        return cls(train=ids("train", data.get("train")), val=ids("val", data.get("val")),
                   test=ids("test", data.get("test")),
                   fractions={str(p): ids(f"fractions.{p}", v) for p, v in stored.items()},
                   seed=data.get("seed"),
                   ratios=tuple(float(r) for r in ratios) if isinstance(ratios, list) else None,
                   unlabelled=ids("unlabelled", data.get("unlabelled")),
                   unused=ids("unused", data.get("unused")))

    def part(self, name: str) -> tuple[str, ...]:
        """The cases of ``name`` (``train``, ``val`` or ``test``)."""
        if name not in PARTS:
            raise PimpicError(f"split {name!r} is not one of {', '.join(PARTS)}")
        ids: tuple[str, ...] = getattr(self, name)
        return ids

    def pool(self, name: str) -> tuple[str, ...]:
        """The cases of pretraining pool ``name`` (:data:`POOLS`): ``train``, ``train`` +
        ``unlabelled``, or ``all`` (train, val, test, unlabelled and unused)."""
        if name not in POOLS:
            raise PimpicError(f"pretraining pool {name!r} is not one of {', '.join(POOLS)}")
        if name == "train":
            return self.train
        if name == "train+unlabelled":
            return (*self.train, *self.unlabelled)
        return (*self.train, *self.val, *self.test, *self.unlabelled, *self.unused)

    def _lists(self) -> dict[str, Any]:
        """The mapping the functions of this module read (``splits.json``'s lists)."""
        return {**{k: list(self.part(k)) for k in PARTS},
                "fractions": {p: list(v) for p, v in self.fractions.items()}}

    def fraction(self, percent: float) -> list[str]:
        """The nested training subset of label fraction ``percent`` (:func:`fraction_cases`)."""
        return fraction_cases(self._lists(), percent)

    @property
    def digest(self) -> str:
        """:func:`split_digest` of the split."""
        return split_digest(self._lists())


def make_splits(
    case_ids: Sequence[str],
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    fractions: Iterable[int] = FRACTIONS,
) -> dict[str, Any]:
    """Shuffle ``case_ids`` with ``seed`` and split them.

    Returns ``{"seed", "ratios", "train", "val", "test", "fractions": {"5": [...], ...}}``:
    ``int(n · ratios[0])`` training and ``int(n · ratios[1])`` validation cases, the rest test.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise PimpicError("split: duplicate case ids")
    if abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0:
        raise PimpicError(f"split: ratios {ratios} must be non-negative and sum to 1")
    n = len(ids)
    if n < 3:
        raise PimpicError(f"split: need at least 3 cases for train/val/test, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    n_train, n_val = int(n * ratios[0]), int(n * ratios[1])
    if n_train < 1:
        raise PimpicError(f"split: {n} cases leave no training case")
    splits: dict[str, Any] = {
        "seed": seed,
        "ratios": list(ratios),
        "train": shuffled[:n_train],
        "val": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val :],
    }
    splits["fractions"] = {_key(p): fraction_cases(splits, p) for p in fractions}
    return splits


def _key(fraction: float) -> str:
    return str(int(fraction)) if float(fraction).is_integer() else str(fraction)


def fraction_cases(splits: Mapping[str, Any], fraction: float) -> list[str]:
    """The nested training subset for label fraction ``fraction`` (percent).

    A fraction list stored in ``splits["fractions"]`` is returned as stored; any other fraction
    is the first ``ceil(n_train · fraction / 100)`` training cases.
    """
    if not 0 < fraction <= 100:
        raise PimpicError(f"label fraction {fraction} must be in (0, 100]")
    stored = (splits.get("fractions") or {}).get(_key(fraction))
    if stored is not None:
        return list(stored)
    train = list(splits["train"])
    k = math.ceil(len(train) * fraction / 100 - 1e-9)
    if k < 1:
        raise PimpicError(f"label fraction {fraction}% of {len(train)} training cases is empty")
    return train[:k]


def validate_splits(splits: Mapping[str, Any], known: Iterable[str], where: str | Path) -> None:
    """A user-supplied split must name known cases and keep train/val/test disjoint."""
    known = set(known)
    for key in PARTS:
        if key not in splits or not isinstance(splits[key], list):
            raise PimpicError(f"{where}: missing list '{key}'")
        missing = [c for c in splits[key] if c not in known]
        if missing:
            raise PimpicError(f"{where}: '{key}' names unknown case(s) {missing[:5]}")
    sets = {k: set(splits[k]) for k in PARTS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sets[a] & sets[b]
        if both:
            raise PimpicError(f"{where}: cases in both {a} and {b}: {sorted(both)[:5]}")
    if not sets["train"]:
        raise PimpicError(f"{where}: empty training split")


def read_split_file(path: str | Path) -> dict[str, Any]:
    """Read a ``--splits`` file in pimpic's or the released format (module docstring).

    Returns ``{"seed": None, "train", "val", "test", "fractions"}`` with case ids; the case ids
    are checked against the cache later (:func:`validate_splits`).
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise PimpicError(f"{path}: a split file must be a JSON object")
    if "train_100_percent" in data or "validation" in data:
        split = _from_released(data, path)
    elif all(k in data for k in PARTS):
        split = {k: _ids(data[k], path, k) for k in PARTS}
        if data.get("fractions") is not None:
            if not isinstance(data["fractions"], dict):
                raise PimpicError(f"{path}: 'fractions' must map a percentage to an id list")
            split["fractions"] = {_key(_percent(p, path)): _ids(v, path, f"fractions.{p}")
                                  for p, v in data["fractions"].items()}
    else:
        raise PimpicError(f"{path}: not a split file: expected 'train'/'val'/'test' lists, or "
                          "the released 'validation'/'test'/'train_<p>_percent' lists")
    stored = split.get("fractions", {})
    _check_nested(stored, split["train"], path)
    fractions = {_key(p): fraction_cases({"train": split["train"], "fractions": stored}, p)
                 for p in sorted({*FRACTIONS, *(float(p) for p in stored)})}
    return {"seed": None, **{k: split[k] for k in PARTS}, "fractions": fractions}


def _percent(text: str, path: str | Path) -> float:
    try:
        p = float(text)
    except ValueError:
        raise PimpicError(f"{path}: fraction {text!r} is not a percentage") from None
    if not 0 < p <= 100:
        raise PimpicError(f"{path}: fraction {text!r} must be in (0, 100]")
    return p


def _ids(entries: Any, path: str | Path, key: str) -> list[str]:
    """Case ids of a list of ids, image paths or ``{"image", "label"}`` entries."""
    if not isinstance(entries, list):
        raise PimpicError(f"{path}: '{key}' must be a list")
    ids = []
    for n, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else entry
        if not isinstance(image, str):
            raise PimpicError(f"{path}: '{key}' entry {n} has no image path or case id")
        cid = case_id_from_image(image)
        label = entry.get("label") if isinstance(entry, dict) else None
        if isinstance(label, str) and case_id_from_image(label) != cid:
            raise PimpicError(f"{path}: '{key}' entry {n} pairs image {image!r} with "
                              f"label {label!r}")
        ids.append(cid)
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise PimpicError(f"{path}: '{key}' lists case(s) twice: {dupes[:5]}")
    return ids


def _from_released(data: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    for key in ("validation", "test", "train_100_percent"):
        if key not in data:
            raise PimpicError(f"{path}: released split file without a '{key}' list")
    fractions = {}
    for key, value in data.items():
        m = _RELEASED_FRACTION.match(key)
        if m:
            fractions[_key(_percent(m.group(1), path))] = _ids(value, path, key)
    return {"train": fractions["100"], "val": _ids(data["validation"], path, "validation"),
            "test": _ids(data["test"], path, "test"), "fractions": fractions}


def _check_nested(fractions: Mapping[str, list[str]], train: list[str], where: str | Path) -> None:
    """Each stored fraction list is non-empty and inside the next larger one (and training)."""
    chain = [*sorted(fractions.items(), key=lambda kv: float(kv[0])), ("train", train)]
    for (p, small), (q, big) in itertools.pairwise(chain):
        if not small:
            raise PimpicError(f"{where}: label fraction {p}% lists no case")
        outside = [c for c in small if c not in set(big)]
        if outside:
            where_big = "the training list" if q == "train" else f"the {q}% list"
            raise PimpicError(f"{where}: the {p}% label fraction is not inside {where_big} "
                              f"({outside[:5]}); fractions must be nested")


def split_ids(splits: Mapping[str, Any]) -> set[str]:
    """Every case a saved split names (train/val/test and the unlabelled/unused extras)."""
    return {c for k in (*PARTS, *EXTRA_PARTS) for c in splits.get(k) or []}


def _core(splits: Mapping[str, Any]) -> dict[str, Any]:
    """What fine-tuning and evaluation read from a split: the lists and the fraction lists."""
    fractions = {_key(p): fraction_cases(splits, p) for p in
                 sorted({*FRACTIONS, *(float(p) for p in splits.get("fractions") or {})})}
    return {**{k: list(splits[k]) for k in PARTS}, "fractions": fractions}


def split_digest(splits: Mapping[str, Any]) -> str:
    """A short fingerprint of the split's train/val/test and fraction lists (order included)."""
    text = json.dumps(_core(splits), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_split_request(saved: Mapping[str, Any] | None, user: Mapping[str, Any] | None,
                        seed: int | None, resplit: bool, where: str | Path) -> None:
    """Refuse, before any work, a ``--seed``/``--splits`` that would replace a saved split.

    Args:
        saved: the cache's current ``splits.json`` (None: none yet).
        user: the split read from ``--splits`` (None: not given).
        seed: the requested seed (None: not given, the saved split's seed is kept).
        resplit: replacing the split is allowed.
        where: the saved split's path, for messages.
    """
    if saved is None or resplit:
        return
    if user is not None and _core(user) != _core(saved):
        raise PimpicError(f"{where}: the cache already has another split; the --splits file "
                          "would move cases (add --resplit to replace the split)")
    if user is None and seed is not None and saved.get("seed") != seed:
        made = "from a split file" if saved.get("seed") is None else f"with seed {saved['seed']}"
        raise PimpicError(f"{where}: the cache's split was made {made}; --seed {seed} would "
                          "move cases (add --resplit to recompute the split)")


def settle_split(saved: Mapping[str, Any] | None, user: Mapping[str, Any] | None,
                 done: Sequence[str], labelled: Sequence[str], seed: int | None,
                 resplit: bool, where: str | Path,
                 user_where: str | Path = "--splits") -> tuple[dict[str, Any] | None, str]:
    """The split a cache of ``done`` cases should have, and how it came about.

    Splits are made over the labelled cases when there are any (fine-tuning and evaluation need
    labels); unlabelled cases are listed under ``"unlabelled"``, cached cases a ``--splits`` file
    leaves out under ``"unused"``.

    Args:
        saved: the cache's current ``splits.json`` (None: none yet).
        user: the split read from ``--splits`` (None: a seeded split).
        done: every cached case id; ``labelled``: those with a label.
        seed: seed of a new seeded split (None: 0).
        resplit: replace a saved split instead of keeping it.
        where: the saved split's path; ``user_where``: the ``--splits`` file (for messages).

    Returns:
        ``(split, status)``: status ``"kept"`` (the saved split, unchanged), ``"updated"``
        (unlabelled cases added to the saved split's ``"unlabelled"``; train/val/test, the
        fraction lists and the digest unchanged), ``"new"``,
        ``"recomputed"`` (``resplit``) or ``"none"`` (fewer than 3 cases: no split).

    Raises:
        PimpicError: without ``resplit``, when the cached cases differ from the ones the saved
            split names (cases added or gone): the split would have to move. Unlabelled cases
            added to a split of labelled cases are not refused: they move nothing.
    """
    if saved is not None and not resplit:
        named, cached = split_ids(saved), set(done)
        new, gone = sorted(cached - named), sorted(named - cached)
        added = [c for c in new if c not in set(labelled)]
        if labelled and new and added == new and not gone:
            # unlabelled cases joined a labelled cache: train/val/test and digest stay
            kept = set(saved.get("unlabelled") or ())
            return ({**saved, "unlabelled": [c for c in done if c in kept or c in set(new)]},
                    "updated")
        if new:
            raise PimpicError(f"{where}: {len(new)} cached case(s) are not in the saved split "
                              f"({', '.join(new[:5])}); the split is kept as it is — rerun "
                              "with --resplit to recompute it (existing cases may move)")
        if gone:
            raise PimpicError(f"{where}: the saved split names {len(gone)} case(s) that are not "
                              f"cached now ({', '.join(gone[:5])}); restore them, or rerun "
                              "with --resplit to recompute the split")
        return dict(saved), "kept"
    pool = list(labelled) if labelled else list(done)
    if user is not None:
        validate_splits(user, pool, user_where)
        split = dict(user)
        named = set(split["train"]) | set(split["val"]) | set(split["test"])
        unused = [c for c in pool if c not in named]
        if unused:
            split["unused"] = unused
    elif len(pool) < 3:
        return None, "none"
    else:
        split = make_splits(pool, seed=0 if seed is None else seed)
    extra = [c for c in done if c not in set(pool)]
    if extra:
        split["unlabelled"] = extra
    return split, "new" if saved is None else "recomputed"
