"""Orbax checkpoints of a run: model, optimizer state, data-iterator state and counters
saved in ONE atomic step; restore from the latest checkpoint that is complete and intact.

WHY each piece:
- Orbax writes a step into a temporary directory and renames it when every item is
  written, so a run killed mid-save leaves no half checkpoint that looks complete (the
  temporary directory is cleaned up on the next start).
- The data iterator's state (grain) is saved per process beside the model, so a resumed
  run sees every training example exactly once per epoch ([S23]'s pipeline did not).
- A checkpoint whose files were damaged after the fact may still load silently, so the
  meta item carries a SHA-256 of the model/optimizer arrays that is checked on restore;
  an unreadable or mismatching checkpoint is moved aside (never deleted) with a warning
  and the previous one is used. The fingerprint proves integrity, not identity, so the
  meta also carries the hash of the run's identity, and a checkpoint of another run is
  set aside too. Restore is all or nothing: nothing (not even the data iterator) changes
  until a checkpoint has passed both checks.
"""
from __future__ import annotations

import hashlib
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from scaling.train.counters import RunCounters

# Keep a few so that a damaged latest checkpoint has predecessors to fall back on.
MAX_TO_KEEP = 3


def fingerprint(tree: Any) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes (replicated arrays: local copy)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        arr = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(arr.dtype).encode() + str(arr.shape).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


class RunCheckpoints:
    """The checkpoints of one run directory: when to save, save, restore the latest good one."""

    def __init__(self, directory: Path, *, every_steps: int, every_minutes: float,
                 identity: str | None = None):
        self.directory = Path(directory).absolute()
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60.0
        self.last_save_time = time.monotonic()
        # The hash of the run's identity (scaling.train.config.identity_hash): saved with
        # every checkpoint and required on restore, so a checkpoint copied in from another
        # run of the same shape (another lr, seed, ...) is set aside, not resumed from.
        self.identity = identity
        options = ocp.CheckpointManagerOptions(
            max_to_keep=MAX_TO_KEEP, create=True, cleanup_tmp_directories=True,
            # Synchronous: the pause is measured and excluded from device time, and the
            # donated train-state buffers are never read after the next step reuses them.
            enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # ---- when ------------------------------------------------------------------
    def due(self, step: int, total_steps: int) -> bool:
        """Every N steps, every M minutes, and at the end. Same answer on every process."""
        if step % self.every_steps == 0 or step == total_steps:
            return True
        timed_out = time.monotonic() - self.last_save_time >= self.every_seconds
        if jax.process_count() > 1:
            # Clocks differ between hosts: process 0 decides, every 10 steps, for all.
            if step % 10:
                return False
            from jax.experimental import multihost_utils

            timed_out = bool(multihost_utils.broadcast_one_to_all(np.asarray(timed_out)))
        return timed_out

    # ---- save / restore ----------------------------------------------------------
    def save(self, step: int, state: dict, data_iterator: Any, counters: RunCounters) -> None:
        meta = dict(counters.to_meta(), step=step, fingerprint=fingerprint(state))
        if self.identity is not None:
            meta["identity"] = self.identity
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()
        self.last_save_time = time.monotonic()

    def restore_latest(self, state_like: dict, data_iterator: Any) -> tuple[dict, RunCounters] | None:
        """(state, counters) from the newest intact checkpoint of this run, or None.

        All or nothing: a checkpoint's arrays are verified (fingerprint, and identity when
        both sides have one) before the data iterator is touched, and the iterator is put
        back where it was if its own restore fails; so None always means "start over from
        step 0 with a fresh iterator", and the warning says so. `state_like` gives the
        structure, dtypes and shardings. Damaged checkpoints are moved to
        `<dir>/../checkpoints_bad/`, another run's to `<dir>/../checkpoints_foreign/`.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        initial = data_iterator.get_state()
        set_aside = 0
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                state, meta = dict(restored["state"]), dict(restored["meta"])
                theirs = meta.get("identity")
                if self.identity is not None and theirs is not None and theirs != self.identity:
                    warnings.warn(f"checkpoint at step {step} in {self.directory} belongs to another run "
                                  f"(identity {theirs[:12]}, this run {self.identity[:12]}); setting it aside",
                                  stacklevel=2)
                    self._move_aside(step, "checkpoints_foreign")
                    set_aside += 1
                    continue
                if meta.get("fingerprint") != fingerprint(state):
                    raise ValueError("the arrays do not match the fingerprint saved with them")
                self.manager.restore(step, args=ocp.args.Composite(
                    data=grain.checkpoint.CheckpointRestore(data_iterator)))
            except Exception as err:  # noqa: BLE001 - any failure means "not usable"
                data_iterator.set_state(initial)
                reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                warnings.warn(f"checkpoint at step {step} in {self.directory} is damaged "
                              f"({reason}); skipping it for the previous one", stacklevel=2)
                self._move_aside(step, "checkpoints_bad")
                set_aside += 1
                continue
            return state, RunCounters.from_meta(meta)
        if set_aside:
            warnings.warn(f"no usable checkpoint left in {self.directory} ({set_aside} set aside); "
                          "starting over from step 0 with fresh parameters and data order", stacklevel=2)
        return None

    def _move_aside(self, step: int, where: str) -> None:
        if jax.process_index() == 0:
            bad = self.directory.parent / where
            bad.mkdir(exist_ok=True)
            src = self.directory / str(step)
            if src.exists():
                shutil.move(str(src), str(bad / f"{step}-{int(time.time())}"))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint-move-aside-{step}")
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


def restore_params(directory: Path, *, step: int, identity: str, state_like: dict, name: str) -> Any:
    """The parameters (host numpy) of ANOTHER run's checkpoint at `step` (a fine-tune's
    parent), read-only: its meta must carry `identity` (the parent's own identity hash)
    and its arrays must match their fingerprint. Unlike `restore_latest` nothing is set
    aside or fallen back on: a missing, foreign or damaged checkpoint is BadInput naming
    the parent `name`. `state_like` gives the parent's state structure (shapes, dtypes,
    shardings; jax.ShapeDtypeStruct leaves will do)."""
    from scaling.errors import BadInput

    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise BadInput(f"parent_trial_id: parent {name} has no checkpoints in {directory}; re-run the parent")
    import logging

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax announces read-only mode twice per open
    try:
        manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, save_interval_steps=0))
    finally:
        absl.setLevel(level)
    try:
        if step not in manager.all_steps():
            raise BadInput(f"parent_trial_id: parent {name} has no checkpoint of its final step {step} in "
                           f"{directory}; re-run the parent")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state_like), meta=ocp.args.JsonRestore()))
        except Exception as err:  # noqa: BLE001 - any failure: unusable parent
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise BadInput(f"parent_trial_id: the final checkpoint of parent {name} in {directory} cannot be "
                           f"read as that run's state ({reason}); re-run the parent") from None
    finally:
        manager.close()
    state, meta = dict(restored["state"]), dict(restored["meta"])
    if meta.get("identity") != identity:
        raise BadInput(f"parent_trial_id: the checkpoint in {directory} belongs to another run than the config "
                       f"beside it (identity {str(meta.get('identity'))[:12]}, config {identity[:12]}); "
                       "point parent_workdir at the parent's own run directory")
    if meta.get("fingerprint") != fingerprint(state):
        raise BadInput(f"parent_trial_id: the final checkpoint of parent {name} in {directory} is damaged "
                       "(its arrays do not match their fingerprint); re-run the parent")
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x),
                        state["params"])
