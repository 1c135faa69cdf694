"""Did pretraining help? Paired Wilcoxon signed-rank tests of each method against the baseline
per label fraction and structure (every structure the dataset names), over test cases
(seed-averaged), Holm-corrected over all of them, as a table (``stats.md``) and in plain
sentences."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from pimpic.data.labels import Structure
from pimpic.protocol.grid import BASELINE
from pimpic.protocol.results import grid_axes, method_name, per_case, structures_in
from pimpic.segmentation.metrics import STRUCTURE_NAMES


def wilcoxon_tests(rows: Sequence[dict[str, Any]], baseline: str = BASELINE,
                   methods: Sequence[str] | None = None,
                   fractions: Sequence[int] | None = None,
                   absent: str = "zero",
                   structures: Sequence[Structure] | None = None) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank test of each method against ``baseline`` per fraction and
    structure (``structures``, default those of the rows' columns), paired by test case
    (seed-averaged). Each result has ``method``, ``fraction``, ``structure`` (its key),
    ``structure_name``, ``n`` (pairs), ``mean_diff`` (percentage points, method − baseline),
    ``statistic``, ``p`` (two-sided; NaN when not computable), ``reason`` (why not) and
    ``p_holm`` (Holm over every test returned)."""
    ms, fs = grid_axes(rows, methods, fractions)
    out = []
    for st in structures if structures is not None else structures_in(rows):
        structure = st.key
        for f in fs:
            base, _ = per_case(rows, baseline, f, structure, absent)
            for m in ms:
                if m == baseline:
                    continue
                other, _ = per_case(rows, m, f, structure, absent)
                common = sorted(set(base) & set(other))
                a = np.array([other[c] for c in common]) * 100
                b = np.array([base[c] for c in common]) * 100
                res: dict[str, Any] = {"method": m, "fraction": f, "structure": structure,
                                       "structure_name": st.name, "n": len(common),
                                       "statistic": math.nan, "p": math.nan,
                                       "mean_diff": float((a - b).mean()) if len(a) else math.nan,
                                       "reason": ""}
                if not base:
                    res["reason"] = f"no {method_name(baseline)} results"
                elif len(common) < 2:
                    res["reason"] = "fewer than 2 paired cases"
                elif np.all(a == b):
                    res["reason"] = "all differences are zero"
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        r = wilcoxon(a, b)
                    res["statistic"], res["p"] = float(r.statistic), float(r.pvalue)
                    if math.isnan(res["p"]):
                        res["reason"] = "not computable"
                out.append(res)
    holm_adjust(out)
    return out


def format_reading(tests: Sequence[dict[str, Any]], structure: str = "organ",
                   alpha: float = 0.05) -> str:
    """One plain sentence per (method, fraction) on ``structure``: did pretraining help here?

    Says "significant" only when the Holm-corrected p-value is below ``alpha``; otherwise the
    difference is reported as measured and called not significant (or not testable)."""
    lines = []
    for t in tests:
        if t["structure"] != structure or math.isnan(t["mean_diff"]):
            continue
        p_holm = t.get("p_holm", math.nan)
        if math.isnan(t["p"]):
            verdict = f"not testable ({t['reason']})"
        elif p_holm < alpha:
            verdict = (f"a significant {'gain' if t['mean_diff'] > 0 else 'loss'} "
                       f"(p = {t['p']:.3g}, Holm {p_holm:.3g})")
        else:
            verdict = f"not significant (p = {t['p']:.3g}, Holm {p_holm:.3g})"
        lines.append(f"- {method_name(t['method'])} at {t['fraction']} % labels: "
                     f"{t['mean_diff']:+.1f} points {_name(t).lower()} Dice "
                     f"vs {method_name(BASELINE)} over {t['n']} test cases — {verdict}.")
    return "\n".join(lines) + "\n" if lines else ""


def _name(test: dict[str, Any]) -> str:
    """How a test's structure is shown (tests made by hand may carry only its key)."""
    return str(test.get("structure_name") or STRUCTURE_NAMES.get(test["structure"],
                                                                 test["structure"]))


def holm_adjust(tests: list[dict[str, Any]]) -> None:
    """Holm–Bonferroni adjusted p-values over all computable tests (``p_holm``)."""
    valid = sorted((t for t in tests if not math.isnan(t["p"])), key=lambda t: t["p"])
    running = 0.0
    for i, t in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - i) * t["p"]))
        t["p_holm"] = running
    for t in tests:
        t.setdefault("p_holm", math.nan)


def format_stats(tests: Sequence[dict[str, Any]], baseline: str = BASELINE) -> str:
    """Markdown table of :func:`wilcoxon_tests`."""
    if not tests:
        return (f"No paired comparison: the grid has no {method_name(baseline)} baseline or no "
                "other method.\n")
    lines = [f"| Structure | Labels | Method | n | Δ Dice (pp) vs {method_name(baseline)} "
             "| p (Wilcoxon) | p (Holm) |", "|---|---|---|---|---|---|---|"]
    for t in tests:
        diff = "n/a" if math.isnan(t["mean_diff"]) else f"{t['mean_diff']:+.1f}"
        if math.isnan(t["p"]):
            p, ph = f"n/a ({t['reason']})", "n/a"
        else:
            p, ph = f"{t['p']:.3g}", f"{t['p_holm']:.3g}"
            if t["p"] < 0.05:
                p = f"**{p}**"
        lines.append(f"| {_name(t)} | {t['fraction']} % | "
                     f"{method_name(t['method'])} | {t['n']} | {diff} | {p} | {ph} |")
    lines += ["", "Two-sided Wilcoxon signed-rank test over test cases (paired by case, Dice "
              "averaged over seeds first; zero differences dropped, scipy's default). Δ = mean "
              f"of (method − {method_name(baseline)}) in percentage points. p < 0.05 in bold "
              "(uncorrected); p (Holm) corrects for all tests in this table."]
    return "\n".join(lines) + "\n"
