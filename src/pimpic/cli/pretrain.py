"""CLI commands of the pretraining stage: ``pretrain``, ``bench pretrain-step``, ``bench loader``.

``pimpic pretrain`` also runs under ``torchrun`` (it reads ``WORLD_SIZE``/``RANK`` itself); only
rank 0 prints.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from pimpic.errors import PimpicError, friendly_errors


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this stage's commands to ``app`` and ``bench_app``."""

    @app.command("pretrain")
    @friendly_errors
    def pretrain_cmd(
        cache: Path = typer.Argument(..., help="A prepared cache (pimpic prepare), or an nnU-Net "
                                     "preprocessed configuration folder."),
        out: Path = typer.Option(..., "--out", help="Run folder to create (or resume)."),
        method: str | None = typer.Option(None, "--method",
                                          help="A registered method (`pimpic methods` lists "
                                          "them); default pimpic."),
        config: Path | None = typer.Option(None, "--config", help="PretrainConfig YAML."),
        set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. lr=1e-4 or "
                                       "sampler.intensity_aug=true (repeatable)."),
        resume: bool = typer.Option(False, "--resume", help="Continue RUN from its checkpoint "
                                    "(its config.yaml is the base; --steps may grow)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Remove what an earlier "
                                       "pretraining run wrote into RUN and start over."),
        steps: int | None = typer.Option(None, "--steps", help="Optimiser steps (paper: 20000)."),
        pool: str = typer.Option("train", "--pool", help="Which cached cases: train (the "
                                 "training split), train+unlabelled (and the unlabelled cases "
                                 "of prepare --unlabelled; no evaluation patient) or all (every "
                                 "case, the validation and test images too: transductive, "
                                 "fine-tune and evaluate then need --allow-transductive)."),
        device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
        progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                             help="Progress bar (default: when a terminal)."),
    ) -> None:
        """Pretrain a 3D U-Net encoder on the cache's training images (or --pool) and write
        RUN/encoder.safetensors. Multi-GPU: torchrun --nproc_per_node=G $(which pimpic)
        pretrain ..."""
        from pimpic.config import build_config
        from pimpic.data.splits import POOLS
        from pimpic.pretraining.config import PretrainConfig
        from pimpic.pretraining.engine import pretrain
        from pimpic.training.run_folder import saved_config

        if pool not in POOLS:
            raise PimpicError(f"--pool {pool!r}: choose one of {', '.join(POOLS)}")
        base = saved_config(out) if resume else None
        flags = [f"{k}={v}" for k, v in (("method", method), ("steps", steps),
                                         ("device", device)) if v is not None]
        cfg = build_config(PretrainConfig, config, [*set_, *flags], base=base)
        show = sys.stderr.isatty() if progress is None else progress
        encoder = pretrain(cache, out, cfg, resume=resume, overwrite=overwrite, progress=show,
                           pool=pool)
        if _is_main():
            typer.echo(f"encoder: {encoder}")

    @bench_app.command("pretrain-step")
    @friendly_errors
    def bench_step_cmd(
        patch_size: str = typer.Option("32", "--patch-size", help="Patch edge (voxels), three "
                                       "edges (16,32,32) or plan (the nnU-Net plan's patch)."),
        width: int = typer.Option(8, "--width", help="Encoder base width K."),
        patches: int = typer.Option(16, "--patches", help="Patches per step N."),
        steps: int = typer.Option(6, "--steps", help="Timed steps (after one warm-up)."),
        depth: int = typer.Option(5, "--depth", help="Encoder blocks."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
        backbone: str = typer.Option("unet", "--backbone", help="unet (the paper's) or nnunet "
                                     "(--plans, default a small 3d_fullres-like plan of the "
                                     "same widths)."),
        plans: str | None = typer.Option(None, "--plans", help="nnU-Net plans file "
                                         "(--backbone nnunet)."),
        configuration: str = typer.Option("3d_fullres", "--configuration",
                                          help="Plans configuration (--backbone nnunet)."),
    ) -> None:
        """One full PiMPiC training step (forward, PiM + PiC, backward, Adam) on random data with
        the reference sampler's boxes; prints one JSON line (median_step_s, patches_per_s,
        peak_rss_mb, ...)."""
        from pimpic.benchmarks.pretrain_step import run

        if backbone not in ("unet", "nnunet"):
            raise PimpicError(f"--backbone {backbone!r}: choose unet or nnunet")
        result = run(patch_size=patch_size, width=width, patches=patches, steps=steps,
                     depth=depth, device=device, backbone=backbone, plans=plans,
                     configuration=configuration)
        typer.echo(json.dumps(result))

    @bench_app.command("loader")
    @friendly_errors
    def bench_loader_cmd(
        cache: Path = typer.Argument(..., help="A prepared cache."),
        patch_size: int = typer.Option(64, "--patch-size", help="Patch edge (voxels)."),
        patches: int = typer.Option(32, "--patches", help="Patches per volume N."),
        seconds: float = typer.Option(10.0, "--seconds", help="Measuring time."),
        workers: int = typer.Option(2, "--workers", help="DataLoader worker processes."),
        volumes: int = typer.Option(1, "--volumes", help="Volumes per batch V."),
        method: str = typer.Option("pimpic", "--method", help="Whose sampler to use."),
    ) -> None:
        """Patches per second read from the cache through the pretraining loader (one JSON
        line)."""
        from pimpic.benchmarks.loader import run

        result = run(cache, patch_size=patch_size, patches=patches, seconds=seconds,
                     workers=workers, volumes=volumes, method=method)
        typer.echo(json.dumps(result))
