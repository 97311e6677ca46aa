"""One training run at a compute budget: config, jitted steps, checkpoints, the loop.

`TrainConfig` and `plan_steps` are pure Python; `run_training` / `TrainResult` pull in
jax lazily (on first attribute access) so that building configs stays import-light.
"""
from scaling.train.budget import StepPlan, plan_steps
from scaling.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "run_training", "plan_steps", "StepPlan"]


def __getattr__(name):
    if name in ("TrainResult", "run_training"):
        from scaling.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'scaling.train' has no attribute {name!r}")
