"""Transductive pretraining (``pretrain --pool all``): refused by default, accepted — with one
warning — when the user says so (``--allow-transductive``), and recorded; a pool that holds
test cases without recording that choice stays refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pimpic.cli import app
from pimpic.data.cache import Cache
from pimpic.data.leakage import check_encoder_pool, pool_record
from pimpic.errors import PimpicError
from pimpic.models.export import save_encoder
from pimpic.models.unet import Encoder
from pimpic.segmentation.evaluate import evaluate

TINY = ["--set", "width=2", "--set", "depth=3", "--set", "patch_size=16", "--set",
        "max_steps=1", "--set", "num_workers=0", "--set", "batch_size=1", "--set",
        "samples_per_volume=1", "--set", "device=cpu", "--no-progress"]


def _meta(cache: Path, pool: str | None, ids: list[str] | None = None) -> dict[str, Any]:
    ids = Cache(cache).case_ids if ids is None else ids
    return {"pretrain_pool": pool, "pretrain_cases": ids,
            "pretrain_hashes": pool_record(Cache(cache), ids)}


def test_the_guard_refuses_by_default_and_accepts_when_told(
        make_cache: Any, caplog: pytest.LogCaptureFixture) -> None:
    root = make_cache(n_cases=10, shape=(16, 16, 16))
    task, test = Cache(root), list(Cache(root).split().test)
    meta = _meta(root, "all")
    with pytest.raises(PimpicError, match=r"pass --allow-transductive \(in an experiment: "
                       r"pretrain_pool: all\) to accept") as err:
        check_encoder_pool("enc", meta, task, test)
    assert "\n" not in str(err.value) and "(--pool all: every cached case)" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="pimpic"):
        for _ in range(3):  # the cells of a grid: one warning
            found = check_encoder_pool("enc", meta, task, test, allow_transductive=True)
    assert [f.split(" = ")[0] for f in found] == test
    warned = [r for r in caplog.records if "transductive pretraining" in r.getMessage()]
    assert len(warned) == 1 and f"{len(test)} test case(s)" in warned[0].getMessage()
    # nothing to accept: no warning, nothing returned
    assert check_encoder_pool("enc", _meta(root, "train", list(task.split().train)), task,
                              test) == []


def test_a_pool_that_does_not_record_all_stays_refused(make_cache: Any) -> None:
    root = make_cache(n_cases=10, shape=(16, 16, 16))
    task, test = Cache(root), list(Cache(root).split().test)
    for pool in ("train", None):  # e.g. the test scans renamed into a "training" pool
        with pytest.raises(PimpicError, match="--allow-transductive accepts only an encoder "
                           "pretrained with --pool all") as err:
            check_encoder_pool("enc", _meta(root, pool), task, test, allow_transductive=True)
        assert "\n" not in str(err.value)
    with pytest.raises(PimpicError, match="remove them from the pool") as err:
        check_encoder_pool("enc", _meta(root, "train"), task, test)
    assert "allow-transductive" not in str(err.value)


def test_finetune_and_evaluate_need_the_flag_and_record_it(make_cache: Any,
                                                           tmp_path: Path) -> None:
    root = make_cache(n_cases=6, shape=(16, 16, 16))
    encoder = tmp_path / "encoder.safetensors"
    save_encoder(encoder, Encoder(1, 2, 3), {"patch_size": 16, "spacing": [1.5, 1.5, 1.5],
                                             "window": [-200.0, 400.0], "method": "pimpic",
                                             "steps": 1, **_meta(root, "all")})
    runner, run = CliRunner(), tmp_path / "ft"
    args = ["finetune", str(root), "--out", str(run), "--encoder", str(encoder), *TINY]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--allow-transductive" in res.output and not run.exists()
    res = runner.invoke(app, [*args, "--allow-transductive"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "run.json").read_text())["transductive"] is True
    with pytest.raises(PimpicError, match="--allow-transductive"):
        evaluate(run, progress=False, device="cpu")
    res = runner.invoke(app, ["evaluate", str(run), "--allow-transductive", "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "transductive pretraining" in res.output
    assert json.loads((run / "eval-test" / "summary.json").read_text())["transductive"] is True
