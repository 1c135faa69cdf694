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
        methods, besides the from-scratch baseline 'random')."""
        from pimpic import registry

        for name in registry.method_names():
            spec = registry.get_method(name)
            typer.echo(f"{name:<10} {spec.display_name:<10} {spec.description}")
