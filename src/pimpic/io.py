"""Small I/O helpers: atomic and durable writes (never a half-written artifact), JSON, file
fingerprints and an exclusive lock file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from pimpic.errors import PimpicError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` atomically.

    The temporary file lives in the same folder so ``os.replace`` is a rename, not a copy. On
    error the temporary file is removed and ``path`` is untouched, so a retry after a full disk
    or a permission error needs no cleaning up; such an error names ``path`` (not the
    temporary file), for :func:`pimpic.errors.os_error_message`.
    """
    path = Path(path)
    with naming(path, path.parent / f".{path.name}."):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming(path, tmp_path):
            yield tmp_path
            # mkstemp creates 0600 files; artifacts get the usual umask-derived mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, path)
            fsync_dir(path.parent)  # the rename itself must survive a power cut
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def naming(path: str | os.PathLike[str], *aliases: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (a ``write`` on a full disk), or a file whose
    name starts with one of ``aliases`` (a temporary file), as the same error naming ``path``."""
    try:
        yield
    except OSError as err:
        if err.filename is not None and not str(err.filename).startswith(
                tuple(str(a) for a in aliases)):
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from err


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """``open`` for writing whose result appears at ``path`` only once fully written."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON; a missing or malformed file is a :class:`PimpicError` naming the file."""
    path = Path(path)
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise PimpicError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise PimpicError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None


def save_npy(path: str | os.PathLike[str], array: Any) -> None:
    """``np.save`` whose bytes are on disk (fsynced) when it returns."""
    import numpy as np

    with naming(path), open(path, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new, renamed, removed names) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot fsync a folder; nothing more to do there
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a whole file, hex (≈1 GB/s from the page cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of a file; the stat is taken before the hash, so a
    file written while it is hashed looks changed next time, never unchanged. A device, FIFO
    or socket (e.g. a link to ``/dev/zero``, which would be read forever) is an error."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise PimpicError(f"{path}: not a regular file (a device, FIFO, socket or folder)")
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_digest(path)}


class HeldLock:
    """An exclusive lock on a file, held by this process until :meth:`release` (or until the
    object is collected, or the process exits: the kernel drops it then, however it ends).

    The lock is a POSIX record lock (``fcntl``), not a BSD ``flock``: a child forked while it
    is held (a ``prepare`` worker) does not inherit it, so a killed parent never leaves its
    workers holding the lock. The file records the holder's pid, to name it in a refusal.
    The price of POSIX locks: closing *any* descriptor of the lock file drops this process's
    lock, so nothing but this class opens it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._finalizer = weakref.finalize(self, _unlock_fd, fd, os.getpid())

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it); the file is left in place."""
        self._finalizer()


class LockHeld(PimpicError):
    """:func:`acquire_lock` found the lock held by another live process."""


def acquire_lock(path: str | os.PathLike[str], what: str) -> HeldLock:
    """Take the exclusive lock on ``path`` (created) without waiting.

    Args:
        path: the lock file; it is left in place (removing a lock file races with its users).
        what: who takes the lock, for the message a second taker gets (``"`pimpic prepare`"``).

    Raises:
        LockHeld: another process holds the lock (the message names the lock file and that
            process's id).
        PimpicError: the lock file keeps being replaced.

    A lock left by a process that died is free (the kernel released it); taking it over is
    logged, naming the dead holder.
    """
    import fcntl

    path = Path(path)
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            pid = _lock_holder(fd) or _recorded_pid(fd)
            os.close(fd)
            who = f" (pid {pid}, still running)" if pid else ""
            raise LockHeld(f"{path}: locked by another {what}{who} working on the same "
                              "folder; wait for it to finish (or stop it), or use another "
                              "folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the file was replaced between open and lock: lock the one there now
            os.close(fd)
            continue
        previous = _recorded_pid(fd)
        if previous and previous != os.getpid() and not _alive(previous):
            log.warning("%s: the lock's last holder (pid %d) is dead; taking the lock over",
                        path, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return HeldLock(path, fd)
    raise PimpicError(f"{path}: the lock file keeps being replaced; is another program "
                      "removing it?")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold :func:`acquire_lock`'s lock on ``path`` for the ``with`` block."""
    lock = acquire_lock(path, what)
    try:
        yield
    finally:
        lock.release()


def _unlock_fd(fd: int, owner: int) -> None:
    """Forget the holder's pid (a pid left in the file means its holder died holding it), then
    close: closing releases the lock. A forked child (a data-loading worker) only closes its
    copy of the descriptor: the lock and the record are its parent's."""
    try:
        if os.getpid() == owner:
            os.ftruncate(fd, 0)
    except OSError:
        pass  # read-only or full file system: the pid stays, the lock is released all the same
    finally:
        os.close(fd)


def _recorded_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _lock_holder(fd: int) -> int | None:
    """The pid holding a conflicting lock on ``fd``'s file, as the kernel reports it (Linux's
    ``struct flock`` layout; None elsewhere or when it cannot be asked)."""
    import fcntl
    import struct
    import sys

    if not sys.platform.startswith("linux"):
        return None
    layout = "hhqqi"  # l_type, l_whence, l_start, l_len, l_pid (64-bit off_t)
    query = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0).ljust(32, b"\0")
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        l_type, _, _, _, pid = struct.unpack(layout, answer[:struct.calcsize(layout)])
    except (OSError, struct.error):
        return None
    return pid if l_type != fcntl.F_UNLCK and pid > 0 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line (used for ``metrics.jsonl``; a torn last line is tolerated on read)."""
    with naming(path), open(path, "a") as fh:
        fh.write(json.dumps(obj, default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """Read a JSON-lines file, skipping a torn trailing line left by a killed process."""
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_safetensors(state: Mapping[str, Any], path: str | os.PathLike[str],
                     metadata: Mapping[str, str]) -> None:
    """Write ``state`` (name → tensor) as safetensors with string ``metadata``, atomically and
    reproducibly: equal inputs give byte-identical files.

    The safetensors library stores ``__metadata__`` in a hash map, so two saves of the same
    tensors can order its keys differently; the JSON header is rewritten here with sorted keys,
    padded with spaces to its original length (the format's own padding), which every reader
    accepts.
    """
    from safetensors.torch import save

    blob = bytearray(save(dict(state), metadata=dict(metadata)))
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(canonical) > n:  # cannot happen for the same content; keep the library's bytes
        canonical = bytes(blob[8:8 + n])
    blob[8:8 + n] = canonical.ljust(n, b" ")
    with atomic_open(path, "wb") as fh:
        fh.write(blob)
