"""`pimpic finetune / evaluate / predict` end to end through the CLI, and its errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from _cli import assert_refused
from pimpic.cli import app

TINY = ["--set", "width=2", "--set", "depth=3", "--set", "patch_size=16", "--set",
        "max_steps=2", "--set", "num_workers=0", "--set", "batch_size=1", "--set",
        "samples_per_volume=1"]


@pytest.mark.slow
def test_finetune_evaluate_predict(make_cache, tmp_path):
    runner = CliRunner()
    cache = make_cache(n_cases=6, shape=(16, 16, 16))
    run = tmp_path / "run"
    res = runner.invoke(app, ["finetune", str(cache), "--out", str(run), "--fraction", "50",
                              "--seed", "3", *TINY, "--no-progress"])
    assert res.exit_code == 0, res.output
    info = json.loads((run / "run.json").read_text())
    assert info["fraction"] == 50 and len(info["train_cases"]) == 2
    assert "seed: 3" in (run / "config.yaml").read_text()

    res = runner.invoke(app, ["finetune", str(cache), "--out", str(run), *TINY])
    assert res.exit_code == 2 and "error:" in res.output and "--resume" in res.output

    res = runner.invoke(app, ["evaluate", str(run), "--lcc", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "organ" in res.output and (run / "eval-test" / "summary.json").is_file()
    res = runner.invoke(app, ["evaluate", str(run), "--split", "train"])
    assert res.exit_code == 2 and "fine-tuning set" in res.output

    img = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 14, 10), np.float32), np.diag([2, 1, 3, 1.0])),
             str(img))
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", str(img), "--model", str(run), "--out", str(out),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert nib.load(str(out / "scan_seg.nii.gz")).shape == (12, 14, 10)
    res = runner.invoke(app, ["predict", str(img), "--model", str(run), "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_cli_errors(make_cache, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert res.exit_code == 2 and "no model.safetensors" in res.output
    enc = tmp_path / "enc.safetensors"
    enc.write_bytes(b"garbage")
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    res = runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "r"),
                              "--encoder", str(enc), *TINY])
    assert res.exit_code == 2 and "safetensors" in res.output
    res = runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "r"),
                              "--set", "loss=focal"])
    assert res.exit_code == 2 and "loss" in res.output


def test_settings_and_folders_are_checked_before_anything_is_written(make_cache, tmp_path):
    runner = CliRunner()
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    run = tmp_path / "run"
    for setting, message in (("val_every=0", "val_every must be ≥ 1, got 0"),
                             ("batch_size=0", "batch_size must be ≥ 1, got 0"),
                             ("max_epochs=0", "max_epochs must be ≥ 1, got 0"),
                             ("num_classes=2", "label value 2 does not fit num_classes=2"),
                             ("class_ratios=[0,0,0]", "class_ratios: all zero"),  # C41
                             ("max_epochs=.inf", "max_epochs: expected an integer")):  # C49
        res = runner.invoke(app, ["finetune", str(cache), "--out", str(run), *TINY,
                                  "--set", setting, "--no-progress"])
        assert_refused(res, message)
        assert not run.exists()
    res = runner.invoke(app, ["finetune", str(cache), "--out", str(run), "--resume", *TINY])
    assert res.exit_code == 2 and "no checkpoint to resume from" in res.output
    assert not run.exists()


def test_a_run_that_kept_no_model_says_so(make_cache, tmp_path):
    """Validation never gives a finite Dice (no foreground in the validation labels) and the
    model is selected on that Dice (the Dice loss, the released criterion, is always finite)."""
    from pimpic.data.cache import Cache

    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    for cid in Cache(cache).split().val:
        np.save(cache / "cases" / cid / "label.npy", np.zeros((16, 16, 16), np.uint8))
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["finetune", str(cache), "--out", str(run), *TINY,
                                   "--set", "steps_per_epoch=1", "--set", "patience=1",
                                   "--set", "val_criterion=dice", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "training stopped without keeping a model" in res.output
    assert not (run / "model.safetensors").exists()
