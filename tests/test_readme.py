"""Every CLI example in the README runs as shown (checked as a new user would).

The lines of the README's ```console block are run in order, in a scratch directory,
each must exit 0; later lines use what earlier ones wrote (store, CSV). The runner and
the page format are in tests/cli_examples.py (shared with tests/test_docs_commands.py).
"""
from pathlib import Path

import pytest

from cli_examples import page_steps, run_command, scratch_dir, scratch_env

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    return [s.text for s in page_steps(README.read_text()) if s.kind == "run"]


def test_readme_has_cli_examples():
    commands = readme_commands()
    assert len(commands) >= 8
    for name in ("train", "sweep run", "analyze", "plan", "model-info"):
        assert any(c.startswith(f"scaling {name}") for c in commands), name


@pytest.mark.slow  # ~70 s on 2 cores: one tiny training run and an 18-trial sweep
def test_readme_cli_examples_run():
    with scratch_dir() as cwd:
        env = scratch_env(cwd)
        for command in readme_commands():
            (out,) = run_command(command, cwd, env)
            if command.startswith("scaling plan"):
                assert "predicted held-out loss" in out
        assert (cwd / "results" / "readme_report" / "report.html").exists()
        assert (cwd / "results" / "readme_runs.csv").read_text().count("\n") == 1 + 18
