"""Did pretraining help? Paired Wilcoxon signed-rank tests of each method against a reference
(the from-scratch baseline) per label fraction and structure (every structure the results
hold a column of), Holm-corrected over all of them, as a table (``stats.md``, ``pimpic
stats``) and in plain sentences.

:func:`paired_tests` is the one implementation; the report calls it with the defaults, ``pimpic
stats`` with any of its choices. What a pair is (``pairing``):

* ``case`` — one pair per test case, each method's score averaged over all its seeds first
  (the report's reading, as in the paper: the seeds of one case are not independent, so every
  case counts once);
* ``common-seeds`` — one pair per test case, averaged over only the seeds both the method and
  the reference have for that case (a grid where one method has more seeds than another);
* ``case-seed`` — one pair per (test case, seed) both have: a method's fine-tuning against the
  reference's with the same seed on the same case (more pairs, not independent ones).

The absent rule is the table's (:func:`~pimpic.protocol.results.case_seed_scores`): a
structure absent from a case's ground truth scores Dice 0 (``absent="zero"``) or is left out
(``"nan"``); an undefined HD95 is always left out.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import wilcoxon

from pimpic.data.cache import MANIFEST, Cache
from pimpic.data.labels import Structure
from pimpic.errors import PimpicError
from pimpic.paths import CONFIG, RESULTS
from pimpic.protocol.grid import BASELINE, load_experiment_config
from pimpic.protocol.results import (
    by_case,
    case_seed_scores,
    grid_axes,
    method_name,
    read_results_csv,
    run_results,
    structures_in,
)
from pimpic.segmentation.metrics import METRICS


class Pairing(NamedTuple):
    """How one pairing is described: what ``n`` counts, and how a pair is made."""

    unit: str
    how: str


#: the pairings of :func:`paired_tests` (``{metric}`` is the metric's name)
PAIRINGS = {
    "case": Pairing("test cases", "paired by case, {metric} averaged over seeds first"),
    "common-seeds": Pairing("test cases", "paired by case, {metric} averaged over the seeds "
                            "both have first"),
    "case-seed": Pairing("case × seed pairs", "one pair per test case and seed both have"),
}


class _Shown(NamedTuple):
    name: str
    #: per-case values are multiplied by this before testing (Dice: a fraction → percent)
    scale: float
    unit: str
    short: str


#: how the differences of a metric of :data:`~pimpic.segmentation.metrics.METRICS` are shown
_SHOWN = {"dice": _Shown("Dice", 100.0, "percentage points", "pp"),
          "hd95": _Shown("HD95", 1.0, "mm", "mm")}


def _shown(metric: str) -> _Shown:
    return _SHOWN.get(metric, _Shown(metric, 1.0, "its units", metric))


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """One Wilcoxon signed-rank test: ``method`` against ``reference`` at ``fraction`` % labels
    on ``structure``'s ``metric``."""

    method: str
    reference: str
    fraction: int
    structure: Structure
    metric: str
    pairing: str
    #: pairs tested (test cases, or case × seed pairs)
    n: int
    #: mean of (method − reference): percentage points for Dice, the metric's unit otherwise
    mean_diff: float
    statistic: float
    #: two-sided; NaN when not computable (``reason`` says why)
    p: float
    reason: str = ""
    #: Holm-adjusted over every test of one :func:`paired_tests` call
    p_holm: float = math.nan


def paired_tests(rows: Sequence[dict[str, Any]], reference: str = BASELINE, *,
                 pairing: str = "case", metric: str = "dice",
                 methods: Sequence[str] | None = None,
                 fractions: Sequence[int] | None = None, absent: str = "zero",
                 structures: Sequence[Structure] | None = None) -> list[PairedTest]:
    """Wilcoxon signed-rank test of each method against ``reference`` per fraction and
    structure, Holm-corrected over all of them.

    Args:
        rows: one row per (method, fraction, seed, test case), as ``results.csv`` holds them.
        reference: the method every other one is compared with.
        pairing: ``case``, ``common-seeds`` or ``case-seed`` (:data:`PAIRINGS`, the module
            docstring).
        metric: an entry of the metric table (``dice``, ``hd95``).
        methods, fractions: what to test, in order (default: those of the rows).
        absent: ``zero`` or ``nan``, the table's rule for a structure absent from a case.
        structures: default those the rows hold a Dice column of, in column order.

    Returns:
        structure by structure, fraction by fraction, one test per method but ``reference``.
    """
    if pairing not in PAIRINGS:
        raise PimpicError(f"pairing {pairing!r}: choose one of {', '.join(PAIRINGS)}")
    if metric not in METRICS:
        raise PimpicError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    scale = _shown(metric).scale
    ms, fs = grid_axes(rows, methods, fractions)
    out = []
    for st in structures if structures is not None else structures_in(rows):
        for f in fs:
            ref, _ = case_seed_scores(rows, reference, f, st.key, absent, metric)
            for m in ms:
                if m == reference:
                    continue
                other, _ = case_seed_scores(rows, m, f, st.key, absent, metric)
                a, b = _pairs(other, ref, pairing)
                a, b = a * scale, b * scale
                test = PairedTest(m, reference, f, st, metric, pairing, len(a),
                                  float((a - b).mean()) if len(a) else math.nan,
                                  math.nan, math.nan)
                out.append(_test(test, a, b, bool(ref)))
    return [dataclasses.replace(t, p_holm=h) for t, h in zip(out, holm([t.p for t in out]),
                                                             strict=True)]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What :func:`paired_tests` compares: the rows, the methods and fractions in order, the
    absent rule they were tabled with and their structures (None: those of the columns)."""

    rows: list[dict[str, Any]]
    methods: list[str]
    fractions: list[int]
    absent: str = "zero"
    structures: tuple[Structure, ...] | None = None


def read_comparison(source: Path | None,
                    runs: Sequence[tuple[str, Path]] = ()) -> Comparison:
    """The results to test: an experiment folder's (its ``results.csv``, methods, fractions and
    absent rule) or a ``results.csv`` file's (methods and fractions as they come); then each
    ``(name, run folder)`` of ``runs``, a fine-tuning run made outside the grid, as a cell of
    method ``name`` (several folders may share a name: its seeds). The runs' evaluations on
    the experiment's split are read (``test`` without an experiment). The structures are
    named as the experiment's cache names them where it is still there, else by the columns."""
    rows: list[dict[str, Any]] = []
    methods: list[str] = []
    fractions: list[int] = []
    absent, split = "zero", "test"
    structures = None
    if source is not None and source.is_dir():
        if not (source / CONFIG).is_file():
            raise PimpicError(f"{source}: not an experiment folder (no {CONFIG})")
        cfg = load_experiment_config(source / CONFIG)
        rows = read_results_csv(source / RESULTS)
        methods, fractions = list(cfg.methods), list(cfg.fractions)
        absent, split = cfg.absent, cfg.split
        labels = Cache(cfg.cache).labels if (Path(cfg.cache) / MANIFEST).is_file() else None
        if labels and set(labels.keys) == {s.key for s in structures_in(rows)}:
            structures = labels.structures
    elif source is not None:
        rows = read_results_csv(source)
        methods, fractions = grid_axes(rows, None, None)
    given = set(methods)
    for name, run in runs:
        if name in given:
            raise PimpicError(f"{name}={run}: {source} already has a method {name!r}; give the "
                              "run another name")
        added = run_results(run, name, split)
        rows += added
        methods += [name] if name not in methods else []
        if {r["fraction"] for r in added} - set(fractions):
            fractions = sorted({*fractions, *(r["fraction"] for r in added)})
    return Comparison(rows, methods, fractions, absent, structures)


def _pairs(method: dict[tuple[str, int], float], reference: dict[tuple[str, int], float],
           pairing: str) -> tuple[np.ndarray, np.ndarray]:
    """The paired values ``(method's, reference's)`` of :func:`paired_tests`, from each one's
    ``{(case, seed): score}``."""
    if pairing == "case-seed":
        keys = sorted(set(method) & set(reference))
        return (np.array([method[k] for k in keys], dtype=float),
                np.array([reference[k] for k in keys], dtype=float))
    if pairing == "common-seeds":
        method = {k: v for k, v in method.items() if k in reference}
        reference = {k: v for k, v in reference.items() if k in method}
    mine, theirs = by_case(method), by_case(reference)
    cases = sorted(set(mine) & set(theirs))
    return (np.array([mine[c] for c in cases], dtype=float),
            np.array([theirs[c] for c in cases], dtype=float))


def _test(test: PairedTest, a: np.ndarray, b: np.ndarray, has_reference: bool) -> PairedTest:
    """``test`` with its statistic and p-value, or the reason there is none."""
    if not has_reference:
        return dataclasses.replace(test, reason=f"no {_method(test.reference)} results")
    if len(a) < 2:
        what = "pairs" if test.pairing == "case-seed" else "paired cases"
        return dataclasses.replace(test, reason=f"fewer than 2 {what}")
    if np.all(a == b):
        return dataclasses.replace(test, reason="all differences are zero")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = wilcoxon(a, b)
    statistic, p = float(r.statistic), float(r.pvalue)
    return dataclasses.replace(test, statistic=statistic, p=p,
                               reason="not computable" if math.isnan(p) else "")


def holm(p: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given: the i-th smallest of the ``k``
    computable ones times ``k − i + 1`` (i from 1), never below the one before, at most 1; NaN
    stays NaN and does not count."""
    valid = sorted((i for i, x in enumerate(p) if not math.isnan(x)), key=lambda i: p[i])
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - rank) * p[i]))
        out[i] = running
    return out


def _method(method: str) -> str:
    """How a method is shown: the registry's name, or the name given (a ``--run`` method)."""
    try:
        return method_name(method)
    except PimpicError:
        return method


def format_reading(tests: Sequence[PairedTest], structure: str = "organ",
                   alpha: float = 0.05) -> str:
    """One plain sentence per (method, fraction) on ``structure`` (its key): did pretraining
    help here? For Dice tests.

    Says "significant" only when the Holm-corrected p-value is below ``alpha``; otherwise the
    difference is reported as measured and called not significant (or not testable)."""
    lines = []
    for t in tests:
        if t.structure.key != structure or math.isnan(t.mean_diff):
            continue
        if math.isnan(t.p):
            verdict = f"not testable ({t.reason})"
        elif t.p_holm < alpha:
            verdict = (f"a significant {'gain' if t.mean_diff > 0 else 'loss'} "
                       f"(p = {t.p:.3g}, Holm {t.p_holm:.3g})")
        else:
            verdict = f"not significant (p = {t.p:.3g}, Holm {t.p_holm:.3g})"
        lines.append(f"- {_method(t.method)} at {t.fraction} % labels: "
                     f"{t.mean_diff:+.1f} points {t.structure.name.lower()} "
                     f"{_shown(t.metric).name} vs {_method(t.reference)} over {t.n} "
                     f"{PAIRINGS[t.pairing].unit} — {verdict}.")
    return "\n".join(lines) + "\n" if lines else ""


def format_stats(tests: Sequence[PairedTest], reference: str = BASELINE) -> str:
    """Markdown table of :func:`paired_tests`, with a footnote saying how it was tested."""
    if not tests:
        return (f"No paired comparison: the grid has no {_method(reference)} baseline or no "
                "other method.\n")
    shown, pairing = _shown(tests[0].metric), PAIRINGS[tests[0].pairing]
    ref = _method(tests[0].reference)
    lines = [f"| Structure | Labels | Method | n | Δ {shown.name} ({shown.short}) vs {ref} "
             "| p (Wilcoxon) | p (Holm) |", "|---|---|---|---|---|---|---|"]
    for t in tests:
        diff = "n/a" if math.isnan(t.mean_diff) else f"{t.mean_diff:+.1f}"
        if math.isnan(t.p):
            p, ph = f"n/a ({t.reason})", "n/a"
        else:
            p, ph = f"{t.p:.3g}", f"{t.p_holm:.3g}"
            if t.p < 0.05:
                p = f"**{p}**"
        lines.append(f"| {t.structure.name} | {t.fraction} % | "
                     f"{_method(t.method)} | {t.n} | {diff} | {p} | {ph} |")
    lines += ["", f"Two-sided Wilcoxon signed-rank test over {pairing.unit} "
              f"({pairing.how.format(metric=shown.name)}; zero differences dropped, scipy's "
              f"default). Δ = mean of (method − {ref}) in {shown.unit}. p < 0.05 in bold "
              "(uncorrected); p (Holm) corrects for all tests in this table."]
    return "\n".join(lines) + "\n"
