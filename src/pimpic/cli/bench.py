"""CLI command ``bench finetune-step``: where fine-tuning spends its time.

(``bench pretrain-step`` and ``bench loader`` live with the pretraining commands.)
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pimpic.errors import friendly_errors


def register(bench_app: typer.Typer) -> None:
    """Add the fine-tuning benchmark to ``bench_app``."""

    @bench_app.command("finetune-step")
    @friendly_errors
    def bench_finetune_cmd(
        cache: Path = typer.Argument(..., help="A prepared cache with train and val cases."),
        width: int = typer.Option(4, "--width", help="Encoder base width K (demo: 4)."),
        depth: int = typer.Option(4, "--depth", help="Encoder depth (demo: 4)."),
        patch_size: int = typer.Option(32, "--patch-size", help="Patch edge (demo: 32)."),
        batch_size: int = typer.Option(2, "--batch-size", help="Volumes per step."),
        samples_per_volume: int = typer.Option(2, "--samples-per-volume",
                                               help="Crops per volume."),
        repeats: int = typer.Option(5, "--repeats", help="Timed repeats (median)."),
        as_json: bool = typer.Option(False, "--json", help="One JSON line instead of a table."),
    ) -> None:
        """Time one fine-tuning batch, training step (fp32 / channels-last / bf16) and
        sliding-window validation (previous vs released settings) on CPU."""
        from pimpic.benchmarks.finetune_step import format_result, run

        result = run(cache, width=width, depth=depth, patch_size=patch_size,
                     batch_size=batch_size, samples_per_volume=samples_per_volume,
                     repeats=repeats)
        typer.echo(json.dumps(result) if as_json else format_result(result))
