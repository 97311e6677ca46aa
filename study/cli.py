"""The `scaling` command: the composition root of the three packages.

Each package owns its commands, defined at module level (scaling/commands/,
sweeps/cli.py, analysis/cli.py) with a `register(app)` that mounts them; `scaling demo`
(study/demo.py) is the one command that uses all three. This module mounts them and
runs the app under the exit-code contract (scaling.console.run): 0 ok; 2 bad input or a
usage error, as ONE line `error: ...` on stderr; 1 runtime failure; 130 Ctrl-C. Heavy
imports (jax, flax, pandas, SQLAlchemy) happen inside the commands so `scaling --help`
and `scaling plan` stay fast.
"""
from __future__ import annotations

import sys

import typer

from analysis import cli as analysis_cli
from scaling import commands as scaling_commands
from scaling import console
from study import demo
from sweeps import cli as sweeps_cli

app = typer.Typer(
    help="Scaling-law study and compute-budget planner for image models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

scaling_commands.register(app)  # model-info, train, data
demo.register(app)  # demo (listed with the package commands in --help, as before it moved)
sweeps_cli.register(app)  # sweep, results
analysis_cli.register(app)  # analyze, plan


@app.callback()
def _root() -> None:
    """Scaling-law study and compute-budget planner for image models."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`[project.scripts] scaling`); returns the exit code. The usage
    lines say `scaling` however it was started (the console script, `python -m study.cli`)."""
    return console.run(app, argv, prog_name="scaling")


if __name__ == "__main__":
    sys.exit(main())
