"""The one exception type for bad user input, shared by every package.

The CLI turns it into a one-line `error: ...` on stderr and exit code 2
(docs/references.md#command-line). Messages name the field and the fix.
"""
from __future__ import annotations

import re

from typing import Iterable


class BadInput(ValueError):
    """Input the user can fix: the message names what is wrong and how to fix it."""


class RuntimeFailure(RuntimeError):
    """Something went wrong that is not the user's input (exit code 1)."""


def closest(word: str, choices: Iterable[str]) -> str:
    """The "did you mean" part of a BadInput message: "did you mean 'x'? " for the closest
    choice (difflib's similarity, cutoff 0.6), or "" when none is close. Written as
    f"{field}: {problem}; {closest(word, choices)}{how to fix}" so a message stays one
    line either way. Choices are sorted first, so the answer never depends on the order
    of a set or dict."""
    import difflib  # only on the error path

    match = difflib.get_close_matches(str(word), sorted(set(choices)), n=1)
    return f"did you mean {match[0]!r}? " if match else ""


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*:)(?P<secret>[^@\s'\"/]+)(?=@)")


def redact(text: object) -> str:
    """`text` with the password of every URL in it replaced by ***: the one place a
    store URL (postgresql://user:secret@host/db) is made printable, for error lines,
    banners, logs and reports."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "***", str(text))
