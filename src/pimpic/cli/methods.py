"""``pimpic methods``: the pretext tasks the registry knows (one file each in
``pimpic/pretraining/methods/``)."""

from __future__ import annotations

import typer

from pimpic.errors import friendly_errors


def register(app: typer.Typer) -> None:
    """Add ``methods`` to ``app``."""

    @app.command("methods")
    @friendly_errors
    def methods_cmd() -> None:
        """List the pretraining methods (the values of --method and of an experiment's
        methods, besides the from-scratch baseline 'random') and their own options with
        their defaults (set them as --set KEY=VALUE)."""
        from pimpic import registry
        from pimpic.config import flatten, to_dict

        for name in registry.method_names():
            spec = registry.get_method(name)
            typer.echo(f"{name:<10} {spec.display_name:<10} {spec.description}")
            if spec.options is not None:
                options = flatten(to_dict(spec.options()), f"{spec.options_key}.")
                for key, default in options.items():
                    typer.echo(f"{'':<10} {key}={default}")
