"""The CLI contract: every command has --help; unknown commands exit 2; a usage error
(unknown option, unparsable value, missing argument) is ONE line `error: ...` on stderr
with exit 2, in the `scaling` command and in `python -m sweeps.worker` alike."""
import subprocess
import sys

import pytest

from study.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout


def test_unknown_command_exits_2():
    out = run("no-such-command")
    assert out.returncode == 2


# (command line, what the one line must name). Every one fails while parsing, so
# nothing runs; in-process through the console entry point's `main`.
USAGE_ERRORS = [
    (["train", "--lr", "0.1", "--batch", "abc"], "'--batch'"),
    (["train", "--lr", "0.1", "--batch-size", "32"], "--batch-size"),
    (["train", "--depth-mult", "0.25", "--width-mult", "0.03125", "--epochs", "1"], "'--lr'"),
    (["train", "--lr", "fast"], "'--lr'"),
    (["model-info", "F0", "--resolution", "big"], "'--resolution'"),
    (["model-info", "F0", "F1"], "F1"),
    (["data", "info", "procedural", "--frobnicate"], "--frobnicate"),
    (["data", "nope"], "nope"),
    (["sweep", "run"], "'spec'"),
    (["sweep", "run", "demo", "--workers", "-1"], "'--workers'"),
    (["sweep", "work", "--lease", "soon"], "'--lease'"),
    (["sweep", "work", "--max-attempts", "0"], "'--max-attempts'"),
    (["sweep", "status", "--sweep"], "'--sweep'"),
    (["sweep", "nope"], "nope"),
    (["results", "export"], "'out'"),
    (["analyze", "--resamples", "many"], "'--resamples'"),
    (["analyze", "--level"], "'--level'"),
    (["plan", "--budget", "1e3"], "'--unit'"),
    (["plan", "--budget", "lots", "--unit", "flops"], "'--budget'"),
    (["demo", "--workers", "two"], "'--workers'"),
    (["no-such-command"], "no-such-command"),
]


@pytest.mark.parametrize("argv,names", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line_and_exit_2(argv, names, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert rc == 2, out
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert names in lines[0], lines[0]
    assert "Traceback" not in out.err + out.out and "╭" not in out.err and out.out == ""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sweep", "--help"], ["sweep", "work", "--help"],
                                  ["plan", "--help"], ["demo", "--help"]])
def test_help_still_exits_0(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "Usage" in out.out and out.err == ""


def test_bad_input_is_one_line_exit_2(capsys):
    assert main(["model-info", "F9"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "study.cli", "train", "--lr", "0.1", "--batch", "abc"],
                                 [sys.executable, "-m", "sweeps.worker", "--lease", "soon"]],
                         ids=["scaling", "python -m sweeps.worker"])
def test_usage_error_in_a_real_process(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: ") and "'--" in line and "--help" in line, line


def test_worker_module_is_the_sweep_work_command():
    """`python -m sweeps.worker` and `scaling sweep work` take the same flags (one CLI)."""
    def flags(cmd):
        out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env={"COLUMNS": "200", "TERM": "dumb"})
        assert out.returncode == 0, out.stderr
        return {w.strip("│,") for w in out.stdout.split() if w.startswith("--")}

    worker = flags([sys.executable, "-m", "sweeps.worker"])
    assert worker == flags([sys.executable, "-m", "study.cli", "sweep", "work"])
    assert {"--store", "--sweep", "--results-dir", "--lease", "--max-attempts", "--poll", "--max-trials", "--name",
            "--multihost", "--wait"} <= worker


def test_help_loads_no_heavy_library():
    """`scaling --help` stays fast: the command modules take their defaults from light
    modules (sweeps.options, scaling.train.config), never from the store or the trainer."""
    code = ("import sys\nfrom study.cli import main\nrc = main(['sweep', 'work', '--help'])\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'sqlalchemy', 'pandas', 'grain'})\n"
            "assert rc == 0 and not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
