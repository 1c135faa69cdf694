"""Train/validation/test split and nested label fractions (METHOD.md §1).

The case list is shuffled once with the seed; the first 70 % is training, the next 10 %
validation, the rest test. Label fraction ``p`` is the first ``ceil(n_train · p / 100)`` cases of
the (shuffled) training list, so 5 % ⊂ 10 % ⊂ 20 % ⊂ 50 % ⊂ 100 %. Pretraining sees exactly the
training images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pimpic.errors import PimpicError

FRACTIONS = (5, 10, 20, 50, 100)


def make_splits(
    case_ids: Sequence[str],
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    fractions: Iterable[int] = FRACTIONS,
) -> dict[str, Any]:
    """Shuffle ``case_ids`` with ``seed`` and split them.

    Returns ``{"seed", "ratios", "train", "val", "test", "fractions": {"5": [...], ...}}``.
    Validation and test get ``round(n · ratio)`` cases (at least one each when n ≥ 3).
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
    n_val = max(1, round(n * ratios[1])) if ratios[1] > 0 else 0
    n_test = max(1, round(n * ratios[2])) if ratios[2] > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise PimpicError(f"split: {n} cases leave no training case")
    train = shuffled[:n_train]
    splits: dict[str, Any] = {
        "seed": seed,
        "ratios": list(ratios),
        "train": train,
        "val": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val :],
    }
    splits["fractions"] = {str(p): fraction_cases(splits, p) for p in fractions}
    return splits


def fraction_cases(splits: Mapping[str, Any], fraction: float) -> list[str]:
    """The nested training subset for label fraction ``fraction`` (percent)."""
    if not 0 < fraction <= 100:
        raise PimpicError(f"label fraction {fraction} must be in (0, 100]")
    train = list(splits["train"])
    k = math.ceil(len(train) * fraction / 100 - 1e-9)
    if k < 1:
        raise PimpicError(f"label fraction {fraction}% of {len(train)} training cases is empty")
    return train[:k]


def validate_splits(splits: Mapping[str, Any], known: Iterable[str], where: str | Path) -> None:
    """A user-supplied split must name known cases and keep train/val/test disjoint."""
    known = set(known)
    for key in ("train", "val", "test"):
        if key not in splits or not isinstance(splits[key], list):
            raise PimpicError(f"{where}: missing list '{key}'")
        missing = [c for c in splits[key] if c not in known]
        if missing:
            raise PimpicError(f"{where}: '{key}' names unknown case(s) {missing[:5]}")
    sets = {k: set(splits[k]) for k in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sets[a] & sets[b]
        if both:
            raise PimpicError(f"{where}: cases in both {a} and {b}: {sorted(both)[:5]}")
    if not sets["train"]:
        raise PimpicError(f"{where}: empty training split")
