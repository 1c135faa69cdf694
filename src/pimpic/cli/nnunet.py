"""CLI command ``export nnunet``: a pretraining run → an nnU-Net ``-pretrained_weights`` file."""

from __future__ import annotations

from pathlib import Path

import typer

from pimpic.errors import friendly_errors


def register(export_app: typer.Typer) -> None:
    """Add the nnU-Net export to ``export_app``."""

    @export_app.command("nnunet")
    @friendly_errors
    def export_nnunet_cmd(
        run: Path = typer.Argument(..., help="A finished pretraining run folder."),
        plans: Path = typer.Option(..., "--plans", help="nnU-Net plans file, e.g. "
                                   "nnUNet_preprocessed/Dataset001_X/nnUNetPlans.json."),
        configuration: str = typer.Option("3d_fullres", "--configuration",
                                          help="The plans configuration to fine-tune."),
        out: Path = typer.Option(..., "--out", help="Checkpoint to write (.pth)."),
        dataset_json: Path | None = typer.Option(
            None, "--dataset-json", help="dataset.json for the number of outputs (default: "
            "beside the plans file)."),
        allow: list[str] = typer.Option(
            [], "--allow", help="Export although the pretraining differs from the plans in "
            "this respect: spacing, normalization or strides (repeat, or comma-separate)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it is an "
                                       "earlier export."),
    ) -> None:
        """Write the full nnU-Net network (pretrained encoder, fresh decoder) for
        `nnUNetv2_train DATASET CONFIGURATION FOLD -pretrained_weights OUT`."""
        from pimpic.nnunet.export import export_nnunet

        names = [n.strip() for a in allow for n in a.split(",") if n.strip()]
        summary = export_nnunet(run, plans, configuration, out, dataset_json=dataset_json,
                                allow=names, overwrite=overwrite)
        for difference in summary["allowed"]:
            typer.echo(f"warning: exported under --allow although the {difference}", err=True)
        typer.echo(f"wrote {summary['out']}: {summary['encoder_tensors']} pretrained encoder "
                   f"tensors in a {summary['network_tensors']}-tensor "
                   f"{summary['configuration']} network")
