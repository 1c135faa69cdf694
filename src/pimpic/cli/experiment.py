"""CLI commands of this stage (registered by :mod:`pimpic.cli`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, visualize_app: typer.Typer) -> None:
    """Add this stage's commands to ``app`` and ``visualize_app``."""
