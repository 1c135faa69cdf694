"""CLI commands of the data stage: ``synth`` and ``prepare`` (registered by :mod:`pimpic.cli`)."""

from __future__ import annotations

from pathlib import Path

import typer

from pimpic.errors import PimpicError, friendly_errors


def _floats(text: str | None, n: tuple[int, ...], what: str) -> tuple[float, ...] | None:
    """Parse ``"1.5"`` or ``"1,1,2.5"``; a single value is repeated to the first allowed length."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise PimpicError(f"{what}: cannot parse {text!r} as numbers") from None
    if len(values) == 1 and 1 not in n:
        values = values * n[0]
    if len(values) not in n:
        raise PimpicError(f"{what}: expected {' or '.join(map(str, n))} values, got {text!r}")
    return values


def register(app: typer.Typer) -> None:
    """Add ``synth`` and ``prepare`` to ``app``."""

    @app.command()
    @friendly_errors
    def synth(
        out: Path = typer.Option(..., "--out", help="Output folder (MSD layout)."),
        cases: int = typer.Option(12, "--cases", help="Number of cases."),
        task: str = typer.Option("pancreas", "--task", help="Target organ: pancreas or kidney."),
        seed: int = typer.Option(0, "--seed", help="Cohort seed (case i uses (seed, i))."),
        shape: str = typer.Option(None, "--shape", help="Voxels X,Y,Z (default: 180×180×120 mm)."),
        spacing: str = typer.Option("0.8,0.8,2.5", "--spacing",
                                    help="Voxel size in mm, a,b,c (nominal with 'realistic')."),
        variability: str = typer.Option(
            "realistic", "--variability",
            help="How much cases differ. 'realistic': contrast phase (none/arterial/portal-"
                 "venous) and strength, oral contrast, habitus and fat, field of view, slice "
                 "thickness 1.25-5 mm, patient shift/rotation, organ size/position, tumour "
                 "size/kind/contrast, kernel, noise, streak and motion artefacts vary per case. "
                 "'low': the original uniform cohort (one phase, fixed grid, small tumours)."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Write a synthetic abdominal CT cohort (a stand-in for real data)."""
        import time

        from pimpic.data.synthetic import generate_cohort

        sp = _floats(spacing, (3,), "--spacing")
        sh = _floats(shape, (3,), "--shape")
        t0 = time.perf_counter()
        generate_cohort(out, cases, task=task, seed=seed,
                        shape=tuple(int(s) for s in sh) if sh else None,
                        spacing=sp or (0.8, 0.8, 2.5), progress=progress,
                        variability=variability)
        typer.echo(f"synth: {cases} {task} case(s) in {out} (MSD layout, dataset.json) "
                   f"in {time.perf_counter() - t0:.1f} s")

    @app.command()
    @friendly_errors
    def prepare(
        src: Path = typer.Argument(..., help="Dataset folder (MSD, KiTS19, nnU-Net raw, NIfTI)."),
        out: Path = typer.Option(..., "--out", help="Cache folder."),
        layout: str = typer.Option(None, "--layout",
                                   help="Force the layout: msd, kits19, nnunet or folder."),
        spacing: str = typer.Option("1.5", "--spacing", help="Output spacing mm: s or a,b,c."),
        window: str = typer.Option("-200,400", "--window", help="HU window low,high → [0, 1]."),
        crop_foreground: bool = typer.Option(False, "--crop-foreground/--no-crop-foreground",
                                             help="Crop each case to the body."),
        dtype: str = typer.Option("float16", "--dtype", help="Image dtype: float16 or float32."),
        workers: int = typer.Option(2, "--workers", help="Worker processes."),
        seed: int = typer.Option(None, "--seed", help="Seed of a new split (default 0; a "
                                 "saved split keeps its own)."),
        splits: Path = typer.Option(None, "--splits", help="Use this split file: pimpic's "
                                    "train/val/test lists or the released validation/test/"
                                    "train_<p>_percent format."),
        resplit: bool = typer.Option(False, "--resplit",
                                     help="Recompute the cache's split (existing cases may move "
                                     "between train/val/test)."),
        skip_bad: bool = typer.Option(False, "--skip-bad",
                                      help="Skip bad cases (listed at the end), don't stop."),
        unlabelled: list[Path] = typer.Option(
            [], "--unlabelled", help="A folder of NIfTI images to cache beside SRC's cases "
            "without labels (ids from the file names; repeatable): listed as the split's "
            "'unlabelled', for pretraining (pretrain --pool train+unlabelled or all)."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Preprocess a dataset into a cache: RAS, resample, HU window, split (resumable).

        Cases whose input files changed since they were cached are redone. The split
        (splits.json; sizes int(0.7 n) / int(0.1 n) / rest) is written once and then kept: a
        rerun with new or missing cases, another --seed or another --splits file is refused
        until you pass --resplit, which recomputes it. Unlabelled images (--unlabelled) only
        join the split's 'unlabelled' list: train/val/test stay as without them.
        """
        from pimpic.data.prepare import prepare as run_prepare
        from pimpic.data.preprocess import Settings

        sp = _floats(spacing, (3,), "--spacing")
        win = _floats(window, (2,), "--window")
        settings = Settings(spacing=sp, window=win, crop_foreground=crop_foreground,  # type: ignore[arg-type]
                            dtype=dtype)
        report = run_prepare(src, out, settings=settings, layout=layout, workers=workers,
                             skip_bad=skip_bad, seed=seed, splits_file=splits, resplit=resplit,
                             progress=progress, unlabelled=unlabelled)
        n_ok = report["n_cases"] - len(report["bad"])
        typer.echo(f"prepare: {report['layout']} dataset {src} → {out}: {n_ok}/{report['n_cases']} "
                   f"case(s) cached ({report['processed']} processed, {report['skipped']} already "
                   f"done) in {report['seconds']:.1f} s")
        if report["labels"]:
            typer.echo(f"labels: {report['labels']}")
        if report["redone"]:
            typer.echo(f"redone {len(report['redone'])} cached case(s) whose inputs changed: "
                       + ", ".join(f"{k} ({v})" for k, v in report["redone"].items()))
        sizes = report["splits"]
        if sizes:
            how = {"kept": "kept", "updated": "kept, unlabelled cases added", "new": "new",
                   "recomputed": "recomputed (--resplit)"}
            extra = f", unlabelled {sizes['unlabelled']}" if "unlabelled" in sizes else ""
            typer.echo(f"splits ({how[report['split_status']]}, {report['split_digest']}): "
                       f"train {sizes['train']}, val {sizes['val']}, test {sizes['test']}"
                       f"{extra} → {Path(out) / 'splits.json'}")
        else:
            typer.echo("splits: too few cases for a train/val/test split (need 3)")
        for b in report["bad"]:
            typer.echo(f"skipped bad case: {b['error']}", err=True)
