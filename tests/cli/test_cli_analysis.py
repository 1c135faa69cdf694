"""``pimpic stats``, ``pimpic curves`` and ``pimpic confusion`` through typer's test runner,
and their refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from _cli import assert_refused
from _runs import evaluated_run, per_case_csv, write_run_info
from pimpic.cli import app
from pimpic.data.labels import ORGAN_TUMOUR
from pimpic.paths import CONFIG, METRICS, PER_CASE, eval_dir
from pimpic.protocol.results import read_results_csv, write_results_csv
from pimpic.protocol.statistics import format_stats, paired_tests

runner = CliRunner()


def _run(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def _results(path: Path) -> Path:
    """Random + Aug and PiMPiC at 5 %, seeds 0-1, cases a-b: PiMPiC's organ Dice is Random's
    + 1 pp per seed + 2 pp on case b (differences 1, 2, 3, 4 pp)."""
    rows = []
    for method in ("random", "pimpic"):
        for seed in (0, 1):
            for case, extra in (("a", 0.0), ("b", 0.2)):
                bump = 0.0 if method == "random" else 0.01 * (1 + seed) + extra / 10
                rows.append({"method": method, "fraction": 5, "n_train_cases": 2, "seed": seed,
                             "case": case, "dice_organ": 0.4 + extra + bump,
                             "dice_tumour": 0.3, "dice_whole": 0.5, "hd95_organ": 2.0 + seed,
                             "hd95_tumour": 1.0, "hd95_whole": 1.0})
    write_results_csv(rows, path)
    return path


def test_stats_prints_and_writes_the_table(tmp_path: Path) -> None:
    results = _results(tmp_path / "results.csv")
    res = _run("stats", results, "--pairing", "case-seed", "--out", tmp_path / "stats.md")
    assert res.exit_code == 0, res.output
    table = (tmp_path / "stats.md").read_text()
    assert res.output == table + f"stats: {tmp_path / 'stats.md'}\n"
    # four positive distinct differences: exact two-sided p = 2 / 2**4
    assert "| Organ | 5 % | PiMPiC | 4 | +2.5 | 0.125 | " in table
    rows = read_results_csv(results)
    assert table == format_stats(paired_tests(rows, pairing="case-seed"))
    res = _run("stats", results, "--metric", "hd95")
    assert res.exit_code == 0 and "Δ HD95 (mm) vs Random + Aug" in res.output


def test_stats_of_an_experiment_with_an_outside_run(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    _results(exp / "results.csv")
    (exp / CONFIG).write_text(yaml.safe_dump({"cache": "c", "methods": ["random", "pimpic"],
                                              "fractions": [5]}))
    run = tmp_path / "frozen"
    write_run_info(run, fraction=5)
    (run / CONFIG).write_text("fraction: 5\nseed: 1\n")
    per_case_csv(eval_dir(run) / PER_CASE, [["a", 0.9, 0.3, 0.5], ["b", 0.95, 0.3, 0.5]])
    res = _run("stats", exp, f"--run=frozen, lr=0={run}", "--pairing", "common-seeds")
    assert res.exit_code == 0, res.output
    # seed 1 of Random's two, per case
    assert "| Organ | 5 % | frozen, lr=0 | 2 | " in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["nope.csv"], "nope.csv: results file not found"),
    (["RESULTS", "--pairing", "seed"], "pairing 'seed': choose one of case, common-seeds"),
    (["RESULTS", "--metric", "iou"], "metric 'iou'"),
    (["RESULTS", "--reference", "voco"], "--reference 'voco': no such method"),
    (["RESULTS", "--absent", "one"], "--absent 'one'"),
    (["RESULTS", "--run", "frozen"], "--run 'frozen': expected NAME=RUN_FOLDER"),
    ([], "give an experiment folder, a results.csv or --run"),
])
def test_stats_refusals_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    results = _results(tmp_path / "results.csv")
    res = _run("stats", *[results if a == "RESULTS" else a for a in args])
    assert_refused(res, message)


def test_curves_of_a_run_and_refusal(tmp_path: Path) -> None:
    run = tmp_path / "ft"
    write_run_info(run, labels=ORGAN_TUMOUR)
    (run / METRICS).write_text("".join(json.dumps(r) + "\n" for r in [
        {"epoch": e, "val_dice_loss": 1 - e / 10, "best_epoch": e, "val_dice_1": e / 10,
         "val_dice_2": e / 20} for e in (1, 2, 3)]))
    res = _run("curves", run)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1] == "  ft           kept 3/3: 0.900 → 0.800 → 0.700"
    assert lines[2].split() == ["organ", "0.100", "→", "0.200", "→", "0.300"]
    assert lines[3].split()[0] == "tumour"
    assert_refused(_run("curves", tmp_path / "nothing"), "neither a run folder")


def test_confusion_of_a_run_and_refusal(tmp_path: Path) -> None:
    run, expected = evaluated_run(tmp_path, ORGAN_TUMOUR)
    res = _run("confusion", run)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"{run}: share of each true class's test voxels predicted as (%)"
    assert lines[1].split()[3:] == ["background", "organ", "tumour"]
    organ = [float(v) for v in lines[3].split()[1:]]
    assert organ == pytest.approx([100 * v / expected[1].sum() for v in expected[1]], abs=0.05)
    assert_refused(_run("confusion", run, "--split", "val"), "no predictions")
