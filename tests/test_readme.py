"""Every CLI example in the README runs as shown (issue 7: checked as a new user would).

The lines under the README's ```console block are run in order, in a scratch
directory, each must exit 0; later lines use what earlier ones wrote (store, CSV).
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    lines = [ln.strip() for block in blocks for ln in block.splitlines()]
    return [ln[2:] for ln in lines if ln.startswith("$ scaling ")]


def test_readme_has_cli_examples():
    commands = readme_commands()
    assert len(commands) >= 8
    for name in ("train", "sweep run", "analyze", "plan", "model-info"):
        assert any(c.startswith(f"scaling {name}") for c in commands), name


@pytest.mark.slow  # ~70 s on 2 cores: one tiny training run and an 18-trial sweep
def test_readme_cli_examples_run(tmp_path):
    for command in readme_commands():
        args = shlex.split(command)[1:]
        out = subprocess.run(
            [sys.executable, "-m", "scaling.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        if args[0] == "plan":
            assert "predicted held-out loss" in out.stdout
    assert (tmp_path / "results" / "readme_report" / "report.html").exists()
    assert (tmp_path / "results" / "readme_runs.csv").read_text().count("\n") == 1 + 18
