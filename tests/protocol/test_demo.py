"""``pimpic demo --quick`` end to end (the README's main job, smoke-sized), and its resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pimpic.cli import app


@pytest.mark.slow
def test_demo_quick_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    exp = out / "experiment"
    table = (exp / "table.md").read_text()
    assert "Random + Aug" in table and "PiMPiC" in table
    assert "Random + Aug" in res.output  # the table is printed
    for fig in ("dice_vs_fraction", "pretrain_loss", "overlays", "embedding_similarity",
                "overlap_check"):
        assert (exp / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    report = (exp / "report.md").read_text()
    assert "embedding_similarity.png" in report
    assert (exp / "pretrain" / "pimpic" / "encoder.safetensors").is_file()
    # everything is complete: a rerun resumes and does no stage again
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "running" not in again.output


def test_demo_rejects_unknown_task(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["demo", "--task", "liver", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2
    assert "pancreas or kidney" in res.output
