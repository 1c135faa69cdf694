"""Table 1 and results.csv (results.py) from synthetic per-case rows (no training); the paired
tests are in test_statistics.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pimpic.protocol import results

CASES = [f"c{i}" for i in range(6)]


def _rows(seed: int = 0) -> list[dict[str, Any]]:
    """random < pimpic by a case-dependent margin; tumour NaN on case c0; two seeds."""
    rng = np.random.default_rng(seed)
    rows = []
    for method, shift in (("random", 0.0), ("pimpic", 0.1), ("voco", 0.0)):
        for fraction, n_train in ((10, 2), (100, 14)):
            for s in (0, 1):
                for i, case in enumerate(CASES):
                    base = 0.5 + 0.05 * i + (0.2 if fraction == 100 else 0.0)
                    organ = base + (shift + 0.01 * i if method != "random" else 0.0)
                    if method == "voco":
                        organ = base  # identical to random: all differences zero
                    rows.append({
                        "method": method, "fraction": fraction, "n_train_cases": n_train,
                        "seed": s, "case": case, "dice_organ": organ + 0.01 * s,
                        "dice_tumour": math.nan if i == 0 else 0.3 + rng.uniform(0, 0.2),
                        "dice_whole": organ, "hd95_organ": 3.0, "hd95_tumour": 5.0,
                        "hd95_whole": 3.0})
    return rows


def test_table_layout_best_and_nan() -> None:
    rows = _rows()
    table = results.format_results_table(rows, ["random", "pimpic", "voco"], [10, 100],
                                         absent="nan", ddof=1)
    lines = table.splitlines()
    assert lines[0] == "| Method / labels | 10 % (n=2) | 100 % (n=14) |"
    assert "| **Organ** |" in table and "| **Tumour** |" in table
    assert "| **Whole organ** |" in table
    organ_pimpic = next(ln for ln in lines if ln.startswith("| PiMPiC"))
    # seed-averaged per-case organ Dice of PiMPiC at 10 %: mean and sample SD over cases
    vals = np.array([0.5 + 0.05 * i + 0.1 + 0.01 * i + 0.005 for i in range(6)]) * 100
    assert f"**{vals.mean():.1f} ± {vals.std(ddof=1):.1f}**" in organ_pimpic
    organ_random = next(ln for ln in lines if ln.startswith("| Random + Aug"))
    assert "**" not in organ_random
    # tumour: case c0 is NaN for both seeds → 2 excluded case-runs per cell, reported
    tumour_block = lines[lines.index(next(ln for ln in lines if "**Tumour**" in ln)):]
    assert "(2 NaN)" in tumour_block[1]
    s = results.summarise_cell(rows, "random", 10, "tumour", absent="nan")
    assert s["n"] == 5 and s["n_excluded"] == 2
    assert "12 in all" in table  # 3 methods × 2 fractions, 2 NaN case-runs each
    assert "SD with ddof = 1" in table


def test_table_released_conventions_by_default() -> None:
    """Released rules: an absent tumour scores 0, the SD is the population SD."""
    rows = _rows()
    table = results.format_results_table(rows, ["random", "pimpic", "voco"], [10, 100])
    organ_pimpic = next(ln for ln in table.splitlines() if ln.startswith("| PiMPiC"))
    vals = np.array([0.5 + 0.05 * i + 0.1 + 0.01 * i + 0.005 for i in range(6)]) * 100
    assert f"**{vals.mean():.1f} ± {vals.std(ddof=0):.1f}**" in organ_pimpic
    s = results.summarise_cell(rows, "random", 10, "tumour")
    assert s["n"] == 6 and s["n_excluded"] == 2
    tumour = np.array([r["dice_tumour"] for r in rows if r["method"] == "random"
                       and r["fraction"] == 10], dtype=float).reshape(2, 6)
    per_case = np.nan_to_num(tumour, nan=0.0).mean(0) * 100  # seed-averaged, NaN → 0
    assert s["mean"] == pytest.approx(per_case.mean()) and s["sd"] == pytest.approx(per_case.std())
    assert "population SD" in table and "scores Dice 0" in table and "(2 NaN)" not in table


def test_results_csv_roundtrip(tmp_path: Path) -> None:
    rows = _rows()
    results.write_results_csv(rows, tmp_path / "results.csv")
    back = results.read_results_csv(tmp_path / "results.csv")
    assert len(back) == len(rows) and list(back[0]) == list(results.COLUMNS)
    assert back[0]["fraction"] == 10 and math.isnan(back[0]["dice_tumour"])
    assert results.format_results_table(back) == results.format_results_table(rows)


def _named_rows() -> list[dict[str, Any]]:
    """Four named structures; pimpic ahead on the brainstem only; the parotid absent on c0."""
    rng = np.random.default_rng(1)
    rows = []
    for method, shift in (("random", 0.0), ("pimpic", 0.1)):
        for i, case in enumerate(CASES):
            row = {"method": method, "fraction": 5, "n_train_cases": 3, "seed": 0,
                   "case": case}
            for k in ("brainstem", "spinal_cord", "parotid_right", "mandible"):
                v = 0.6 + rng.uniform(0, 0.1) + (shift + 0.01 * i if k == "brainstem" else 0)
                row[f"dice_{k}"] = math.nan if k == "parotid_right" and i == 0 else v
            for k in ("brainstem", "spinal_cord", "parotid_right", "mandible"):
                row[f"hd95_{k}"] = 4.0
            rows.append(row)
    return rows


def test_any_label_set_gets_a_block_and_a_test_per_structure(tmp_path: Path) -> None:
    from pimpic.data.labels import parse_labels

    labels = parse_labels({"background": 0, "brainstem": 1, "spinal cord": 2,
                           "parotid right": 3, "mandible": 4}, "dataset.json", by_name=True)
    rows = _named_rows()
    table = results.format_results_table(rows, ["random", "pimpic"], [5],
                                         structures=labels.structures)
    blocks = [ln for ln in table.splitlines() if ln.startswith("| **")]
    assert blocks == ["| **brainstem** | |", "| **spinal cord** | |", "| **parotid right** | |",
                      "| **mandible** | |"]  # dataset order, the dataset's names
    assert "2 case-runs in all" in table  # the parotid absent on c0 for both methods
    # results.csv keeps every structure's columns, and reads back to the same table
    results.write_results_csv(rows, tmp_path / "results.csv")
    back = results.read_results_csv(tmp_path / "results.csv")
    assert list(back[0]) == list(rows[0]) and math.isnan(back[0]["dice_parotid_right"])
    assert [s.key for s in results.structures_in(back)] == [
        "brainstem", "spinal_cord", "parotid_right", "mandible"]
