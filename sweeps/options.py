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
