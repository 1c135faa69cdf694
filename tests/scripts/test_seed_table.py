"""scripts/seed_table.py: per-seed means and differences from Random + Aug."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from _scripts import load_script


def test_per_seed_means_differences_and_criteria(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for method, bump in (("random", 0.0), ("pimpic", 0.1)):
        for fraction, level in ((5, 0.4), (100, 0.6)):
            for seed in (0, 1):
                for case, extra in (("a", 0.0), ("b", 0.2)):
                    tumour = None if case == "b" else 0.3  # absent → 0, as the table counts it
                    rows.append({"method": method, "fraction": fraction, "seed": seed,
                                 "case": case, "dice_organ": level + extra + bump * (seed + 1),
                                 "dice_tumour": tumour, "dice_whole": level})
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert load_script("seed_table").main(str(path)) == 0
    out = capsys.readouterr().out
    # organ per seed: random 5 % = mean(0.4, 0.6) = 50.0 in both seeds and on average
    organ = [line.split() for line in out.split("dice_tumour")[0].splitlines()]
    assert ["random", "5", "50.0", "50.0", "50.0"] in organ
    assert ["pimpic", "5", "60.0", "70.0", "65.0"] in organ
    assert "pimpic − random organ Dice by fraction, seed:" in out
    lines = out.splitlines()
    diff_at = lines.index("pimpic − random organ Dice by fraction, seed:")
    assert lines[diff_at + 3].split() == ["5", "10.0", "20.0"]
    assert lines[diff_at + 4].split() == ["100", "10.0", "20.0"]
    assert "  seed 0: gap 20.0, tumour 15.0" in out  # tumour (0.3 + 0) / 2
