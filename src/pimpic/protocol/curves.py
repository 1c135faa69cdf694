"""Have the training curves flattened? (``pimpic curves``: an experiment's runs, or any run
folders.)

* A pretraining run: the mean training loss over the last fifth of its logged steps against the
  fifth before, as a relative change (a flat curve changes by a few per cent at most).
* A fine-tuning run: the epoch whose model was kept (best validation score) and the last epoch;
  the validation Dice loss and each class's validation Dice (``val_dice_<class>`` of
  ``metrics.jsonl``, named by the run's labels) at the first, middle and last validation. A kept
  epoch at the very end means the model was still improving when the budget ran out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pimpic.data.labels import class_names
from pimpic.errors import PimpicError
from pimpic.io import read_json, read_jsonl
from pimpic.paths import CONFIG, MARKER, METRICS, RUN_INFO, SPLIT_RECORD, cell_dir, pretrain_dir
from pimpic.protocol.grid import BASELINE, load_experiment_config
from pimpic.segmentation.run_info import FinetuneRun

#: the validation criterion every fine-tuning validation logs
VAL_LOSS = "val_dice_loss"


@dataclasses.dataclass(frozen=True)
class LossTrend:
    """A pretraining run's loss at the end of training."""

    name: str
    #: logged steps
    steps: int
    #: mean loss over the fifth of the logged steps before the last fifth, and over the last
    before: float
    last: float

    @property
    def change(self) -> float:
        """``last`` against ``before``, in per cent (NaN when ``before`` is 0)."""
        return 100 * (self.last - self.before) / abs(self.before) if self.before else math.nan


@dataclasses.dataclass(frozen=True)
class ValidationCurve:
    """A fine-tuning run's validations."""

    name: str
    #: the epoch whose model was kept, and the last validated one
    kept: int | None
    last: int
    #: ``(what, (first, middle, last))``: the Dice loss, then each class's Dice by its name
    series: tuple[tuple[str, tuple[float, float, float]], ...]


def loss_trend(name: str, rows: Sequence[dict[str, Any]]) -> LossTrend | None:
    """The :class:`LossTrend` of a run's ``metrics.jsonl`` rows (None: fewer than 2 losses)."""
    loss = [float(r["loss"]) for r in rows if "loss" in r]
    if len(loss) < 2:
        return None
    k = max(1, len(loss) // 5)
    return LossTrend(name, len(loss), float(np.mean(loss[-2 * k:-k])), float(np.mean(loss[-k:])))


def validation_curve(name: str, rows: Sequence[dict[str, Any]],
                     classes: Sequence[str]) -> ValidationCurve | None:
    """The :class:`ValidationCurve` of a run's ``metrics.jsonl`` rows, ``classes`` naming the
    classes ``0 … K − 1`` (None: no validation yet)."""
    val = [r for r in rows if VAL_LOSS in r]
    if not val:
        return None
    picks = (val[0], val[len(val) // 2], val[-1])

    def at(key: str) -> tuple[float, float, float]:
        first, middle, last = (float(r.get(key, math.nan)) for r in picks)
        return first, middle, last

    series = [("Dice loss", at(VAL_LOSS))]
    series += [(n, at(f"val_dice_{c}")) for c, n in enumerate(classes)
               if c and any(f"val_dice_{c}" in r for r in val)]
    return ValidationCurve(name, val[-1].get("best_epoch"), int(val[-1]["epoch"]), tuple(series))


def _classes(run: Path, rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The run's class names: its labels (``run.json``), else those its class count implies."""
    if (run / RUN_INFO).is_file():
        return FinetuneRun.from_json(run / RUN_INFO, read_json(run / RUN_INFO)).label_set(
        ).names_by_class()
    logged = [int(k[len("val_dice_"):]) for r in rows for k in r
              if k.startswith("val_dice_") and k[len("val_dice_"):].isdigit()]
    return class_names(max(logged) + 1).names_by_class() if logged else ()


def _is_finetuning(run: Path, rows: Sequence[dict[str, Any]]) -> bool:
    """The run folder's kind (its marker), else: does it log validations?"""
    if (run / MARKER).is_file():
        return bool(read_json(run / MARKER).get("kind") == "finetune")
    return any(VAL_LOSS in r for r in rows)


def grid_runs(exp: Path) -> list[tuple[str, Path]]:
    """``(name, folder)`` of an experiment's runs that logged something: each pretraining run
    (named by its method), then each cell (``method/f<fraction>/s<seed>``)."""
    cfg = load_experiment_config(exp / CONFIG)
    pre = [pretrain_dir(exp, m) for m in cfg.methods if m != BASELINE]
    cells = [cell_dir(exp, m, f, s) for m in cfg.methods for f in cfg.fractions for s in cfg.seeds]
    runs = [(p.name, p) for p in pre]
    runs += [("/".join(c.relative_to(exp).parts[1:]), c) for c in cells]
    return [(n, r) for n, r in runs if (r / METRICS).is_file()]


def read_curves(paths: Sequence[Path]) -> tuple[list[LossTrend], list[ValidationCurve]]:
    """The curves of every run in ``paths``: experiment folders (their runs) and run folders
    (named by the folder), in order."""
    trends: list[LossTrend] = []
    curves: list[ValidationCurve] = []
    for path in paths:
        if (path / METRICS).is_file():
            runs = [(path.name, path)]
        elif (path / CONFIG).is_file() and (path / SPLIT_RECORD).is_file():
            runs = grid_runs(path)
        else:
            raise PimpicError(f"{path}: neither a run folder (no {METRICS}) nor an experiment "
                              f"folder (no {SPLIT_RECORD})")
        for name, run in runs:
            rows = read_jsonl(run / METRICS)
            if _is_finetuning(run, rows):
                curve = validation_curve(name, rows, _classes(run, rows))
                if curve is not None:
                    curves.append(curve)
            else:
                trend = loss_trend(name, rows)
                if trend is not None:
                    trends.append(trend)
    return trends, curves


def format_curves(trends: Sequence[LossTrend], curves: Sequence[ValidationCurve]) -> str:
    """What ``pimpic curves`` prints."""
    lines = []
    if trends:
        width = max(8, *(len(t.name) for t in trends))
        lines.append("pretraining: mean loss, last fifth of the logged steps against the fifth "
                     "before")
        lines += [f"  {t.name:<{width}} {t.steps:4d} logged steps: {t.before:8.4f} → "
                  f"{t.last:8.4f} ({t.change:+5.1f} %)" for t in trends]
    if curves:
        width = max(12, *(len(c.name) for c in curves),
                    *(len(n) + 2 for c in curves for n, _ in c.series[1:]))
        lines.append("fine-tuning: kept epoch / last epoch; validation Dice loss, then each "
                     "class's Dice, at the first → middle → last validation")
        for c in curves:
            (_, loss), *classes = c.series
            lines.append(f"  {c.name:<{width}} kept {c.kept}/{c.last}: " + _arrow(loss))
            lines += [f"    {n:<{width - 2}} {' ' * len(f'kept {c.kept}/{c.last}:')} "
                      + _arrow(v) for n, v in classes]
        at_end = sum(c.kept == c.last for c in curves)
        lines.append(f"  {at_end} of {len(curves)} runs kept their last validated epoch")
    return "\n".join(lines) + "\n" if lines else "no training curves found\n"


def _arrow(values: Sequence[float]) -> str:
    return " → ".join(f"{v:.3f}" for v in values)
