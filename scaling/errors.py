"""The one exception type for bad user input, shared by every package.

The CLI turns it into a one-line `error: ...` on stderr and exit code 2
(DESIGN.md, CLI contract). Messages name the field and the fix.
"""


class BadInput(ValueError):
    """Input the user can fix: the message names what is wrong and how to fix it."""


class RuntimeFailure(RuntimeError):
    """Something went wrong that is not the user's input (exit code 1)."""
