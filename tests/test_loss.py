"""Cross-entropy, label smoothing, accuracy and exact evaluation over padded batches."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling.loss import accuracy, cross_entropy, eval_sums, per_example_cross_entropy


def _numpy_ce(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def test_cross_entropy_matches_numpy_and_is_stable():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    np.testing.assert_allclose(per_example_cross_entropy(jnp.array(logits), jnp.array(labels)),
                               _numpy_ce(logits.astype(np.float64), labels), rtol=1e-5)
    assert float(cross_entropy(logits, labels)) == pytest.approx(
        _numpy_ce(logits.astype(np.float64), labels).mean(), rel=1e-5)
    # Huge logits: a naive softmax overflows, log_softmax does not.
    big = jnp.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]], jnp.float32)
    out = per_example_cross_entropy(big, jnp.array([0, 0]))
    np.testing.assert_allclose(out, [0.0, 1e4], rtol=1e-6)
    # bf16 logits are computed in float32.
    bf16 = per_example_cross_entropy(big.astype(jnp.bfloat16), jnp.array([0, 0]))
    assert bf16.dtype == jnp.float32


def test_label_smoothing_matches_smoothed_one_hot_targets():
    rng = np.random.default_rng(1)
    logits = jnp.array(rng.normal(size=(4, 7)), jnp.float32)
    labels = jnp.array([6, 0, 3, 3])
    targets = optax.smooth_labels(jnp.eye(7)[labels], 0.1)  # (1 - s) one_hot + s / K
    expected = optax.softmax_cross_entropy(logits, targets).mean()
    assert float(cross_entropy(logits, labels, label_smoothing=0.1)) == pytest.approx(
        float(expected), rel=1e-6)
    assert float(cross_entropy(logits, labels, label_smoothing=0.1)) != pytest.approx(
        float(cross_entropy(logits, labels)), rel=1e-3)


def test_accuracy():
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.0, 1.0]])
    assert float(accuracy(logits, jnp.array([0, 1, 1, 0]))) == 0.5


def test_eval_sums_exact_over_padded_batches():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(10, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=10)
    full_loss = _numpy_ce(logits.astype(np.float64), labels).mean()
    full_acc = (logits.argmax(-1) == labels).mean()
    # Batches of 4: the last holds 2 real rows and 2 padding rows with NaN logits.
    totals = {"loss_sum": 0.0, "correct_sum": 0.0, "weight_sum": 0.0}
    for start in range(0, 10, 4):
        lg, lb = logits[start:start + 4], labels[start:start + 4]
        pad = 4 - len(lb)
        w = np.r_[np.ones(len(lb)), np.zeros(pad)]
        lg = np.r_[lg, np.full((pad, 3), np.nan, np.float32)]
        lb = np.r_[lb, np.zeros(pad, int)]
        for k, v in eval_sums(jnp.array(lg), jnp.array(lb), jnp.array(w)).items():
            totals[k] += float(v)
    assert totals["weight_sum"] == 10
    assert totals["loss_sum"] / totals["weight_sum"] == pytest.approx(full_loss, rel=1e-5)
    assert totals["correct_sum"] / totals["weight_sum"] == pytest.approx(full_acc)
    # No weights = every row counts.
    sums = eval_sums(jnp.array(logits), jnp.array(labels))
    assert float(sums["loss_sum"]) == pytest.approx(full_loss * 10, rel=1e-5)
