"""Hold a lock file from another process, as a concurrent ``pimpic`` command would (a POSIX
record lock is per process: this process could always take its own lock again)."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pimpic.errors import PimpicError
from pimpic.io import acquire_lock, exclusive_lock


def _hold(path: str, what: str, ready: Any, done: Any) -> None:
    with exclusive_lock(path, what):
        ready.set()
        done.wait(60)


@contextlib.contextmanager
def held_elsewhere(path: str | Path, what: str = "test") -> Iterator[int]:
    """Hold the lock on ``path`` in a child process for the ``with`` block; yields its pid."""
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(path), what, ready, done))
    child.start()
    try:
        assert ready.wait(30), "the child did not take the lock"
        assert child.pid is not None
        yield child.pid
    finally:
        done.set()
        child.join(30)


def _try(path: str, queue: Any) -> None:
    try:
        acquire_lock(path, "test").release()
        queue.put(None)
    except PimpicError as err:
        queue.put(str(err))


def refusal_elsewhere(path: str | Path) -> str | None:
    """Try to take the lock on ``path`` from a child process: its refusal, or None."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_try, args=(str(path), queue))
    child.start()
    answer: str | None = queue.get(timeout=30)
    child.join(30)
    return answer
