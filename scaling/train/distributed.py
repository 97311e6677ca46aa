"""Joining a multi-process (multi-host) JAX run before any device is touched.

Explicit (any cluster, and the 2-process CPU test):
    JAX_COORDINATOR_ADDRESS=host0:1234  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
Automatic (`scaling train --distributed`): jax.distributed.initialize() detects Cloud
TPU pods, SLURM, Open MPI and Kubernetes itself (docs/training.md lists what each sets).
On CPU the collectives go through gloo (JAX's default CPU collectives).
"""
from __future__ import annotations

import os

from scaling.errors import BadInput


def init_distributed(auto: bool = False) -> bool:
    """Initialise jax.distributed from the environment; True if this is a multi-process run."""
    import jax

    n = os.environ.get("JAX_NUM_PROCESSES")
    if n is not None:
        try:
            num, pid = int(n), int(os.environ["JAX_PROCESS_ID"])
        except (KeyError, ValueError):
            raise BadInput("JAX_PROCESS_ID: set it to this process's index (0..JAX_NUM_PROCESSES-1) "
                           "next to JAX_NUM_PROCESSES") from None
        address = os.environ.get("JAX_COORDINATOR_ADDRESS")
        if not address:
            raise BadInput("JAX_COORDINATOR_ADDRESS: set it to host:port of process 0 next to JAX_NUM_PROCESSES")
        if not 0 <= pid < num:
            raise BadInput(f"JAX_PROCESS_ID: {pid} is outside 0..{num - 1}")
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
        return num > 1
    if auto:
        jax.distributed.initialize()
        return jax.process_count() > 1
    return False
