"""scripts/paired_stats.py: paired Wilcoxon tests over case × seed, and the per-seed tables."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from _scripts import load_script

FIELDS = ["method", "fraction", "seed", "case", "dice_organ", "dice_tumour", "dice_whole"]


def _results(tmp_path: Path) -> Path:
    """Random + Aug and PiMPiC at 5 and 100 %, seeds 0-1, cases a-b. PiMPiC's organ Dice is
    Random's + 1 pp per seed + 2 pp on case b: differences 1, 3, 2, 4 pp, all positive."""
    rows = []
    for method in ("random", "pimpic"):
        for fraction, level in ((5, 0.4), (100, 0.6)):
            for seed in (0, 1):
                for case, extra in (("a", 0.0), ("b", 0.2)):
                    bump = 0.0 if method == "random" else 0.01 * (1 + seed) + (extra / 10)
                    tumour = "" if case == "b" else "0.3"  # absent → 0, as the table counts it
                    rows.append([method, fraction, seed, case, level + extra + bump, tumour,
                                 level])
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([FIELDS, *rows])
    return path


def _run_folder(tmp_path: Path, organ_a: float, organ_b: float) -> Path:
    run = tmp_path / "frozen_s0"
    (run / "eval-test").mkdir(parents=True)
    (run / "config.yaml").write_text("fraction: 5\nseed: 0\n")
    with open(run / "eval-test" / "per_case.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["case", "dice_organ", "dice_tumour", "dice_whole"],
                                  ["a", organ_a, "nan", 0.1], ["b", organ_b, "nan", 0.1]])
    return run


def test_paired_tests_per_seed_tables_and_criteria(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    results = _results(tmp_path)
    run = _run_folder(tmp_path, organ_a=0.4, organ_b=0.4 + 0.2)  # as Random's
    script = load_script("paired_stats")
    assert script.main([str(results), "--runs", "frozen", str(run), "--per-seed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 4 positive, distinct differences: the exact two-sided Wilcoxon p is 2 / 2**4 = 0.125
    organ5 = next(x for x in lines if x.startswith("| organ | 5 % | PiMPiC |"))
    cells = [c.strip() for c in organ5.split("|")[1:-1]]
    assert cells[3:6] == ["4", "+2.5", "0.125"]
    assert float(cells[6]) >= 0.125  # Holm never lowers a p-value
    # the --runs method: 2 pairs (seed 0 only), each equal to Random's: no test to make
    frozen = next(x for x in lines if x.startswith("| organ | 5 % | frozen |"))
    assert [c.strip() for c in frozen.split("|")[4:8]] == ["2", "+0.0", "n/a", "n/a"]
    # per-seed means: Random 5 % = mean(40, 60) = 50.0; PiMPiC (41 + 63) / 2, (42 + 64) / 2
    assert "| Random + Aug | 5 % | 50.0 | 50.0 | 50.0 |" in lines
    assert "| PiMPiC | 5 % | 52.0 | 53.0 | 52.5 |" in lines
    assert "| frozen | 5 % | 50.0 | – | 50.0 |" in lines
    diffs = lines[lines.index("organ Dice minus Random + Aug's, per seed (pp)") + 3:]
    assert "| PiMPiC | 5 % | +2.0 | +3.0 | +2.5 |" in diffs
    assert "| frozen | 5 % | +0.0 | – | +0.0 |" in diffs
    # criteria: organ 70 − 50 = 20; tumour (30 + absent 0) / 2 = 15
    assert "- seed 1: gap 20.0, tumour 15.0" in lines


def test_missing_inputs_and_baseline_are_one_line_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _results(tmp_path)
    script = load_script("paired_stats")
    assert script.main([str(tmp_path / "nope.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'nope.csv'}: no such file"
    assert script.main([str(results), "--runs", "x", str(tmp_path / "absent")]) == 2
    assert "absent/config.yaml: no such file" in capsys.readouterr().err
    assert script.main([str(results), "--baseline", "vox2vec"]) == 2
    assert "no rows for the baseline 'vox2vec'" in capsys.readouterr().err


def test_runs_alone_against_a_runs_baseline(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    slow = _run_folder(tmp_path, organ_a=0.4, organ_b=0.6)
    fast = _run_folder(tmp_path / "other", organ_a=0.5, organ_b=0.8)
    script = load_script("paired_stats")
    assert script.main(["--baseline", "slow", "--runs", "slow", str(slow),
                        "--runs", "fast", str(fast)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| organ | 5 % | fast | 2 | +15.0 |")  # (10 + 20) / 2
    assert len([x for x in lines if x.startswith("|")]) == 2 + 3  # header, rule, 3 structures


def test_by_case_averages_each_cases_seeds_first(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    results = _results(tmp_path)
    assert load_script("paired_stats").main([str(results), "--by-case"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "cases (seeds averaged)" in lines[0]
    # case a: (1 + 2) / 2 = 1.5 pp, case b: (3 + 4) / 2 = 3.5 pp; both positive of 2: p = 2 / 4
    organ5 = next(x for x in lines if x.startswith("| organ | 5 % | PiMPiC |"))
    assert [c.strip() for c in organ5.split("|")[4:7]] == ["2", "+2.5", "0.5"]
