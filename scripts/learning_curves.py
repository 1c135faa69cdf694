"""Have the learning curves of an experiment flattened? (issue #10 §3)

    python scripts/learning_curves.py EXPERIMENT_FOLDER [--runs RUN_FOLDER ...]
    python scripts/learning_curves.py --runs RUN_FOLDER ...

``--runs`` adds pretraining or fine-tuning run folders made outside a grid (a diagnostic: a longer
budget, another learning rate); a folder whose ``metrics.jsonl`` holds validations is read as
fine-tuning, any other as pretraining.

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


def _name(metrics: Path) -> str:
    """A grid cell as ``method/fF/sS``, a pretraining run by its method, any other by its folder."""
    parts = metrics.parent.parts
    if len(parts) >= 4 and parts[-4] == "finetune":
        return "/".join(parts[-3:])
    return parts[-1]


def _validations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "val_dice_loss" in r]


def pretraining(runs: dict[Path, list[dict[str, Any]]]) -> None:
    print("pretraining: mean loss, last fifth of the steps vs the fifth before")
    for run, rows in runs.items():
        loss = [r["loss"] for r in rows if "loss" in r]
        k = max(1, len(loss) // 5)
        before, last = float(np.mean(loss[-2 * k:-k])), float(np.mean(loss[-k:]))
        print(f"  {_name(run):<8} {len(loss):4d} logged steps: {before:8.4f} → {last:8.4f} "
              f"({100 * (last - before) / abs(before):+5.1f} %)")


def finetuning(runs: dict[Path, list[dict[str, Any]]]) -> None:
    print("fine-tuning: kept epoch / last epoch; validation Dice loss first → middle → last")
    at_end = total = 0
    for run, rows in runs.items():
        val = _validations(rows)
        best = val[-1].get("best_epoch")
        last = val[-1]["epoch"]
        total += 1
        at_end += best == last
        curve = [val[0], val[len(val) // 2], val[-1]]
        print(f"  {_name(run):<18} kept {best}/{last}: "
              + " → ".join(f"{r['val_dice_loss']:.3f}" for r in curve))
    print(f"  {at_end} of {total} cells kept their last validated epoch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("experiment", type=Path, nargs="?")
    parser.add_argument("--runs", type=Path, nargs="+", default=[],
                        help="pretraining or fine-tuning run folders outside the grid")
    args = parser.parse_args(argv)
    if args.experiment is None and not args.runs:
        parser.error("give an experiment folder, --runs, or both")
    if args.experiment is not None and not (args.experiment / "config.yaml").is_file():
        print(f"{args.experiment}: not an experiment folder (no config.yaml)", file=sys.stderr)
        return 2
    missing = [r for r in args.runs if not (r / "metrics.jsonl").is_file()]
    if missing:
        print(f"{missing[0] / 'metrics.jsonl'}: no such file", file=sys.stderr)
        return 2
    # every metrics.jsonl read once: grid pretraining runs, grid cells, then --runs (a run with
    # validations is fine-tuning); a fine-tuning run without a validation yet is left out
    pre: dict[Path, list[dict[str, Any]]] = {}
    fine: dict[Path, list[dict[str, Any]]] = {}
    if args.experiment is not None:
        pre |= {m: _rows(m) for m in sorted((args.experiment / "pretrain").glob("*/metrics.jsonl"))}
        fine |= {m: _rows(m) for m in
                 sorted((args.experiment / "finetune").glob("*/f*/s*/metrics.jsonl"))}
    for run in args.runs:
        rows = _rows(run / "metrics.jsonl")
        (fine if _validations(rows) else pre)[run / "metrics.jsonl"] = rows
    fine = {m: rows for m, rows in fine.items() if _validations(rows)}
    if pre:
        pretraining(pre)
    if fine:
        finetuning(fine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
