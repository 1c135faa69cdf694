"""Per-seed means of an experiment's ``results.csv``, and each method's difference from Random
+ Aug per seed: how much of a mean gain one fine-tuning seed carries.

    python scripts/seed_table.py EXP/results.csv

A structure absent from a test case counts as Dice 0, as in the report's table.
"""

from __future__ import annotations

import sys

import pandas as pd

DICE = ["dice_organ", "dice_tumour", "dice_whole"]


def main(path: str) -> int:
    df = pd.read_csv(path)
    df[DICE] = df[DICE].fillna(0.0)
    for col in DICE:
        t = df.groupby(["method", "fraction", "seed"])[col].mean().unstack("seed") * 100
        t["mean"] = t.mean(axis=1)
        print(f"\n{col} per seed (mean over test cases), %\n{t.round(1).to_string()}")
    base = df[df.method == "random"].set_index(["fraction", "seed", "case"])
    for m in sorted(set(df.method) - {"random"}):
        d = df[df.method == m].set_index(["fraction", "seed", "case"])
        diff = (d.dice_organ - base.dice_organ).groupby(level=["fraction", "seed"]).mean() * 100
        print(f"\n{m} − random organ Dice by fraction, seed:\n"
              f"{diff.unstack('seed').round(1).to_string()}")
    r = df[df.method == "random"].groupby(["fraction", "seed"])[DICE].mean() * 100
    print("\nRandom + Aug criteria per seed: organ gap (100 − 5), tumour at 100")
    for s in sorted(df.seed.unique()):
        print(f"  seed {s}: gap {r.loc[(100, s), 'dice_organ'] - r.loc[(5, s), 'dice_organ']:.1f}"
              f", tumour {r.loc[(100, s), 'dice_tumour']:.1f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
