"""User-facing errors.

Every failure a user can cause (bad data, bad config, a run folder that exists, ...) is raised
as :class:`PimpicError` with a one-line message naming the file or case and the problem. The
CLI turns it into ``error: <message>`` on stderr and exit code 2 — never a bare traceback. So
does it with what the operating system refuses (permission, a full disk, a file-size limit:
:func:`os_error_message`, which names the path) and with a failed allocation.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class PimpicError(Exception):
    """An expected, user-actionable failure. ``str(err)`` is a complete one-line message."""


#: what the operating system refused, in words a user can act on: a file or folder without
#: the permission, a full disk, a file-size limit, a path that loops or names the wrong kind
OS_PROBLEMS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device; free some space and rerun the same command",
    errno.EDQUOT: "disk quota exceeded; free some space and rerun the same command",
    errno.EFBIG: "file too large (a file-size limit or the file system's); write elsewhere",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop)",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "not a folder (a file stands where a folder is needed)",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_message(err: OSError) -> str | None:
    """``<path>: <problem>`` for an :data:`OS_PROBLEMS` error, else None (a bug: traceback)."""
    problem = OS_PROBLEMS.get(err.errno) if err.errno is not None else None
    if problem is None:
        return None
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    return f"{' -> '.join(paths) or 'a file'}: {problem}"


def memory_error_message(err: BaseException) -> str | None:
    """One line for a failed allocation (NumPy's MemoryError, torch's CPU or CUDA
    out-of-memory RuntimeError), else None."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not isinstance(err, MemoryError) and not (
            isinstance(err, RuntimeError) and ("can't allocate memory" in text
                                               or "out of memory" in text.lower())):
        return None
    return (f"out of memory ({text or 'allocation failed'}); use smaller sizes (width, "
            "patch_size, batch_size, --shape) or a machine with more memory")


def friendly_errors(fn: F) -> F:
    """Decorate a CLI command: PimpicError, an :data:`OS_PROBLEMS` error and running out of
    memory → ``error: ...`` (one line) on stderr, exit 2; Ctrl-C → exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import typer

        message: str | None = None
        try:
            return fn(*args, **kwargs)
        except PimpicError as err:
            message = str(err)
        except OSError as err:
            message = os_error_message(err)
            if message is None:
                raise
        except (MemoryError, RuntimeError) as err:
            message = memory_error_message(err)
            if message is None:
                raise
        except KeyboardInterrupt:
            print("interrupted: finished work is kept; rerun the same command to resume",
                  file=sys.stderr)
            raise typer.Exit(code=130) from None
        # outside the handler the failure and its frames are gone, so what they held is
        # released (a run folder's lock, a folder made only for it) before the exit
        print("error: " + " ".join(message.split("\n")), file=sys.stderr)
        raise typer.Exit(code=2)

    return wrapper  # type: ignore[return-value]

