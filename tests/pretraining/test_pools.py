"""Pretraining pools of a cache (``pimpic pretrain --pool``): which cases each one reads, and
what run.json and the encoder record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import _pretrain_dummy as dummy
from conftest import add_unlabelled
from pimpic.cli import app
from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.models.export import read_encoder_metadata
from pimpic.pretraining import engine
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.engine import pretrain
from pimpic.pretraining.sources import pool_cases

TINY = PretrainConfig(width=2, depth=3, patch_size=16, steps=1, patches=2, log_every=1,
                      checkpoint_every=1, num_workers=0)


def test_each_pool_names_its_cases(make_cache: Any) -> None:
    root = make_cache(n_cases=10, shape=(20, 20, 20))
    arch = add_unlabelled(root)
    cache = Cache(root)
    split = cache.split()
    assert pool_cases(cache) == list(split.train)
    assert pool_cases(cache, "train+unlabelled") == [*split.train, *arch]
    everything = pool_cases(cache, "all")
    assert sorted(everything) == sorted(cache.case_ids) and set(split.test) <= set(everything)
    with pytest.raises(PimpicError, match="choose one of train, train\\+unlabelled, all"):
        pool_cases(cache, "test")
    unsplit = make_cache(n_cases=3, shape=(20, 20, 20))
    (unsplit / "splits.json").unlink()
    assert pool_cases(Cache(unsplit), "train") == Cache(unsplit).case_ids


def test_the_pool_is_recorded(make_cache: Any, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    dummy.install(monkeypatch)
    root = make_cache(n_cases=10, shape=(20, 20, 20))
    add_unlabelled(root)
    encoder = pretrain(root, tmp_path / "all", TINY, progress=False, pool="all")
    meta = read_encoder_metadata(encoder)
    assert meta["pretrain_pool"] == "all" and meta["pretrain_cases"] == pool_cases(
        Cache(root), "all") and set(meta["pretrain_hashes"]) == set(Cache(root).case_ids)
    run = read_json(tmp_path / "all" / "run.json")
    assert run["pretrain_pool"] == "all" and run["case_ids"] == meta["pretrain_cases"]
    # cases named by the caller: no pool name is recorded
    encoder = pretrain(root, tmp_path / "ids", TINY, progress=False, case_ids=["arch_000"])
    assert read_encoder_metadata(encoder)["pretrain_pool"] is None


def test_cli_pool_option(make_cache: Any, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(cache: Path, out: Path, cfg: Any, **kw: Any) -> Path:
        seen.update(kw)
        return out / "encoder.safetensors"

    monkeypatch.setattr(engine, "pretrain", fake)
    root = make_cache(n_cases=10, shape=(20, 20, 20))
    res = CliRunner().invoke(app, ["pretrain", str(root), "--out", str(tmp_path / "r"),
                                   "--pool", "train+unlabelled", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert seen["pool"] == "train+unlabelled"
    res = CliRunner().invoke(app, ["pretrain", str(root), "--out", str(tmp_path / "r"),
                                   "--pool", "test"])
    assert res.exit_code == 2 and "--pool 'test': choose one of" in res.output
