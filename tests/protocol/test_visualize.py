"""Embedding figures on a tiny real pretraining run (paper Fig. 3 A–D)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pimpic.pretraining.config import PretrainConfig
from pimpic.protocol.visualize import grid_starts


def test_grid_starts_cover_the_volume() -> None:
    assert grid_starts(32, 16, 8).tolist() == [0, 8, 16]
    assert grid_starts(30, 16, 8).tolist() == [0, 8, 14]  # the last is flush with the end
    assert grid_starts(16, 16, 8).tolist() == [0]


@pytest.mark.slow
def test_embedding_figures_on_a_real_run(make_cache: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pimpic.cli import app
    from pimpic.errors import PimpicError
    from pimpic.pretraining.engine import pretrain
    from pimpic.protocol.visualize import embedding_figures

    cache = make_cache(n_cases=5, shape=(32, 32, 24))
    cfg = PretrainConfig(method="pim", width=2, depth=3, patch_size=16, patches=4, steps=2,
                         proj_dim=8, device="cpu", amp=False, num_workers=0, log_every=1)
    run = tmp_path / "run"
    pretrain(cache, run, cfg, progress=False)
    out = embedding_figures(run, "case_000", out=tmp_path / "fig", n_pairs=40, device="cpu",
                            ref=(10, 20, 12))
    for p in out.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    with pytest.raises(PimpicError, match="not in the cache"):
        embedding_figures(run, "nope", device="cpu")
    with pytest.raises(PimpicError, match="outside the volume"):
        embedding_figures(run, "case_000", device="cpu", ref=(99, 0, 0))
    res = CliRunner().invoke(app, ["visualize", "embeddings", str(run), "--case", "case_001",
                                   "--out", str(tmp_path / "cli"), "--pairs", "20",
                                   "--device", "cpu", "--ref", "1,2"])
    assert res.exit_code == 2 and "three integers" in res.output
    res = CliRunner().invoke(app, ["visualize", "embeddings", str(run), "--case", "case_001",
                                   "--out", str(tmp_path / "cli"), "--pairs", "20",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "embedding_similarity.png", "overlap_check.png"]
