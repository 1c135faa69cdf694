"""scripts/learning_curves.py: has a pretraining loss or a fine-tuning validation flattened?"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _scripts import load_script


def _write(path: Path, rows: list[dict[str, float]]) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_grid_and_outside_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = tmp_path / "exp"
    # pretraining losses 1..10: last fifth mean(9, 10) = 9.5 against mean(7, 8) = 7.5: +26.7 %
    _write(exp / "pretrain" / "pimpic", [{"step": i, "loss": float(i)} for i in range(1, 11)])
    # a grid cell whose best validation is its last: still improving
    _write(exp / "finetune" / "random" / "f5" / "s0",
           [{"step": 1, "loss": 1.0}]
           + [{"epoch": e, "val_dice_loss": 1.0 - e / 20, "best_epoch": e} for e in (4, 8, 12)])
    (exp / "config.yaml").write_text("methods: [random]\n")
    # a run outside the grid that kept an earlier epoch
    outside = _write(tmp_path / "long_ft", [
        {"epoch": 4, "val_dice_loss": 0.7, "best_epoch": 4},
        {"epoch": 8, "val_dice_loss": 0.5, "best_epoch": 8},
        {"epoch": 12, "val_dice_loss": 0.6, "best_epoch": 8}])
    script = load_script("learning_curves")
    assert script.main([str(exp), "--runs", str(outside)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["pimpic", "10", "logged", "steps:", "7.5000", "→", "9.5000",
                              "(+26.7", "%)"]
    assert out[3] == "  random/f5/s0       kept 12/12: 0.800 → 0.600 → 0.400"
    assert out[4] == "  long_ft            kept 8/12: 0.700 → 0.500 → 0.600"
    assert out[5] == "  1 of 2 cells kept their last validated epoch"


def test_wrong_folders_are_one_line_errors(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("learning_curves")
    assert script.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{tmp_path}: not an experiment folder (no config.yaml)"
    assert script.main(["--runs", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'nope' / 'metrics.jsonl'}: no such file"
