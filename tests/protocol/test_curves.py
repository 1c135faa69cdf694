"""Learning curves (curves.py): has a pretraining loss or a fine-tuning validation flattened,
per class by the run's label names, for an experiment's runs and for runs outside a grid."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from _runs import write_run_info
from pimpic.data.labels import LabelSet, parse_labels
from pimpic.errors import PimpicError
from pimpic.io import write_json
from pimpic.paths import CONFIG, METRICS, SPLIT_RECORD, cell_dir, pretrain_dir
from pimpic.protocol.curves import format_curves, loss_trend, read_curves, validation_curve


def write_metrics(run: Path, rows: list[dict[str, Any]], kind: str | None = None,
                  labels: LabelSet | None = None) -> Path:
    """A run folder holding ``metrics.jsonl`` (and, with ``kind``, its marker and, for
    fine-tuning, a run.json recording ``labels``)."""
    run.mkdir(parents=True)
    (run / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if kind is not None:
        write_run_info(run, kind=kind, labels=labels)
    return run


def experiment(tmp_path: Path) -> Path:
    """A grid (random, pimpic × 5 % × seed 0): PiMPiC's pretraining losses 1..10; the cell's
    validations improving to the end, its classes named by its labels (liver, lesion)."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / CONFIG).write_text(yaml.safe_dump({"cache": "c", "methods": ["random", "pimpic"],
                                              "fractions": [5], "seeds": [0]}))
    write_json(exp / SPLIT_RECORD, {"digest": "x"})
    write_metrics(pretrain_dir(exp, "pimpic"), [{"step": i, "loss": float(i)}
                                                for i in range(1, 11)], "pretrain")
    labels = parse_labels({"0": "background", "1": "liver", "2": "lesion"}, "d", by_name=False)
    write_metrics(cell_dir(exp, "random", 5, 0),
                  [{"step": 1, "loss": 1.0}]
                  + [{"epoch": e, "val_dice_loss": 1.0 - e / 20, "best_epoch": e,
                      "val_dice_1": e / 20, "val_dice_2": e / 40} for e in (4, 8, 12)],
                  "finetune", labels)
    return exp


def test_pretraining_trend_and_validation_curve() -> None:
    trend = loss_trend("pim", [{"step": i, "loss": float(i)} for i in range(1, 11)])
    assert trend is not None
    # last fifth mean(9, 10) = 9.5 against the fifth before mean(7, 8) = 7.5
    assert (trend.steps, trend.before, trend.last) == (10, 7.5, 9.5)
    assert trend.change == pytest.approx(100 * 2 / 7.5)
    assert loss_trend("pim", [{"loss": 1.0}]) is None
    rows = [{"epoch": e, "val_dice_loss": 0.5, "best_epoch": 2, "val_dice_1": 0.1 * e}
            for e in range(1, 6)]
    curve = validation_curve("ft", rows, ("background", "kidney", "tumour"))
    assert curve is not None and (curve.kept, curve.last) == (2, 5)
    assert curve.series[0] == ("Dice loss", (0.5, 0.5, 0.5))
    # first, middle (index 5 // 2 = 2), last; a class never logged is left out
    assert curve.series[1:] == (("kidney", (0.1, pytest.approx(0.3), 0.5)),)
    assert validation_curve("ft", [{"step": 1, "loss": 1.0}], ()) is None


def test_experiment_and_outside_runs(tmp_path: Path) -> None:
    exp = experiment(tmp_path)
    # a run outside the grid, no marker and no run.json: fine-tuning because it validates, its
    # three classes read as the organ + tumour view
    outside = write_metrics(tmp_path / "long_ft", [
        {"epoch": 4, "val_dice_loss": 0.7, "best_epoch": 4, "val_dice_1": 0.2,
         "val_dice_2": math.nan},
        {"epoch": 8, "val_dice_loss": 0.5, "best_epoch": 8, "val_dice_1": 0.4, "val_dice_2": 0.1},
        {"epoch": 12, "val_dice_loss": 0.6, "best_epoch": 8, "val_dice_1": 0.3,
         "val_dice_2": 0.0}])
    trends, curves = read_curves([exp, outside])
    assert [t.name for t in trends] == ["pimpic"]
    assert [c.name for c in curves] == ["random/f5/s0", "long_ft"]
    assert [n for n, _ in curves[0].series] == ["Dice loss", "liver", "lesion"]
    assert [n for n, _ in curves[1].series] == ["Dice loss", "organ", "tumour"]
    out = format_curves(trends, curves).splitlines()
    assert out[1].split() == ["pimpic", "10", "logged", "steps:", "7.5000", "→", "9.5000",
                              "(+26.7", "%)"]
    assert out[3] == "  random/f5/s0 kept 12/12: 0.800 → 0.600 → 0.400"
    assert out[4] == "    liver" + " " * 18 + "0.200 → 0.400 → 0.600"  # under the losses
    assert out[6] == "  long_ft      kept 8/12: 0.700 → 0.500 → 0.600"
    assert out[8] == "    tumour" + " " * 16 + "nan → 0.100 → 0.000"
    assert out[-1] == "  1 of 2 runs kept their last validated epoch"


def test_a_finetuning_marker_wins_over_what_is_logged(tmp_path: Path) -> None:
    """A fine-tuning run without a validation split logs no validation: it is not shown as a
    pretraining loss."""
    run = write_metrics(tmp_path / "ft", [{"step": i, "loss": 1.0} for i in range(5)],
                        "finetune")
    assert read_curves([run]) == ([], [])
    assert format_curves([], []) == "no training curves found\n"


def test_neither_a_run_nor_an_experiment(tmp_path: Path) -> None:
    (tmp_path / CONFIG).write_text("cache: c\n")
    with pytest.raises(PimpicError, match="neither a run folder"):
        read_curves([tmp_path])


def test_long_structure_names_keep_the_columns_aligned() -> None:
    from pimpic.protocol.curves import ValidationCurve

    curve = ValidationCurve("ft", 2, 3, (("val_dice_loss", (0.5, 0.4, 0.3)),
                                         ("a_structure_with_a_long_name", (0.1, 0.2, 0.3)),
                                         ("cord", (0.4, 0.5, 0.6))))
    lines = format_curves([], [curve]).splitlines()
    starts = {line.index("0.") for line in lines[1:4]}
    assert len(starts) == 1, lines
