"""Evaluation: outputs and their format, the held-out rule, LCC, original-space metrics."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

import pimpic.segmentation.evaluate
from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.io import write_json
from pimpic.models.unet import Encoder, SegmentationNet
from pimpic.segmentation.evaluate import describe, evaluate
from pimpic.segmentation.inference import largest_component
from pimpic.segmentation.metrics import COLUMNS
from pimpic.segmentation.model_file import save_model


def make_run(run_dir, cache_root, pretrain_cases=(), train_cases=None):
    """A run folder with a random tiny model (no training needed to test evaluation)."""
    cache = Cache(cache_root)
    torch.manual_seed(0)
    model = SegmentationNet(Encoder(1, 2, 3), 3)
    meta = {"patch_size": 16, "settings": cache.settings, "fraction": 100}
    save_model(run_dir / "model.safetensors", model, meta)
    write_json(run_dir / "run.json", {
        "cache": str(cache_root), "fraction": 100, "patch_size": 16, "num_classes": 3,
        "train_cases": list(train_cases if train_cases is not None else cache.train_ids()),
        "val_cases": list(cache.split().val), "settings": cache.settings, "encoder": None,
        "encoder_meta": {"pretrain_cases": list(pretrain_cases)} if pretrain_cases else None,
    })
    return run_dir


def test_evaluate_writes_outputs(make_cache, tmp_path, capsys):
    cache = make_cache(n_cases=6, shape=(16, 16, 16))
    run = make_run(tmp_path / "run", cache)
    summary = evaluate(run, progress=False)
    assert capsys.readouterr().out == ""  # the CLI prints the table, not the library
    assert "organ" in describe(summary) and str(run) in describe(summary)
    out = run / "eval-test"
    test_ids = list(Cache(cache).split().test)
    with open(out / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS and [r["case"] for r in rows] == test_ids
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_cases"] == len(test_ids) and saved["space"] == "preprocessed"
    assert set(saved["structures"]) == {"organ", "tumour", "whole"}
    assert {"dice_mean", "dice_sd", "hd95_mean", "hd95_sd", "n", "n_excluded"} <= set(
        saved["structures"]["organ"])
    assert summary["structures"]["organ"]["n"] + summary["structures"]["organ"][
        "n_excluded"] == len(test_ids)
    pred = np.load(out / "pred" / f"{test_ids[0]}.npy")
    assert pred.dtype == np.uint8 and pred.shape == (16, 16, 16)


def test_refuses_seen_cases(make_cache, tmp_path):
    cache = make_cache(n_cases=6, shape=(16, 16, 16))
    c = Cache(cache)
    run = make_run(tmp_path / "run", cache)
    with pytest.raises(PimpicError, match="fine-tuning set"):
        evaluate(run, split="train", progress=False)
    run2 = make_run(tmp_path / "run2", cache, pretrain_cases=c.split().test[:1])
    with pytest.raises(PimpicError, match=f"pretraining pool.*{c.split().test[0]}"):
        evaluate(run2, split="test", progress=False)
    with pytest.raises(PimpicError, match=r"no model\.safetensors"):
        evaluate(tmp_path, progress=False)


def test_perfect_prediction_and_lcc_removes_blob(make_cache, tmp_path, monkeypatch):
    cache = Cache(make_cache(n_cases=6, shape=(20, 20, 20)))
    run = make_run(tmp_path / "run", cache.root)
    labels: dict[str, str] = {}

    def oracle(model, image, patch_size, *, lcc=False, **kwargs):
        cid = labels["current"]
        pred = np.asarray(cache.label(cid)).copy()
        pred[:2, :2, :2] = 1  # a spurious blob away from the phantom organ
        return largest_component(pred) if lcc else pred

    real_image = Cache.image

    def tracking_image(self, case_id, mmap=True):
        labels["current"] = case_id
        return real_image(self, case_id, mmap)

    monkeypatch.setattr(pimpic.segmentation.evaluate, "predict_labels", oracle)
    monkeypatch.setattr(Cache, "image", tracking_image)
    blob = evaluate(run, progress=False, save_predictions=False)["structures"]
    assert blob["organ"]["dice_mean"] < 1.0 and blob["organ"]["hd95_mean"] > 0
    clean = evaluate(run, lcc=True, progress=False)["structures"]
    assert clean["organ"]["dice_mean"] == 1.0 and clean["whole"]["hd95_mean"] == 0.0


def test_largest_component_keeps_organ_with_tumour():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    labels[8:11, 8:11, 8:11] = 2
    labels[12:14, 12:14, 12:14] = 2  # a second tumour inside the organ survives
    noisy = labels.copy()
    noisy[0:2, 0:2, 0:2] = 1
    noisy[18:20, 0:2, 18:20] = 2
    out = largest_component(noisy)
    assert np.array_equal(out, labels)
    assert np.array_equal(largest_component(np.zeros_like(labels)), np.zeros_like(labels))


def test_original_space_matches_identity_grid(make_cache, tmp_path):
    cache = Cache(make_cache(n_cases=6, shape=(16, 16, 16)))
    for cid in cache.split().test:
        meta = cache.meta(cid)
        img = nib.Nifti1Image(np.asarray(cache.label(cid)), np.asarray(meta["original_affine"]))
        nib.save(img, str(cache.root / meta["source_label"]))
    run = make_run(tmp_path / "run", cache.root)
    pre = evaluate(run, progress=False)["structures"]
    orig = evaluate(run, original_space=True, progress=False)
    assert orig["space"] == "original"
    for s in ("organ", "tumour", "whole"):
        a, b = pre[s]["dice_mean"], orig["structures"][s]["dice_mean"]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def test_an_unfinished_run_is_refused_unless_asked_for(make_cache, tmp_path):
    """Issue #23 S07: a killed fine-tuning run (run.json completed false) was scored silently."""
    from typer.testing import CliRunner

    from _cli import assert_refused
    from pimpic.cli import app

    cache = make_cache(n_cases=6, shape=(16, 16, 16))
    run = make_run(tmp_path / "run", cache)
    info = json.loads((run / "run.json").read_text())
    write_json(run / "run.json", {**info, "completed": False, "epochs": 3})
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(run), "--no-progress"])
    assert_refused(res, f"{run}: fine-tuning has not finished (run.json: completed false, "
                   "stopped after 3 epoch(s))", "--unfinished")
    assert not (run / "eval-test").exists()
    res = runner.invoke(app, ["evaluate", str(run), "--unfinished", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "UNFINISHED run" in res.output
    assert json.loads((run / "eval-test" / "summary.json").read_text())["unfinished"] is True


def test_largest_component_by_class_keeps_every_structure():
    """Separate organs (a named label set): each keeps its own largest component."""
    from pimpic.segmentation.inference import largest_component_by_class

    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:8, 2:8, 2:8] = 1
    labels[12:18, 12:18, 12:18] = 2  # a second organ, not connected to the first
    noisy = labels.copy()
    noisy[0, 19, 0] = 1
    noisy[19, 0, 19] = 2
    assert np.array_equal(largest_component_by_class(noisy), labels)
    assert not largest_component(noisy)[12:18, 12:18, 12:18].any()  # the whole-organ rule would
