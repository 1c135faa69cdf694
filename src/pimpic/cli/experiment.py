"""CLI commands of the protocol stage: ``experiment`` and ``visualize embeddings``."""

from __future__ import annotations

from pathlib import Path

import typer

from pimpic.errors import friendly_errors


def register(app: typer.Typer, visualize_app: typer.Typer) -> None:
    """Add this stage's commands to ``app`` and ``visualize_app``."""

    @app.command("experiment")
    @friendly_errors
    def experiment_cmd(
        config: Path = typer.Argument(..., help="Experiment YAML (see examples/)."),
        out: Path = typer.Option(..., "--out", help="Experiment folder (rerun to resume)."),
        set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. "
                                       "pretrain.steps=100 or methods=random,pimpic."),
        progress: bool = typer.Option(True, "--progress/--no-progress",
                                      help="Show per-stage progress bars."),
        share: bool = typer.Option(False, "--share", help="Work on the grid beside other "
                                   "--share invocations on the same --out (one per core or "
                                   "machine): each takes the next free stage."),
    ) -> None:
        """Pretrain every method once, fine-tune every (method, fraction, seed), evaluate on the
        test split, and write results.csv, table.md, stats.md, figures/ and report.md.
        Resumable: a rerun skips every finished stage. With --share, several invocations
        share one grid, each running the stages the others have not claimed."""
        from pimpic.protocol.experiment import run_experiment
        from pimpic.protocol.grid import load_experiment_config

        cfg = load_experiment_config(config, set_)
        exp = run_experiment(cfg, out, progress=progress, share=share)
        typer.echo((exp / "table.md").read_text())
        typer.echo(f"report: {exp / 'report.md'}")

    @visualize_app.command("embeddings")
    @friendly_errors
    def embeddings_cmd(
        run: Path = typer.Argument(..., help="A pretraining run folder (pim or pimpic)."),
        case: str = typer.Option(..., "--case", help="Case id in the cache."),
        cache: Path | None = typer.Option(None, "--cache",
                                          help="Cache folder (default: the run's)."),
        out: Path | None = typer.Option(None, "--out", help="Output folder "
                                        "(default: RUN/figures)."),
        ref: str | None = typer.Option(None, "--ref", help="Reference patch centre x,y,z "
                                       "(voxels; default: the volume centre)."),
        stride: int | None = typer.Option(None, "--stride", help="Grid stride in voxels "
                                          "(default: patch size / 2)."),
        pairs: int = typer.Option(256, "--pairs", help="Patch pairs for the overlap plot."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    ) -> None:
        """Paper Fig. 3 A–D: cosine similarity of a reference patch's PiM embedding to all
        patches (axial/coronal/sagittal), a PCA of the embeddings coloured by distance to the
        reference, and predicted vs true overlap for sampled patch pairs."""
        from pimpic.errors import PimpicError
        from pimpic.protocol.visualize import embedding_figures

        ref_xyz = None
        if ref is not None:
            try:
                x, y, z = (int(v) for v in ref.split(","))
            except ValueError:
                raise PimpicError(f"--ref {ref!r}: expected three integers x,y,z") from None
            ref_xyz = (x, y, z)
        paths = embedding_figures(run, case, cache=cache, out=out, ref=ref_xyz, stride=stride,
                                  n_pairs=pairs, device=device)
        for p in paths.values():
            typer.echo(str(p))
