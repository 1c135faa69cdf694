"""``pimpic demo --quick`` end to end (the README's main job, smoke-sized), and its resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
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


def test_evidence_config_is_the_demo_grid_grown() -> None:
    """examples/evidence_cpu.yaml differs from the demo's experiment only in the grid (methods,
    seeds), the baselines' own settings and a longer pretraining, so it resumes in the demo's
    folder with the demo's Random + Aug cells."""
    from pimpic.config import flatten, to_dict
    from pimpic.protocol.demo import SIZES, demo_config
    from pimpic.protocol.grid import load_experiment_config

    demo = demo_config(SIZES["full"], Path("/tmp/evidence/cache"), "cpu")
    evidence = load_experiment_config(Path(__file__).parents[2] / "examples" / "evidence_cpu.yaml")
    d, e = flatten(to_dict(demo)), flatten(to_dict(evidence))
    differ = {k for k in set(d) | set(e) if d.get(k) != e.get(k)}
    assert {k.split(".")[0] for k in differ} == {"methods", "seeds", "pretrain_overrides",
                                                 "pretrain"}
    assert {k for k in differ if k.startswith("pretrain.")} == {"pretrain.steps",
                                                                "pretrain.checkpoint_every"}
    assert e["pretrain.steps"] == 4 * d["pretrain.steps"]
    assert set(demo.methods) < set(evidence.methods) and set(demo.seeds) < set(evidence.seeds)


@pytest.mark.slow
def test_demo_finetuning_settings_give_identical_weights_run_to_run(make_cache: Any,
                                                                     tmp_path: Path) -> None:
    """Issue #21: bf16 on CPU made the demo's fine-tuning differ run to run (and go NaN) on
    CPUs with bf16 units. The demo's settings, as they are on this machine, must give the same
    weights twice."""
    from pimpic.protocol.demo import SIZES, demo_config
    from pimpic.segmentation.finetune import finetune

    cache = make_cache(n_cases=5, shape=(32, 32, 32))
    cfg = demo_config(SIZES["full"], cache, "cpu").finetune
    assert not cfg.cpu_bf16
    cfg = dataclasses.replace(cfg, steps_per_epoch=4, max_epochs=1)
    runs = [finetune(cache, tmp_path / f"run{i}", cfg, progress=False, tensorboard=False)
            for i in range(2)]
    a, b = ((r / "model.safetensors").read_bytes() for r in runs)
    assert a == b
    sa, sb = (torch.load(r / "checkpoint.pt", weights_only=True) for r in runs)
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
