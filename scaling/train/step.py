"""Pure, jitted train and eval steps, data-parallel over a `jax.sharding.Mesh`.

WHY the hyper-parameters are arguments: the peak learning rate and the schedule's
warmup/total steps are traced inputs (`Hyper`), so ONE compilation per model shape serves
every learning rate and epoch budget of a sweep (docs/architecture.md#contracts-worth-knowing).
Params and
optimizer state are replicated, the batch is sharded over the mesh axis "data"; XLA
inserts the gradient all-reduce. The dropout key is derived from (seed, step), so a
resumed run draws exactly the randomness an uninterrupted one would.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from scaling.loss import cross_entropy, eval_sums
from scaling.optim import Recipe, learning_rate

DATA_AXIS = "data"

# Incremented each time Python traces the train step: tests assert one trace serves many
# learning rates and budgets (a retrace would mean a recompilation).
TRACE_COUNT = {"train": 0, "eval": 0}


class Hyper(NamedTuple):
    """Runtime inputs of the train step (scalars), not compile-time constants."""
    peak_lr: jax.Array
    warmup_steps: jax.Array
    total_steps: jax.Array
    rng: jax.Array  # base PRNG key of the run (raw uint32 key data)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (global) devices: pure data parallelism."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices, (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def make_hyper(*, peak_lr: float, warmup_steps: int, total_steps: int, seed: int) -> Hyper:
    return Hyper(jnp.float32(peak_lr), jnp.int32(warmup_steps), jnp.int32(total_steps),
                 jax.random.key_data(jax.random.key(seed)))


def to_model_input(image: jax.Array) -> jax.Array:
    """Images arrive as the data pipeline stores them; the model wants float32 NHWC."""
    return image.astype(jnp.float32)


def make_train_step(model, optimizer, apply_updates: Callable | None = None, *, label_smoothing: float,
                    mesh: Mesh, sam: bool = False, frozen: Any = None) -> Callable:
    """(state, batch, hyper) -> (state, metrics); state = {params, opt_state, step}.

    `optimizer` is a family's `scaling.optim.Recipe` (optimizer, schedule, update rule),
    or an optax transformation with `apply_updates(params, direction, lr)` and the
    NFNet schedule (the form this function had before families: the same program).
    `sam`: the recipe's optimizer is wrapped by `scaling.optim.with_sam`, whose update
    takes the gradient function (the second gradient is taken at the ascended point,
    with the same batch and dropout key). `frozen`: a tree of Python bools shaped like
    the params, True where a parameter keeps its value (a fine-tune of the head only);
    the selection is after the update rule, so a decoupled weight decay moves nothing
    frozen either."""
    if isinstance(optimizer, Recipe):
        recipe = optimizer
    else:
        recipe = Recipe(optimizer, learning_rate, lambda p, d, lr, peak_lr: apply_updates(p, d, lr))

    def train_step(state: dict, batch: dict, hyper: Hyper):
        TRACE_COUNT["train"] += 1
        step = state["step"]
        key = jax.random.fold_in(jax.random.wrap_key_data(hyper.rng), step)

        def loss_fn(params):
            logits = model.apply({"params": params}, to_model_input(batch["image"]), train=True,
                                 rngs={"dropout": key})
            return cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        if sam:
            direction, opt_state = recipe.optimizer.update(
                grads, state["opt_state"], state["params"], grad_fn=lambda p, _i: jax.grad(loss_fn)(p))
        else:
            direction, opt_state = recipe.optimizer.update(grads, state["opt_state"], state["params"])
        lr = recipe.learning_rate(step, peak_lr=hyper.peak_lr, warmup_steps=hyper.warmup_steps,
                                  total_steps=hyper.total_steps)
        params = recipe.apply_updates(state["params"], direction, lr, hyper.peak_lr)
        if frozen is not None:
            params = jax.tree.map(lambda f, new, old: old if f else new, frozen, params, state["params"])
        new_state = {"params": params, "opt_state": opt_state, "step": step + 1}
        return new_state, {"loss": loss, "lr": lr}

    rep, data = replicated(mesh), batch_sharded(mesh)
    return jax.jit(train_step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def make_eval_step(model, *, mesh: Mesh) -> Callable:
    """(params, batch) -> sums over the batch's real (mask=1) examples.

    Sums, not means, so the held-out mean is exact whatever the padding of the last batch:
    the caller adds sums over all batches and divides once (in float64 on the host).
    """

    def eval_step(params, batch):
        TRACE_COUNT["eval"] += 1
        logits = model.apply({"params": params}, to_model_input(batch["image"]), train=False)
        return eval_sums(logits, batch["label"], batch["mask"])

    rep, data = replicated(mesh), batch_sharded(mesh)
    return jax.jit(eval_step, in_shardings=(rep, data), out_shardings=rep)


def global_batch(local: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> one global array per key, sharded over the mesh."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}
