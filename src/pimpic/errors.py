"""User-facing errors.

Every failure a user can cause (bad data, bad config, a run folder that exists, ...) is raised
as :class:`PimpicError` with a one-line message naming the file or case and the problem. The
CLI turns it into ``error: <message>`` on stderr and exit code 2 — never a bare traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class PimpicError(Exception):
    """An expected, user-actionable failure. ``str(err)`` is a complete one-line message."""


def friendly_errors(fn: F) -> F:
    """Decorate a CLI command: PimpicError → ``error: ...`` on stderr, exit 2; Ctrl-C → exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import typer

        try:
            return fn(*args, **kwargs)
        except PimpicError as err:
            msg = " ".join(str(err).split("\n"))
            print(f"error: {msg}", file=sys.stderr)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            print("interrupted: finished work is kept; rerun the same command to resume",
                  file=sys.stderr)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]
