"""The pretraining engine: run folder, artifacts, resume bit-for-bit, guards (dummy method)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _pretrain_dummy as dummy
from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.io import read_json, read_jsonl
from pimpic.models.export import load_encoder, read_encoder_metadata
from pimpic.pretraining.backbones import build_encoder
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.engine import load_pretext_module, pretrain
from pimpic.training.guard import TrainingDiverged

TINY = PretrainConfig(width=2, depth=3, patch_size=16, patches=3, steps=4, log_every=2,
                      checkpoint_every=2, num_workers=0, seed=3)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache, run) of one finished 4-step run on five 24×20×24 volumes."""
    from conftest import write_cache

    root = tmp_path_factory.mktemp("engine")
    cache = write_cache(root / "cache", n_cases=5, shape=(24, 20, 24))
    with pytest.MonkeyPatch.context() as mp:
        dummy.install(mp)
        pretrain(cache, root / "run", TINY, progress=False)
    return cache, root / "run"


def test_run_folder_and_artifacts(finished: tuple[Path, Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache, run = finished
    for name in ("config.yaml", "env.json", "run.json", "metrics.jsonl", "checkpoint.pt",
                 "method.safetensors", "encoder.safetensors", "energy.json", "tb"):
        assert (run / name).exists(), name
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    assert {"loss", "zmean", "lr", "patches_per_s", "elapsed_s"} <= set(rows[0])
    train = Cache(cache).train_ids()
    assert read_json(run / "run.json")["case_ids"] == train
    meta = read_encoder_metadata(run / "encoder.safetensors")
    assert meta["pretrain_cases"] == train
    assert meta["patch_size"] == 16 and meta["steps"] == 4 and meta["method"] == "pimpic"
    assert meta["spacing"] == [1.5, 1.5, 1.5] and meta["window"] == [-200.0, 400.0]
    encoder, _ = load_encoder(run / "encoder.safetensors", build_encoder,
                              {"width": 2, "depth": 3})
    energy = read_json(run / "energy.json")
    assert energy["source"] in ("nvml", "rapl", "estimate") and energy["joules"] > 0
    env = read_json(run / "env.json")
    assert env["torch"] == torch.__version__ and env["world_size"] == 1

    dummy.install(monkeypatch)
    module, cfg = load_pretext_module(run)
    assert cfg == TINY and not module.training
    state = load_file(str(run / "method.safetensors"))
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())
    assert all(torch.equal(v, module.encoder.state_dict()[k])
               for k, v in encoder.state_dict().items())


def test_existing_run_folder_is_protected(finished: tuple[Path, Path],
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache, run = finished
    dummy.install(monkeypatch)
    with pytest.raises(PimpicError, match=r"exists and is not empty.*--resume.*--overwrite"):
        pretrain(cache, run, TINY, progress=False)
    with pytest.raises(PimpicError, match=r"different config — lr: run has 1e-05, now 0\.1"):
        pretrain(cache, run, dataclasses.replace(TINY, lr=0.1), resume=True, progress=False)
    with pytest.raises(PimpicError, match="no checkpoint to resume"):
        pretrain(cache, tmp_path / "new", TINY, resume=True, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(PimpicError, match="not a pimpic run folder"):
        pretrain(cache, tmp_path / "mine", TINY, overwrite=True, progress=False)
    assert (tmp_path / "mine" / "thesis.tex").exists()


def test_bad_inputs(make_cache, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dummy.install(monkeypatch)
    with pytest.raises(PimpicError, match="does not exist"):
        pretrain(tmp_path / "nope", tmp_path / "run", TINY)
    cache = make_cache(n_cases=3, shape=(16, 16, 16), labelled=False)
    with pytest.raises(PimpicError, match="no training cases"):
        pretrain(cache, tmp_path / "run", TINY, case_ids=[])
    with pytest.raises(PimpicError, match="not in the cache: ghost"):
        pretrain(cache, tmp_path / "run", TINY, case_ids=["ghost"])
    assert not (tmp_path / "run").exists()


class OneJouleMeter:
    """An energy meter measuring one joule and one second per session."""

    def __init__(self, device: object) -> None:
        pass

    def __enter__(self) -> OneJouleMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def result(self) -> dict[str, object]:
        return {"joules": 1.0, "kwh": 1 / 3.6e6, "seconds": 1.0, "source": "estimate",
                "note": "test"}


def test_resume_is_bit_for_bit(make_cache, monkeypatch: pytest.MonkeyPatch,
                               tmp_path: Path) -> None:
    dummy.install(monkeypatch)
    monkeypatch.setattr("pimpic.pretraining.engine.EnergyMeter", OneJouleMeter)
    cache = make_cache(n_cases=4, shape=(20, 20, 20), labelled=False)
    six = dataclasses.replace(TINY, steps=6, checkpoint_every=3, log_every=1)
    pretrain(cache, tmp_path / "straight", six, progress=False)
    pretrain(cache, tmp_path / "split", dataclasses.replace(six, steps=3), progress=False)
    pretrain(cache, tmp_path / "split", six, resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / "method.safetensors"))
    b = load_file(str(tmp_path / "split" / "method.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    rows_b = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == list(range(1, 7))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    info = read_json(tmp_path / "split" / "run.json")
    assert info["resumed_from"] == [3]
    assert list(read_json(tmp_path / "straight" / "run.json")) == [
        "cache", "method", "world_size", "cache_manifest_sha256", "case_ids", "case_inputs",
        "pretrain_pool"]
    # energy.json counts both sessions
    energy = read_json(tmp_path / "split" / "energy.json")
    assert (energy["joules"], energy["seconds"], energy["steps"]) == (2.0, 2.0, 6)
    assert read_json(tmp_path / "straight" / "energy.json")["joules"] == 1.0


def test_nan_loss_stops_and_keeps_checkpoint(make_cache, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    dummy.install(monkeypatch)
    dummy.DummyModule.nan_at = 3
    cache = make_cache(n_cases=3, shape=(16, 16, 16), labelled=False)
    with pytest.raises(TrainingDiverged, match=r"run: training diverged at step 3, not finite: "
                                               r"loss=nan, grad_norm=nan; stopped, the last good "
                                               r"checkpoint \(step 2\) is kept in .*; try "
                                               r"`--set amp=false` or a lower `lr`, then "
                                               r"`--resume`$"):
        pretrain(cache, tmp_path / "run", TINY, progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    assert not (tmp_path / "run" / "encoder.safetensors").exists()
    # after the change the message asks for, --resume goes on from the kept checkpoint
    dummy.DummyModule.nan_at = None
    pretrain(cache, tmp_path / "run", TINY, progress=False, resume=True)
    assert (tmp_path / "run" / "encoder.safetensors").is_file()


def test_load_pretext_module_needs_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(PimpicError, match=r"method\.safetensors: not found"):
        load_pretext_module(tmp_path)


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(make_cache, monkeypatch, tmp_path):
    """`pimpic pretrain --out . --overwrite` in a project folder: refused, nothing deleted."""
    dummy.install(monkeypatch)
    cache = make_cache(n_cases=3, shape=(16, 16, 16), labelled=False)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "analysis.py").write_text("print('mine')")
    (project / "config.yaml").write_text("steps: 4\n")  # looks like a run's, is not
    monkeypatch.chdir(project)
    with pytest.raises(PimpicError) as err:
        pretrain(cache, Path("."), TINY, overwrite=True, progress=False)
    assert "not a pimpic run folder" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in project.rglob("*")) == ["analysis.py", "config.yaml", "src"]


def test_overwrite_removes_only_the_run_and_refuses_foreign_files(finished, monkeypatch,
                                                                  tmp_path):
    import shutil

    cache, done = finished
    run = tmp_path / "run"
    shutil.copytree(done, run)
    (run / "notes.md").write_text("what I changed")
    dummy.install(monkeypatch)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(PimpicError, match=r"removes only what pimpic wrote.*notes\.md"):
        pretrain(cache, run, TINY, overwrite=True, progress=False)
    assert sorted(p.name for p in run.iterdir()) == before
    (run / "notes.md").unlink()
    pretrain(cache, run, dataclasses.replace(TINY, steps=2), overwrite=True, progress=False)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [2]
    assert read_json(run / ".pimpic-run")["kind"] == "pretrain"


@pytest.mark.parametrize("content", [b"garbage" * 10, "pickle"])
def test_a_bad_checkpoint_is_one_line_without_unsafe_advice(finished, monkeypatch, tmp_path,
                                                            content):
    import shutil

    cache, done = finished
    run = tmp_path / "run"
    shutil.copytree(done, run)
    if content == "pickle":  # a well-formed file holding more than tensors
        torch.save({"step": 2, "model": {}, "extra": Path("x")}, run / "checkpoint.pt")
    else:
        (run / "checkpoint.pt").write_bytes(content)
    dummy.install(monkeypatch)
    with pytest.raises(PimpicError) as err:
        pretrain(cache, run, TINY, resume=True, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{run / 'checkpoint.pt'}: ") and "\n" not in msg
    assert "weights_only" not in msg


def test_resume_refuses_a_re_prepared_cache(finished, monkeypatch, tmp_path):
    import shutil

    from pimpic.io import write_json

    cache, done = finished
    run, other = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(done, run)
    shutil.copytree(cache, other)
    manifest = read_json(other / "manifest.json")
    write_json(other / "manifest.json", {**manifest, "settings": {
        **manifest["settings"], "window": [-100.0, 240.0]}})
    dummy.install(monkeypatch)
    with pytest.raises(PimpicError, match=r"cannot resume — cache_manifest_sha256"):
        pretrain(other, run, dataclasses.replace(TINY, steps=6), resume=True, progress=False)
