"""Run the shell examples of a Markdown page as a user would (README, docs/*.md).

The format the docs follow (so that "every command runs as shown" can be tested):
- a ```console block holds commands, one per line, after a `$ ` prompt (a trailing
  `\\` continues a command on the next line); the other lines of the block are output
  and are not run;
- a block whose info string is `LANG FILENAME` (e.g. ```csv their_runs.csv) is a file
  the page asks the reader to have: the test writes it, as shown, before the commands
  that follow it;
- plain ``` blocks are synopses or cluster-only commands and are never run.

Each command runs in bash in a scratch directory, in page order, with `scaling` on
PATH resolving to `python -m study.cli` of the interpreter running the tests.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import tempfile
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The tests' persistent compilation cache (tests/test_sweep_chaos.py): the smoke
# shape is already compiled there, so a scratch dir's results/jax_cache links to it.
TEST_CACHE = REPO / "results" / "test_jax_cache"

_BLOCK = re.compile(r"^```([^\n]*)\n(.*?)^```", flags=re.S | re.M)


@dataclass(frozen=True)
class Step:
    kind: str   # "run" (a command) or "file" (write `text` to `name`)
    text: str
    name: str = ""


def page_steps(text: str) -> list[Step]:
    """The commands and files of a page, in page order."""
    steps: list[Step] = []
    for info, body in _BLOCK.findall(text):
        words = info.split()
        if words[:1] == ["console"]:
            steps += [Step("run", c) for c in console_commands(body)]
        elif len(words) == 2:
            steps.append(Step("file", body, words[1]))
    return steps


def console_commands(body: str) -> list[str]:
    commands, current = [], None
    for line in body.splitlines():
        if current is not None:  # a continuation of the previous command
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        else:
            continue
        if not current.endswith("\\"):
            commands.append(current)
            current = None
    assert current is None, f"console command ends with a continuation: {current!r}"
    return commands


SLOTS = 2  # scratch paths; pytest -n 2 runs at most two pages at once


@contextlib.contextmanager
def scratch_dir():
    """An empty working directory at a fixed path, held under a lock while in use.

    Its `results/jax_cache` (TrainConfig's default cache) is a symlink to the tests'
    cache (`scratch_env`), so a page finds the shapes other tests compiled: keys do not
    depend on the cache's path (setup_compile_cache; tests/test_compile_cache.py).
    Without that every page would compile the tiny models again (~40-110 s on 2 cores).
    The first free one of SLOTS paths is taken, so parallel test workers do not wait
    for each other."""
    root = Path(tempfile.gettempdir()) / f"scaling-doc-examples-{os.getuid()}"
    root.mkdir(exist_ok=True)
    slot, lock = _take_slot(root)
    try:
        path = root / f"cwd{slot}"
        shutil.rmtree(path, ignore_errors=True)  # a symlinked cache is unlinked, not followed
        path.mkdir()
        yield path
    finally:
        lock.close()  # releases the lock


def _take_slot(root: Path):
    for slot in range(SLOTS):
        lock = open(root / f"lock{slot}", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot, lock
        except BlockingIOError:
            lock.close()
    lock = open(root / "lock0", "w")  # all busy (several test sessions): wait for the first
    fcntl.flock(lock, fcntl.LOCK_EX)
    return 0, lock


def scratch_env(cwd: Path) -> dict:
    """Environment of the commands: `scaling` = this interpreter's CLI; the tests' cache."""
    shim = cwd / ".bin" / "scaling"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m study.cli "$@"\n')
    shim.chmod(0o755)
    cache = cwd / "results" / "jax_cache"  # TrainConfig's default compile_cache_dir
    if not cache.exists():
        TEST_CACHE.mkdir(parents=True, exist_ok=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.symlink_to(TEST_CACHE, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_PROCESSES")}
    env["PATH"] = f"{shim.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


_EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def run_command(command: str, cwd: Path, env: dict, *, copies: int = 1, timeout: float = 600) -> list[str]:
    """Run `command` (bash) `copies` times at once; assert each exits 0; their stdouts.

    `export NAME=VALUE` lines set NAME in `env` for the commands after them."""
    m = _EXPORT.match(command.strip())
    if m:
        (value,) = shlex.split(m.group(2), comments=True) or [""]
        env[m.group(1)] = os.path.expandvars(value)
        return [""]
    logs = [cwd / f".cmd-{i}.log" for i in range(copies)]
    procs = []
    for log in logs:
        with open(log, "wb") as f:  # files, not pipes: a full pipe would block a process
            procs.append(subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=f,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    outs = []
    for p, log in zip(procs, logs):
        try:
            p.wait(timeout=timeout)
        finally:
            if p.poll() is None:  # timed out: stop bash and what it started
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        out = log.read_text(errors="replace")
        assert p.returncode == 0, f"`{command}` exited {p.returncode}:\n{out[-3000:]}"
        outs.append(out)
    return outs
