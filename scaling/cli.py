"""The `scaling` command: the composition root of the three packages.

Each package owns its commands (scaling/commands.py, sweeps/cli.py, analysis/cli.py);
this module only mounts them and maps errors to exit codes (DESIGN.md: 0 ok,
2 bad input with a one-line message, 1 runtime failure). Heavy imports (jax, flax,
pandas) happen inside the commands so `scaling --help` and `scaling plan` stay fast.
"""
from __future__ import annotations

import sys

import typer

from scaling.errors import BadInput, RuntimeFailure

app = typer.Typer(
    help="Scaling-law study and compute-budget planner for image models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _mount() -> None:
    from scaling import commands as scaling_commands

    scaling_commands.register(app)
    for module_name in ("sweeps.cli", "analysis.cli"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as err:  # a package not built yet
            if err.name != module_name:
                raise
            continue
        module.register(app)


_mount()


@app.callback()
def _root() -> None:
    """Scaling-law study and compute-budget planner for image models."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point; typer handles usage errors (exit 2) and --help itself."""
    try:
        app(args=argv)
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeFailure as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
