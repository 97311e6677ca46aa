"""`results import/export`: columns and units validated; nothing written on a bad file."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from scaling.errors import BadInput
from sweeps.lr_extension import next_lrs
from sweeps.results_io import export_file, import_file
from sweeps.spec import LRExtension
from sweeps.store import Store

GOOD = dict(model="F0", params=71_500_000, examples_seen=1_000_000, lr=0.4, heldout_loss=2.5,
            train_flops=3 * 2 * 9.5e9 * 1_000_000)


def write(tmp_path, rows, name="runs.csv"):
    path = tmp_path / name
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False) if name.endswith(".csv") else df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_import_then_export_round_trip(store_url, tmp_path, fmt):
    store = Store(store_url, results_dir=tmp_path)
    rows = [GOOD, dict(GOOD, lr=0.8, heldout_loss=2.4, epochs=1.0, hardware="tpu-v4", device_seconds=3600.0,
                       batch_size=4096, dataset="jft", sweep="paper-runs")]
    path = write(tmp_path, rows, f"in.{fmt}")
    assert import_file(store, path, sweep="mine") == (2, 2)
    assert import_file(store, path, sweep="mine") == (2, 0)  # idempotent
    out = tmp_path / f"out.{fmt}"
    assert export_file(store, out) == 2
    df = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    assert sorted(df["sweep"]) == ["mine", "paper-runs"]
    assert sorted(df["lr"]) == [0.4, 0.8] and set(df["status"]) == {"done"}
    assert set(df["reason"]) == {"imported"}
    store.dispose()


@pytest.mark.parametrize("bad, message", [
    ({"train_flops": None}, r"^train_flops: row 2 is empty; every run needs"),
    ({"train_gflops": 5.7e4}, r"^train_gflops: the store keeps train_flops \(real FLOPs, not GFLOPs\)"),
    ({"train_flops": 5.7e4}, r"^train_flops: row 2 is 5\.7e\+04, below 2 x params x examples_seen"),
    ({"lr": -0.1}, r"^lr: row 2 is -0\.1; it must be > 0"),
    ({"params": 0.4}, r"^params: row 2 is 0\.4; it rounds to 0 and must be > 0"),
    ({"heldout_loss": "abc"}, r"^heldout_loss: row 2 has 'abc', not a number"),
    ({"hardware": "tpu-v9"}, r"^hardware: row 2 is 'tpu-v9'; use one of"),
    ({"status": "running"}, r"^status: row 2 is 'running'; imported runs are done, diverged or failed"),
])
def test_bad_import_is_refused_and_nothing_is_written(tmp_path, bad, message):
    row = dict(GOOD)
    for k, v in bad.items():
        if v is None:
            row.pop(k)
        else:
            row[k] = v
    if "train_gflops" in bad:
        row.pop("train_flops")
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    path = write(tmp_path, [GOOD, row])  # a good row first: it must not be written either
    with pytest.raises(BadInput, match=message.replace("row 2", "row 3")):
        import_file(store, path)
    assert store.rows() == []


def test_fractional_counts_are_rounded_with_one_note_per_column(tmp_path):
    """Digitised data (Epoch AI's Chinchilla CSV: params 6795600349.29) is imported with
    its counts rounded, and the rounding is said once per column, not once per row."""
    rows = [dict(GOOD, params=6795600349.29, train_flops=6 * 6.8e9 * 1_000_000 * 2),
            dict(GOOD, params=6795600350.6, lr=0.8, train_flops=6 * 6.8e9 * 1_000_000 * 2),
            dict(GOOD, lr=0.2)]
    path = write(tmp_path, rows)
    from sweeps.results_io import read_runs

    read = read_runs(path)
    assert [r["params"] for r in read] == [6795600349, 6795600351, 71_500_000]
    assert len(read.notes) == 1 and read.notes[0].startswith("params: 2 value(s) not whole numbers rounded")
    assert "row 2: 6795600349.29 -> 6795600349" in read.notes[0]
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    assert import_file(store, path) == (3, 3)
    assert sorted(r["params"] for r in store.rows()) == [71_500_000, 6795600349, 6795600351]
    store.dispose()


def test_next_lrs_rule():
    p = LRExtension(enabled=True, max_steps=1)

    def g(losses, lrs=(0.1, 0.2, 0.4), status=None, reasons=None):
        return [{"lr": lr, "heldout_loss": loss, "status": (status or {}).get(lr, "done"),
                 "reason": (reasons or {}).get(lr, "grid")} for lr, loss in zip(lrs, losses)]

    assert next_lrs(g([3, 2, 1]), p) == [(0.8, "lr-extension: best lr 0.4 is the upper edge of [0.1, 0.2, 0.4]")]
    assert [lr for lr, _ in next_lrs(g([1, 2, 3]), p)] == [0.05]
    assert next_lrs(g([2, 1, 3]), p) == []  # interior
    assert next_lrs(g([3, 2, math.nan], status={0.4: "diverged"}), p) == []  # 0.2 beats a diverged 0.4
    assert next_lrs(g([3, 2, 1], status={0.1: "running"}), p) == []  # group not finished
    # already one step beyond the grid: the bound stops it
    assert next_lrs(g([4, 3, 2, 1], lrs=(0.1, 0.2, 0.4, 0.8), reasons={0.8: "lr-extension"}), p) == []
    assert next_lrs(g([3, 2, 1]), LRExtension(enabled=True, max_steps=3, max_lr=0.5)) == []
    assert next_lrs(g([3, 2, 1]), LRExtension(enabled=False)) == []


def test_missing_required_column_names_it(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    row = {k: v for k, v in GOOD.items() if k != "examples_seen"}
    with pytest.raises(BadInput, match=r"^examples_seen: required column missing \(need model, params"):
        import_file(store, write(tmp_path, [row]))
    assert store.rows() == []


def test_export_imports_back_whole_with_resolution_and_seeds(store_url, tmp_path):
    """An export from one store imports into another with what the planner needs (the
    resolution, FLOPs per example) and keeps two seeds of one config as two runs (the
    import used to drop `seed`, so they hashed to one trial id and the second was lost)."""
    src = Store(store_url, results_dir=tmp_path / "a")
    base = dict(GOOD, resolution=16, eval_resolution=16, flops_per_example=329088.0, heldout_accuracy=0.41)
    rows = [dict(base, seed=0), dict(base, seed=1, heldout_loss=2.45)]
    assert import_file(src, write(tmp_path, rows), sweep="mine") == (2, 2)
    out = tmp_path / "out.csv"
    export_file(src, out)
    dst = Store(f"sqlite:///{tmp_path / 'b.db'}", results_dir=tmp_path / "b")
    assert import_file(dst, out) == (2, 2)
    back = pd.read_csv(export_file(dst, tmp_path / "back.csv") and tmp_path / "back.csv")
    assert sorted(back["seed"]) == [0, 1]
    assert set(back["resolution"]) == {16} and set(back["eval_resolution"]) == {16}
    assert set(back["flops_per_example"]) == {329088.0} and set(back["heldout_accuracy"]) == {0.41}
    with pytest.raises(BadInput, match="heldout_accuracy"):
        import_file(dst, write(tmp_path, [dict(base, heldout_accuracy=41)], "bad.csv"))
    src.dispose()
    dst.dispose()


def test_result_only_columns_do_not_change_an_imported_trial_id(store_url, tmp_path):
    """A file imported before flops_per_example/heldout_accuracy were import columns, then
    again as an export that carries them, must not add its runs twice."""
    store = Store(store_url, results_dir=tmp_path)
    assert import_file(store, write(tmp_path, [GOOD], "plain.csv"), sweep="s") == (1, 1)
    richer = dict(GOOD, flops_per_example=1.9e10, heldout_accuracy=0.5)
    assert import_file(store, write(tmp_path, [richer], "rich.csv"), sweep="s") == (1, 0)
    store.dispose()


def test_a_column_only_a_later_row_gives_is_kept(tmp_path):
    """Rows of one file with different columns: an executemany used to take its columns
    from the first row, dropping the later rows' extra columns silently."""
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    rows = [GOOD, dict(GOOD, lr=0.8, seed=3, resolution=64, epochs=2.0, dataset="jft")]
    path = tmp_path / "mixed.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert import_file(store, path, sweep="m") == (2, 2)
    got = {r["lr"]: r for r in store.rows()}
    assert (got[0.8]["seed"], got[0.8]["resolution"], got[0.8]["epochs"], got[0.8]["dataset"]) == (3, 64, 2.0, "jft")
    assert got[0.4]["seed"] is None and got[0.4]["resolution"] is None
    store.dispose()


def test_export_imports_back_to_the_same_trials_and_conflicts_are_refused(store_url, tmp_path):
    store = Store(store_url, results_dir=tmp_path)
    rows = [GOOD, dict(GOOD, lr=0.8, heldout_loss=2.4), dict(GOOD, lr=1.6, heldout_loss=2.6)]
    assert import_file(store, write(tmp_path, rows), sweep="mine") == (3, 3)
    out = tmp_path / "out.csv"
    assert export_file(store, out) == 3
    assert import_file(store, out) == (3, 0)  # not 6 trials
    assert len(store.rows()) == 3
    # the same run twice in one file counts once; with another result it is refused
    assert import_file(store, write(tmp_path, [GOOD, GOOD], "dup.csv"), sweep="d") == (1, 1)
    before = store.rows()
    with pytest.raises(BadInput, match=r"^heldout_loss: row 2 .* trial [0-9a-f]{12} with 2\.5"):
        import_file(store, write(tmp_path, [dict(GOOD, heldout_loss=9.0)], "clash.csv"), sweep="mine")
    with pytest.raises(BadInput, match=r"^heldout_loss: rows 2 and 3 are the same run"):
        import_file(store, write(tmp_path, [GOOD, dict(GOOD, heldout_loss=9.0)], "clash2.csv"), sweep="n")
    assert store.rows() == before
    store.dispose()
