"""The experiment grid: config, stage plan, resumability (stubbed stages), report outputs, and
a tiny end-to-end run with the real stages (slow)."""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _lock import held_elsewhere
from pimpic.config import build_config, to_dict
from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.paths import cell_dir, eval_dir
from pimpic.pretraining.config import PretrainConfig
from pimpic.protocol import experiment
from pimpic.protocol.experiment import run_experiment
from pimpic.protocol.grid import ExperimentConfig, load_experiment_config
from pimpic.segmentation.config import FinetuneConfig


class Stubs:
    """Fake stages writing the files the real ones write; ``fail_after`` simulates a kill."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_after = fail_after
        self.kwargs: list[dict[str, Any]] = []

    def _tick(self, kind: str) -> None:
        if self.fail_after is not None and sum(self.calls.values()) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls[kind] += 1

    def pretrain(self, cache: Path, run_dir: Path, cfg: PretrainConfig, **kw: Any) -> Path:
        self._tick("pretrain")
        self.kwargs.append(kw)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "metrics.jsonl", "w") as fh:
            for step in range(1, 41):
                loss = 2.0 / step**0.5
                fh.write(json.dumps({"step": step, "loss": loss, "pim": loss * 0.4,
                                     "pic": loss * 0.6, "lr": 1e-5}) + "\n")
        (run_dir / "energy.json").write_text(json.dumps(
            {"joules": 3600.0, "kwh": 0.001, "seconds": 1.0, "source": "estimate", "note": ""}))
        (run_dir / "encoder.safetensors").write_bytes(b"x")
        return run_dir / "encoder.safetensors"

    def finetune(self, cache: Path, run_dir: Path, cfg: FinetuneConfig, **kw: Any) -> Path:
        self._tick("finetune")
        self.kwargs.append(kw)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "model.safetensors").write_bytes(b"x")
        (run_dir / "run.json").write_text(json.dumps({"completed": True,
                                                      "fraction": cfg.fraction}))
        return run_dir

    def evaluate(self, run_dir: Path, *, split: str = "test", cache: Any = None,
                 **kw: Any) -> dict[str, Any]:
        self._tick("evaluate")
        c = Cache(cache)
        out = run_dir / f"eval-{split}"
        (out / "pred").mkdir(parents=True, exist_ok=True)
        quality = 0.5 + 0.1 * len(str(run_dir))  % 0.4
        with open(out / "per_case.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case", "dice_organ", "dice_tumour", "dice_whole",
                        "hd95_organ", "hd95_tumour", "hd95_whole"])
            for i, case in enumerate(c.split().part(split)):
                lab = np.asarray(c.label(case))
                pred = lab.copy()
                pred[: 2 + i] = 0  # a slightly different prediction per case
                np.save(out / "pred" / f"{case}.npy", pred)
                tumour = "nan" if i == 0 else quality - 0.2
                w.writerow([case, quality + 0.01 * i, tumour, quality + 0.02, 3.0, 5.0, 3.0])
        (out / "summary.json").write_text(json.dumps({"split": split}))
        return {}


@pytest.fixture
def stubs(monkeypatch: pytest.MonkeyPatch) -> Stubs:
    s = Stubs()
    monkeypatch.setattr(experiment, "pretrain", s.pretrain)
    monkeypatch.setattr(experiment, "finetune", s.finetune)
    monkeypatch.setattr(experiment, "evaluate", s.evaluate)
    return s


def _cfg(cache: Path, **kw: Any) -> ExperimentConfig:
    base: dict[str, Any] = {"cache": str(cache), "methods": ("random", "pim", "pimpic"),
                            "fractions": (10, 100), "seeds": (0,)}
    base.update(kw)
    return ExperimentConfig(**base)


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    y = tmp_path / "exp.yaml"
    y.write_text("cache: /x\nmethods: [random, pimpic]\nfractions: [5, 100]\n"
                 "pretrain: {steps: 7, width: 2, depth: 3, patch_size: 16}\n"
                 "pretrain_overrides: {voco: {lr: 0.001}}\n")
    cfg = load_experiment_config(y, ["seeds=[0,1]", "finetune.max_steps=3",
                                     "methods=random,pimpic,voco"])
    assert cfg.methods == ("random", "pimpic", "voco") and cfg.seeds == (0, 1)
    assert cfg.pretrain_config("voco").lr == 0.001 and cfg.pretrain_config("voco").steps == 7
    assert cfg.pretrain_config("pimpic").method == "pimpic"
    assert cfg.finetune_config(5, 1).fraction == 5 and cfg.finetune.max_steps == 3
    with pytest.raises(PimpicError, match="unknown"):
        load_experiment_config(y, ["methods=[random,simclr]"])
    with pytest.raises(PimpicError, match="cache"):
        load_experiment_config(None, [])


def test_examples_parse() -> None:
    root = Path(__file__).parents[2] / "examples"
    for name in ("experiment_small.yaml", "paper_pancreas.yaml", "paper_kits19.yaml",
                 "evidence_cpu.yaml", "openkbp_cpu.yaml"):
        cfg = load_experiment_config(root / name)
        assert "random" in cfg.methods and "pimpic" in cfg.methods


def test_the_real_ct_grid_fine_tunes_with_the_recipe_fixed_from_scratch() -> None:
    """examples/openkbp_cpu.yaml fine-tunes every cell with examples/openkbp_recipe_cpu.yaml
    (chosen on validation before any encoder was run), pretrains that recipe's encoder, and
    reads all cached CTs (transductive, as the real-CT issue asks)."""
    root = Path(__file__).parents[2] / "examples"
    grid = load_experiment_config(root / "openkbp_cpu.yaml")
    recipe = build_config(FinetuneConfig, root / "openkbp_recipe_cpu.yaml", [])
    skip = {"fraction", "seed", "num_classes"}  # per cell; derived from the cache's labels
    ours, theirs = to_dict(grid.finetune), to_dict(recipe)
    assert {k: v for k, v in ours.items() if k not in skip} == {
        k: v for k, v in theirs.items() if k not in skip}
    assert grid.pretrain_pool == "all" and grid.fractions == (5, 100) and grid.seeds == (0, 1, 2)
    assert set(grid.methods) == {"random", "pimpic", "pim", "pic", "voco", "vox2vec"}
    for method in grid.methods[1:]:
        pre = grid.pretrain_config(method)
        assert (pre.width, pre.depth, pre.patch_size, pre.steps) == (
            recipe.width, recipe.depth, recipe.patch_size, grid.pretrain.steps)


@pytest.mark.parametrize("name", ["paper_pancreas.yaml", "paper_kits19.yaml"])
def test_paper_configs_resolve_to_the_released_recipe(name: str) -> None:
    """The paper configurations fine-tune as the authors' released code (docs/method.md §6.2)."""
    cfg = load_experiment_config(Path(__file__).parents[2] / "examples" / name)
    ft = cfg.finetune
    assert cfg.fractions == (5, 10, 20, 50, 100)
    assert (ft.batch_size, ft.samples_per_volume, ft.pos_ratio) == (2, 16, 1.0)  # 32 patches
    assert ft.steps_per_epoch is None and ft.patience == 15  # an epoch = ceil(n / 2) steps
    assert (ft.loss, ft.lr, ft.val_criterion, ft.decoder) == ("dice", 1e-5, "dice_loss",
                                                              "released")
    assert ft.crop_foreground and ft.augment and ft.aug_stage == "volume"
    assert (ft.affine_prob, ft.rotate_rad, ft.scale, ft.shift_vox) == (0.1, 0.1, 0.1, 0.0)
    assert (ft.noise_prob, ft.noise_std) == (0.2, 0.01) and not ft.intensity_aug
    assert (ft.val_sw_overlap, ft.sw_overlap, ft.sw_mode) == (0.25, 0.5, "constant")
    assert (cfg.absent, cfg.sd_ddof, cfg.lcc) == ("zero", 0, False)
    assert ft.max_epochs == 500  # the released epoch cap
    # every value spelled out in the file is also the default
    assert ft == dataclasses.replace(FinetuneConfig(), device="cuda", num_workers=8)
    # pretraining: the paper's 20 K steps and the released whole-volume noise before cropping
    pre = cfg.pretrain
    assert pre.steps == 20000 and (pre.lr, pre.patches, pre.patch_size) == (1e-5, 32, 64)
    assert (pre.sampler.volume_noise_prob, pre.sampler.volume_noise_std) == (0.9, 0.01)


def test_grid_runs_and_resumes(make_cache: Any, tmp_path: Path, stubs: Stubs,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    exp = tmp_path / "exp"
    cfg = _cfg(cache)
    # killed after pretraining both methods and one finished cell (finetune + evaluate)
    stubs.fail_after = 4
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, exp, progress=False, on_stage=None)
    assert stubs.calls == Counter(pretrain=2, finetune=1, evaluate=1)
    # rerun: nothing complete is redone; 6 cells in all
    stubs.fail_after = None
    events: list[experiment.StageEvent] = []
    run_experiment(cfg, exp, progress=False, on_stage=events.append)
    assert stubs.calls == Counter(pretrain=2, finetune=6, evaluate=6)
    skipped = {e.stage.name for e in events if e.skipped}
    assert skipped == {"pretrain pim", "pretrain pimpic", "finetune random 10% seed 0"}
    finished = [e for e in events if e.finished and not e.skipped]
    assert all(e.eta is not None for e in finished) and finished[-1].eta == 0
    # a third run does nothing; a cell whose fine-tune finished is only evaluated
    (eval_dir(cell_dir(exp, "pim", 100, 0)) / "summary.json").unlink()
    run_experiment(cfg, exp, progress=False, on_stage=None)
    assert stubs.calls == Counter(pretrain=2, finetune=6, evaluate=7)
    # outputs
    for name in ("config.yaml", "results.csv", "table.md", "stats.md", "report.md",
                 "timings.json", "figures/dice_vs_fraction.png", "figures/pretrain_loss.png",
                 "figures/overlays.png"):
        assert (exp / name).is_file() and (exp / name).stat().st_size > 0, name
    with open(exp / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    n_test = len(Cache(cache).split().test)
    assert len(rows) == 3 * 2 * n_test
    assert {r["n_train_cases"] for r in rows if r["fraction"] == "100"} == {"7"}
    report = (exp / "report.md").read_text()
    for text in ("24.50 MJ (6.80 kWh)", "estimate", "figures/overlays.png", "Wilcoxon",
                 "torch", "| **Tumour** |"):
        assert text in report, text


def test_resume_flags_and_changed_settings(make_cache: Any, tmp_path: Path,
                                           stubs: Stubs) -> None:
    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    exp = tmp_path / "exp"
    # a partial pretraining run with a checkpoint resumes; one without restarts in place
    (exp / "pretrain" / "pim").mkdir(parents=True)
    (exp / "pretrain" / "pim" / "checkpoint.pt").write_bytes(b"x")
    (exp / "pretrain" / "pimpic").mkdir(parents=True)
    run_experiment(_cfg(cache, fractions=(100,)), exp, progress=False, on_stage=None,
                   report=False)
    assert stubs.kwargs[0]["resume"] and not stubs.kwargs[0]["overwrite"]
    assert not stubs.kwargs[1]["resume"] and stubs.kwargs[1]["overwrite"]
    # adding a fraction is fine; changing the pretraining recipe is refused
    run_experiment(_cfg(cache, fractions=(10, 100)), exp, progress=False, on_stage=None,
                   report=False)
    with pytest.raises(PimpicError, match=r"different settings \(pretrain\.steps: run has "
                       r"20000, now 5\); use a new --out folder"):
        run_experiment(_cfg(cache, pretrain=PretrainConfig(steps=5)), exp, progress=False,
                       on_stage=None)
    # a method added on resume may bring its own pretraining overrides (the demo's folder
    # grows into the evidence grid); a method already pretrained may not change them
    grown = _cfg(cache, fractions=(100,), methods=("random", "pim", "pimpic", "voco"),
                 pretrain_overrides={"voco": {"lr": 1e-3}})
    run_experiment(grown, exp, progress=False, on_stage=None, report=False)
    with pytest.raises(PimpicError, match=r"pretrain_overrides\.pim\.lr"):
        run_experiment(_cfg(cache, fractions=(100,), pretrain_overrides={"pim": {"lr": 1e-3}}),
                       exp, progress=False, on_stage=None, report=False)


def test_eta_estimate() -> None:
    def st(kind: str) -> experiment.Stage:
        return experiment.Stage(kind, kind, Path("."), lambda: False, lambda: None)

    assert experiment.estimate_eta([st("a")], {}) is None
    assert experiment.estimate_eta([], {}) == 0
    assert experiment.estimate_eta([st("a"), st("b")], {"a": [10.0, 20.0]}) == 30.0
    assert experiment.estimate_eta([st("a"), st("b")], {"a": [10.0], "b": [2.0]}) == 12.0


def test_cli_experiment(make_cache: Any, tmp_path: Path, stubs: Stubs) -> None:
    from typer.testing import CliRunner

    from pimpic.cli import app

    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    y = tmp_path / "exp.yaml"
    y.write_text(f"cache: {cache}\nmethods: [random, pimpic]\nfractions: [100]\n")
    res = CliRunner().invoke(app, ["experiment", str(y), "--out", str(tmp_path / "e"),
                                   "--set", "seeds=[0,1]", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "Random + Aug" in res.output and (tmp_path / "e" / "report.md").is_file()
    res = CliRunner().invoke(app, ["experiment", str(y), "--out", str(tmp_path / "e"),
                                   "--set", "methods=[simclr]"])
    assert res.exit_code == 2 and "unknown" in res.output


@pytest.mark.slow
def test_end_to_end_real_stages(make_cache: Any, tmp_path: Path) -> None:
    pytest.importorskip("pimpic.pretraining.engine")
    pytest.importorskip("pimpic.segmentation.finetune")
    pytest.importorskip("pimpic.segmentation.evaluate")
    cache = make_cache(n_cases=10, shape=(32, 32, 32))
    cfg = ExperimentConfig(
        cache=str(cache), methods=("random", "pim", "pic", "pimpic", "voco", "vox2vec"),
        fractions=(100,), seeds=(0,),
        pretrain=PretrainConfig(width=2, depth=3, patch_size=16, patches=4, steps=3,
                                proj_dim=8, device="cpu", amp=False, num_workers=0,
                                log_every=1, checkpoint_every=100),
        pretrain_overrides={"voco": {"voco": {"proj_dim": 16, "grid": [2, 2]}},
                            "vox2vec": {"vox2vec": {"num_voxels": 16}}},
        finetune=FinetuneConfig(width=2, depth=3, patch_size=16, max_epochs=1,
                                steps_per_epoch=1, batch_size=1, samples_per_volume=1,
                                device="cpu", amp=False, num_workers=0, sw_batch_size=2),
    )
    exp = run_experiment(cfg, tmp_path / "exp", progress=False, on_stage=None)
    with open(exp / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * len(Cache(cache).split().test)
    assert (exp / "figures" / "overlays.png").stat().st_size > 0
    assert "PiMPiC" in (exp / "table.md").read_text()


def test_a_diverged_stage_fails_alone(make_cache: Any, tmp_path: Path, stubs: Stubs,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell whose training diverges is reported as failed with its reason, a method whose
    pretraining diverges loses its cells, and every other cell finishes; a rerun after the fix
    runs only what failed."""
    from pimpic.training.guard import TrainingDiverged

    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    exp = tmp_path / "exp"
    cfg = _cfg(cache)  # random, pim, pimpic × 10 %, 100 %
    pretrain, finetune = stubs.pretrain, stubs.finetune

    def diverging_pretrain(cache: Path, run_dir: Path, cfg: PretrainConfig, **kw: Any) -> Path:
        if run_dir.name == "pim":
            raise TrainingDiverged(f"{run_dir}: training diverged at step 7, not finite: loss=nan")
        return pretrain(cache, run_dir, cfg, **kw)

    def diverging_finetune(cache: Path, run_dir: Path, cfg: FinetuneConfig, **kw: Any) -> Path:
        if run_dir == cell_dir(exp, "random", 10, 0):
            raise TrainingDiverged(f"{run_dir}: training diverged at step 3, not finite: loss=nan")
        return finetune(cache, run_dir, cfg, **kw)

    monkeypatch.setattr(experiment, "pretrain", diverging_pretrain)
    monkeypatch.setattr(experiment, "finetune", diverging_finetune)
    with pytest.raises(PimpicError, match=r"exp: 4 of 8 stages failed, the rest finished "
                                          r"\(.*failures\.json\); first: pretrain pim: .*step 7"):
        run_experiment(cfg, exp, progress=False, on_stage=None)
    failed = json.loads((exp / "failures.json").read_text())
    assert set(failed) == {"pretrain pim", "finetune pim 10% seed 0", "finetune pim 100% seed 0",
                           "finetune random 10% seed 0"}
    assert failed["finetune pim 10% seed 0"] == "not run: pretrain pim failed"
    assert "step 3, not finite" in failed["finetune random 10% seed 0"]
    assert stubs.calls == Counter(pretrain=1, finetune=3, evaluate=3)  # pimpic ×2, random 100 %
    report = (exp / "report.md").read_text()
    assert "## Failed stages" in report and "**finetune random 10% seed 0**" in report
    with open(exp / "results.csv") as fh:
        assert {(r["method"], r["fraction"]) for r in csv.DictReader(fh)} == {
            ("pimpic", "10"), ("pimpic", "100"), ("random", "100")}
    # fixed: the rerun does only the failed stages, and the failures are gone
    monkeypatch.setattr(experiment, "pretrain", pretrain)
    monkeypatch.setattr(experiment, "finetune", finetune)
    run_experiment(cfg, exp, progress=False, on_stage=None)
    assert stubs.calls == Counter(pretrain=2, finetune=6, evaluate=6)
    assert not (exp / "failures.json").exists()
    assert "Failed stages" not in (exp / "report.md").read_text()


@pytest.mark.parametrize(("split", "message"), [
    ("tset", "split 'tset' is not one of train, val, test"),
    ("train", "split 'train' has 7 case(s) in the fine-tuning set"),
])
def test_the_split_is_checked_before_anything_runs(make_cache: Any, tmp_path: Path,
                                                   stubs: Stubs, split: str,
                                                   message: str) -> None:
    """C64b, C68: a split every evaluation would refuse is refused before the grid runs."""
    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    with pytest.raises(PimpicError) as err:
        run_experiment(_cfg(cache, split=split), tmp_path / "exp", progress=False,
                       on_stage=None)
    assert message in str(err.value)
    assert not stubs.calls and not (tmp_path / "exp").exists()


def test_a_second_experiment_on_the_same_folder_is_refused(make_cache: Any, tmp_path: Path,
                                                          stubs: Stubs) -> None:
    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    (tmp_path / "exp").mkdir()
    with held_elsewhere(tmp_path / "exp" / ".pimpic-lock", "`pimpic experiment`") as pid, \
            pytest.raises(PimpicError, match=rf"locked by another `pimpic experiment` "
                                             rf"\(pid {pid}, still running\)"):
        run_experiment(_cfg(cache), tmp_path / "exp", progress=False, on_stage=None)
    assert not stubs.calls


def _share_worker(cfg: ExperimentConfig, exp: Path) -> None:
    run_experiment(cfg, exp, progress=False, on_stage=None, share=True, poll_s=0.05)


def test_two_share_workers_split_one_grid_and_run_each_stage_once(
        make_cache: Any, tmp_path: Path, stubs: Stubs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ``--share`` processes on one folder: every stage runs exactly once, both work, no
    cell starts before its pretraining finished, and the report is written."""
    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    exp, log_file = tmp_path / "exp", tmp_path / "calls.txt"

    def slow(kind: str, fn: Any) -> Any:
        def run(cache: Path, run_dir: Path, *args: Any, **kw: Any) -> Any:
            with open(log_file, "a") as fh:
                fh.write(f"{os.getpid()} start {kind} {run_dir.relative_to(exp)} "
                         f"{time.monotonic()}\n")
            time.sleep(0.3)
            out = fn(cache, run_dir, *args, **kw)
            with open(log_file, "a") as fh:
                fh.write(f"{os.getpid()} end {kind} {run_dir.relative_to(exp)} "
                         f"{time.monotonic()}\n")
            return out
        return run

    monkeypatch.setattr(experiment, "pretrain", slow("pretrain", stubs.pretrain))
    monkeypatch.setattr(experiment, "finetune", slow("finetune", stubs.finetune))
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_share_worker, args=(_cfg(cache), exp)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    events = [line.split() for line in log_file.read_text().splitlines()]
    starts = [e for e in events if e[1] == "start"]
    runs = [e[3] for e in starts]
    assert len(runs) == len(set(runs)) == 2 + 6  # two pretrainings, six cells, each once
    assert len({e[0] for e in starts}) == 2  # both workers ran stages
    ended = {e[3]: float(e[4]) for e in events if e[1] == "end"}
    for e in starts:
        method = e[3].split("/")[1]
        if e[2] == "finetune" and method != "random":  # waited for its own pretraining
            assert float(e[4]) >= ended[f"pretrain/{method}"]
    assert (exp / "report.md").is_file() and not (exp / "failures.json").exists()
    assert set(read_json(exp / "timings.json")) == {
        "pretrain pim", "pretrain pimpic", *(f"finetune {m} {f}% seed 0" for m in
                                            ("random", "pim", "pimpic") for f in (10, 100))}


def test_a_stage_claimed_by_a_share_worker_stops_an_unshared_run(
        make_cache: Any, tmp_path: Path, stubs: Stubs) -> None:
    cache = make_cache(n_cases=10, shape=(24, 24, 24))
    claims = tmp_path / "exp" / ".claims"
    claims.mkdir(parents=True)
    with held_elsewhere(claims / "pretrain_pim.lock", "`pimpic experiment --share`") as pid, \
            pytest.raises(PimpicError, match=rf"pretrain_pim.lock: locked by another `pimpic "
                                             rf"experiment --share` \(pid {pid}"):
        run_experiment(_cfg(cache), tmp_path / "exp", progress=False, on_stage=None)
    assert not stubs.calls
