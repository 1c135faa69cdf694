"""`pimpic pretrain` and `pimpic bench loader` end to end, with the real PiMPiC method."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from _cli import assert_refused
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


def test_bad_settings_are_refused_before_the_run_folder_exists(make_cache, tmp_path: Path) -> None:
    runner = CliRunner()
    cache = make_cache(n_cases=3, shape=(16, 16, 16), labelled=False)
    run = tmp_path / "run"
    for setting, message in (("checkpoint_every=0", "checkpoint_every must be ≥ 1, got 0"),
                             ("lr=-1", "lr must be ≥ 0, got -1"),
                             ("num_workers=-1", "num_workers must be ≥ 0, got -1"),
                             ("sampler.foreground_threshold=2", "must be in [0, 1], got 2")):
        res = runner.invoke(app, ["pretrain", str(cache), "--out", str(run), *TINY,
                                  "--set", setting])
        assert_refused(res, message)
        assert not run.exists()


def test_resume_and_overwrite_refusals_through_the_cli(make_cache, tmp_path: Path) -> None:
    runner = CliRunner()
    cache = make_cache(n_cases=3, shape=(16, 16, 16), labelled=False)
    res = runner.invoke(app, ["pretrain", str(cache), "--out", str(tmp_path / "new"), "--resume",
                              *TINY])
    assert res.exit_code == 2 and "no checkpoint to resume from" in res.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("width: 1000\n")  # not a run: never the resume base
    for flag in ("--overwrite", "--resume"):
        res = runner.invoke(app, ["pretrain", str(cache), "--out", str(mine), flag, *TINY])
        assert res.exit_code == 2 and "not a pimpic run folder" in res.output, res.output
    assert [p.name for p in mine.iterdir()] == ["config.yaml"]
