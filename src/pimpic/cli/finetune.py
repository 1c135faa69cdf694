"""CLI commands of this stage: ``finetune``, ``evaluate``, ``predict``.

Heavy imports (torch, MONAI) happen inside the command bodies so ``pimpic --help`` is instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pimpic.errors import friendly_errors


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""

    @app.command("finetune")
    @friendly_errors
    def finetune_cmd(
        cache: Path = typer.Argument(..., help="Prepared cache (`pimpic prepare`)."),
        out: Path = typer.Option(..., "--out", "-o", help="Run folder to create."),
        fraction: int | None = typer.Option(
            None, "--fraction", help="Label fraction in percent (5, 10, 20, 50, 100)."),
        encoder: Path | None = typer.Option(
            None, "--encoder", help="Pretrained encoder.safetensors (omit: random init)."),
        seed: int | None = typer.Option(None, "--seed", help="Random seed."),
        allow: list[str] = typer.Option(
            [], "--allow", help="Accept a named encoder metadata mismatch (e.g. patch_size)."),
        allow_transductive: bool = typer.Option(
            False, "--allow-transductive", help="Accept an encoder pretrained on every cached "
            "case (pretrain --pool all: the test patients' images, never their labels); "
            "run.json records transductive: true."),
        config: Path | None = typer.Option(None, "--config", help="YAML FinetuneConfig."),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a config key: key=value (repeatable)."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run (its "
                                    "config.yaml is the base; caps such as max_epochs may grow)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Remove what an earlier "
                                       "fine-tuning run wrote into OUT and start over."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    ) -> None:
        """Fine-tune a segmentation network (pretrained or random encoder + new decoder)."""
        from pimpic.config import build_config
        from pimpic.errors import PimpicError
        from pimpic.segmentation.config import FinetuneConfig
        from pimpic.segmentation.finetune import finetune
        from pimpic.training.run_folder import saved_config

        flags = [f"{k}={v}" for k, v in (("fraction", fraction), ("seed", seed))
                 if v is not None]
        base = saved_config(out) if resume else None
        # explicit flags win over the YAML file and --set
        cfg = build_config(FinetuneConfig, config, [*set_, *flags], base=base)
        run = finetune(cache, out, cfg, encoder=encoder, allow=allow, resume=resume,
                       overwrite=overwrite, progress=progress,
                       allow_transductive=allow_transductive)
        model = run / "model.safetensors"
        if not model.is_file():
            raise PimpicError(f"{run}: training stopped without keeping a model (no epoch gave "
                              "a finite validation score); see metrics.jsonl")
        typer.echo(f"model: {model}")

    @app.command("evaluate")
    @friendly_errors
    def evaluate_cmd(
        run: Path = typer.Argument(..., help="Fine-tuning run folder."),
        split: str = typer.Option("test", "--split", help="train, val or test."),
        cache: Path | None = typer.Option(None, "--cache", help="Cache (default: the run's)."),
        data: Path | None = typer.Option(
            None, "--data", help="Score every labelled case of this dataset folder instead "
            "(MSD, KiTS19, nnU-Net raw; preprocessed with the model's settings, labels must be "
            "the model's); writes RUN/eval-data-<name>/."),
        layout: str | None = typer.Option(None, "--layout", help="Force --data's layout: msd, "
                                          "kits19 or nnunet."),
        lcc: bool = typer.Option(False, "--lcc", help="Keep the largest connected component."),
        original_space: bool = typer.Option(
            False, "--original-space", help="Metrics on the original image grid."),
        absent: str = typer.Option(
            "zero", "--absent", help="A structure absent from a case's ground truth: 'zero' "
            "scores Dice 0 (released rule), 'nan' leaves it out of the mean."),
        unfinished: bool = typer.Option(
            False, "--unfinished", help="Evaluate a run that has not finished (killed before "
            "its stopping rule): its best model so far, marked as such."),
        allow_transductive: bool = typer.Option(
            False, "--allow-transductive", help="Accept a model whose encoder was pretrained "
            "on every cached case (pretrain --pool all: these patients' images, never their "
            "labels); the summary records transductive: true."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    ) -> None:
        """Dice and HD95 per structure on held-out cases; writes RUN/eval-<split>/ (or, with
        --data, RUN/eval-data-<name>/)."""
        from pimpic.errors import PimpicError
        from pimpic.segmentation.evaluate import describe, evaluate

        if absent not in ("zero", "nan"):
            raise PimpicError(f"--absent {absent!r}: choose 'zero' or 'nan'")
        if data is not None and cache is not None:
            raise PimpicError("--data and --cache: give one (a dataset folder or a cache)")
        summary = evaluate(run, split=split, cache=cache, data=data, layout=layout, lcc=lcc,
                           original_space=original_space, device=device, progress=progress,
                           absent=absent, unfinished=unfinished,
                           allow_transductive=allow_transductive)
        typer.echo(describe(summary))

    @app.command("predict")
    @friendly_errors
    def predict_cmd(
        images: list[Path] = typer.Argument(..., help="NIfTI images and/or folders of them."),
        model: Path = typer.Option(..., "--model", "-m", help="Fine-tuning run folder."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder for <name>_seg.nii.gz."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Write into an existing folder."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    ) -> None:
        """Segment new scans; masks have the input's shape and affine."""
        from pimpic.segmentation.predict import predict

        written = predict(images, model, out, overwrite=overwrite, device=device,
                          progress=progress)
        typer.echo(f"wrote {len(written)} mask(s) to {out}")
