"""``pimpic demo`` (registered by :mod:`pimpic.cli`)."""

from __future__ import annotations

from pathlib import Path

import typer

from pimpic.errors import friendly_errors


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @app.command()
    @friendly_errors
    def demo(
        out: Path = typer.Option(Path("pimpic-demo"), "--out", help="Folder for everything."),
        quick: bool = typer.Option(False, "--quick", help="A smoke run: fewer cases and steps."),
        task: str = typer.Option("kidney", "--task", help="kidney (default) or pancreas."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        cases: int = typer.Option(None, "--cases", help="Override the number of cases."),
        seed: int = typer.Option(0, "--seed", help="Cohort and split seed."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    ) -> None:
        """Synthetic CT → prepare → pretrain PiMPiC → fine-tune (random vs pimpic) → Dice table.

        Resumable: rerun the same command after an interruption.
        """
        from pimpic.protocol.demo import run_demo

        if task not in ("pancreas", "kidney"):
            from pimpic.errors import PimpicError

            raise PimpicError(f"--task {task!r}: choose pancreas or kidney")
        run_demo(out, quick=quick, task=task, device=device, seed=seed, cases=cases,
                 progress=not no_progress)
