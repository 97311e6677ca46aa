"""The compiled train/eval executables of this process, shared by its runs.

Keyed by everything that fixes the shapes and the program: the model and optimizer
configs, the TrainConfig's declared compile-shape fields (`SHAPE_FIELDS`), the devices
and the input avals; NOT the learning rate or the run length, which are traced inputs
(scaling/train/step.py). So one compilation per model shape; JAX's persistent cache
serves new processes.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from scaling.train.config import SHAPE_FIELDS, TrainConfig

_COMPILED: dict[Any, Callable] = {}
MAX_COMPILED = 8  # executables kept per process (train + eval per shape), least recent dropped


def step_key(config: TrainConfig, model_cfg: Any, optim_cfg: Any, devices) -> tuple:
    """The program part of the key: configs, compile-shape fields (canonical JSON, so a
    dict is hashable and equal values give equal keys) and device ids."""
    shape = tuple((k, json.dumps(getattr(config, k), sort_keys=True)) for k in SHAPE_FIELDS)
    return (model_cfg, optim_cfg, shape, tuple(d.id for d in devices))


def compiled(kind: str, make: Callable[[], Callable], key: tuple, *args) -> tuple[Callable, float]:
    """AOT-compile `make()` for `args` once per key; returns (executable, seconds spent)."""
    import jax

    avals = jax.tree.map(lambda x: (x.shape, str(x.dtype), x.sharding), args)
    full_key = (kind, key, str(avals))
    if full_key in _COMPILED:
        _COMPILED[full_key] = _COMPILED.pop(full_key)  # most recently used last
        return _COMPILED[full_key], 0.0
    t0 = time.perf_counter()
    executable = make().lower(*args).compile()
    while len(_COMPILED) >= MAX_COMPILED:  # a long-lived sweep worker meets many shapes
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[full_key] = executable
    return executable, time.perf_counter() - t0
