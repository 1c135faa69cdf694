"""CLI commands that read finished runs: ``stats``, ``curves``, ``confusion``."""

from __future__ import annotations

from pathlib import Path

import typer

from pimpic.errors import friendly_errors


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""

    @app.command("stats")
    @friendly_errors
    def stats_cmd(
        results: Path | None = typer.Argument(
            None, help="An experiment folder (its results.csv and settings) or a results.csv."),
        pairing: str = typer.Option(
            "case", "--pairing", help="case: one pair per test case, each method's seeds "
            "averaged first (the report's); common-seeds: per case, averaged over the seeds "
            "both have; case-seed: one pair per test case and seed."),
        reference: str = typer.Option("random", "--reference",
                                      help="The method every other one is compared with."),
        metric: str = typer.Option("dice", "--metric", help="dice or hd95."),
        absent: str | None = typer.Option(
            None, "--absent", help="A structure absent from a case's ground truth: 'zero' "
            "scores Dice 0, 'nan' leaves it out (default: the experiment's, else zero)."),
        run: list[str] = typer.Option(
            [], "--run", help="NAME=RUN_FOLDER: an evaluated fine-tuning run made outside the "
            "grid, compared as method NAME (repeatable; one NAME for several seeds; split at "
            "the last '=')."),
        out: Path | None = typer.Option(None, "--out",
                                        help="Also write the table (Markdown) to this file."),
    ) -> None:
        """Paired Wilcoxon tests of every method against a reference per label fraction and
        structure, Holm-corrected: the report's stats.md, with a choice of pairing and metric."""
        from pimpic.errors import PimpicError
        from pimpic.io import atomic_open
        from pimpic.protocol.statistics import format_stats, paired_tests, read_comparison

        if absent not in (None, "zero", "nan"):
            raise PimpicError(f"--absent {absent!r}: choose 'zero' or 'nan'")
        runs = []
        for item in run:
            name, sep, folder = item.rpartition("=")  # a name may hold '=' (encoder_lr=0)
            if not sep or not name or not folder:
                raise PimpicError(f"--run {item!r}: expected NAME=RUN_FOLDER")
            runs.append((name, Path(folder)))
        if results is None and not runs:
            raise PimpicError("give an experiment folder, a results.csv or --run NAME=FOLDER")
        comparison = read_comparison(results, runs)
        if reference not in comparison.methods:
            raise PimpicError(f"--reference {reference!r}: no such method in "
                              f"{results or '--run'} ({', '.join(comparison.methods)})")
        tests = paired_tests(comparison.rows, reference, pairing=pairing, metric=metric,
                             methods=comparison.methods, fractions=comparison.fractions,
                             absent=absent or comparison.absent,
                             structures=comparison.structures)
        table = format_stats(tests, reference)
        typer.echo(table, nl=False)
        if out is not None:
            with atomic_open(out) as fh:
                fh.write(table)
            typer.echo(f"stats: {out}")

    @app.command("curves")
    @friendly_errors
    def curves_cmd(
        folders: list[Path] = typer.Argument(
            ..., help="Experiment folders (their runs) and/or pretraining or fine-tuning run "
            "folders."),
    ) -> None:
        """Have the training curves flattened? Pretraining: the loss over the last fifth of the
        logged steps against the fifth before. Fine-tuning: the kept and last epochs, the
        validation Dice loss and each class's Dice at the first, middle and last validation."""
        from pimpic.protocol.curves import format_curves, read_curves

        typer.echo(format_curves(*read_curves(folders)), nl=False)

    @app.command("confusion")
    @friendly_errors
    def confusion_cmd(
        runs: list[Path] = typer.Argument(..., help="Evaluated fine-tuning run folders."),
        split: str = typer.Option("test", "--split", help="The evaluation to read "
                                  "(RUN/eval-<split>/pred, written by `pimpic evaluate`)."),
        cache: Path | None = typer.Option(None, "--cache", help="The cache the predictions "
                                          "were made on (default: each run's)."),
    ) -> None:
        """Ground-truth class × predicted class: the share of each true class's voxels
        predicted as each class, summed over the evaluated cases."""
        from pimpic.segmentation.confusion import format_confusion, run_confusion

        for run in runs:
            counts, names = run_confusion(run, split, cache)
            typer.echo(f"{run}: share of each true class's {split} voxels predicted as (%)")
            typer.echo(format_confusion(counts, names), nl=False)
