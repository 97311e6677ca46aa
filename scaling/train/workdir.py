"""The files of one run directory, and the I/O on them. Pure Python (no jax).

  config.json      the TrainConfig (a workdir belongs to one config: its identity fields)
  checkpoints/     orbax steps (state + data-iterator state + counters, one atomic save)
  metrics.jsonl    one JSON object per logged step (and per evaluation)
  indices-p<i>.jsonl  consumed training indices per step (only with log_indices)
  result.json      the TrainResult once the run has finished (done or diverged)
  tensorboard/     event files, only when asked for
  lock             held (fcntl.flock) by the one process training in the workdir
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from scaling.errors import BadInput, RuntimeFailure
from scaling.train.config import IDENTITY_FIELDS, TrainConfig


class WorkdirBusy(RuntimeFailure):
    """Another live process is training in this workdir (exit 1: wait, or use another)."""


def lock_path(workdir: Path) -> Path:
    return workdir / "lock"


def ensure_dir(path: Path | str, field: str) -> Path:
    """`path` as a folder this process can write in, made if missing; BadInput naming
    `field` otherwise (a file in its place, a read-only filesystem, no permission)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{field}: {path} is a file, not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"{field}: cannot create {path} ({err.strerror}); give another folder") from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"{field}: cannot write in {path} (read-only); give another folder")
    return path


@contextlib.contextmanager
def locked(workdir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold the workdir's lock file while a run uses it: a second run on the same workdir
    (another `scaling train`, a worker whose lease another one took over) is refused with
    WorkdirBusy instead of writing the same checkpoints and metrics twice. fcntl.flock:
    the kernel releases it when the holder exits in any way, SIGKILL included, so a
    killed run never leaves the workdir locked. `enabled=False` (the other processes of a
    multi-host run, which share process 0's workdir) takes nothing."""
    if not enabled:
        yield
        return
    import fcntl
    import socket

    new = not workdir.exists()
    ensure_dir(workdir, "workdir")
    try:
        fd = os.open(lock_path(workdir), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise BadInput(f"workdir: cannot write in {workdir} ({err.strerror}); use another --workdir") from None
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirBusy(f"workdir: {workdir} is in use by another run ({holder}); wait for it to "
                              "finish or use another --workdir") from None
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    except BaseException:
        # Refused before it wrote anything (bad input found while setting up): leave no
        # empty workdir behind, as if it had never been named.
        if held and new and [p.name for p in workdir.iterdir()] == ["lock"]:
            os.unlink(lock_path(workdir))
            workdir.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock


def config_path(workdir: Path) -> Path:
    return workdir / "config.json"


def result_path(workdir: Path) -> Path:
    return workdir / "result.json"


def metrics_path(workdir: Path) -> Path:
    return workdir / "metrics.jsonl"


def checkpoints_dir(workdir: Path) -> Path:
    return workdir / "checkpoints"


def tensorboard_dir(workdir: Path) -> Path:
    return workdir / "tensorboard"


def index_log_path(workdir: Path, process_index: int) -> Path:
    return workdir / f"indices-p{process_index}.jsonl"


def _identity(config: TrainConfig) -> dict[str, Any]:
    data = config.to_dict()
    return {k: data[k] for k in IDENTITY_FIELDS}


def claim_workdir(config: TrainConfig, workdir: Path, *, create: bool) -> None:
    """A workdir holds one run: refuse (without touching anything) a config whose
    identity fields differ from the stored one's (operational fields may change on a
    resume). With `create` (process 0 only), write config.json when there is none."""
    path = config_path(workdir)
    if path.exists():
        # Through TrainConfig, so a field added since (at its default) matches a missing key.
        stored, mine = _identity(TrainConfig.from_json(path.read_text())), _identity(config)
        if stored != mine:
            diff = sorted(k for k in stored if stored[k] != mine[k])
            raise BadInput(f"workdir: {workdir} holds a run with a different config "
                           f"({', '.join(diff)}); use a new --workdir")
        return
    if create:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(config.to_dict(), indent=2, sort_keys=True))


def read_result(workdir: Path) -> dict[str, Any] | None:
    """The stored result.json of a finished run, or None."""
    path = result_path(workdir)
    return json.loads(path.read_text()) if path.exists() else None


def write_result(workdir: Path, result: dict[str, Any]) -> None:
    atomic_write(result_path(workdir), json.dumps(result, indent=2))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of steps <= last_step (a resumed run redoes the rest); drop a torn
    last line left by a kill."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= last_step:
            keep.append(line)
    atomic_write(path, "".join(k + "\n" for k in keep))
