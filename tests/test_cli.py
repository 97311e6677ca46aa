"""The CLI contract: every command has --help; unknown commands exit 2."""
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "scaling.cli", *args], capture_output=True, text=True)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout


def test_unknown_command_exits_2():
    out = run("no-such-command")
    assert out.returncode == 2
