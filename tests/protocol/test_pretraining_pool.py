"""Pool vs task: pretraining on another cache, and the leakage guard by id and by content."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from test_experiment import Stubs, _cfg

from pimpic.data.cache import Cache
from pimpic.data.leakage import pool_overlap
from pimpic.errors import PimpicError
from pimpic.io import read_json, write_json
from pimpic.protocol import experiment
from pimpic.protocol.experiment import run_experiment


def _add_case(pool: Path, task: Path, task_id: str, new_id: str) -> None:
    """Copy a task case into the pool under another name (the same scan, renamed)."""
    shutil.copytree(task / "cases" / task_id, pool / "cases" / new_id)
    manifest = read_json(pool / "manifest.json")
    manifest["cases"].append(new_id)
    write_json(pool / "manifest.json", manifest)


def _pool(make_cache: Any) -> Path:
    """An unlabelled pool of 3 other scans, named pool_000 … (no id in common with the task)."""
    pool = make_cache(n_cases=3, shape=(24, 24, 24), seed=7, labelled=False)
    manifest = read_json(pool / "manifest.json")
    for cid in manifest["cases"]:
        (pool / "cases" / cid).rename(pool / "cases" / cid.replace("case", "pool"))
    manifest["cases"] = [c.replace("case", "pool") for c in manifest["cases"]]
    write_json(pool / "manifest.json", manifest)
    (pool / "splits.json").unlink()
    return pool


def _set_source_sha(cache: Path, case_id: str, sha: str) -> None:
    meta_path = cache / "cases" / case_id / "meta.json"
    meta = read_json(meta_path)
    meta["sources"] = {"image": {"size": 1, "mtime_ns": 0, "sha256": sha}, "label": None}
    write_json(meta_path, meta)


@pytest.fixture
def stubs(monkeypatch: pytest.MonkeyPatch) -> Stubs:
    s = Stubs()
    seen: list[tuple[Path, Any]] = []

    def pretrain(cache: Path, run_dir: Path, cfg: Any, **kw: Any) -> Path:
        seen.append((Path(cache), kw.get("case_ids")))
        return s.pretrain(cache, run_dir, cfg, **kw)

    s.pool_calls = seen  # type: ignore[attr-defined]
    monkeypatch.setattr(experiment, "pretrain", pretrain)
    monkeypatch.setattr(experiment, "finetune", s.finetune)
    monkeypatch.setattr(experiment, "evaluate", s.evaluate)
    return s


def test_overlap_by_id_by_input_hash_and_by_array(make_cache: Any) -> None:
    task = make_cache(n_cases=10, shape=(24, 24, 24))
    pool = _pool(make_cache)
    test = list(Cache(task).split().test)
    assert pool_overlap(Cache(task), test, Cache(pool), Cache(pool).case_ids) == []
    _add_case(pool, task, test[0], "renamed_scan")  # same array, other name
    _set_source_sha(task, test[1], "ab" * 32)  # same input file, other array (other settings)
    _set_source_sha(pool, "pool_001", "ab" * 32)
    ids = [*Cache(pool).case_ids, test[-1]] if len(test) > 2 else Cache(pool).case_ids
    found = pool_overlap(Cache(task), test, Cache(pool), ids)
    assert f"{test[0]} = renamed_scan (same cached array)" in found
    assert f"{test[1]} = pool_001 (same input file SHA-256)" in found
    if len(test) > 2:
        assert f"{test[-1]} = {test[-1]} (by id)" in found


def test_experiment_pretrains_on_the_pool_and_fine_tunes_on_the_task(
        make_cache: Any, tmp_path: Path, stubs: Stubs) -> None:
    task = make_cache(n_cases=10, shape=(24, 24, 24))
    pool = _pool(make_cache)
    cfg = _cfg(task, pretrain_cache=str(pool), methods=("random", "pimpic"), fractions=(100,))
    run_experiment(cfg, tmp_path / "exp", progress=False, on_stage=None, report=False)
    assert stubs.pool_calls == [(pool, Cache(pool).case_ids)]  # type: ignore[attr-defined]
    assert stubs.calls["finetune"] == 2


def test_experiment_refuses_a_pool_holding_a_test_case(make_cache: Any, tmp_path: Path,
                                                       stubs: Stubs) -> None:
    task = make_cache(n_cases=10, shape=(24, 24, 24))
    pool = _pool(make_cache)
    test = list(Cache(task).split().test)
    _add_case(pool, task, test[0], "same_scan_elsewhere")
    cfg = _cfg(task, pretrain_cache=str(pool), methods=("random", "pimpic"), fractions=(100,))
    with pytest.raises(PimpicError, match="same_scan_elsewhere") as err:
        run_experiment(cfg, tmp_path / "exp", progress=False, on_stage=None, report=False)
    assert "\n" not in str(err.value) and stubs.calls["pretrain"] == 0


def test_experiment_refuses_an_nnunet_backbone_for_pimpic_fine_tuning(make_cache: Any) -> None:
    task = make_cache(n_cases=10, shape=(24, 24, 24))
    from pimpic.pretraining.config import PretrainConfig

    with pytest.raises(ValueError, match="export nnunet"):
        _cfg(task, pretrain=PretrainConfig(backbone="nnunet", nnunet_plans="x.json"))


def test_experiment_refuses_a_pool_holding_a_test_scan_prepared_otherwise(
        make_cache: Any, tmp_path: Path, stubs: Stubs) -> None:
    """Issue #23 L03/L04b: the pool prepared with another dtype or crop holds other arrays of
    the same scan; the content hash (source voxels, before any setting) still matches."""
    task = make_cache(n_cases=10, shape=(24, 24, 24))
    pool = _pool(make_cache)
    test = list(Cache(task).split().test)
    for cache, cid in ((task, test[1]), (pool, "pool_002")):
        meta_path = cache / "cases" / cid / "meta.json"
        write_json(meta_path, {**read_json(meta_path), "content_sha256": "cd" * 32})
    cfg = _cfg(task, pretrain_cache=str(pool), methods=("random", "pimpic"), fractions=(100,))
    with pytest.raises(PimpicError, match=rf"{test[1]} = pool_002 \(same voxels\)"):
        run_experiment(cfg, tmp_path / "exp", progress=False, on_stage=None, report=False)
    assert stubs.calls["pretrain"] == 0
