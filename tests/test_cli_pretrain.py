"""`pimpic pretrain` and `pimpic bench loader` end to end, with the real PiMPiC method."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pimpic.cli import app
from pimpic.io import read_jsonl
from pimpic.models.export import read_encoder_metadata

TINY = ["--set", "width=2", "--set", "depth=3", "--set", "patch_size=16", "--set", "patches=4",
        "--set", "proj_dim=8", "--set", "num_workers=0", "--set", "log_every=1",
        "--set", "checkpoint_every=1", "--no-progress"]


def test_pretrain_cli_runs_refuses_and_resumes(make_cache, tmp_path: Path) -> None:
    runner = CliRunner()
    cache = make_cache(n_cases=4, shape=(20, 20, 18), labelled=False)
    run = tmp_path / "run"
    res = runner.invoke(app, ["pretrain", str(cache), "--out", str(run), "--steps", "2", *TINY])
    assert res.exit_code == 0, res.output
    assert f"encoder: {run / 'encoder.safetensors'}" in res.output
    rows = read_jsonl(run / "metrics.jsonl")
    assert {"pim", "pic", "overlap_error", "embedding_std"} <= set(rows[-1])

    res = runner.invoke(app, ["pretrain", str(cache), "--out", str(run), *TINY])
    assert res.exit_code == 2
    assert "error:" in res.output and "--resume" in res.output

    # --resume takes the run's own config as the base: only the new length is given
    res = runner.invoke(app, ["pretrain", str(cache), "--out", str(run), "--resume",
                              "--steps", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert read_encoder_metadata(run / "encoder.safetensors")["steps"] == 3

    res = runner.invoke(app, ["pretrain", str(cache), "--out", str(run), "--resume",
                              "--set", "tau=0.5", "--no-progress"])
    assert res.exit_code == 2 and "tau: run has 1.0, now 0.5" in res.output


def test_pretrain_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "cache folder does not exist" in res.output
    res = runner.invoke(app, ["pretrain", str(tmp_path), "--out", str(tmp_path / "r"),
                              "--set", "patch_size=20"])
    assert res.exit_code == 2 and "divisible" in res.output


def test_bench_loader_prints_one_json_line(make_cache) -> None:
    import json

    cache = make_cache(n_cases=3, shape=(20, 20, 20), labelled=False)
    res = CliRunner().invoke(app, ["bench", "loader", str(cache), "--patch-size", "16",
                                   "--patches", "4", "--seconds", "0.3", "--workers", "0"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["patches_per_s"] > 0 and out["batch_shape"] == [1, 4, 1, 16, 16, 16]


def test_bench_pretrain_step_prints_one_json_line() -> None:
    import json

    res = CliRunner().invoke(app, ["bench", "pretrain-step", "--patch-size", "16", "--width", "2",
                                   "--patches", "4", "--steps", "1", "--depth", "3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert {"median_step_s", "patches_per_s", "peak_rss_mb"} <= set(out)
