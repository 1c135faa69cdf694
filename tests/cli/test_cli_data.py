"""``pimpic synth`` and ``pimpic prepare`` through typer's test runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from pimpic.cli import app
from pimpic.data.cache import Cache

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_data_commands() -> None:
    result = _run("--help")
    assert result.exit_code == 0 and "synth" in result.output and "prepare" in result.output


def test_synth_then_prepare_then_rerun(tmp_path: Path) -> None:
    synth, cache = tmp_path / "synth", tmp_path / "cache"
    result = _run("synth", "--out", synth, "--cases", "4", "--task", "pancreas", "--seed", "0",
                  "--shape", "40,40,12", "--spacing", "4,4,8", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "4 pancreas case(s)" in result.output
    result = _run("prepare", synth, "--out", cache, "--spacing", "3", "--workers", "1",
                  "--no-progress")
    assert result.exit_code == 0, result.output
    assert "msd dataset" in result.output and "4/4 case(s) cached (4 processed" in result.output
    assert "train 2, val 0, test 2" in result.output and "splits (new, " in result.output
    assert Cache(cache).settings["spacing"] == [3.0, 3.0, 3.0]
    result = _run("prepare", synth, "--out", cache, "--spacing", "3", "--no-progress")
    assert result.exit_code == 0 and "(0 processed, 4 already done)" in result.output
    assert "splits (kept, " in result.output


def test_prepare_says_what_it_redoes_and_when_the_split_must_move(tmp_path: Path) -> None:
    synth, cache = tmp_path / "synth", tmp_path / "cache"
    # the uniform cohort: every case has the same grid, so one case's label can replace another's
    args = ("--shape", "24,24,8", "--spacing", "6,6,10", "--variability", "low", "--no-progress")
    assert _run("synth", "--out", synth, "--cases", "3", *args).exit_code == 0
    prep = ("prepare", synth, "--out", cache, "--spacing", "6", "--workers", "1",
            "--no-progress")
    assert _run(*prep).exit_code == 0
    label = synth / "labelsTr" / "pancreas_000.nii.gz"
    label.write_bytes((synth / "labelsTr" / "pancreas_001.nii.gz").read_bytes())
    result = _run(*prep)
    assert result.exit_code == 0, result.output
    assert "redone 1 cached case(s) whose inputs changed: pancreas_000 (label changed)" \
        in result.output
    assert _run("synth", "--out", tmp_path / "four", "--cases", "4", *args).exit_code == 0
    shutil.copy(tmp_path / "four" / "dataset.json", synth / "dataset.json")
    for sub in ("imagesTr", "labelsTr"):
        shutil.copy(tmp_path / "four" / sub / "pancreas_003.nii.gz", synth / sub)
    result = _run(*prep)
    assert result.exit_code == 2 and "not in the saved split (pancreas_003)" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    result = _run(*prep, "--resplit")
    assert result.exit_code == 0 and "splits (recomputed (--resplit), " in result.output


def test_prepare_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _run("prepare", tmp_path / "empty", "--out", tmp_path / "c", "--no-progress")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "empty folder" in lines[0]
    assert "Traceback" not in result.output
    for args, match in ((["--window", "400,-200"], "HU window"),
                        (["--spacing", "1,2"], "--spacing"), (["--dtype", "int8"], "dtype"),
                        (["--layout", "xyz"], "unknown layout")):
        result = _run("prepare", tmp_path / "empty", "--out", tmp_path / "c", *args)
        assert result.exit_code == 2 and match in result.output, result.output


def test_prepare_skip_bad_lists_bad_cases(tmp_path: Path) -> None:
    synth = tmp_path / "synth"
    assert _run("synth", "--out", synth, "--cases", "4", "--shape", "32,32,10", "--spacing",
                "5,5,10", "--no-progress").exit_code == 0
    meta = json.loads((synth / "dataset.json").read_text())
    meta["training"][1]["label"] = "./labelsTr/missing.nii.gz"
    (synth / "dataset.json").write_text(json.dumps(meta))
    result = _run("prepare", synth, "--out", tmp_path / "c", "--spacing", "5", "--workers", "1",
                  "--no-progress")
    assert result.exit_code == 2 and "missing.nii.gz: label file not found" in result.output
    result = _run("prepare", synth, "--out", tmp_path / "c", "--spacing", "5", "--workers", "1",
                  "--skip-bad", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "3/4 case(s)" in result.output
    assert "skipped bad case: case pancreas_001" in result.output
