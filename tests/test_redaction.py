"""A store password is never printed: error lines, banners, JSON, reports (one redact())."""
from __future__ import annotations

import os

import pytest

from scaling.errors import redact
from study.cli import main

SECRET = "Hunter2SeCrEt"
UNREACHABLE = f"postgresql://alice:{SECRET}@127.0.0.1:9/runs"  # port 9 (discard): refused at once


@pytest.mark.parametrize("text, want", [
    (f"postgresql://alice:{SECRET}@db:5432/x", "postgresql://alice:***@db:5432/x"),
    (f"error: cannot open 'postgresql+psycopg://bob:{SECRET}@h/db' (refused)",
     "error: cannot open 'postgresql+psycopg://bob:***@h/db' (refused)"),
    (f"a postgresql://u:{SECRET}@h/d and mysql://v:{SECRET}@k/e", "a postgresql://u:***@h/d and mysql://v:***@k/e"),
    ("sqlite:///results/runs.db", "sqlite:///results/runs.db"),
    ("postgresql://carol@h/db", "postgresql://carol@h/db"),
    ("ratio 3:2 at http://host:8080/x", "ratio 3:2 at http://host:8080/x"),
])
def test_redact(text, want):
    assert redact(text) == want


@pytest.mark.parametrize("args", [
    ["analyze", "--store", UNREACHABLE],
    ["plan", "--budget", "1", "--unit", "cpu-core-hours", "--store", UNREACHABLE],
    ["sweep", "status", "--store", UNREACHABLE],
    ["sweep", "retry", "--store", UNREACHABLE],
    ["sweep", "run", "smoke", "--workers", "0", "--store", UNREACHABLE],
    ["results", "export", "x.csv", "--store", UNREACHABLE],
    ["demo", "--spec", "smoke", "--store", UNREACHABLE],
])
def test_no_command_prints_the_password(args, capsys, tmp_path):
    os.chdir(tmp_path)
    try:
        rc = main(args)
    except SystemExit as done:
        rc = done.code
    out = capsys.readouterr()
    assert rc in (1, 2), (rc, out.err)
    assert SECRET not in out.out + out.err
    assert "alice" in out.out + out.err  # the URL is still named, less its password
    assert not any(SECRET in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
