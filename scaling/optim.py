"""The NFNet training recipe as an optax chain: AGC -> + weight decay -> Nesterov.

The chain returns the *direction* before the learning rate is applied; the learning
rate is computed by `learning_rate(step, ...)` from runtime arrays and applied by
`apply_updates`. Why not put a schedule inside optax: a schedule closes over its peak
LR and total steps, so every LR and epoch budget would compile a new train step.
Here they are ordinary (traced) arguments of the jitted step, so ONE compilation per
model shape serves the whole LR x epoch grid (docs/architecture.md#contracts-worth-knowing).

Usage inside a jitted train step (`step`, `peak_lr`, `warmup_steps`, `total_steps`
are arrays / Python numbers passed as arguments, never `static_argnums`):

    direction, opt_state = tx.update(grads, opt_state, params)
    lr = learning_rate(step, peak_lr=peak_lr, warmup_steps=warmup_steps,
                       total_steps=total_steps)
    params = apply_updates(params, direction, lr)

where `step` is the number of updates applied so far (0 for the first update).

Parameter naming contract (scaling/models): weight-standardised convs hold `kernel`,
`gain`, `bias`; blocks hold `skip_gain`; squeeze-excite layers hold `kernel`/`bias`;
the final linear layer is the submodule `classifier`. Kernels are stored output axis
last (conv HWIO, linear (in, out)).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scaling.errors import BadInput

# Leaf names excluded from weight decay. [B21] s4 / official code: no decay on gains
# and biases (docs/references.md#imagenet-and-jft-300m-recipes); skip gains are scalar
# gains of the same kind.
NO_DECAY_NAMES = frozenset({"gain", "bias", "skip_gain"})
# Submodule exempt from AGC: [B21] s4.1 clips every layer but the final linear one.
CLASSIFIER_NAME = "classifier"


# The recipe's typed config lives in a jax-free module (sweeps validate it at expansion).
from scaling.optim_config import OptimConfig  # noqa: E402,F401  (re-exported)


# --------------------------------------------------------------------------- masks


def _path_names(path) -> tuple[str, ...]:
    """Names along a pytree path (dict keys, attributes, indices), without the
    trailing `value` that flax NNX `State` adds under each Variable."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    if len(names) > 1 and names[-1] == "value":
        names.pop()
    return tuple(names)


def _leaf_name(names: tuple[str, ...]) -> str:
    return names[-1] if names else ""


def weight_decay_mask(params) -> Any:
    """True where weight decay applies: every leaf except gains, biases, skip gains.

    Decayed: conv/SE/classifier kernels. [B21]: decay is not applied to gains and
    biases (docs/references.md#imagenet-and-jft-300m-recipes); skip gains are excluded as
    gains too.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(_path_names(path)) not in NO_DECAY_NAMES, params
    )


def agc_mask(params) -> Any:
    """True where AGC applies: every leaf outside the `classifier` submodule.

    The classifier KERNEL is exempt per [B21] (docs/references.md#adaptive-gradient-clipping).
    We exempt the classifier BIAS too: [B21] exempts the final linear layer as a whole, and the bias
    starts at 0, so AGC would cap its step at agc_clip * agc_eps (1e-5) and all but
    freeze it. Every other 1-D leaf (gains, biases, skip gains) IS clipped, each leaf
    as one unit (see `unit_norm`), as in [B21]'s official code.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: CLASSIFIER_NAME not in _path_names(path), params
    )


# ---------------------------------------------------------------------------- AGC


def unit_norm(x: jnp.ndarray) -> jnp.ndarray:
    """L2 norm of each output unit, broadcast back to `x`'s shape.

    Kernels (ndim >= 2) are stored output-axis last, so a unit is a slice along the
    last axis and its norm runs over all other axes (the fan-in). Leaves of ndim <= 1
    (gains, biases, scalar skip gains) form ONE unit: the whole vector, as in [B21]'s
    official code.

    Why not `optax.adaptive_grad_clip` directly: its default axis rule squeezes the
    array first, so a kernel with fan-in 1 (e.g. linear (1, out) or conv (1,1,1,out),
    possible in tiny width-multiplied models) becomes "a vector" and is clipped as one
    unit, and it reduces rank-3 kernels over axis 0 only; an explicit axis is one
    value for all leaves. So we pick the axis per leaf and reuse optax's
    `unitwise_norm` / `unitwise_clip` numerics.
    """
    axis = tuple(range(x.ndim - 1)) if x.ndim >= 2 else tuple(range(x.ndim))
    if not axis:  # a 0-d scalar: its norm is its magnitude
        return jnp.abs(x)
    return optax.transforms.unitwise_norm(x, axis=axis)


def adaptive_grad_clip(clipping: float, eps: float = 1e-3) -> optax.GradientTransformation:
    """AGC [B21] (docs/references.md#adaptive-gradient-clipping): per unit i, if
    ||G_i|| > clipping * max(||W_i||, eps) rescale G_i to that norm. Stateless; needs
    `params`."""

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("adaptive_grad_clip needs params: tx.update(g, state, params)")

        def clip(g, p):
            max_norm = clipping * jnp.maximum(unit_norm(p), eps)
            return optax.transforms.unitwise_clip(unit_norm(g), max_norm, g)

        return jax.tree.map(clip, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------- the chain


def make_optimizer(cfg: OptimConfig = OptimConfig()) -> optax.GradientTransformation:
    """AGC (not on the classifier) -> + weight_decay * W (not on gains/biases/skip
    gains) -> (Nesterov) momentum trace. Returns the direction; the caller multiplies
    by the learning rate (`apply_updates`). Order per [B21]: AGC acts on the
    cross-device gradient before weight decay and momentum
    (docs/references.md#adaptive-gradient-clipping)."""
    return optax.chain(
        optax.masked(adaptive_grad_clip(cfg.agc_clip, cfg.agc_eps), agc_mask),
        optax.masked(optax.add_decayed_weights(cfg.weight_decay), weight_decay_mask),
        optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov),
    )


def learning_rate(step, *, peak_lr, warmup_steps, total_steps) -> jnp.ndarray:
    """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine decay to 0 at
    `total_steps` ([B21] recipe shape; [S23] lays it over each run's own length).

    All arguments may be traced arrays: no Python branching on them. Convention: the
    update with index `step` (0-based) uses `learning_rate(step)`, so with warmup the
    first update has LR 0 (its gradient still enters the momentum trace) and the last
    update (step = total_steps - 1) has a small positive LR; LR reaches 0 at
    `step == total_steps`. Steps past the end stay at 0.
    """
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.asarray(warmup_steps, jnp.float32)
    total = jnp.asarray(total_steps, jnp.float32)
    warm = step / jnp.maximum(warmup, 1.0)
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.asarray(peak_lr, jnp.float32) * jnp.where(step < warmup, warm, cosine)


def schedule(decay: str) -> Callable:
    """The learning-rate schedule a recipe names: warmup from 0, then "cosine" (the NFNet
    schedule above) or "linear" decay to 0 at total_steps; the same step convention and
    traced arguments, so one compilation serves every LR and run length. Shared by the
    ViT, CoAtNet and MBConv recipes."""
    if decay == "cosine":
        return learning_rate

    def linear(step, *, peak_lr, warmup_steps, total_steps):
        step = jnp.asarray(step, jnp.float32)
        warmup = jnp.asarray(warmup_steps, jnp.float32)
        total = jnp.asarray(total_steps, jnp.float32)
        warm = step / jnp.maximum(warmup, 1.0)
        progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
        return jnp.asarray(peak_lr, jnp.float32) * jnp.where(step < warmup, warm, 1.0 - progress)

    return linear


def apply_updates(params, direction, lr) -> Any:
    """params - lr * direction (SGD's descent step), keeping each leaf's dtype."""
    return jax.tree.map(lambda p, d: (p - lr * d).astype(p.dtype), params, direction)


# ------------------------------------------------------------ the recipe, as a family sees it


class Recipe(NamedTuple):
    """What a train step needs from a family's recipe (scaling/models/registry.py):
    `optimizer` turns gradients into a direction; `learning_rate(step, peak_lr=...,
    warmup_steps=..., total_steps=...)` is the traced schedule; `apply_updates(params,
    direction, lr, peak_lr)` takes the step (peak_lr lets a decoupled weight decay follow
    the schedule's multiplier lr / peak_lr)."""

    optimizer: optax.GradientTransformation
    learning_rate: Callable
    apply_updates: Callable


def make_recipe(cfg: OptimConfig = OptimConfig()) -> Recipe:
    """NFNet's recipe: the chain above, warmup + cosine, params - lr * direction."""
    return Recipe(make_optimizer(cfg), learning_rate,
                  lambda params, direction, lr, peak_lr: apply_updates(params, direction, lr))


def with_sam(recipe: Recipe, rho: float) -> Recipe:
    """The recipe with sharpness-aware steps ([S23] fine-tunes with SAM:
    docs/references.md#fine-tuning), using optax's implementation in opaque mode: each
    update first ascends by `rho` along the normalised gradient, then hands the gradient
    taken there to the recipe's own optimizer (AGC, decay, momentum against the real
    params). Its `update` needs `grad_fn(params, i)` (scaling/train/step.py passes it)."""
    from optax.contrib import normalize, sam

    ascent = optax.chain(normalize(), optax.sgd(rho))
    return recipe._replace(optimizer=sam(recipe.optimizer, ascent, sync_period=2, opaque_mode=True))
