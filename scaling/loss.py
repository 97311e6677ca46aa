"""Softmax cross-entropy and accuracy for integer labels.

Two forms: means for the train step, and weighted SUMS for exact held-out
evaluation. Held-out batches are padded to a fixed shape (one compilation); the pad
rows get weight 0, the sums are accumulated over batches and divided once at the end,
so the result is the exact mean over the held-out set regardless of batch size.

Computed in float32 through `log_softmax` (stable for large logits, and for bf16
logits). Label smoothing uses the closed form (1 - s) * NLL + s * mean_k(-log p_k),
i.e. target = (1 - s) * one_hot + s / K, without materialising a [batch, K] one-hot
(K = 30k classes on JFT, docs/references.md#models-and-data).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def per_example_cross_entropy(logits, labels, *, label_smoothing: float = 0.0):
    """[B] losses for logits [B, K] and integer labels [B]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing == 0.0:  # a Python float: decided at trace time
        return nll
    uniform = -jnp.mean(logp, axis=-1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


def cross_entropy(logits, labels, *, label_smoothing: float = 0.0) -> jnp.ndarray:
    """Mean softmax cross-entropy over the batch (the training loss)."""
    return jnp.mean(per_example_cross_entropy(logits, labels, label_smoothing=label_smoothing))


def accuracy(logits, labels) -> jnp.ndarray:
    """Mean top-1 accuracy over the batch."""
    return jnp.mean(correct(logits, labels))


def correct(logits, labels) -> jnp.ndarray:
    """[B] 1.0 where the arg-max class equals the label, else 0.0."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def eval_sums(logits, labels, weights=None) -> dict[str, jnp.ndarray]:
    """Weighted sums for exact evaluation over padded batches.

    `weights` [B] (1 for real rows, 0 for padding; default all 1). Returns
    {"loss_sum", "correct_sum", "weight_sum"}; the held-out loss is
    sum(loss_sum) / sum(weight_sum) over all batches. No label smoothing: held-out
    loss is plain cross-entropy.
    """
    if weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    weights = weights.astype(jnp.float32)
    # Zero the loss of padded rows with `where`, not only by multiplication, so garbage
    # (e.g. NaN logits) in padding cannot leak into the sum.
    keep = weights > 0
    loss = jnp.where(keep, per_example_cross_entropy(logits, labels), 0.0)
    hits = jnp.where(keep, correct(logits, labels), 0.0)
    return {
        "loss_sum": jnp.sum(loss * weights),
        "correct_sum": jnp.sum(hits * weights),
        "weight_sum": jnp.sum(weights),
    }
