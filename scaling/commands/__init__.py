"""Commands owned by the `scaling` package, one module each."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from scaling.commands import data, demo, model_info, train

    model_info.register(app)
    train.register(app)
    data.register(app)
    demo.register(app)
