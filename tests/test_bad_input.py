"""Bad input that used to reach the workers, refused as classes (one parametrized table each).

Classes (the reliability issue's items 6-12):
  6  a changed spec under a stored sweep's name          CHANGED_SPECS, KEPT_SPECS
  7  specs: everything a trial needs, at expansion         BAD_SPECS, UNCHECKED_DATA
  8  exit codes: failed trials exit 1, refusals 2          FAILED_TRIALS, REFUSED_STORE_COMMANDS
  9  options: every number in a range                      BAD_OPTIONS
  10 stores: one opening path, refusing bad stores         BAD_STORES x STORE_COMMANDS, UNKNOWN_SWEEPS
  11 files: imports, specs, outputs, one row validator     BAD_FILES, BAD_ROWS x ROW_COMMANDS, BAD_OUTPUTS
  12 smaller: procedural options, drivers, workdir lock,   BAD_PROCEDURAL, test_workdir_*, test_ctrl_c_*
     Ctrl-C in `scaling train`
Every refusal asserts the exit code (2 bad input, 1 runtime failure), ONE stderr line
`error: <field>...` naming the field, no traceback, and that no byte of the scratch
directory changed (the store and every other file, and nothing new created). The
commands run in-process through the console entry point (`study.cli.main`), except the
few that start worker processes.
"""
from __future__ import annotations

import gc
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from study.cli import main

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SMOKE = (REPO / "sweeps" / "specs" / "smoke.toml").read_text()
SMOKE_DATA = "procedural:classes=10,train_size=64,heldout=40,res=16"
TINY = ["--depth-mult", "0.25", "--width-mult", "0.03125", "--dataset", SMOKE_DATA, "--batch", "8",
        "--resolution", "16", "--checkpoint-steps", "2", "--compile-cache", ""]
GOOD_ROW = dict(model="F0", params=71_500_000, examples_seen=1_281_167, lr=0.4, heldout_loss=2.5,
                train_flops=3 * 2 * 12.38e9 * 1_281_167, epochs=1.0)


# ---------------------------------------------------------------- helpers

def call(argv: list[str], capsys) -> tuple[int, str, str]:
    """`scaling ARGV` in-process: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as done:
        rc = done.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def assert_refused(rc: int, err: str, code: int, field: str) -> None:
    """Exit `code`, one stderr line `error: <key>: ...` whose key is the field (or ends in
    `.field`: `grid.depth_mult`), or naming '--option' as click does; no traceback."""
    lines = err.strip().splitlines()
    assert rc == code, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), lines[0]
    key = lines[0].removeprefix("error: ").split(":")[0]
    assert key == field or key.endswith(f".{field}") or f"'{field}'" in lines[0], lines[0]


def refuses(argv, capsys, root: Path, code: int, field: str) -> str:
    """Run argv; assert the refusal and that nothing under root changed. Returns the line."""
    before = tree(root)
    rc, _, err = call(argv, capsys)
    assert_refused(rc, err, code, field)
    assert tree(root) == before, "a refused command changed or created files"
    return err.strip()


def edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_store(root: Path, capsys, spec_text: str = SMOKE, name: str = "runs.db") -> str:
    """A store holding the (smoke) spec's sweep, enqueued by `sweep run --workers 0`."""
    url = f"sqlite:///{root / name}"
    (root / "base.toml").write_text(spec_text)
    rc, _, err = call(["sweep", "run", root / "base.toml", "--workers", "0", "--store", url], capsys)
    assert rc == 0, err
    return url


# ---------------------------------------------------------------- 6: a changed spec

# (what changes in the smoke spec, the field the refusal names). The sweep keeps its
# name ("smoke"), so each would mix its trials with the stored ones under a new policy.
CHANGED_SPECS = [
    ([("lr = [0.1, 0.2]", "lr = [0.1, 0.4]")], "grid.lr"),
    ([("lr = [0.1, 0.2]", "lr = [0.1, 0.2, 0.4]")], "grid.lr"),  # more LRs move the extension's grid edges
    ([("lr = [0.1, 0.2]", "lr = { centre = 0.15, steps = 1 }")], "grid.lr"),
    ([("enabled = true", "enabled = false")], "lr_extension"),
    ([("\nmax_steps = 1", "\nmax_steps = 3")], "lr_extension"),
    ([("\nmax_steps = 1", "\nmax_steps = 1\nmax_lr = 0.3")], "lr_extension"),
    ([("\nmax_steps = 1", "\nmax_steps = 1\nmin_lr = 0.01")], "lr_extension"),
    ([("heldout=40", "heldout=39"), ("heldout_examples = 40", "heldout_examples = 39")], "dataset"),
    ([("res=16", "res=24")], "dataset"),
    ([("batch_size = 8", "batch_size = 4")], "batch_size"),
    ([("\nresolution = 16", "\nresolution = 24"), ("eval_resolution = 16", "eval_resolution = 24")], "resolution"),
    ([("eval_resolution = 16", "eval_resolution = 24")], "eval_resolution"),
    ([("[recipe]", "[recipe]\noptimizer = { weight_decay = 0.0 }")], "recipe"),
    ([("[recipe]", "[recipe]\ncompute_dtype = \"bfloat16\"")], "recipe"),
    ([("[recipe]", "[recipe]\nutilization = 0.5")], "recipe"),
    ([("[recipe]", "[recipe]\nhardware = \"cpu\"")], "recipe"),
    ([("seeds = [0]", "seeds = [1]")], "seeds"),
    ([("epochs = [0.5]", "epochs = [1.0]")], "grid.epochs"),
    ([("width_mults = [0.03125]", "width_mults = [0.0625]")], "grid.models"),
    ([("[grid]", "[isoflop]"), ("epochs = [0.5]", "budgets = [1e9]")], "grid"),
]
# Changes that keep every stored cell and the policy: allowed (exit 0).
KEPT_SPECS = [
    [],  # the same spec again
    [("checkpoint_every_steps = 2", "checkpoint_every_steps = 5")],  # operational
    [("[recipe]", "[recipe]\neval_points = 1")],
    [("[recipe]", "[recipe]\ndata_workers = 1")],
    [("[recipe]", "[recipe]\ncompute_dtype = \"float32\"")],  # a field at its default is the same as absent
    [("epochs = [0.5]", "epochs = [0.5, 1.0]")],  # adds cells
    [("seeds = [0]", "seeds = [0, 1]")],
    [("width_mults = [0.03125]", "width_mults = [0.03125, 0.0625]")],
    [("report_unit = \"cpu-core-hours\"", "report_unit = \"flops\"")],
    [("name = \"smoke\"", "name = \"smoke\"\ndescription = \"again\"")],
]


@pytest.mark.parametrize("changes, field", CHANGED_SPECS, ids=[f"{f}:{c[0][1][:30]}" for c, f in CHANGED_SPECS])
def test_a_changed_spec_under_a_stored_name_is_refused(scratch, capsys, changes, field):
    url = make_store(scratch, capsys)
    (scratch / "changed.toml").write_text(edit(SMOKE, *changes))
    line = refuses(["sweep", "run", "changed.toml", "--workers", "0", "--store", url], capsys, scratch, 2, field)
    assert "sweep 'smoke'" in line and 'name = "smoke-v2"' in line and "nothing was changed" in line


@pytest.mark.parametrize("changes", KEPT_SPECS, ids=[c[0][1][:30] if c else "same" for c in KEPT_SPECS])
def test_a_spec_that_keeps_every_stored_cell_runs(scratch, capsys, changes):
    url = make_store(scratch, capsys)
    (scratch / "again.toml").write_text(edit(SMOKE, *changes))
    rc, out, err = call(["sweep", "run", "again.toml", "--workers", "0", "--store", url], capsys)
    assert rc == 0 and "sweep smoke:" in out, err


@pytest.mark.parametrize("changes, field", [
    ([("[recipe]", "[recipe]\noptimizer = { weight_decay = 0.0 }")], "recipe.optimizer"),
    ([("batch_size = 8", "batch_size = 4")], "batch_size"),
    ([("res=16", "res=24")], "dataset"),
])
def test_a_sweep_recorded_by_an_older_program_still_keeps_its_cells(scratch, capsys, changes, field):
    """Its record (from before this check) holds the LR policy only: the stored trials'
    own configs show the change."""
    url = make_store(scratch, capsys)
    con = sqlite3.connect(scratch / "runs.db")
    old = json.loads(con.execute("SELECT spec_json FROM sweeps").fetchone()[0])
    con.execute("UPDATE sweeps SET spec_json = ?", (json.dumps({k: old[k] for k in
                                                                ("mode", "lr_extension", "report_unit", "lrs")}),))
    con.commit()
    con.close()
    (scratch / "changed.toml").write_text(edit(SMOKE, *changes))
    refuses(["sweep", "run", "changed.toml", "--workers", "0", "--store", url], capsys, scratch, 2, field)


# ---------------------------------------------------------------- 7: specs

# (changes to the smoke spec, the field named). Each used to pass `sweep plan` and
# `--dry-run` and be enqueued, then fail trial by trial.
BAD_SPECS = [
    ([(SMOKE_DATA, "procedurl:classes=10")], "dataset"),
    ([(SMOKE_DATA, SMOKE_DATA + ",colour=2")], "dataset"),
    ([(SMOKE_DATA, "procedural:classes=10,train_size=64,heldout=40,res=0")], "dataset"),
    ([(SMOKE_DATA, "procedural:classes=10,train_size=64,heldout=0,res=16"), ("heldout_examples = 40", "")], "dataset"),
    ([(SMOKE_DATA, SMOKE_DATA + ",seed=-1")], "dataset"),
    ([(SMOKE_DATA, SMOKE_DATA + ",noise=nan")], "dataset"),
    ([(SMOKE_DATA, SMOKE_DATA + ",classes=12")], "dataset"),
    ([(SMOKE_DATA, "x" * 201)], "dataset"),
    ([("num_classes = 10", "num_classes = 12")], "num_classes"),
    ([("train_examples = 64", "train_examples = 65")], "train_examples"),
    ([("batch_size = 8", "batch_size = 128")], "batch_size"),  # larger than an epoch
    ([("epochs = [0.5]", "epochs = [1e12]")], "grid.epochs"),  # beyond the int32 step counter
    ([("epochs = [0.5]", "epochs = [0.01]")], "grid.epochs"),  # less than one step
    ([("epochs = [0.5]", "epochs = [inf]")], "grid.epochs"),
    ([("[grid]", "[isoflop]"), ("epochs = [0.5]", "budgets = [1e300]")], "isoflop.budgets"),
    ([("[grid]", "[isoflop]"), ("epochs = [0.5]", "budgets = [1e3]")], "isoflop.budgets"),
    ([("lr = [0.1, 0.2]", "lr = [0.1, 1e400]")], "grid.lr"),
    ([("lr = [0.1, 0.2]", "lr = { centre = 0.1, steps = 1000000000 }")], "grid.lr.steps"),
    ([("seeds = [0]", "seeds = [0, 3000000000]")], "seeds"),
    ([("\nresolution = 16", "\nresolution = 4")], "resolution"),
    ([("\nresolution = 16", "\nresolution = 100000")], "resolution"),
    ([("eval_resolution = 16", "eval_resolution = 5000")], "eval_resolution"),
    ([("depth_mults = [0.25]", "depth_mults = [1e9]")], "depth_mult"),
    ([("width_mults = [0.03125]", "width_mults = [1e9]")], "width_mult"),
    ([("[recipe]", "[recipe]\noptimizer = { agc_clp = 0.01 }")], "recipe.optimizer.agc_clp"),
    ([("[recipe]", "[recipe]\neval_points = 1000000")], "recipe.eval_points"),
    ([("[recipe]", "[recipe]\ndata_workers = 100000")], "recipe.data_workers"),
    ([("[recipe]", "[recipe]\ncheckpoint_every_minutes = nan")], "recipe.checkpoint_every_minutes"),
    ([("enabled = true", "enabled = \"no\"")], "lr_extension.enabled"),
    ([("\nmax_steps = 1", "\nmax_steps = 2.5")], "lr_extension.max_steps"),
    ([("\nmax_steps = 1", "\nmax_steps = 1000000")], "lr_extension.max_steps"),
    ([("\nmax_steps = 1", "\nmax_steps = 1\nmin_lr = nan")], "lr_extension.min_lr"),
    ([("\nmax_steps = 1", "\nmax_steps = 1\nmax_lr = -1.0")], "lr_extension.max_lr"),
    ([("report_unit = \"cpu-core-hours\"", "report_unit = \"furlongs\"")], "report_unit"),
    ([("report_unit = \"cpu-core-hours\"", "report_unit = \"epochs\"")], "report_unit"),
    ([("name = \"smoke\"", "name = \"" + "n" * 101 + "\"")], "name"),
    # [finetune]: the downstream table, typed like the rest (parents in the store: tests/test_finetune_sweep.py)
    ([("\nmax_steps = 1", "\nmax_steps = 1\n[finetune]\nepochs = [1.0]\nlr = [0.1]")], "finetune.dataset"),
    ([("\nmax_steps = 1", f"\nmax_steps = 1\n[finetune]\ndataset = \"{SMOKE_DATA}\"\nepochs = [1.0]\nlr = [0.1]\n"
                          "parents = \"bset\"")], "finetune.parents"),
    ([("\nmax_steps = 1", f"\nmax_steps = 1\n[finetune]\ndataset = \"{SMOKE_DATA}\"\nepochs = [1.0]\nlr = [0.1]\n"
                          "trainable = \"top\"")], "finetune.trainable"),
    ([("\nmax_steps = 1", f"\nmax_steps = 1\n[finetune]\ndataset = \"{SMOKE_DATA}\"\nepochs = [1.0]\nlr = [0.1]\n"
                          "sam_rho = -1.0")], "finetune.sam_rho"),
]
SPEC_COMMANDS = {"plan": ["sweep", "plan"], "dry-run": ["sweep", "run", "--dry-run"],
                 "run": ["sweep", "run", "--workers", "0", "--store", "sqlite:///runs.db"]}


def _spec_argv(command: str, spec: str) -> list[str]:
    argv = SPEC_COMMANDS[command]
    return argv[:2] + [spec] + argv[2:]


@pytest.mark.parametrize("command", SPEC_COMMANDS)
@pytest.mark.parametrize("changes, field", BAD_SPECS, ids=[f"{f}:{c[-1][1][:24]}" for c, f in BAD_SPECS])
def test_a_spec_a_trial_could_not_run_is_refused_before_the_store(scratch, capsys, command, changes, field):
    from sweeps.store import Store

    Store("sqlite:///runs.db").dispose()  # an existing store: its bytes must not change
    (scratch / "bad.toml").write_text(edit(SMOKE, *changes))
    refuses(_spec_argv(command, "bad.toml"), capsys, scratch, 2, field)


def _folder(root: Path, classes: int) -> Path:
    for c in range(classes):
        (root / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            (root / "imgs" / f"c{c}" / f"{i}.png").write_bytes(b"not decoded at expansion")
    return root / "imgs"


def _folder_spec(dataset: str, extra: str = "") -> str:
    text = edit(SMOKE, (f'"{SMOKE_DATA}"', f'"{dataset}"'), ("num_classes = 10", extra),
                ("train_examples = 64", ""), ("heldout_examples = 40", ""), ("batch_size = 8", "batch_size = 2"))
    return text


# (dataset, what the spec adds, field; None: plan and dry-run take it, noting it was not checked)
UNCHECKED_DATA = [
    ("folder:{root}/nowhere", "num_classes = 10\ntrain_examples = 64", None),
    ("arrayrecord:{root}/nowhere/*.array_record", "num_classes = 10\ntrain_examples = 64", None),
    ("cifar10:{root}/nowhere", "num_classes = 10\ntrain_examples = 64", None),
    ("folder:{root}/imgs", "", "dataset"),  # one class folder: nothing to learn
]


@pytest.mark.parametrize("dataset, extra, field", UNCHECKED_DATA, ids=[d[0].split(":")[0] + str(i) for i, d in
                                                                      enumerate(UNCHECKED_DATA)])
@pytest.mark.parametrize("command", SPEC_COMMANDS)
def test_a_dataset_this_machine_lacks(scratch, capsys, dataset, extra, field, command):
    """`sweep plan`/`--dry-run` plan a pod's sweep from a laptop (the data is elsewhere): they
    accept it with a one-line note; `sweep run` trains here, so the data must be here."""
    from sweeps.store import Store

    _folder(scratch, 1)
    Store("sqlite:///runs.db").dispose()
    (scratch / "s.toml").write_text(_folder_spec(dataset.format(root=scratch), extra))
    if field is None and command != "run":
        rc, out, err = call(_spec_argv(command, "s.toml"), capsys)
        assert rc == 0, err
        (note,) = err.strip().splitlines()
        assert note.startswith("note: dataset ") and "not checked" in note
        return
    refuses(_spec_argv(command, "s.toml"), capsys, scratch, 2, field or "dataset")


# ---------------------------------------------------------------- 8: exit codes

def failing_trainer(config: dict, workdir: Path, **_kw):
    """Run by worker processes (`--trainer test_bad_input:failing_trainer`): TRIAL_FAILS says how."""
    from scaling.errors import BadInput

    kind = os.environ["TRIAL_FAILS"]
    if kind == "bad-input":
        raise BadInput("dataset: the folder vanished (test)")
    if kind == "disk-full":
        raise OSError(28, "No space left on device")
    if kind == "bug":
        raise ZeroDivisionError("division by zero (test)")
    status = "diverged" if kind == "diverged" else "done"
    return {"status": status, "heldout_loss": None if status == "diverged" else 2.0 + config["lr"],
            "diverged_step": 1 if status == "diverged" else None, "train_flops": 1e9, "examples_seen": 32,
            "params": 1000, "flops_per_example": 1e6}


def _preempt_every_trial(url: str, times: int) -> None:
    """Every trial as `times` pre-emptions leave it: claimed `times` times, its last
    worker gone (killed) and its lease run out."""
    from datetime import datetime, timezone

    from sweeps.schema import trials
    from sweeps.store import Store

    store = Store(url)
    with store.engine.begin() as conn:
        conn.execute(trials.update().values(status="running", attempts=times, worker="preempted-host:1:x",
                                            lease_expires_at=datetime(2020, 1, 1, tzinfo=timezone.utc)))
    store.dispose()


# (how the trials end, exit code, what the stderr line holds)
FAILED_TRIALS = [
    ("bad-input", 1, "sweep smoke: 2 of 2 trials failed"),
    ("disk-full", 1, "sweep smoke: 2 of 2 trials failed"),
    ("bug", 1, "sweep smoke: 2 of 2 trials failed"),
    ("preempted", 1, "sweep smoke: 2 of 2 trials failed"),
    ("diverged", 0, None),  # a diverged trial is a result, not a failure
    ("done", 0, None),
]


@pytest.mark.parametrize("how, code, line", FAILED_TRIALS, ids=[f[0] for f in FAILED_TRIALS])
def test_sweep_run_exits_1_when_trials_failed(scratch, capsys, monkeypatch, how, code, line):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TRIAL_FAILS", how)
    spec = scratch / "s.toml"
    spec.write_text(edit(SMOKE, ("enabled = true", "enabled = false")))
    url = f"sqlite:///{scratch / 'runs.db'}"
    if how == "preempted":  # three pre-emptions used up every trial's attempts
        assert call(["sweep", "run", spec, "--workers", "0", "--store", url], capsys)[0] == 0
        _preempt_every_trial(url, 3)
    rc, out, err = call(["sweep", "run", spec, "--workers", "1", "--max-attempts", "3", "--store", url,
                         "--trainer", "test_bad_input:failing_trainer"], capsys)
    assert rc == code, (err, out)
    assert out.startswith("sweep smoke:"), out  # the summary is printed either way
    if line is None:
        assert err == "", err
        return
    assert_refused(rc, err, 1, "sweep smoke")  # the key: the sweep
    assert line in err and f"`scaling sweep status --store '{url}' --sweep 'smoke'`" in err


def _newer_schema_store(root: Path, capsys) -> str:
    url = make_store(root, capsys)
    con = sqlite3.connect(root / "runs.db")
    con.execute("UPDATE schema_info SET version = version + 1")
    con.commit()
    con.close()
    return url


@pytest.fixture
def runs_csv(scratch) -> Path:
    path = scratch / "runs.csv"
    pd.DataFrame([GOOD_ROW, dict(GOOD_ROW, lr=0.8, heldout_loss=2.4)]).to_csv(path, index=False)
    return path


def store_commands(url: str) -> dict[str, list]:
    """Every command that opens a store, on `url`."""
    return {
        "status": ["sweep", "status", "--store", url],
        "retry": ["sweep", "retry", "--store", url],
        "work": ["sweep", "work", "--store", url],
        "export": ["results", "export", "out.csv", "--store", url],
        "import": ["results", "import", "runs.csv", "--store", url],
        "analyze": ["analyze", "--store", url, "--out", "report"],
        "plan": ["plan", "--budget", "1e20", "--unit", "flops", "--store", url],
        "run": ["sweep", "run", "base.toml", "--workers", "0", "--store", url],
    }


@pytest.mark.parametrize("command", list(store_commands("x")))
def test_a_store_refusal_exits_2_in_every_command(scratch, capsys, runs_csv, command):
    """A store from a newer program: 1 for the store commands before, 2 for analyze/plan."""
    url = _newer_schema_store(scratch, capsys)
    line = refuses(store_commands(url)[command], capsys, scratch, 2, "store")
    from sweeps.schema import SCHEMA_VERSION

    assert f"schema version {SCHEMA_VERSION + 1}, this program knows up to {SCHEMA_VERSION}" in line


# ---------------------------------------------------------------- 9: options

WD = "wd"
BAD_OPTIONS = [
    (["sweep", "work", "--lease", "0"], "--lease"),
    (["sweep", "work", "--lease", "-5"], "--lease"),
    (["sweep", "work", "--lease", "nan"], "--lease"),
    (["sweep", "work", "--lease", "inf"], "--lease"),
    (["sweep", "work", "--lease", "1e9"], "--lease"),
    (["sweep", "work", "--poll", "0"], "--poll"),
    (["sweep", "work", "--poll", "nan"], "--poll"),
    (["sweep", "work", "--max-trials", "0"], "--max-trials"),
    (["sweep", "work", "--max-trials", "-2"], "--max-trials"),
    (["sweep", "work", "--max-attempts", "100000"], "--max-attempts"),
    (["sweep", "run", "smoke", "--lease", "0"], "--lease"),
    (["sweep", "run", "smoke", "--lease", "nan", "--dry-run"], "--lease"),
    (["sweep", "run", "smoke", "--workers", "100000"], "--workers"),
    (["analyze", "--csv", "runs.csv", "--resamples", "0"], "--resamples"),
    (["analyze", "--csv", "runs.csv", "--resamples", "100000000"], "--resamples"),
    (["analyze", "--csv", "runs.csv", "--resamples", "-5"], "--resamples"),
    (["analyze", "--csv", "runs.csv", "--seed", "-1"], "--seed"),
    (["plan", "--csv", "runs.csv", "--budget", "1e20", "--unit", "flops", "--seed", "-1"], "--seed"),
    (["demo", "--resamples", "0"], "--resamples"),
    (["demo", "--workers", "1000"], "--workers"),
    (["model-info", "F0", "--resolution", "7"], "--resolution"),
    (["model-info", "F0", "--resolution", "100000"], "--resolution"),
    (["model-info", "--depth-mult", "1e9", "--width-mult", "1"], "depth_mult"),
    (["model-info", "--depth-mult", "1", "--width-mult", "1e9"], "width_mult"),
    (["model-info", "nfnet-d1e9-w1"], "depth_mult"),
    (["model-info", "F0", "--classes", "0"], "--classes"),
    (["model-info", "F0", "--classes", "100000000"], "--classes"),
    (["train", *TINY, "--lr", "nan", "--epochs", "1", "--workdir", WD], "lr"),
    (["train", *TINY, "--lr", "0", "--epochs", "1", "--workdir", WD], "lr"),
    (["train", *TINY, "--lr", "0.1", "--epochs", "nan", "--workdir", WD], "epochs"),
    (["train", *TINY, "--lr", "0.1", "--epochs", "1e9", "--workdir", WD], "epochs"),  # int32 step counter
    (["train", *TINY, "--lr", "0.1", "--epochs", "1e-9", "--workdir", WD], "budget"),  # under one step
    (["train", *TINY, "--batch", "0", "--lr", "0.1", "--epochs", "1", "--workdir", WD], "batch_size"),
    (["train", *TINY, "--batch", "128", "--lr", "0.1", "--epochs", "1", "--workdir", WD], "batch_size"),
    (["train", *TINY, "--seed", "-1", "--lr", "0.1", "--epochs", "1", "--workdir", WD], "seed"),
    (["train", *TINY, "--eval-points", "100000", "--lr", "0.1", "--epochs", "1", "--workdir", WD], "eval_points"),
    (["train", *TINY, "--data-workers", "100000", "--lr", "0.1", "--epochs", "1", "--workdir", WD], "data_workers"),
    (["train", *TINY, "--checkpoint-minutes", "nan", "--lr", "0.1", "--epochs", "1", "--workdir", WD],
     "checkpoint_every_minutes"),
    (["train", *TINY, "--resolution", "7", "--lr", "0.1", "--epochs", "1", "--workdir", WD], "resolution"),
    (["train", *TINY, "--resolution", "100000", "--lr", "0.1", "--epochs", "1", "--workdir", WD], "resolution"),
    (["train", *TINY, "--utilization", "1.5", "--lr", "0.1", "--epochs", "1", "--workdir", WD], "utilization"),
    (["train", "--depth-mult", "1e9", "--width-mult", "1", "--lr", "0.1", "--epochs", "1", "--workdir", WD],
     "depth_mult"),
]


def _short(argv: list) -> str:
    """A test id: the command line without the tiny model's options and the workdir."""
    tiny = " ".join(TINY)
    return " ".join(str(a) for a in argv).replace(tiny, "").replace(f"--workdir {WD}", "").replace("  ", " ").strip()


@pytest.mark.parametrize("argv, field", BAD_OPTIONS, ids=[_short(a) for a, _ in BAD_OPTIONS])
def test_every_number_has_a_range(scratch, capsys, runs_csv, argv, field):
    refuses(argv, capsys, scratch, 2, field)
    assert not (scratch / WD).exists()


# ---------------------------------------------------------------- 10: stores

def _real_store(root: Path) -> Path:
    """A store with 36 trials (the demo grid): pages of rows to damage."""
    from sweeps.spec import expand, load_spec
    from sweeps.store import Store

    path = root / "store.db"
    store = Store(f"sqlite:///{path}")
    store.enqueue(expand(load_spec("demo")))
    store.dispose()
    return path


def _row_page(db: bytes, page: int) -> int:
    """Index of the first table-leaf page (b-tree type 13) holding a stored trial config:
    found by content, so a schema change that moves the rows does not move the damage."""
    for i in range(1, len(db) // page):
        body = db[i * page:(i + 1) * page]
        if body[0] == 13 and b"depth_mult" in body:
            return i
    raise AssertionError("no leaf page of trials rows in the store")


def _damaged(kind: str, root: Path) -> str:
    """A store URL of the given kind of damage, made under root."""
    db = root / "runs.db"
    if kind == "text file":
        db.write_text("model,params\nF0,71500000\n")
    elif kind == "random bytes":
        db.write_bytes(random.Random(0).randbytes(8192))
    elif kind == "sqlite header only":
        db.write_bytes(b"SQLite format 3\x00" + bytes(40))
    elif kind == "truncated":
        real = _real_store(root).read_bytes()
        db.write_bytes(real[: len(real) // 2])
    elif kind == "truncated mid-page":
        real = _real_store(root).read_bytes()
        db.write_bytes(real[: len(real) - 1000])
    elif kind == "page-corrupted":
        real = bytearray(_real_store(root).read_bytes())
        page = int.from_bytes(real[16:18], "big")
        at = _row_page(real, page) * page + 100  # inside a leaf page holding trials rows
        real[at:at + 1000] = random.Random(14).randbytes(1000)
        db.write_bytes(bytes(real))
    elif kind == "folder":
        db.mkdir()
    elif kind == "foreign tables":
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE trials (x INTEGER)")
        con.commit()
        con.close()
    elif kind == "empty file":
        db.write_bytes(b"")
    elif kind == "missing":
        return "sqlite:///nowhere/runs.db"
    elif kind == "psycopg2 driver":
        return "postgresql+psycopg2://u@127.0.0.1:9/db"
    elif kind == "mysql":
        return "mysql://u@127.0.0.1/db"
    elif kind == "not a url":
        return "results/runs.db"
    elif kind == "in memory":
        return "sqlite://"
    (root / "store.db").unlink(missing_ok=True)
    return f"sqlite:///{db}"


BAD_STORES = ["text file", "random bytes", "sqlite header only", "truncated", "truncated mid-page", "page-corrupted",
              "folder", "foreign tables", "empty file", "missing", "psycopg2 driver", "mysql", "not a url", "in memory"]
CREATES = ("import", "run")  # the commands that make a store where there is none (or an empty file)


STORE_CASES = [(kind, command) for kind in BAD_STORES for command in store_commands("x")
               if not (command in CREATES and kind in ("missing", "empty file"))]


@pytest.mark.parametrize("kind, command", STORE_CASES, ids=[f"{k}-{c}" for k, c in STORE_CASES])
def test_a_bad_store_is_refused_by_every_command(scratch, capsys, runs_csv, kind, command):
    (scratch / "base.toml").write_text(SMOKE)
    url = _damaged(kind, scratch)
    refuses(store_commands(url)[command], capsys, scratch, 2, "store")


def test_page_corruption_is_found_by_retry_which_used_to_miss_it(scratch, capsys):
    """`sweep retry` reads only failed rows through an index; the damaged page holds others."""
    url = _damaged("page-corrupted", scratch)
    con = sqlite3.connect(f"file:{scratch / 'runs.db'}?mode=ro", uri=True)
    assert con.execute("SELECT count(*) FROM trials WHERE status = 'failed'").fetchone() == (0,)  # reads fine
    con.close()
    line = refuses(["sweep", "retry", "--store", url], capsys, scratch, 2, "store")
    assert "corrupt" in line and "quick_check" in line


UNKNOWN_SWEEPS = [
    ["sweep", "status", "--sweep", "smoek"],
    ["sweep", "work", "--sweep", "smoek"],
    ["sweep", "work", "--sweep", "smoke", "--sweep", "other"],
    ["results", "export", "out.csv", "--sweep", "smoek"],
    ["sweep", "retry", "--sweep", "smoek"],
]


@pytest.mark.parametrize("argv", UNKNOWN_SWEEPS, ids=[" ".join(a) for a in UNKNOWN_SWEEPS])
def test_an_unknown_sweep_is_refused(scratch, capsys, argv):
    url = make_store(scratch, capsys)
    line = refuses([*argv, "--store", url], capsys, scratch, 2, "sweep")
    assert "smoke" in line  # the known sweeps are listed


@pytest.mark.parametrize("argv", [["sweep", "work"], ["sweep", "status"], ["sweep", "retry"],
                                  ["results", "export", "out.csv"], ["analyze"],
                                  ["plan", "--budget", "1", "--unit", "flops"]])
def test_a_misspelt_relative_store_is_refused_and_located(scratch, capsys, argv):
    """Three slashes are relative to the working directory: the line says where that is,
    and nothing is created there."""
    line = refuses([*argv, "--store", "sqlite:///resutls/runs.db"], capsys, scratch, 2, "store")
    assert str(scratch / "resutls" / "runs.db") in line and "relative to the working directory" in line
    assert not (scratch / "resutls").exists()


def test_sweep_run_says_where_its_store_is(scratch, capsys):
    rc, out, err = call(["sweep", "run", "smoke", "--workers", "0", "--store", "sqlite:///results/r.db"], capsys)
    assert rc == 0, err
    assert f"store {scratch / 'results' / 'r.db'} (sqlite:///results/r.db is relative to the working directory)" in out


# ---------------------------------------------------------------- 11: files

BAD_FILES = [  # (file name, bytes, field)
    ("runs.csv", b"model,params\x00\x01\x02\xff\xfe", "file"),
    ("runs.csv", b"", "file"),
    ("runs.csv", "model,params,examples_seen,lr,heldout_loss,train_flops\nMod\u00e8le,1,1,1,1,10\n".encode("latin-1"),
     "file"),
    ("runs.csv", random.Random(1).randbytes(3000), "file"),
    ("runs.parquet", b"PAR1 this is not parquet at all PAR1", "file"),
    ("runs.parquet", b"", "file"),
    ("runs.parquet", random.Random(2).randbytes(3000), "file"),
    ("runs.txt", b"model,params\n", "file"),
    ("runs.csv/", b"", "file"),  # a folder
    ("runs.csv", b"\n\n", "file"),
]


@pytest.mark.parametrize("name, data, field", BAD_FILES, ids=[f"{n}:{d[:12]!r}" for n, d, _ in BAD_FILES])
def test_an_unreadable_import_file_is_refused(scratch, capsys, name, data, field):
    url = make_store(scratch, capsys)
    path = scratch / name.rstrip("/")
    if name.endswith("/"):
        path.mkdir()
    else:
        path.write_bytes(data)
    refuses(["results", "import", path, "--store", url], capsys, scratch, 2, field)


BAD_SPEC_FILES = [  # (bytes, or None for a folder; field)
    (b"\x00\x01binary\xff\xfe", "spec"),
    ("name = \"caf\u00e9\"\n".encode("latin-1"), "spec"),
    (None, "spec"),
    (b"", "dataset"),
    (b"name = [unclosed\n", "spec"),
    (b"grid = 3\n", "dataset"),
]


@pytest.mark.parametrize("command", SPEC_COMMANDS)
@pytest.mark.parametrize("data, field", BAD_SPEC_FILES, ids=[repr(d)[:16] for d, _ in BAD_SPEC_FILES])
def test_an_unreadable_spec_is_refused(scratch, capsys, command, data, field):
    path = scratch / "bad.toml"
    path.mkdir() if data is None else path.write_bytes(data)
    refuses(_spec_argv(command, "bad.toml"), capsys, scratch, 2, field)


# One validator for every file of runs: a row `results import` refuses, `analyze --csv`
# and `plan --csv` refuse too, naming the same column.
BAD_ROWS = [
    ({"params": -5}, "params"),
    ({"params": 0.4}, "params"),  # rounds to 0 (a fraction that rounds to >= 1 is kept, with a note)
    ({"train_flops": 10}, "train_flops"),
    ({"train_flops": float("inf")}, "train_flops"),
    ({"lr": 0}, "lr"),
    ({"lr": "fast"}, "lr"),
    ({"heldout_loss": -1.0}, "heldout_loss"),
    ({"heldout_loss": None}, "heldout_loss"),  # a finished run without its result
    ({"examples_seen": 0}, "examples_seen"),
    ({"heldout_accuracy": 1.5}, "heldout_accuracy"),
    ({"hardware": "tpu-v9"}, "hardware"),
    ({"status": "weird"}, "status"),
    ({"epochs": -1}, "epochs"),
    ({"seed": -1}, "seed"),
    ({"model": "m" * 101}, "model"),
    ({"device_seconds": float("nan"), "hardware": "cpu", "train_gflops": 1.0}, "train_gflops"),
]
ROW_COMMANDS = {"import": ["results", "import", "bad.csv", "--store", "sqlite:///runs.db"],
                "analyze": ["analyze", "--csv", "bad.csv", "--out", "report"],
                "plan": ["plan", "--csv", "bad.csv", "--budget", "1e20", "--unit", "flops"]}


@pytest.mark.parametrize("command", ROW_COMMANDS)
@pytest.mark.parametrize("bad, field", BAD_ROWS, ids=[f for _, f in BAD_ROWS])
def test_one_validator_for_imported_and_analysed_rows(scratch, capsys, command, bad, field):
    from sweeps.store import Store

    Store("sqlite:///runs.db").dispose()
    row = {k: v for k, v in {**GOOD_ROW, **bad}.items() if v is not None}
    pd.DataFrame([GOOD_ROW, row]).to_csv(scratch / "bad.csv", index=False)
    line = refuses(ROW_COMMANDS[command], capsys, scratch, 2, field)
    assert "row 3" in line or "train_gflops" in line


def test_unfinished_runs_in_a_csv_are_still_analysed_with_a_note(scratch, capsys):
    """What the shared validator lets through only for an analysis: pending/running rows
    (an export of a sweep still running), and diverged ones without a loss."""
    from analysis import synthetic

    df = synthetic.make_runs(models=("F0", "F1", "F3"), epochs=(0.5, 1, 2), lr_grid=(0.8, 1.6, 3.2), lr_curvature=0.05)
    df.loc[df.index[0], ["status", "heldout_loss"]] = ["pending", None]
    df.loc[df.index[1], ["status", "heldout_loss"]] = ["diverged", None]
    df.to_csv(scratch / "runs.csv", index=False)
    rc, out, err = call(["plan", "--csv", "runs.csv", "--budget", "1e22", "--unit", "flops"], capsys)
    assert rc == 0, err
    assert "ignored 1 unfinished trial(s)" in out and "excluded 1 diverged" in out


BAD_OUTPUTS = [  # (argv, what to put where, field)
    (["analyze", "--csv", "runs.csv", "--out", "afile"], "file", "--out"),
    (["analyze", "--csv", "runs.csv", "--out", "/proc/self/nope/report"], None, "--out"),
    (["train", *TINY, "--lr", "0.1", "--epochs", "0.5", "--workdir", "afile"], "file", "workdir"),
    (["train", *TINY, "--lr", "0.1", "--epochs", "0.5", "--workdir", "/proc/self/nope/wd"], None, "workdir"),
    (["train", *TINY, "--lr", "0.1", "--epochs", "0.5", "--workdir", WD, "--compile-cache", "afile"], "file",
     "compile_cache_dir"),
    (["train", *TINY, "--lr", "0.1", "--epochs", "0.5", "--workdir", WD, "--compile-cache", "/proc/self/nope/c"], None,
     "compile_cache_dir"),
    (["sweep", "run", "smoke", "--workers", "0", "--results-dir", "afile"], "file", "--results-dir"),
    (["sweep", "work", "--store", "sqlite:///runs.db", "--results-dir", "afile"], "file", "--results-dir"),
    (["results", "export", "afile", "--store", "sqlite:///runs.db"], "file", "out"),  # over an existing file
    (["results", "export", "adir", "--store", "sqlite:///runs.db"], "dir", "out"),
    (["results", "export", "afile/out.csv", "--store", "sqlite:///runs.db"], "file", "out"),
    (["results", "export", "/proc/self/nope/out.csv", "--store", "sqlite:///runs.db"], None, "out"),
]


@pytest.mark.parametrize("argv, put, field", BAD_OUTPUTS, ids=[_short(a) for a, _, _ in BAD_OUTPUTS])
def test_an_output_path_that_cannot_be_written_is_refused(scratch, capsys, runs_csv, argv, put, field):
    from sweeps.store import Store

    Store("sqlite:///runs.db").dispose()
    if put == "file":
        (scratch / "afile").write_text("someone's data\n")
    elif put == "dir":
        (scratch / "adir").mkdir()
    refuses(argv, capsys, scratch, 2, field)
    assert not (scratch / WD).exists()


def test_export_into_a_new_folder_and_over_a_file_with_force(scratch, capsys):
    url = make_store(scratch, capsys)
    rc, _, err = call(["results", "export", "new/deeper/out.csv", "--store", url], capsys)
    assert rc == 0 and (scratch / "new" / "deeper" / "out.csv").exists(), err
    first = (scratch / "new" / "deeper" / "out.csv").read_bytes()
    rc, _, err = call(["results", "export", "new/deeper/out.csv", "--store", url, "--force"], capsys)
    assert rc == 0 and (scratch / "new" / "deeper" / "out.csv").read_bytes() == first, err
    assert sorted(p.name for p in (scratch / "new" / "deeper").iterdir()) == ["out.csv"]  # no temporary left


# ---------------------------------------------------------------- 12: smaller ones

BAD_PROCEDURAL = [
    "seed=-1", "seed=1e20", "noise=nan", "noise=-0.1", "noise=2", "rotation=inf", "rotation=-5", "perturb=nan",
    "hue_jitter=inf", "classes=2.5", "classes=1", "classes=x", "res=1e400", "res=0", "res=100000",
    "heldout=0", "train_size=0", "train_size=1e30", "classes=10,classes=5", "res=16,res=32", "colour=2", "classes",
]


@pytest.mark.parametrize("options", BAD_PROCEDURAL)
def test_procedural_options_are_typed_ranged_and_given_once(scratch, capsys, options):
    line = refuses(["data", "info", f"procedural:{options}"], capsys, scratch, 2, "dataset")
    assert options.split("=")[0].split(",")[-1] in line


@pytest.mark.parametrize("url, fix", [
    ("postgresql+psycopg2://u@127.0.0.1:9/db", "postgresql://"),
    ("postgresql+asyncpg://u@127.0.0.1:9/db", "postgresql://"),
    ("sqlite+aiosqlite:///runs.db", "sqlite://"),
])
@pytest.mark.parametrize("command", ["status", "analyze", "run", "work"])
def test_another_driver_is_one_line_naming_the_fix(scratch, capsys, runs_csv, url, fix, command):
    (scratch / "base.toml").write_text(SMOKE)
    line = refuses(store_commands(url)[command], capsys, scratch, 2, "store")
    assert "is not supported" in line and fix in line


_HOLD = """
import sys, time
from pathlib import Path
from scaling.train.workdir import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_workdir_in_use_is_refused_and_a_killed_holder_releases_it(scratch, capsys):
    """Two runs on one workdir wrote their metrics twice; now the second is refused (exit 1,
    the files as they were), and a SIGKILLed holder leaves no stale lock."""
    from scaling.train.workdir import WorkdirBusy, locked

    wd = scratch / WD
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(wd)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (wd / "metrics.jsonl").write_text('{"step": 1}\n')
        refuses(["train", *TINY, "--lr", "0.1", "--epochs", "0.5", "--workdir", wd], capsys, scratch, 1, "workdir")
        with pytest.raises(WorkdirBusy, match=r"in use by another run \(pid \d+"):
            with locked(wd):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with locked(wd):  # the kernel released the killed holder's lock
        assert (wd / "lock").exists()


def test_a_run_refused_during_setup_leaves_no_workdir(scratch, capsys):
    """The workdir is locked before the run is set up; bad input found then (here a step
    count beyond int32) leaves no empty workdir behind."""
    refuses(["train", *TINY, "--lr", "0.1", "--epochs", "1e9", "--workdir", WD], capsys, scratch, 2, "epochs")
    assert not (scratch / WD).exists()


SWALLOWED = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point of the test


@SWALLOWED
def test_ctrl_c_inside_a_gc_callback_is_not_lost():
    """jax's `_xla_gc_callback` runs inside Python's garbage collector; a KeyboardInterrupt
    raised there is printed as "Exception ignored" and dropped. `scaling train`'s handler
    records the request too, so the loop can act on it."""
    from scaling.commands.train import InterruptFlag

    def callback(phase, _info):
        if phase == "start":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside the callback

    with InterruptFlag() as flag:
        gc.callbacks.append(callback)
        try:
            gc.collect()  # the KeyboardInterrupt is swallowed by the collector
        finally:
            gc.callbacks.remove(callback)
        assert flag()  # ... but the request is kept


@SWALLOWED
def test_ctrl_c_swallowed_in_the_first_second_still_stops_scaling_train(scratch, capsys, monkeypatch):
    """The whole path through `scaling train`: a Ctrl-C lost in a gc callback before the
    first step; the loop asks should_stop() at every step and stops (exit 130)."""
    import scaling.train as train_pkg

    steps = []

    def fake_run_training(config, workdir, *, progress=False, should_stop=None, **_kw):
        def callback(phase, _info):
            if phase == "start" and not steps:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        for step in range(1000):
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            steps.append(step)
        raise AssertionError("trained to the end despite Ctrl-C")

    monkeypatch.setattr(train_pkg, "run_training", fake_run_training)
    rc, _, err = call(["train", *TINY, "--lr", "0.1", "--epochs", "0.5", "--workdir", WD], capsys)
    assert rc == 130 and steps == [], err
    assert err.strip().splitlines()[-1].startswith("interrupted: ")


def test_the_train_loop_stops_at_its_next_step_when_asked(scratch):
    """run_training(should_stop=...) raises KeyboardInterrupt before the next step (here the
    first, before any compilation), leaving the workdir resumable and unlocked."""
    from scaling.train import TrainConfig, run_training
    from scaling.train.workdir import locked

    config = TrainConfig(depth_mult=0.25, width_mult=0.03125, dataset=SMOKE_DATA, batch_size=8, resolution=16,
                         epochs=0.5, lr=0.1, compile_cache_dir=None)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, scratch / WD, should_stop=lambda: True)
    assert (scratch / WD / "config.json").exists() and not (scratch / WD / "result.json").exists()
    with locked(scratch / WD):
        pass
