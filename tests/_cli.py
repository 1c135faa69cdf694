"""What every refused command must print: exit code 2 and one line that says why."""

from __future__ import annotations

from typing import Any


def assert_refused(res: Any, *messages: str) -> None:
    """``res`` (a ``CliRunner`` result) exited with 2 and printed one line containing each of
    ``messages``."""
    assert res.exit_code == 2, res.output
    for message in messages:
        assert message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
