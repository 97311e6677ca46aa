"""RunCounters (scaling/train/counters.py): the counters a checkpoint carries, and their
checkpoint meta form. Checkpoints written before RunCounters existed stored the same keys
as a plain dict; they must still restore, also when a key is missing."""
from __future__ import annotations

import grain
import jax.numpy as jnp
import orbax.checkpoint as ocp

from scaling.train.checkpoint import RunCheckpoints, fingerprint
from scaling.train.counters import RunCounters

# The meta item exactly as the old loop wrote it (its counters dict + step + fingerprint).
OLD_META = {"device_seconds": 12.5, "compile_seconds": 3.25, "eval_seconds": 0.75,
            "checkpoint_seconds": 0.5, "examples_seen": 256, "heldout_loss": 2.25,
            "heldout_accuracy": 0.125, "heldout_step": 8, "step": 8, "fingerprint": "ab12"}
OLD_KEYS = ["device_seconds", "compile_seconds", "eval_seconds", "checkpoint_seconds",
            "examples_seen", "heldout_loss", "heldout_accuracy", "heldout_step"]


def test_meta_round_trip_keeps_the_old_keys_and_order():
    counters = RunCounters.from_meta(OLD_META)  # step and fingerprint are not counters
    assert counters == RunCounters(device_seconds=12.5, compile_seconds=3.25, eval_seconds=0.75,
                                   checkpoint_seconds=0.5, examples_seen=256, heldout_loss=2.25,
                                   heldout_accuracy=0.125, heldout_step=8)
    meta = counters.to_meta()
    assert list(meta) == OLD_KEYS  # same keys, same order: the same meta JSON as before
    assert meta == {k: OLD_META[k] for k in OLD_KEYS}
    assert RunCounters.from_meta(meta) == counters


def test_meta_lacking_keys_takes_the_defaults():
    old = {"device_seconds": 4.0, "examples_seen": 64, "step": 2, "fingerprint": "x"}
    assert RunCounters.from_meta(old) == RunCounters(device_seconds=4.0, examples_seen=64)
    assert RunCounters.from_meta({}) == RunCounters()
    fresh = RunCounters().to_meta()
    assert fresh == {"device_seconds": 0.0, "compile_seconds": 0.0, "eval_seconds": 0.0,
                     "checkpoint_seconds": 0.0, "examples_seen": 0, "heldout_loss": None,
                     "heldout_accuracy": None, "heldout_step": None}


def test_checkpoint_with_old_meta_restores_its_counters(tmp_path):
    """A checkpoint saved the old way (meta = a plain dict, one key missing) restores
    through RunCheckpoints into RunCounters."""
    state = {"w": jnp.arange(3.0), "step": jnp.int32(8)}
    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(it)
    meta = {k: v for k, v in OLD_META.items() if k != "heldout_step"}
    meta["fingerprint"] = fingerprint(state)
    ckpts = RunCheckpoints(tmp_path / "checkpoints", every_steps=4, every_minutes=10.0)
    ckpts.manager.save(8, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(it),
        meta=ocp.args.JsonSave(meta)), force=True)
    ckpts.manager.wait_until_finished()
    ckpts.close()

    fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
    ckpts = RunCheckpoints(tmp_path / "checkpoints", every_steps=4, every_minutes=10.0)
    restored = ckpts.restore_latest({"w": jnp.zeros(3), "step": jnp.int32(0)}, fresh)
    ckpts.close()
    assert restored is not None
    state2, counters = restored
    assert int(state2["step"]) == 8 and next(fresh) == 1
    assert counters == RunCounters(device_seconds=12.5, compile_seconds=3.25, eval_seconds=0.75,
                                   checkpoint_seconds=0.5, examples_seen=256, heldout_loss=2.25,
                                   heldout_accuracy=0.125, heldout_step=None)


def test_checkpoint_saves_the_counters_as_the_old_meta(tmp_path):
    state = {"w": jnp.arange(3.0), "step": jnp.int32(4)}
    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    counters = RunCounters.from_meta(OLD_META)
    ckpts = RunCheckpoints(tmp_path / "checkpoints", every_steps=4, every_minutes=10.0)
    ckpts.save(4, state, it, counters)
    restored = ckpts.manager.restore(4, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    ckpts.close()
    meta = dict(restored["meta"])
    assert meta == dict({k: OLD_META[k] for k in OLD_KEYS}, step=4, fingerprint=fingerprint(state))
