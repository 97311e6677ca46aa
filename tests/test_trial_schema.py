"""A trial's fields declared once: roles, ids (golden), operational changes, one-edit fields."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from scaling.train import config as tc
from sweeps import ids, record
from sweeps.results_io import import_file
from sweeps.spec import expand, load_spec, parse_spec
from sweeps.store import Store

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"


def test_every_field_and_column_declares_a_role():
    for f in dataclasses.fields(tc.TrainConfig):
        assert f.metadata.get("role") in tc.ROLES, f"TrainConfig.{f.name} has no declared role"
        assert isinstance(f.metadata.get("shape"), bool) and isinstance(f.metadata.get("grid"), bool)
    assert tc.IDENTITY_FIELDS | tc.OPERATIONAL_FIELDS == {f.name for f in dataclasses.fields(tc.TrainConfig)}
    assert not tc.IDENTITY_FIELDS & tc.OPERATIONAL_FIELDS
    # compile-shape fields are identity: a different compiled step is a different run
    assert set(tc.SHAPE_FIELDS) <= tc.IDENTITY_FIELDS
    for c in record.COLUMNS:
        assert c.role in record.ROLES and c.io in (None, "required", "optional"), c.name
    assert set(record.IMPORT_REQUIRED) == {"model", "params", "examples_seen", "lr", "heldout_loss", "train_flops"}


@pytest.mark.parametrize("name", ["demo", "paper", "quick", "smoke"])
def test_golden_version1_ids_of_the_bundled_specs_are_reproduced(name):
    """The ids stored before id version 2 (pinned from the code of that time) still come
    out of today's specs under the version-1 rule, so stored trials are recognised."""
    pinned = json.loads((GOLDEN / "trial_ids_v1.json").read_text())[name]
    trials = expand(load_spec(name))
    assert sorted(json.dumps(t.config, sort_keys=True) for t in trials) == \
        sorted(json.dumps(c, sort_keys=True) for c in pinned.values())
    assert {ids.legacy_trial_id(t.sweep, t.config) for t in trials} == set(pinned)
    # version 2 differs from version 1 and depends on identity only
    assert all(t.trial_id not in pinned for t in trials)


def _downgrade_to_schema_2(db: Path) -> None:
    """Make a store look as the previous program left it: no identity/id_version."""
    con = sqlite3.connect(db)
    con.execute("DROP INDEX IF EXISTS ix_trials_identity")
    con.execute("ALTER TABLE trials DROP COLUMN identity")
    con.execute("ALTER TABLE trials DROP COLUMN id_version")
    con.execute("UPDATE schema_info SET version = 2")
    con.commit()
    con.close()


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_a_store_with_version1_ids_gets_nothing_twice(tmp_path, name):
    """Every id already stored stays valid: a schema-2 store holding the version-1 ids is
    migrated, keeps its ids, and re-enqueueing the same spec adds nothing."""
    pinned = json.loads((GOLDEN / "trial_ids_v1.json").read_text())[name]
    db = tmp_path / "old.db"
    store = Store(f"sqlite:///{db}")
    trials = expand(load_spec(name))
    store.enqueue(trials)
    con = sqlite3.connect(db)
    for t in trials:  # the ids the old program wrote
        con.execute("UPDATE trials SET trial_id = ? WHERE trial_id = ?",
                    (ids.legacy_trial_id(t.sweep, t.config), t.trial_id))
    con.commit()
    con.close()
    store.dispose()
    _downgrade_to_schema_2(db)
    store = Store(f"sqlite:///{db}")
    assert store.schema_version() == __import__("sweeps.schema").schema.SCHEMA_VERSION  # migrated 2 -> current
    assert {r["trial_id"] for r in store.rows()} == set(pinned)
    assert {r["id_version"] for r in store.rows()} == {1}
    assert store.enqueue(expand(load_spec(name))) == 0
    assert len(store.rows()) == len(pinned)
    store.dispose()


def test_version1_imported_ids_are_recognised_on_reimport(tmp_path):
    golden = json.loads((GOLDEN / "imported_ids_v1.json").read_text())
    frame = pd.DataFrame(golden["frame"])
    csv = tmp_path / "golden.csv"
    frame.to_csv(csv, index=False)
    db = tmp_path / "old.db"
    store = Store(f"sqlite:///{db}")
    assert import_file(store, csv, sweep="import:golden") == (2, 2)
    con = sqlite3.connect(db)
    for old, r in zip(golden["ids"], store.rows()):
        con.execute("UPDATE trials SET trial_id = ? WHERE trial_id = ?", (old, r["trial_id"]))
    con.commit()
    con.close()
    store.dispose()
    _downgrade_to_schema_2(db)
    store = Store(f"sqlite:///{db}")
    assert sorted(r["trial_id"] for r in store.rows()) == sorted(golden["ids"])
    assert import_file(store, csv, sweep="import:golden") == (2, 0)
    store.dispose()


def _smoke_with(**recipe) -> list:
    text = (REPO / "sweeps" / "specs" / "smoke.toml").read_text()
    import tomllib

    data = tomllib.loads(text)
    data["recipe"] = {**data.get("recipe", {}), **recipe}
    return expand(parse_spec(data, default_name="smoke"))


@pytest.mark.parametrize("change", [
    {"checkpoint_every_steps": 7}, {"checkpoint_every_minutes": 1.5}, {"eval_points": 3},
    {"data_workers": 2}, {"tensorboard": True}, {"log_indices": True}, {"compile_cache_dir": "elsewhere"},
])
def test_an_operational_change_reenqueues_and_retrains_nothing(tmp_path, change):
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    first = _smoke_with()
    assert store.enqueue(first) == len(first)
    done_id = first[0].trial_id
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE trials SET status = 'done', heldout_loss = 2.0 WHERE trial_id = ?",
                             (done_id,))
    changed = _smoke_with(**change)
    assert [t.trial_id for t in changed] == [t.trial_id for t in first]
    assert store.enqueue(changed) == 0
    rows = {r["trial_id"]: r for r in store.rows()}
    assert len(rows) == len(first) and rows[done_id]["status"] == "done"
    (key, value), = change.items()
    # a pending trial takes the new operational value; the finished one keeps its config
    assert all(json.loads(r["config_json"]).get(key) == value for tid, r in rows.items() if tid != done_id)
    assert json.loads(rows[done_id]["config_json"]).get(key) != value
    store.dispose()


@pytest.mark.parametrize("change", [
    {"optimizer": {"agc_clip": 0.02}}, {"compute_dtype": "bfloat16"}, {"utilization": 0.5},
])
def test_an_identity_change_is_a_new_trial(change):
    assert {t.trial_id for t in _smoke_with(**change)}.isdisjoint({t.trial_id for t in _smoke_with()})


def test_a_field_at_its_default_is_the_same_as_absent():
    assert [t.trial_id for t in _smoke_with(compute_dtype="float32", optimizer={})] == \
        [t.trial_id for t in _smoke_with()]


# The one-edit test: a copy of the packages with ONE line added to TrainConfig and ONE
# line added to the run record, then the whole path (spec -> id -> store -> import ->
# export -> analysis) run in a fresh interpreter on that copy.
ONE_EDIT_SCRIPT = textwrap.dedent("""
    import json, sys
    import pandas as pd
    from sweeps.spec import parse_spec, expand
    from sweeps.store import Store
    from sweeps.results_io import import_file, export_file
    from analysis.load import load_runs

    def spec(recipe):
        return {"name": "s", "dataset": "procedural:classes=10,train_size=64,heldout=40,res=16",
                "num_classes": 10, "train_examples": 64, "batch_size": 8, "resolution": 16,
                "recipe": recipe, "grid": {"depth_mults": [0.25], "width_mults": [0.03125],
                                           "epochs": [0.5], "lr": [0.1]}}
    plain = expand(parse_spec(spec({})))[0]
    marked = expand(parse_spec(spec({"probe_field": 3})))[0]
    out = {"ids_differ": plain.trial_id != marked.trial_id,
           "in_config": marked.config.get("probe_field"),
           "shape_differs": plain.shape != marked.shape}
    store = Store("sqlite:///" + sys.argv[1] + "/runs.db")
    store.enqueue([marked])
    out["stored_config"] = json.loads(store.rows()[0]["config_json"]).get("probe_field")
    row = dict(model="m", params=1000, examples_seen=100, lr=0.1, heldout_loss=2.0, train_flops=1e6,
               probe_column=7.5)
    pd.DataFrame([row]).to_csv(sys.argv[1] + "/in.csv", index=False)
    out["imported"] = import_file(store, sys.argv[1] + "/in.csv", sweep="imp")
    export_file(store, sys.argv[1] + "/out.csv", sweep="imp")
    out["exported"] = pd.read_csv(sys.argv[1] + "/out.csv")["probe_column"].tolist()
    runs, _ = load_runs(csv=sys.argv[1] + "/out.csv")
    out["analysis"] = runs["probe_column"].tolist()
    print(json.dumps(out))
""")


def test_a_field_declared_once_reaches_id_store_import_export_and_analysis(tmp_path):
    root = tmp_path / "src"
    for pkg in ("scaling", "sweeps", "analysis"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = root / "scaling" / "train" / "config.py"
    text = cfg.read_text()
    anchor = '    compute_dtype: str = _f("float32", IDENTITY, shape=True)\n'
    assert anchor in text, "TrainConfig's last field moved: adapt the anchor"
    cfg.write_text(text.replace(anchor, anchor + '    probe_field: int = _f(0, IDENTITY, shape=True)\n'))
    rec = root / "sweeps" / "record.py"
    text = rec.read_text()
    anchor = '    C("compile_seconds", "float", "result"),\n'
    assert anchor in text, "the run record's compile_seconds line moved: adapt the anchor"
    rec.write_text(text.replace(anchor, anchor + '    C("probe_column", "float", "result", "optional"),\n'))
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", ONE_EDIT_SCRIPT, str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"ids_differ": True, "in_config": 3, "shape_differs": True, "stored_config": 3,
                   "imported": [1, 1], "exported": [7.5], "analysis": [7.5]}
    assert not math.isnan(got["analysis"][0])


@pytest.mark.parametrize("recipe_line, message", [
    ("optimizer = { agc_clp = 0.04 }", r"^error: recipe\.optimizer\.agc_clp: unknown field; did you mean 'agc_clip'\?"),
    ("optimizer = { momentum = 1.5 }", r"^error: recipe\.optimizer\.momentum: 1\.5 is out of range; use a value in \[0, 1\)"),
    ('optimizer = { nesterov = "false" }', r"^error: recipe\.optimizer\.nesterov: 'false' is not true or false"),
    ('optimizer = { momentum = "0.9" }', r"^error: recipe\.optimizer\.momentum: '0\.9' is not a number"),
    ("optimizer = { weight_decay = 1e400 }", r"^error: recipe\.optimizer\.weight_decay: inf is not finite"),
    ('tensorboard = "no"', r"^error: recipe\.tensorboard: 'no' is not true or false"),
    ("eval_points = -1", r"^error: recipe\.eval_points: must be a whole number in \[0, 10,000\], got -1"),
])
@pytest.mark.parametrize("command", [["sweep", "plan"], ["sweep", "run", "--workers", "0"]])
def test_bad_recipe_values_exit_2_before_the_store_is_touched(tmp_path, recipe_line, message, command):
    text = (REPO / "sweeps" / "specs" / "smoke.toml").read_text()
    spec = tmp_path / "bad.toml"
    spec.write_text(text.replace("[recipe]", "[recipe]\n" + recipe_line, 1))
    db = tmp_path / "runs.db"
    Store(f"sqlite:///{db}").dispose()
    before = db.read_bytes()
    scaling = Path(sys.executable).parent / "scaling"
    out = subprocess.run([str(scaling), *command, str(spec), *(["--store", f"sqlite:///{db}"] if "run" in command else [])],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert __import__("re").match(message, lines[0]), lines[0]
    assert db.read_bytes() == before
