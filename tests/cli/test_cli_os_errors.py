"""What the operating system refuses — permission, a full disk, a file-size limit, a path that
loops — is one line naming the path, exit 2, with nothing half-written left (finding 9).

Tests run as root, whom ``chmod`` does not stop, so the refusals are simulated where pimpic
writes."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _cli import assert_refused
from pimpic.cli import app
from pimpic.data.cache import Cache

runner = CliRunner()
SYNTH = ["--cases", "3", "--shape", "40,40,12", "--spacing", "4,4,8", "--variability", "low",
         "--no-progress"]
TINY_PRE = ["--set", "width=2", "--set", "depth=3", "--set", "patch_size=16", "--set",
            "patches=2", "--set", "proj_dim=8", "--set", "num_workers=0", "--no-progress"]


def _one_error(res: Any, *messages: str) -> None:
    """Exit 2 and one ``error:`` line holding ``messages`` (a fixture cache's leakage-guard
    warning may precede it)."""
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert all(m in errors[0] for m in messages) and "Traceback" not in res.output, res.output


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


def test_a_read_only_target_is_one_line_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    """P01-P11: a folder pimpic may not write into (simulated: the temporary file is refused)."""
    out = tmp_path / "synth"

    def refuse(suffix: str = "", prefix: str = "", dir: str = "") -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}k2j4{suffix}")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", refuse)
        res = runner.invoke(app, ["synth", "--out", str(out), *SYNTH])
    assert_refused(res, f"error: {out / 'dataset.json'}: permission denied")
    res = runner.invoke(app, ["synth", "--out", str(out), *SYNTH])  # the retry needs no flag
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "no space left on the device"),
                                             (errno.EFBIG, "file too large")])
def test_a_full_disk_while_preparing_names_the_case_and_a_retry_finishes(
        tmp_path: Path, monkeypatch, code: int, words: str) -> None:
    """Q01-Q08: the write that fails names no file; the message names the case folder."""
    src, cache = tmp_path / "synth", tmp_path / "cache"
    assert runner.invoke(app, ["synth", "--out", str(src), *SYNTH]).exit_code == 0
    real, calls = np.save, []

    def full(fh: Any, array: Any, *a: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) > 2:  # the second case's image
            raise OSError(code, os.strerror(code))
        real(fh, array, *a, **kw)

    prep = ["prepare", str(src), "--out", str(cache), "--spacing", "4", "--workers", "1",
            "--no-progress"]
    with monkeypatch.context() as m:
        m.setattr(np, "save", full)
        res = runner.invoke(app, prep)
    assert_refused(res, f"error: {cache / 'cases' / 'pancreas_001'}: {words}")
    assert not _temporaries(cache) and not (cache / "cases" / "pancreas_001").exists()
    res = runner.invoke(app, prep)
    assert res.exit_code == 0, res.output
    assert len(Cache(cache).case_ids) == 3


def test_a_full_disk_at_a_checkpoint_leaves_the_previous_one(make_cache, tmp_path: Path,
                                                             monkeypatch) -> None:
    cache = make_cache(n_cases=4, shape=(20, 20, 18), labelled=False)
    run = tmp_path / "run"
    real, calls = torch.save, []

    def full(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) > 1:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full)
        res = runner.invoke(app, ["pretrain", str(cache), "--out", str(run), "--steps", "2",
                                  "--set", "checkpoint_every=1", *TINY_PRE])
    _one_error(res, f"error: {run / 'checkpoint.pt'}: no space left on the device")
    assert not _temporaries(run)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 1
    res = runner.invoke(app, ["pretrain", str(cache), "--out", str(run), "--resume",
                              "--no-progress"])
    assert res.exit_code == 0, res.output


def test_a_symlink_loop_in_a_dataset_is_one_line(tmp_path: Path) -> None:
    """B21."""
    src = tmp_path / "synth"
    assert runner.invoke(app, ["synth", "--out", str(src), *SYNTH]).exit_code == 0
    loop = src / "imagesTr" / "pancreas_001.nii.gz"
    loop.unlink()
    loop.symlink_to(loop)
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "c"), "--workers",
                              "1", "--no-progress"])
    assert_refused(res, f"{loop}: cannot be resolved", "symlink loop")


def test_running_out_of_memory_is_one_line_and_leaves_no_run_folder(make_cache, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """C16 (``--set width=100000``): torch's failed allocation, simulated."""
    from pimpic.pretraining import engine

    def huge(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 1080000000000 bytes.")

    cache = make_cache(n_cases=4, shape=(20, 20, 18), labelled=False)
    monkeypatch.setattr(engine, "_build_module", huge)
    run = tmp_path / "run"
    res = runner.invoke(app, ["pretrain", str(cache), "--out", str(run), "--steps", "2",
                              *TINY_PRE])
    _one_error(res, "error: out of memory (", "1080000000000 bytes", "smaller sizes (width")
    assert not run.exists()


def test_a_folder_given_as_a_split_file_is_one_line(tmp_path: Path) -> None:
    """G11: ``prepare --splits FOLDER`` (was an IsADirectoryError traceback)."""
    src = tmp_path / "synth"
    assert runner.invoke(app, ["synth", "--out", str(src), *SYNTH]).exit_code == 0
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "c"), "--splits",
                              str(tmp_path), "--no-progress"])
    assert_refused(res, f"error: {tmp_path}: is a folder, expected a file")
    assert not (tmp_path / "c").exists()


def test_a_run_stopped_before_its_first_checkpoint_restarts_with_the_same_command(
        make_cache, tmp_path: Path, monkeypatch) -> None:
    """A full disk at the first checkpoint: the retry needs no --overwrite (nothing to keep)."""
    cache = make_cache(n_cases=4, shape=(20, 20, 18), labelled=False)
    run = tmp_path / "run"
    command = ["pretrain", str(cache), "--out", str(run), "--steps", "2", *TINY_PRE]

    def full(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full)
        _one_error(runner.invoke(app, command), f"{run / 'checkpoint.pt'}: no space left")
    (run / "notes.txt").write_text("mine")  # but never over a user's file
    _one_error(runner.invoke(app, command), "run folder exists and is not empty")
    (run / "notes.txt").unlink()
    res = runner.invoke(app, command)
    assert res.exit_code == 0, res.output
    assert "stopped before its first checkpoint" in res.output
