"""Paired tests over test case × seed from an experiment's ``results.csv`` (issue #10 §3).

    python scripts/paired_stats.py EXPERIMENT_FOLDER/results.csv [--baseline random]
                                   [--runs NAME RUN_FOLDER [RUN_FOLDER ...]] ...

The report's ``stats.md`` pairs each method with the baseline by test case, Dice averaged over
seeds first (conservative: the seeds of one case are not independent). This script gives the
other reading the issue asks for: one pair per (test case, seed), i.e. 8 cases × 3 seeds = 24
pairs, each a method's fine-tuning against the baseline's with the same seed on the same case.
Two-sided Wilcoxon signed-rank test (zero differences dropped), Holm-corrected over the table;
a structure absent from a case's ground truth scores 0, as in the table (the released rule).

``--runs NAME FOLDER...`` adds fine-tuning runs made outside the grid (a diagnostic: another
encoder, ``encoder_lr``, ...) as a method called NAME; each folder's fraction and seed come from
its ``config.yaml`` and its test Dice from ``eval-test/per_case.csv`` (``pimpic evaluate``).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import wilcoxon

from pimpic.protocol.statistics import _holm as holm_correct

STRUCTURES = ("organ", "tumour", "whole")
NAMES = {"random": "Random + Aug", "voco": "VoCo", "vox2vec": "vox2vec", "pim": "PiM",
         "pic": "PiC", "pimpic": "PiMPiC"}


def _dice(value: str) -> float:
    x = float(value)
    return 0.0 if math.isnan(x) else x  # absent structure: Dice 0 (released rule)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--baseline", default="random")
    parser.add_argument("--runs", nargs="+", action="append", default=[],
                        metavar=("NAME", "RUN_FOLDER"),
                        help="a method NAME made of these evaluated fine-tuning run folders")
    args = parser.parse_args()
    missing = [p for p in [args.results] + [Path(f) / "eval-test" / "per_case.csv"
                                            for _, *folders in args.runs for f in folders]
               if not Path(p).is_file()]
    if missing:
        print(f"{missing[0]}: no such file", file=sys.stderr)
        return 2
    # (method, fraction) → structure → (case, seed) → Dice
    table: dict[tuple[str, int], dict[str, dict[tuple[str, int], float]]] = defaultdict(
        lambda: defaultdict(dict))
    with open(args.results) as fh:
        for row in csv.DictReader(fh):
            key = (row["method"], int(row["fraction"]))
            for s in STRUCTURES:
                table[key][s][(row["case"], int(row["seed"]))] = _dice(row[f"dice_{s}"])
    for name, *folders in args.runs:
        for folder in folders:
            cfg = yaml.safe_load((Path(folder) / "config.yaml").read_text())
            with open(Path(folder) / "eval-test" / "per_case.csv") as fh:
                for row in csv.DictReader(fh):
                    for s in STRUCTURES:
                        table[name, int(cfg["fraction"])][s][row["case"], int(cfg["seed"])] = (
                            _dice(row[f"dice_{s}"]))
    extra = [name for name, *_ in args.runs]
    methods = [m for m in [*NAMES, *extra] if any(k[0] == m for k in table)
               and m != args.baseline]
    fractions = sorted({k[1] for k in table})
    tests = []
    for s in STRUCTURES:
        for f in fractions:
            base = table.get((args.baseline, f), {}).get(s, {})
            for m in methods:
                other = table.get((m, f), {}).get(s, {})
                pairs = sorted(set(base) & set(other))
                a = np.array([other[p] for p in pairs]) * 100
                b = np.array([base[p] for p in pairs]) * 100
                p = math.nan
                if len(pairs) >= 2 and not np.all(a == b):
                    p = float(wilcoxon(a, b).pvalue)
                tests.append({"s": s, "f": f, "m": m, "n": len(pairs),
                              "d": float((a - b).mean()) if len(a) else math.nan, "p": p})
    holm_correct(tests)  # the report's Holm correction: sets p_holm (NaN where p is)
    print(f"| Structure | Labels | Method | pairs (case × seed) | Δ Dice (pp) vs "
          f"{NAMES.get(args.baseline, args.baseline)} | p (Wilcoxon) | p (Holm) |")
    print("|---|---|---|---|---|---|---|")
    for t in tests:
        shown = "n/a" if math.isnan(t["p"]) else f"{t['p']:.3g}"
        if not math.isnan(t["p"]) and t["p"] < 0.05:
            shown = f"**{shown}**"
        holm = "n/a" if math.isnan(t["p_holm"]) else f"{t['p_holm']:.3g}"
        print(f"| {t['s']} | {t['f']} % | {NAMES.get(t['m'], t['m'])} | {t['n']} | "
              f"{t['d']:+.1f} | {shown} | {holm} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
