"""Commands owned by the `scaling` package, one module each, defined at module level.

The `scaling` entry point (study/cli.py) mounts them with `register(app)`; `scaling demo`,
which strings sweeps and analysis together, lives above all three packages (study/demo.py).
"""
from __future__ import annotations

import typer

from scaling.commands import data, model_info, train


def register(app: typer.Typer) -> None:
    model_info.register(app)
    train.register(app)
    data.register(app)
