"""Paired tests over test case × seed from an experiment's ``results.csv`` (issue #10 §3), and,
with ``--per-seed``, what each fine-tuning seed contributes.

    python scripts/paired_stats.py [EXPERIMENT_FOLDER/results.csv] [--baseline random]
                                   [--runs NAME RUN_FOLDER [RUN_FOLDER ...]] ... [--by-case]
                                   [--per-seed]

The report's ``stats.md`` pairs each method with the baseline by test case, Dice averaged over
seeds first (conservative: the seeds of one case are not independent). This script gives the
other reading the issue asks for: one pair per (test case, seed), i.e. 8 cases × 3 seeds = 24
pairs, each a method's fine-tuning against the baseline's with the same seed on the same case.
``--by-case`` gives the report's reading instead (one pair per case, its seeds averaged), for
runs made outside a grid too.
Two-sided Wilcoxon signed-rank test (zero differences dropped), Holm-corrected over the table;
a structure absent from a case's ground truth scores 0, as in the table (the released rule).

``--runs NAME FOLDER...`` adds fine-tuning runs made outside the grid (a diagnostic: another
encoder, ``encoder_lr``, ...) as a method called NAME; each folder's fraction and seed come from
its ``config.yaml`` and its test Dice from ``eval-test/per_case.csv`` (``pimpic evaluate``).
Without a ``results.csv`` only the ``--runs`` methods are compared (``--baseline`` one of them).

``--per-seed`` then prints, per structure, each method's mean Dice over the test cases for every
seed; each method's organ-Dice difference from the baseline per seed (how much of a mean gain one
seed carries); and the baseline's cohort criteria per seed (issue #10 §1: organ Dice at the
largest fraction minus the smallest, tumour Dice at the largest).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.stats import wilcoxon

from pimpic.errors import PimpicError
from pimpic.protocol.results import method_name
from pimpic.protocol.statistics import holm_adjust

STRUCTURES = ("organ", "tumour", "whole")
# (method, fraction) → structure → (case, seed) → Dice
Table = dict[tuple[str, int], dict[str, dict[tuple[str, int], float]]]


def _dice(value: str) -> float:
    x = float(value) if value not in ("", None) else math.nan
    return 0.0 if math.isnan(x) else x  # absent structure: Dice 0 (released rule)


def _signed(x: float) -> str:
    """``x`` to one decimal with its sign, a difference that rounds to zero as ``+0.0``."""
    shown = f"{x:+.1f}"
    return "+0.0" if shown == "-0.0" else shown


def _name(method: str) -> str:
    try:
        return str(method_name(method))
    except PimpicError:  # a --runs name, not a registered method
        return method


def load(results: Path | None, runs: list[list[str]]) -> Table:
    """The grid's per-case Dice (if ``results``) and each ``--runs`` method's, as one table."""
    table: Table = defaultdict(lambda: defaultdict(dict))
    rows = []
    if results is not None:
        with open(results) as fh:
            rows = list(csv.DictReader(fh))
    for row in rows:
        key = (row["method"], int(row["fraction"]))
        for s in STRUCTURES:
            table[key][s][(row["case"], int(row["seed"]))] = _dice(row[f"dice_{s}"])
    for name, *folders in runs:
        for folder in folders:
            cfg = yaml.safe_load((Path(folder) / "config.yaml").read_text())
            with open(Path(folder) / "eval-test" / "per_case.csv") as fh:
                for row in csv.DictReader(fh):
                    for s in STRUCTURES:
                        table[name, int(cfg["fraction"])][s][row["case"], int(cfg["seed"])] = (
                            _dice(row[f"dice_{s}"]))
    return table


def _methods(table: Table, baseline: str | None = None) -> list[str]:
    """The table's methods in order of first appearance, ``baseline`` left out."""
    return [m for m in dict.fromkeys(k[0] for k in table) if m != baseline]


def _by_case(pairs: list[tuple[str, int]], dice: dict[tuple[str, int], float]) -> np.ndarray:
    """Dice averaged over each case's seeds (of ``pairs``), one value per case, in case order."""
    cases = sorted({case for case, _ in pairs})
    return np.array([np.mean([dice[p] for p in pairs if p[0] == case]) for case in cases])


def paired_tests(table: Table, baseline: str, by_case: bool = False) -> list[dict[str, Any]]:
    """One Wilcoxon test per (structure, fraction, method) against ``baseline`` over the
    (case, seed) pairs both have — or, ``by_case``, over the cases, each one's Dice averaged over
    those seeds first (the report's ``stats.md`` reading); Holm-adjusted over the whole list
    (``p_holm``)."""
    fractions = sorted({k[1] for k in table})
    tests: list[dict[str, Any]] = []
    for s in STRUCTURES:
        for f in fractions:
            base = table.get((baseline, f), {}).get(s, {})
            for m in _methods(table, baseline):
                other = table.get((m, f), {}).get(s, {})
                pairs = sorted(set(base) & set(other))
                if not pairs:  # the method has no run at this fraction
                    continue
                if by_case:
                    a, b = _by_case(pairs, other) * 100, _by_case(pairs, base) * 100
                else:
                    a = np.array([other[p] for p in pairs]) * 100
                    b = np.array([base[p] for p in pairs]) * 100
                p = math.nan
                if len(a) >= 2 and not np.all(a == b):
                    p = float(wilcoxon(a, b).pvalue)
                tests.append({"s": s, "f": f, "m": m, "n": len(a),
                              "d": float((a - b).mean()) if len(a) else math.nan, "p": p})
    holm_adjust(tests)  # the report's Holm correction: sets p_holm (NaN where p is)
    return tests


def format_tests(tests: list[dict[str, Any]], baseline: str, by_case: bool = False) -> str:
    unit = "cases (seeds averaged)" if by_case else "pairs (case × seed)"
    lines = [f"| Structure | Labels | Method | {unit} | Δ Dice (pp) vs "
             f"{_name(baseline)} | p (Wilcoxon) | p (Holm) |", "|---|---|---|---|---|---|---|"]
    for t in tests:
        shown = "n/a" if math.isnan(t["p"]) else f"{t['p']:.3g}"
        if not math.isnan(t["p"]) and t["p"] < 0.05:
            shown = f"**{shown}**"
        holm = "n/a" if math.isnan(t["p_holm"]) else f"{t['p_holm']:.3g}"
        lines.append(f"| {t['s']} | {t['f']} % | {_name(t['m'])} | {t['n']} | {_signed(t['d'])} | "
                     f"{shown} | {holm} |")
    return "\n".join(lines)


def seed_means(table: Table, method: str, fraction: int, structure: str) -> dict[int, float]:
    """Mean Dice (%) over the test cases, per seed."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for (_, seed), dice in table.get((method, fraction), {}).get(structure, {}).items():
        by_seed[seed].append(dice)
    return {seed: 100 * float(np.mean(v)) for seed, v in sorted(by_seed.items())}


def format_per_seed(table: Table, baseline: str) -> str:
    seeds = sorted({seed for cells in table.values() for d in cells.values() for _, seed in d})
    fractions = sorted({k[1] for k in table})
    head = " | ".join(f"seed {s}" for s in seeds)
    rule = "|---|---|" + "---|" * (len(seeds) + 1)

    def row(values: dict[int, float], signed: bool = False) -> str:
        def fmt(x: float) -> str:
            return _signed(x) if signed else f"{x:.1f}"
        cells = [fmt(values[s]) if s in values else "–" for s in seeds]
        return "| " + " | ".join([*cells, fmt(float(np.mean(list(values.values()))))]) + " |"

    out = []
    for s in STRUCTURES:
        out += [f"\n{s} Dice per seed (mean over test cases, %)\n",
                f"| Method | Labels | {head} | mean |", rule]
        for m in _methods(table):
            for f in fractions:
                if (m, f) in table:
                    out.append(f"| {_name(m)} | {f} % " + row(seed_means(table, m, f, s)))
    out += [f"\norgan Dice minus {_name(baseline)}'s, per seed (pp)\n",
            f"| Method | Labels | {head} | mean |", rule]
    for m in _methods(table, baseline):
        for f in fractions:
            if (m, f) in table and (baseline, f) in table:
                mine = seed_means(table, m, f, "organ")
                base = seed_means(table, baseline, f, "organ")
                diff = {seed: mine[seed] - base[seed] for seed in mine if seed in base}
                if diff:
                    out.append(f"| {_name(m)} | {f} % " + row(diff, signed=True))
    if len(fractions) >= 2 and all((baseline, f) in table for f in (fractions[0], fractions[-1])):
        lo, hi = fractions[0], fractions[-1]
        organ_lo, organ_hi = (seed_means(table, baseline, f, "organ") for f in (lo, hi))
        tumour_hi = seed_means(table, baseline, hi, "tumour")
        out.append(f"\n{_name(baseline)}'s cohort criteria per seed: organ gap ({hi} % − {lo} %),"
                   f" tumour at {hi} %")
        out += [f"- seed {seed}: gap {organ_hi[seed] - organ_lo[seed]:.1f}, tumour "
                f"{tumour_hi[seed]:.1f}" for seed in seeds if seed in organ_lo and seed in organ_hi]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="?")
    parser.add_argument("--baseline", default="random")
    parser.add_argument("--runs", nargs="+", action="append", default=[],
                        metavar=("NAME", "RUN_FOLDER"),
                        help="a method NAME made of these evaluated fine-tuning run folders")
    parser.add_argument("--by-case", action="store_true",
                        help="pair by test case, each case's Dice averaged over its seeds first")
    parser.add_argument("--per-seed", action="store_true",
                        help="also print per-seed means, differences and the cohort criteria")
    args = parser.parse_args(argv)
    if any(len(r) < 2 for r in args.runs):
        print("--runs needs a NAME and at least one RUN_FOLDER", file=sys.stderr)
        return 2
    if args.results is None and not args.runs:
        parser.error("give a results.csv, --runs, or both")
    needed = [] if args.results is None else [args.results]
    needed += [Path(f) / name for _, *folders in args.runs for f in folders
               for name in ("config.yaml", "eval-test/per_case.csv")]
    missing = [p for p in needed if not Path(p).is_file()]
    if missing:
        print(f"{missing[0]}: no such file", file=sys.stderr)
        return 2
    table = load(args.results, args.runs)
    if not any(k[0] == args.baseline for k in table):
        where = args.results or "--runs"
        print(f"{where}: no rows for the baseline {args.baseline!r}", file=sys.stderr)
        return 2
    tests = paired_tests(table, args.baseline, by_case=args.by_case)
    print(format_tests(tests, args.baseline, by_case=args.by_case))
    if args.per_seed:
        print(format_per_seed(table, args.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
