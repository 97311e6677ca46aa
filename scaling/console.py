"""Running a typer app as a console program under the project's exit-code contract.

  0    success, and `--help`;
  2    bad input: `scaling.errors.BadInput`, or a usage error typer/click finds itself
       (an unknown option, a value that does not parse, a missing argument): ONE line
       `error: ...` on stderr, naming the option and the problem (not click's boxed
       five-line report);
  1    `scaling.errors.RuntimeFailure`: one line `error: ...`;
  130  Ctrl-C (typer turns KeyboardInterrupt into exit 130; commands that hand work back
       first say so and exit 130 themselves).
A group run with no arguments prints its help and exits 2, as typer does.

Here, at the bottom of the layers, so that every console program of the project runs
the same way: the `scaling` entry point (study/cli.py) and `python -m sweeps.worker`
(sweeps/cli.py's `work_main`).
"""
from __future__ import annotations

import re
import sys
from typing import Sequence

import typer

from scaling.errors import BadInput, RuntimeFailure, redact


def _one_line(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def usage_error_line(err: typer.TyperException) -> str:
    """`error: <click's message> (see '<command> --help')` on one line."""
    message = _one_line(err.format_message())
    ctx = getattr(err, "ctx", None)
    path = getattr(ctx, "command_path", None)
    return f"error: {message}" + (f" (see '{path} --help')" if path else "")


def run(app: typer.Typer, argv: Sequence[str] | None = None, *, prog_name: str | None = None) -> int:
    """Run `app` on argv (None: sys.argv[1:]) and return the exit code (see the module doc)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=None if argv is None else list(argv), prog_name=prog_name,
                            standalone_mode=False)
    except BadInput as err:
        print(f"error: {redact(err)}", file=sys.stderr)
        return 2
    except RuntimeFailure as err:
        print(f"error: {redact(err)}", file=sys.stderr)
        return 1
    except typer.TyperException as err:  # click's ClickException family (UsageError: exit 2)
        if type(err).__name__ == "NoArgsIsHelpError":  # as typer: the help is the message
            help_text = err.format_message()  # (rich help was printed already; then this is "")
            if help_text.strip():
                print(help_text, file=sys.stderr)
        else:
            print(redact(usage_error_line(err)), file=sys.stderr)
        return err.exit_code
    except typer.Abort:  # e.g. end of input at a prompt
        print("error: aborted", file=sys.stderr)
        return 1
    # typer.Exit(n) and --help come back as their code; a command's own return value is None
    return code if isinstance(code, int) and not isinstance(code, bool) else 0
