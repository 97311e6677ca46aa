"""`scaling demo`: the main job. Until the sweep and analysis exist it runs what does."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo() -> None:
        """Run the demo sweep on the built-in dataset, then the analysis (in progress)."""
        typer.echo("scaling demo: the pipeline is being built; nothing to run yet.")
