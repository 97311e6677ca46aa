"""The defaults a sweep's CLI, workers and readers share, in a module that imports nothing.

`scaling --help` imports the command modules, whose option defaults come from here, so
this module must stay free of SQLAlchemy and jax (sweeps.store and sweeps.worker import
it, not the other way round).
"""
from __future__ import annotations

from dataclasses import dataclass

# The results store when none is named (README, "The store"): every command that reads
# or writes the store, the demo and the analysis default to it.
DEFAULT_URL = "sqlite:///results/runs.db"


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker claims and holds trials (sweeps.worker.Worker); the CLI's defaults."""

    # The lease must outlast the longest gap between heartbeats; the heartbeat thread
    # renews every lease/4, so a worker must stall for 3/4 of a lease to lose it.
    lease_seconds: float = 60.0
    max_attempts: int = 3  # claims per trial before it is `failed` (errors or expired leases)
    poll_seconds: float = 2.0  # idle wait while other workers still hold leases
    exit_when_idle: bool = True  # stop once the sweeps have nothing pending or running
    sweeps: tuple[str, ...] | None = None  # only these sweeps (None: all)
    max_trials: int | None = None  # stop after this many trials (tests, draining)

    def validate(self) -> "WorkerOptions":
        """Every number in a range the worker and the store can honour (BadInput naming the
        option): a lease of 0 or less would let two workers train one trial in one workdir
        at once; NaN compares false everywhere and crashes the heartbeat thread."""
        for flag, value, (low, high) in (("--lease", self.lease_seconds, LEASE_RANGE),
                                         ("--poll", self.poll_seconds, POLL_RANGE)):
            check_number(flag, value, low, high, "seconds")
        check_number("--max-attempts", self.max_attempts, 1, MAX_ATTEMPTS, integer=True)
        if self.max_trials is not None:
            check_number("--max-trials", self.max_trials, 1, MAX_TRIALS, integer=True)
        return self


# The ranges of the worker flags (WorkerOptions.validate). A lease is renewed every
# lease/4, so half a second is the shortest a store commit (~25 ms on SQLite under load)
# keeps up with; a week is longer than any heartbeat gap worth waiting for.
LEASE_RANGE = (0.5, 7 * 86400.0)
POLL_RANGE = (0.01, 3600.0)
MAX_ATTEMPTS = 1000
MAX_TRIALS = 10**9
MAX_LOCAL_WORKERS = 256  # `sweep run --workers N`: processes on this machine


def check_number(flag: str, value, low: float, high: float, what: str = "", *, integer: bool = False) -> None:
    """BadInput unless `value` is a finite number (a whole one with `integer`) in [low, high]."""
    import math

    from scaling.errors import BadInput

    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and low <= value <= high and (not integer or value == int(value)))
    if not ok:
        kind = "a whole number" if integer else "a number"
        raise BadInput(f"{flag}: {value!r} is out of range; use {kind} in [{low:g}, {high:g}]"
                       + (f" ({what})" if what else ""))
