"""Fine-tune trials in sweeps: the [finetune] table, parents chosen as they finish,
stage/parent columns in the store and in results export/import, refusals before any
write, and the schema 3 -> 4 migration. Workers use the fake trainer (no jax training)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from scaling.errors import BadInput
from sweeps.finetune import chosen_parents, enqueue_finetunes
from sweeps.lr_extension import LRExtension
from sweeps.results_io import export_file, import_file
from sweeps.runner import enqueue_spec
from sweeps.spec import parse_spec
from sweeps.store import Store
from sweeps.worker import Worker, WorkerOptions
from test_sweep_fakes import fake_trainer

REPO = Path(__file__).resolve().parents[1]
SMOKE = (REPO / "sweeps" / "specs" / "smoke.toml").read_text()
DOWN = "procedural:classes=5,train_size=64,heldout=40,res=16,seed=7"
FINETUNE = f'\n[finetune]\ndataset = "{DOWN}"\nepochs = [1.0]\nlr = [0.4, 0.8]\n'


def spec_text(extra: str = FINETUNE, **subs: str) -> str:
    text = SMOKE.replace("epochs = [0.5]", "epochs = [0.5, 1.0]").replace("lr = [0.1, 0.2]", "lr = [0.8, 1.6, 3.2]")
    for old, new in subs.items():
        text = text.replace(old, new)
    return text + extra


def parse(text: str):
    import tomllib

    return parse_spec(tomllib.loads(text), require_data=True)


def recording_trainer(seen: list):
    def trainer(config, workdir, **kw):
        seen.append(dict(config))
        return dict(fake_trainer(config, workdir, **kw), stage="finetune" if config.get("parent_trial_id")
                    else "pretrain")
    return trainer


def run_workers(store: Store, trainer) -> None:
    Worker(store, trainer=trainer, options=WorkerOptions(poll_seconds=0.05, exit_when_idle=True)).run()


def test_best_parents_are_finetuned_once_their_cells_settle(store_url, tmp_path):
    store = Store(store_url, results_dir=tmp_path)
    spec = parse(spec_text())
    enqueue_spec(spec, store)
    assert {r["stage"] for r in store.rows()} == {"pretrain"}  # no parent has finished yet
    seen: list = []
    run_workers(store, recording_trainer(seen))
    rows = store.rows("smoke")
    pre = [r for r in rows if r["stage"] == "pretrain"]
    ft = [r for r in rows if r["stage"] == "finetune"]
    # one best parent per epoch budget, chosen after its LR extension settled (the
    # fake's optimum is 1.6 / epochs: 3.2 at 0.5 epochs is an edge, so 6.4 ran first);
    # each parent gets the table's two LRs, plus any fine-tune LR extension
    best = {}
    for r in pre:
        cell = r["epochs"]
        if cell not in best or r["heldout_loss"] < best[cell]["heldout_loss"]:
            best[cell] = r
    assert {r["parent_trial_id"] for r in ft} == {b["trial_id"] for b in best.values()}
    assert all(r["status"] == "done" and r["dataset"].startswith("procedural:classes=5") for r in ft)
    assert {r["lr"] for r in ft} >= {0.4, 0.8}
    # every fine-tune was started after its parent's cell was complete, told where the parent is
    ft_configs = [c for c in seen if c.get("parent_trial_id")]
    assert ft_configs and all(c["parent_workdir"] == str(store.trial_workdir(c["parent_trial_id"], "smoke"))
                              for c in ft_configs)
    n = len(rows)
    assert enqueue_finetunes(store, "smoke") == 0 and len(store.rows()) == n  # idempotent
    # export carries stage and parent; importing the export adds nothing
    out = tmp_path / "runs.csv"
    export_file(store, out)
    import pandas as pd

    df = pd.read_csv(out)
    assert set(df["stage"]) == {"pretrain", "finetune"}
    assert df[df["stage"] == "finetune"]["parent_trial_id"].notna().all()
    assert df[df["stage"] == "pretrain"]["parent_trial_id"].isna().all()
    assert import_file(store, out) == (n, 0)
    fresh = Store(f"sqlite:///{tmp_path / 'fresh.db'}", results_dir=tmp_path / "f")
    assert import_file(fresh, out) == (n, n)
    got = {r["trial_id"]: (r["stage"], r["parent_trial_id"]) for r in fresh.rows()}
    assert got == {r["trial_id"]: (r["stage"], r["parent_trial_id"]) for r in rows}


def test_rerunning_a_spec_whose_finetunes_share_a_cells_epochs_and_lr_adds_nothing(tmp_path):
    # The fine-tunes run at 1 epoch and lr 0.8, like a pre-training cell; the stored-cell
    # check keys pre-training cells only, so the re-run is not refused as a changed dataset.
    store = Store(f"sqlite:///{tmp_path / 's.db'}", results_dir=tmp_path)
    text = spec_text(f'\n[finetune]\ndataset = "{DOWN}"\nepochs = [1.0]\nlr = [0.8]\n')
    enqueue_spec(parse(text), store)
    run_workers(store, recording_trainer([]))
    rows = store.rows("smoke")
    assert any(r["stage"] == "finetune" and r["epochs"] == 1.0 and r["lr"] == 0.8 for r in rows)
    assert enqueue_spec(parse(text), store) == 0 and len(store.rows("smoke")) == len(rows)


def test_parents_all_finetunes_every_finished_run(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}", results_dir=tmp_path)
    enqueue_spec(parse(spec_text(FINETUNE + 'parents = "all"\n')), store)
    run_workers(store, recording_trainer([]))
    rows = store.rows()
    done_pre = {r["trial_id"] for r in rows if r["stage"] == "pretrain" and r["status"] == "done"}
    assert {r["parent_trial_id"] for r in rows if r["stage"] == "finetune"} == done_pre


def test_chosen_parents_wait_for_an_unsettled_cell():
    def row(tid, lr, status="done", loss=1.0, epochs=1.0):
        cfg = dict(model="F0", epochs=epochs, lr=lr)
        return dict(trial_id=tid, lr=lr, status=status, heldout_loss=loss, reason="grid", stage="pretrain",
                    config=cfg)
    policy = LRExtension(max_steps=1)
    settled = [row("a", 0.1, loss=2.0), row("b", 0.2, loss=1.0), row("c", 0.4, loss=1.5)]
    assert [r["trial_id"] for r in chosen_parents(settled, "best", policy)] == ["b"]
    running = settled[:2] + [row("c", 0.4, status="running", loss=None)]
    assert chosen_parents(running, "best", policy) == []
    on_edge = [row("a", 0.1, loss=2.0), row("b", 0.2, loss=1.0)]  # the extension to 0.4 is due
    assert chosen_parents(on_edge, "best", policy) == []
    assert [r["trial_id"] for r in chosen_parents(running, "all", policy)] == ["a", "b"]


# ---- refusals before anything is written ----------------------------------------------------


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("parents, words", [
    ('["0123456789abcdef"]', "no stored trial id starts with"),
    ("PENDING", "not done"),
    ("IMPORTED", "imported"),
])
def test_a_named_parent_that_is_missing_or_unfinished_is_refused(tmp_path, parents, words):
    store = Store(f"sqlite:///{tmp_path / 's.db'}", results_dir=tmp_path)
    enqueue_spec(parse(spec_text("")), store)  # a pre-training sweep, nothing trained
    pending = store.rows()[0]["trial_id"]
    if parents == "IMPORTED":
        csv = tmp_path / "runs.csv"
        csv.write_text("model,params,examples_seen,lr,heldout_loss,train_flops\nF0,1000,64,0.1,2.0,1e9\n")
        import_file(store, csv, sweep="old")
        parents = json.dumps([store.rows("old")[0]["trial_id"]])
    elif parents == "PENDING":
        parents = json.dumps([pending])
    before = _bytes(tmp_path / "s.db")
    spec = parse(spec_text(FINETUNE + f"parents = {parents}\n", **{'name = "smoke"': 'name = "ft"'}))
    with pytest.raises(BadInput, match=words) as err:
        enqueue_spec(spec, store)
    assert str(err.value).startswith("finetune.parents") and "\n" not in str(err.value)
    assert _bytes(tmp_path / "s.db") == before and store.sweep_spec("ft") is None


def test_an_incompatible_shape_is_refused_before_the_store(tmp_path):
    """A ViT's position embedding is fixed by its resolution: fine-tuning at another one
    cannot reuse it."""
    vit = spec_text(FINETUNE + "resolution = 8\n", **{
        "depth_mults = [0.25]\nwidth_mults = [0.03125]": 'models = ["vit-w16-d1-m32-h2-p4"]'})
    store = Store(f"sqlite:///{tmp_path / 's.db'}", results_dir=tmp_path)
    before = _bytes(tmp_path / "s.db")
    with pytest.raises(BadInput, match=r"^finetune\.model: parameter .* incompatible"):
        enqueue_spec(parse(vit), store)
    assert _bytes(tmp_path / "s.db") == before


@pytest.mark.parametrize("table, field", [
    ('[finetune]\nepochs = [1.0]\nlr = [0.1]\n', "finetune.dataset"),
    (f'[finetune]\ndataset = "{DOWN}"\nlr = [0.1]\n', "finetune.epochs"),
    (f'[finetune]\ndataset = "{DOWN}"\nepochs = [1.0]\nlr = [0.1]\nparents = "bets"\n', "finetune.parents"),
    (f'[finetune]\ndataset = "{DOWN}"\nepochs = [1.0]\nlr = [0.1]\nparents = []\n', "finetune.parents"),
    (f'[finetune]\ndataset = "{DOWN}"\nepochs = [1.0]\nlr = [0.1]\ntrainable = "top"\n', "finetune.trainable"),
    (f'[finetune]\ndataset = "{DOWN}"\nepochs = [1.0]\nlr = [0.1]\nsam_rho = 5.0\n', "finetune.sam_rho"),
    (f'[finetune]\ndataset = "{DOWN}"\nepochs = [1.0]\nlr = [0.1]\nlearning_rate = 1\n', "finetune.learning_rate"),
    ('[finetune]\ndataset = "procedurl"\nepochs = [1.0]\nlr = [0.1]\n', "finetune.dataset"),
    (f'[finetune]\ndataset = "{DOWN}"\nepochs = [1.0]\nlr = [0.1]\noptimizer = {{ agc_clp = 1 }}\n',
     "finetune.optimizer.agc_clp"),
])
def test_bad_finetune_tables_are_one_line_naming_the_key(table, field):
    with pytest.raises(BadInput) as err:
        parse(spec_text("\n" + table))
    assert str(err.value).startswith(field + ":") and "\n" not in str(err.value)


# ---- the store's schema --------------------------------------------------------------------


def test_a_version_3_store_is_migrated_with_its_rows_marked_pretrain(tmp_path):
    db = tmp_path / "old.db"
    store = Store(f"sqlite:///{db}", results_dir=tmp_path)
    enqueue_spec(parse(spec_text("")), store)
    n = len(store.rows())
    store.dispose()
    con = sqlite3.connect(db)
    con.execute("DROP INDEX IF EXISTS ix_trials_parent_trial_id")
    con.execute("ALTER TABLE trials DROP COLUMN parent_trial_id")
    con.execute("ALTER TABLE trials DROP COLUMN stage")
    con.execute("UPDATE schema_info SET version = 3")
    con.commit()
    con.close()
    store = Store(f"sqlite:///{db}", results_dir=tmp_path)
    from sweeps.schema import SCHEMA_VERSION

    assert store.schema_version() == SCHEMA_VERSION == 4
    rows = store.rows()
    assert len(rows) == n and {(r["stage"], r["parent_trial_id"]) for r in rows} == {("pretrain", None)}


@pytest.mark.parametrize("extra, ok", [
    ({"stage": "finetune"}, False),                          # a fine-tune names its parent
    ({"stage": "pretrain", "parent_trial_id": "abc"}, False),  # a pre-training run has none
    ({"stage": "warmup"}, False),
    ({"parent_trial_id": "abc"}, True),                      # stage follows from the parent
    ({"stage": "finetune", "parent_trial_id": "abc"}, True),
])
def test_imported_rows_state_stage_and_parent_consistently(tmp_path, extra, ok):
    import pandas as pd

    from sweeps.results_io import read_runs

    row = dict(model="F0", params=1000, examples_seen=64, lr=0.1, heldout_loss=2.0, train_flops=1e9, **extra)
    pd.DataFrame([row]).to_csv(tmp_path / "runs.csv", index=False)
    if ok:
        (got,) = read_runs(tmp_path / "runs.csv")
        assert (got["stage"], got["parent_trial_id"]) == ("finetune", "abc")
    else:
        with pytest.raises(BadInput, match=r"^stage: row 2"):
            read_runs(tmp_path / "runs.csv")
