"""The ``pimpic`` command line (typer).

Heavy modules (torch, MONAI, nibabel) are imported inside each command, so ``pimpic --help``
answers instantly. Commands are registered by small per-stage modules:

* :mod:`pimpic.cli.data`       — ``synth``, ``prepare``
* :mod:`pimpic.cli.pretrain`   — ``pretrain``, ``bench pretrain-step``, ``bench loader``
* :mod:`pimpic.cli.finetune`   — ``finetune``, ``evaluate``, ``predict``
* :mod:`pimpic.cli.bench`      — ``bench finetune-step``
* :mod:`pimpic.cli.experiment` — ``experiment``, ``visualize embeddings``
* :mod:`pimpic.cli.demo`       — ``demo``
* :mod:`pimpic.cli.methods`    — ``methods`` (the registered pretext tasks)
* :mod:`pimpic.cli.analysis`   — ``stats``, ``curves``, ``confusion`` (reading finished runs)

Progress goes through :mod:`logging` to stderr (``-v`` adds debug messages, ``-q`` keeps only
warnings); results and the paths of what was written go to stdout.
* :mod:`pimpic.cli.nnunet`     — ``export nnunet``
"""

from __future__ import annotations

import logging
import sys

import typer

from pimpic import __version__
from pimpic.cli import analysis, bench, data, demo, experiment, finetune, methods, nnunet, pretrain

app = typer.Typer(
    name="pimpic",
    help="Overlap-aware self-supervised pretraining (PiM + PiC) for 3D CT segmentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks of the hot paths.",
                        no_args_is_help=True)
visualize_app = typer.Typer(help="Figures of a pretrained encoder.", no_args_is_help=True)
export_app = typer.Typer(help="Hand a pretrained encoder to another framework.",
                         no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(visualize_app, name="visualize")
app.add_typer(export_app, name="export")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pimpic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on "
                               "stderr (results still go to stdout)."),
) -> None:
    """pimpic: pretrain a 3D U-Net encoder on unlabelled CT, fine-tune it on a few labels,
    and measure whether it helped."""
    configure_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def configure_logging(level: int) -> None:
    """pimpic's messages as plain lines on stderr at ``level`` (other libraries: warnings)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("pimpic")
    logger.handlers[:] = [handler]
    logger.setLevel(level)


data.register(app)
pretrain.register(app, bench_app)
finetune.register(app)
bench.register(bench_app)
experiment.register(app, visualize_app)
demo.register(app)
methods.register(app)
nnunet.register(export_app)
analysis.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
