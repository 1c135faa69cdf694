"""Have the learning curves of an experiment flattened? (issue #10 §3)

    python scripts/learning_curves.py EXPERIMENT_FOLDER

For every pretraining run: the mean training loss over the last fifth of its steps against the
fifth before, as a relative change (a flat curve changes by a few per cent at most). For every
fine-tuning cell: the epoch whose model was kept (best validation Dice loss), the last epoch, and
the validation Dice loss at the first, middle and last validation; a best epoch at the very end
means the model was still improving when the budget ran out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _rows(path: Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pretraining(exp: Path) -> None:
    print("pretraining: mean loss, last fifth of the steps vs the fifth before")
    for run in sorted((exp / "pretrain").glob("*/metrics.jsonl")):
        loss = [r["loss"] for r in _rows(run) if "loss" in r]
        k = max(1, len(loss) // 5)
        before, last = float(np.mean(loss[-2 * k:-k])), float(np.mean(loss[-k:]))
        print(f"  {run.parent.name:<8} {len(loss):4d} logged steps: {before:8.4f} → {last:8.4f} "
              f"({100 * (last - before) / abs(before):+5.1f} %)")


def finetuning(exp: Path) -> None:
    print("fine-tuning: kept epoch / last epoch; validation Dice loss first → middle → last")
    at_end = total = 0
    for run in sorted((exp / "finetune").glob("*/f*/s*/metrics.jsonl")):
        rows = _rows(run)
        val = [r for r in rows if "val_dice_loss" in r]
        if not val:
            continue
        best = val[-1].get("best_epoch")
        last = val[-1]["epoch"]
        total += 1
        at_end += best == last
        curve = [val[0], val[len(val) // 2], val[-1]]
        name = "/".join(run.parent.parts[-3:])
        print(f"  {name:<18} kept {best}/{last}: "
              + " → ".join(f"{r['val_dice_loss']:.3f}" for r in curve))
    print(f"  {at_end} of {total} cells kept their last validated epoch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path)
    args = parser.parse_args()
    if not (args.experiment / "config.yaml").is_file():
        print(f"{args.experiment}: not an experiment folder (no config.yaml)", file=sys.stderr)
        return 2
    pretraining(args.experiment)
    finetuning(args.experiment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
