"""Atomic writes: a file appears complete or not at all, and a failed write leaves no trace."""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import subprocess
from pathlib import Path

import pytest

from _lock import held_elsewhere
from pimpic.errors import PimpicError
from pimpic.io import (
    acquire_lock,
    atomic_open,
    atomic_path,
    exclusive_lock,
    read_json,
    save_safetensors,
    write_json,
)


def test_atomic_path_replaces_the_file_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.txt.")
        tmp.write_text("new")
        assert not target.exists()  # nothing at the final name while writing
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "a.txt") as fh:
            fh.write("x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_json_round_trip_and_one_line_errors(tmp_path: Path) -> None:
    from pimpic.errors import PimpicError

    write_json(tmp_path / "a.json", {"x": [1, 2], "p": tmp_path})
    assert read_json(tmp_path / "a.json") == {"x": [1, 2], "p": str(tmp_path)}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PimpicError, match=r"bad\.json: malformed JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(PimpicError, match=r"missing\.json: file not found"):
        read_json(tmp_path / "missing.json")


def test_safetensors_header_is_canonical(tmp_path: Path) -> None:
    import torch

    state = {"w": torch.arange(4.0)}
    save_safetensors(state, tmp_path / "a.safetensors", {"b": "2", "a": "1"})
    save_safetensors(state, tmp_path / "b.safetensors", {"a": "1", "b": "2"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


# ------------------------------------------------------------------------------------ locks


def test_a_lock_held_by_another_process_is_refused_naming_it(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with held_elsewhere(lock, "`pimpic prepare`") as pid, pytest.raises(PimpicError) as err:
        acquire_lock(lock, "`pimpic prepare`")
    assert f"x.lock: locked by another `pimpic prepare` (pid {pid}, still running)" in str(err)
    acquire_lock(lock, "`pimpic prepare`").release()  # free once the holder is gone
    assert lock.read_text() == ""  # released, not died holding it: nothing to report next time


def test_a_forked_child_does_not_inherit_the_lock(tmp_path: Path) -> None:
    """S09: a `prepare` killed with its workers still alive must not leave them holding it."""
    lock = tmp_path / "x.lock"
    ctx = multiprocessing.get_context("fork")
    with exclusive_lock(lock, "parent"):
        done = ctx.Event()
        child = ctx.Process(target=done.wait, args=(30,))  # a worker, forked under the lock
        child.start()
    try:
        with held_elsewhere(lock):  # another process can take it while the worker lives
            pass
    finally:
        done.set()
        child.join(30)


def test_a_lock_left_by_a_dead_process_is_taken_over_naming_it(tmp_path: Path,
                                                               caplog) -> None:
    """S09b: the recorded holder is dead: say so, and take the lock."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "x.lock"
    lock.write_text(f"{dead.pid}\n")
    with caplog.at_level(logging.WARNING, logger="pimpic"):
        held = acquire_lock(lock, "`pimpic prepare`")
    assert f"last holder (pid {dead.pid}) is dead" in caplog.text
    assert lock.read_text() == f"{os.getpid()}\n"
    held.release()
