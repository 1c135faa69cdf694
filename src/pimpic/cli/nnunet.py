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
    ) -> None:
        """Write the full nnU-Net network (pretrained encoder, fresh decoder) for
        `nnUNetv2_train DATASET CONFIGURATION FOLD -pretrained_weights OUT`."""
        from pimpic.nnunet.export import export_nnunet

        summary = export_nnunet(run, plans, configuration, out, dataset_json=dataset_json)
        typer.echo(f"wrote {summary['out']}: {summary['encoder_tensors']} pretrained encoder "
                   f"tensors in a {summary['network_tensors']}-tensor "
                   f"{summary['configuration']} network")
