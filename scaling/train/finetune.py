"""Fine-tuning: a run that starts from another finished run's final parameters.

A fine-tune run names its parent (`parent_trial_id`, identity) and where the parent's
files are (`parent_workdir`, operational). Before anything trains, the parent must be a
finished run (result.json says "done"), of the same architecture family, whose final
checkpoint belongs to the config stored beside it and is intact. Only the parameters are
taken (not the optimizer state or the data position): every parameter except the
classifier is copied; the classifier is this run's own fresh one (its seed, its number
of classes). Everything else (epochs, resolution, learning rate, optimizer) is this run's
own recipe (docs/training.md#fine-tuning).

Input channels may differ (procedural RGB pre-training, grayscale Fashion-MNIST
fine-tuning): a kernel that differs from the parent's only in its input-channel axis is
adapted by summing the parent's kernel over its channels (to 1 channel), or by spreading
a 1-channel kernel evenly over the channels (from 1 channel), so that a gray image gives
the same pre-activation as its RGB copy would have given the parent's raw kernel
(docs/training.md#fine-tuning says what this means for weight-standardised convs).
Any other difference of shape or structure is refused (BadInput).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scaling.errors import BadInput
from scaling.optim import CLASSIFIER_NAME, _path_names
from scaling.train.config import TrainConfig
from scaling.train.workdir import config_path, read_result


@dataclass(frozen=True)
class Parent:
    """A finished run a fine-tune starts from."""

    config: TrainConfig
    workdir: Path
    result: dict


def stage_of(config: TrainConfig | dict) -> str:
    """"finetune" for a run with a parent, else "pretrain" (the store's `stage`)."""
    parent = config.get("parent_trial_id") if isinstance(config, dict) else config.parent_trial_id
    return "pretrain" if parent is None else "finetune"


def read_parent(config: TrainConfig) -> Parent:
    """The parent run of a fine-tune config, checked to be finished and of the same
    family (BadInput otherwise: one line naming the parent and the fix)."""
    from scaling.models import registry

    pid = config.parent_trial_id
    if config.parent_workdir is None:
        raise BadInput(f"parent_workdir: fine-tune of {pid} needs the parent run's directory; "
                       "give parent_workdir (a sweep worker fills it from the store)")
    workdir = Path(config.parent_workdir).absolute()
    if not config_path(workdir).exists():
        raise BadInput(f"parent_trial_id: no run of parent {pid} in {workdir} (no config.json); "
                       "check the parent's id and its workdir")
    parent = TrainConfig.from_json(config_path(workdir).read_text())
    result = read_result(workdir)
    if result is None:
        raise BadInput(f"parent_trial_id: parent {pid} has not finished (no result in {workdir}); "
                       "fine-tune it once it is done")
    if result.get("status") != "done":
        raise BadInput(f"parent_trial_id: parent {pid} ended {result.get('status')!r}, not 'done'; "
                       "fine-tune a run that finished")
    mine, theirs = registry.run_family(config.model).name, registry.run_family(parent.model).name
    if mine != theirs:
        raise BadInput(f"model: {config.model or 'the family point'} is a {mine} model but parent {pid} is a "
                       f"{theirs} model ({parent.model}); fine-tune the parent's own model")
    return Parent(parent, workdir, result)


def parent_identity(workdir: Path | str) -> tuple[TrainConfig, str]:
    """The config of the run in `workdir` and the hash of its identity (what `scaling
    train --parent-workdir` records as the parent's id when none is given: it names the
    parent's computation, wherever its files are). BadInput when no run is there."""
    from scaling.train.config import identity_hash

    workdir = Path(workdir).absolute()
    if not config_path(workdir).exists():
        raise BadInput(f"parent_workdir: {workdir} holds no run (no config.json); give the directory of a "
                       "finished `scaling train` run")
    parent = TrainConfig.from_json(config_path(workdir).read_text())
    return parent, identity_hash(parent)


def _leaves(tree: Any) -> dict[tuple[str, ...], Any]:
    return {_path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _adapt_channels(theirs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A conv kernel (H, W, C_in, C_out) whose input channels differ: summed to 1, or a
    1-channel kernel spread evenly over C channels; None for any other difference."""
    if theirs.ndim != 4 or len(shape) != 4 or theirs.shape[:2] != shape[:2] or theirs.shape[3] != shape[3]:
        return None
    if shape[2] == 1:
        return theirs.sum(axis=2, keepdims=True)
    if theirs.shape[2] == 1:
        return np.repeat(theirs / shape[2], shape[2], axis=2)
    return None


def check_fit(theirs: dict, mine: dict, pid: str, *, keep_classifier: bool = False) -> None:
    """Parent leaf shapes `theirs` can start a run of leaf shapes `mine`: the same leaves
    outside the classifier, each of the same shape or differing only in its input
    channels (`_adapt_channels`); BadInput naming the first leaf that does not fit."""
    mine_keys = {k for k in mine if keep_classifier or CLASSIFIER_NAME not in k}
    their_keys = {k for k in theirs if keep_classifier or CLASSIFIER_NAME not in k}
    if mine_keys != their_keys:
        odd = sorted(mine_keys ^ their_keys)[0]
        raise BadInput(f"model: parameter {'/'.join(odd)} is in only one of parent {pid} and this run; "
                       "a fine-tune needs the parent's own architecture")
    for k in sorted(mine_keys):
        if CLASSIFIER_NAME in k and tuple(theirs[k]) != tuple(mine[k]):
            raise BadInput(f"reset_classifier: parent {pid}'s classifier {'/'.join(k)} has shape "
                           f"{tuple(theirs[k])}, this run's {tuple(mine[k])}; keep it only for the same classes")
        a, b = tuple(theirs[k]), tuple(mine[k])
        if a != b and _adapt_channels(np.zeros(a, np.float32), b) is None:
            raise BadInput(f"model: parameter {'/'.join(k)} has shape {a} in parent {pid} but {b} here; the "
                           "shapes are incompatible (same model, and for a ViT the parent's resolution)")


def transfer(parent_params: Any, fresh_params: Any, pid: str, *, keep_classifier: bool = False) -> Any:
    """`fresh_params` (this run's own initialisation) with every non-classifier leaf
    (every leaf with `keep_classifier`) replaced by the parent's; BadInput naming the
    first leaf that does not fit."""
    theirs = _leaves(parent_params)
    check_fit({k: np.shape(v) for k, v in theirs.items()},
              {k: np.shape(v) for k, v in _leaves(fresh_params).items()}, pid, keep_classifier=keep_classifier)

    def pick(path, leaf):
        names = _path_names(path)
        dtype = np.asarray(leaf).dtype
        if CLASSIFIER_NAME in names and not keep_classifier:
            return np.asarray(leaf)
        old = np.asarray(theirs[names])
        if old.shape == tuple(leaf.shape):
            return old.astype(dtype)
        return _adapt_channels(old, tuple(leaf.shape)).astype(dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh_params)


def frozen_mask(params: Any, trainable: str) -> Any:
    """True where a parameter is frozen: None when everything trains."""
    if trainable == "all":
        return None
    return jax.tree_util.tree_map_with_path(lambda path, _: CLASSIFIER_NAME not in _path_names(path), params)
