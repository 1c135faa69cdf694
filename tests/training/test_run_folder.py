"""The run folder policy: what --overwrite may remove, what --resume must match."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from _lock import held_elsewhere, refusal_elsewhere
from pimpic.errors import PimpicError
from pimpic.paths import RUN_LOCK
from pimpic.training.run_folder import (
    EVAL_MARKER,
    MARKER,
    RESUMABLE,
    RUNTIME_KEYS,
    RunFolder,
    RunRecord,
    mark_evaluation,
    saved_config,
)

ARTEFACTS = ("config.yaml", "run.json", "checkpoint.pt", "tb")


def _run(path: Path, kind: str = "finetune") -> RunFolder:
    """A finished-looking run: the marker, its artefacts and an evaluation."""
    folder = RunFolder(path, kind, ARTEFACTS)
    assert folder.check(resume=False, overwrite=False) is False
    folder.start(resuming=False)
    (path / "config.yaml").write_text("lr: 0.1\n")
    (path / "run.json").write_text(json.dumps({"train_cases": ["a", "b"], "encoder_sha256": "x"}))
    (path / "checkpoint.pt").write_bytes(b"state")
    (path / "tb").mkdir()
    (path / "tb" / "events").write_bytes(b"e")
    mark_evaluation(path / "eval-test")
    (path / "eval-test" / "summary.json").write_text("{}")
    return folder


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_a_new_folder_gets_the_marker(tmp_path: Path) -> None:
    _run(tmp_path / "run", "pretrain")
    marker = json.loads((tmp_path / "run" / MARKER).read_text())
    assert marker["kind"] == "pretrain" and marker["artefacts"] == sorted(ARTEFACTS)
    assert "pimpic_version" in marker and set(marker) == {"kind", "pimpic_version", "artefacts"}
    assert json.loads((tmp_path / "run" / "eval-test" / EVAL_MARKER).read_text())["kind"] \
        == "evaluation"


def test_overwrite_removes_only_what_pimpic_wrote(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(run)
    (run / ".checkpoint.pt.k2j4.tmp").write_bytes(b"half")  # a write cut by a kill
    mark_evaluation(run / "eval-val")
    (run / "eval-val" / "pred").mkdir()
    (run / "eval-val" / "pred" / "case_1.npy").write_bytes(b"npy")
    (run / "eval-val" / "per_case.csv").write_text("case\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (run / "metrics.jsonl").symlink_to(outside / "keep.txt")  # a listed name that is a link
    folder = RunFolder(run, "finetune", (*ARTEFACTS, "metrics.jsonl"))
    assert folder.check(resume=False, overwrite=True) is False
    folder.start(resuming=False)
    assert _tree(run) == {MARKER, RUN_LOCK}
    assert (outside / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("foreign", ["notes.txt", "eval-mine.txt", "eval-plots/fig.png",
                                     ".DS_Store", "eval-mine/summary.json",  # E29
                                     "eval-test/notes.txt", "eval-test/pred/mine.png"])
def test_overwrite_refuses_a_run_holding_anything_else(tmp_path: Path, foreign: str) -> None:
    run = tmp_path / "run"
    _run(run)
    (run / foreign).parent.mkdir(parents=True, exist_ok=True)
    (run / foreign).write_text("user data")
    before = _tree(run)
    with pytest.raises(PimpicError) as err:
        RunFolder(run, "finetune", ARTEFACTS).check(resume=False, overwrite=True)
    msg = str(err.value)
    assert msg.startswith(f"{run}: --overwrite removes only what pimpic wrote")
    assert foreign.split("/")[0] in msg and "\n" not in msg
    assert _tree(run) == before


def test_a_hand_edited_marker_does_not_make_a_users_file_pimpics(tmp_path: Path) -> None:
    """E33: the marker names what pimpic wrote; editing it must not widen --overwrite."""
    run = tmp_path / "run"
    _run(run).release()
    marker = json.loads((run / MARKER).read_text())
    marker["artefacts"].append("thesis.tex")
    (run / MARKER).write_text(json.dumps(marker))
    (run / "thesis.tex").write_text("mine")
    with pytest.raises(PimpicError, match=r"also holds thesis\.tex"):
        RunFolder(run, "finetune", ARTEFACTS).check(resume=False, overwrite=True)
    assert (run / "thesis.tex").read_text() == "mine"


def test_a_folder_without_the_marker_is_not_a_run(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("config.yaml", "run.json", "checkpoint.pt", "thesis.tex"):
        (project / name).write_text("x")
    before = _tree(project)
    for flags in ({"resume": False, "overwrite": True}, {"resume": True, "overwrite": False},
                  {"resume": False, "overwrite": False}):
        with pytest.raises(PimpicError, match=r"not a pimpic run folder \(no \.pimpic-run\)"):
            RunFolder(project, "pretrain", ARTEFACTS).check(**flags)
    assert _tree(project) == before
    assert saved_config(project) is None  # --resume does not even read its config.yaml


@pytest.mark.parametrize("marker", ['{"kind": "pretrain", "artefacts": ["../outside"]}',
                                    '{"kind": "pretrain", "artefacts": ["/etc"]}',
                                    '{"kind": "other", "artefacts": []}', "not json"])
def test_a_malformed_marker_is_refused(tmp_path: Path, marker: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(marker)
    (run / "config.yaml").write_text("x")
    with pytest.raises(PimpicError, match="malformed run marker"):
        RunFolder(run, "pretrain", ARTEFACTS).check(resume=False, overwrite=True)
    assert _tree(run) == {MARKER, "config.yaml"}


def test_kinds_flags_and_resume_without_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(run, "pretrain")
    with pytest.raises(PimpicError, match="holds a pretrain run, not a finetune run"):
        RunFolder(run, "finetune", ARTEFACTS).check(resume=False, overwrite=True)
    with pytest.raises(PimpicError, match="exclude each other"):
        RunFolder(run, "pretrain", ARTEFACTS).check(resume=True, overwrite=True)
    with pytest.raises(PimpicError, match="exists and is not empty; pass --resume"):
        RunFolder(run, "pretrain", ARTEFACTS).check(resume=False, overwrite=False)
    assert RunFolder(run, "pretrain", ARTEFACTS).check(resume=True, overwrite=False)
    (run / "checkpoint.pt").unlink()
    with pytest.raises(PimpicError, match=r"no checkpoint to resume from .*--overwrite"):
        RunFolder(run, "pretrain", ARTEFACTS).check(resume=True, overwrite=False)
    for missing in (tmp_path / "new", tmp_path / "empty"):
        if missing.name == "empty":
            missing.mkdir()
        with pytest.raises(PimpicError, match="no checkpoint to resume from"):
            RunFolder(missing, "pretrain", ARTEFACTS).check(resume=True, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PimpicError, match="exists and is not a folder"):
        RunFolder(tmp_path / "file", "pretrain", ARTEFACTS).check(resume=False, overwrite=True)


def test_resume_drops_interrupted_writes_and_keeps_the_rest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(run)
    (run / ".run.json.x1.tmp").write_text("{")
    (run / "notes.txt").write_text("mine")
    folder = RunFolder(run, "finetune", (*ARTEFACTS, "model.safetensors"))
    assert folder.check(resume=True, overwrite=False)
    folder.start(resuming=True)
    assert not (run / ".run.json.x1.tmp").exists() and (run / "notes.txt").exists()
    assert "model.safetensors" in json.loads((run / MARKER).read_text())["artefacts"]


def test_resume_names_the_first_difference(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folder = _run(run)
    assert folder.check_resume({"lr": 0.1}, {"train_cases": ("a", "b")})["encoder_sha256"] == "x"
    with pytest.raises(PimpicError, match=r"different config — lr: run has 0\.1, now 0\.2"):
        folder.check_resume({"lr": 0.2}, {})
    with pytest.raises(PimpicError, match=r"cannot resume — train_cases\[1\]: run has 'b', "
                                          r"now 'c'"):
        folder.check_resume({"lr": 0.1}, {"train_cases": ["a", "c"]})
    with pytest.raises(PimpicError, match="train_cases: run has 2 entries, now 3"):
        folder.check_resume({"lr": 0.1}, {"train_cases": ["a", "b", "c"]})
    with pytest.raises(PimpicError, match="encoder_sha256: run has 'x', now None"):
        folder.check_resume({"lr": 0.1}, {"train_cases": ["a", "b"], "encoder_sha256": None})
    with pytest.raises(PimpicError, match="cache_manifest_sha256: run has None"):
        folder.check_resume({"lr": 0.1}, {"cache_manifest_sha256": "abc"})


def test_one_list_of_resumable_keys() -> None:
    assert RUNTIME_KEYS < RESUMABLE
    assert {"steps", "max_epochs", "max_steps", "patience"} <= RESUMABLE
    assert not {"lr", "seed", "fraction", "patch_size", "method"} & RESUMABLE


def test_the_experiment_restart_keeps_a_folder_that_is_not_a_run(make_cache,
                                                                 tmp_path: Path) -> None:
    from pimpic.pretraining.config import PretrainConfig
    from pimpic.protocol.experiment import run_experiment
    from pimpic.protocol.grid import ExperimentConfig

    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    exp = tmp_path / "exp"
    mine = exp / "pretrain" / "pimpic"
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("my own settings\n")
    (mine / "draft.md").write_text("precious")
    cfg = ExperimentConfig(cache=str(cache), methods=("pimpic",), fractions=(100,),
                           pretrain=PretrainConfig(width=2, depth=3, patch_size=16, patches=2,
                                                   steps=1, num_workers=0, device="cpu"))
    with pytest.raises(PimpicError, match="not a pimpic run folder"):
        run_experiment(cfg, exp, progress=False, on_stage=None, report=False)
    assert _tree(mine) == {"config.yaml", "draft.md"}


# ------------------------------------------------------------------- one command per folder


@pytest.mark.parametrize("flags", [{"resume": False, "overwrite": False},
                                   {"resume": False, "overwrite": True},
                                   {"resume": True, "overwrite": False}],
                         ids=["start", "overwrite", "resume"])
def test_a_folder_in_use_is_refused_whatever_the_flags(tmp_path: Path,
                                                       flags: dict[str, bool]) -> None:
    """K01-K03: a second command on a running run's folder — to start it again beside it,
    --overwrite it or --resume it a second time — is refused, naming the running one."""
    run = tmp_path / "run"
    if flags["resume"] or flags["overwrite"]:
        _run(run).release()
    else:
        run.mkdir()  # the first command created it and holds its lock, nothing written yet
    before = _tree(run)
    with held_elsewhere(run / RUN_LOCK, "`pimpic finetune`") as pid, \
            pytest.raises(PimpicError) as err:
        RunFolder(run, "finetune", ARTEFACTS).check(**flags)
    assert str(err.value) == (f"{run / RUN_LOCK}: locked by another `pimpic finetune` (pid "
                              f"{pid}, still running) working on the same folder; wait for it "
                              "to finish (or stop it), or use another folder")
    assert _tree(run) - {RUN_LOCK} == before - {RUN_LOCK}


def test_the_lock_is_held_until_released_and_a_refusal_leaves_no_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folder = RunFolder(run, "pretrain", ARTEFACTS)
    assert folder.check(resume=False, overwrite=False) is False
    assert f"(pid {os.getpid()}, still running)" in str(refusal_elsewhere(run / RUN_LOCK))
    folder.release()
    assert not run.exists()  # created for the lock, no run started in it: removed with it
    run.mkdir()  # a user's empty folder is kept, without the lock file
    RunFolder(run, "pretrain", ARTEFACTS).check(resume=False, overwrite=False)
    assert run.is_dir() and not any(run.iterdir())
    started = RunFolder(run, "pretrain", ARTEFACTS)
    started.check(resume=False, overwrite=False)
    started.start(resuming=False)
    started.release()
    assert refusal_elsewhere(run / RUN_LOCK) is None and (run / MARKER).is_file()
    with pytest.raises(PimpicError, match="no checkpoint to resume from"):
        RunFolder(tmp_path / "new", "pretrain", ARTEFACTS).check(resume=True, overwrite=False)
    assert not (tmp_path / "new").exists()


@dataclasses.dataclass
class ToyRecord(RunRecord):
    WHAT = "a toy run"

    cache: str
    steps: int = 0


def test_run_record_round_trip_and_refusal(tmp_path: Path) -> None:
    ToyRecord("c", 3).save(tmp_path)
    path = tmp_path / "run.json"
    assert json.loads(path.read_text()) == {"cache": "c", "steps": 3}
    # a key the record does not know is dropped; one without a default must be there
    assert ToyRecord.from_json(path, {"cache": "c", "old": 1}) == ToyRecord("c", 0)
    with pytest.raises(PimpicError, match=r"run\.json: not a toy run's record \(no cache"):
        ToyRecord.from_json(path, {"steps": 3})
