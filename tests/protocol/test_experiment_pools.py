"""``pretrain_pool`` in an experiment: which cases pretraining reads, and a transductive grid
(``pretrain_pool: all``) run end to end with the real stages, its report saying so."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from test_experiment import Stubs, _cfg

from conftest import add_unlabelled
from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.paths import cell_dir
from pimpic.pretraining.config import PretrainConfig
from pimpic.protocol import experiment
from pimpic.protocol.experiment import run_experiment
from pimpic.segmentation.config import FinetuneConfig


def test_the_pool_reaches_the_stages(make_cache: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    stubs = Stubs()
    for stage in ("pretrain", "finetune", "evaluate"):
        monkeypatch.setattr(experiment, stage, getattr(stubs, stage))
    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    add_unlabelled(cache)
    cfg = _cfg(cache, methods=("random", "pimpic"), fractions=(100,),
               pretrain_pool="train+unlabelled")
    run_experiment(cfg, tmp_path / "exp", progress=False, on_stage=None)
    pre, *cells = stubs.kwargs
    assert pre["pool"] == "train+unlabelled" and pre["case_ids"] is None
    assert all(kw["allow_transductive"] is False for kw in cells)
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "Pretraining pool: the 7 training cases and the 2 unlabelled cases (9 images; " \
           "no evaluation patient)." in report and "transductive" not in report
    with pytest.raises(PimpicError, match="with a separate pretrain_cache"):
        run_experiment(_cfg(cache, pretrain_cache=str(make_cache(n_cases=3)),
                            pretrain_pool="all"), tmp_path / "other", progress=False,
                       on_stage=None)


def test_a_transductive_grid_end_to_end(make_cache: Any, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    add_unlabelled(cache)
    cfg = _cfg(cache, methods=("random", "pimpic"), fractions=(100,), pretrain_pool="all",
               pretrain=PretrainConfig(width=2, depth=3, patch_size=16, patches=4, steps=1,
                                       proj_dim=8, device="cpu", amp=False, num_workers=0,
                                       log_every=1, checkpoint_every=100),
               finetune=FinetuneConfig(width=2, depth=3, patch_size=16, max_epochs=1,
                                       steps_per_epoch=1, batch_size=1, samples_per_volume=1,
                                       device="cpu", amp=False, num_workers=0,
                                       sw_batch_size=2))
    with caplog.at_level(logging.WARNING, logger="pimpic"):
        exp = run_experiment(cfg, tmp_path / "exp", progress=False, on_stage=None)
    warned = [r for r in caplog.records if "transductive pretraining" in r.getMessage()]
    assert len(warned) == 1  # once for the grid, not once per cell
    split = Cache(cache).split()
    header = (exp / "report.md").read_text().split("## Data")[0]
    assert (f"Pretraining pool: all 12 cached cases, including the {len(split.test)} "
            "evaluation (test) patients' images (no labels): transductive pretraining, as "
            "configured.") in header
    enc = json.loads((exp / "pretrain" / "pimpic" / "run.json").read_text())
    assert enc["pretrain_pool"] == "all" and set(split.test) <= set(enc["case_ids"])
    run = json.loads((cell_dir(exp, "pimpic", 100, 0) / "run.json").read_text())
    assert run["transductive"] is True
    base = json.loads((cell_dir(exp, "random", 100, 0) / "run.json").read_text())
    assert base["transductive"] is False
