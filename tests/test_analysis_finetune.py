"""The fine-tuning analysis (analysis/finetune.py): parents joined, best fine-tune LR per
parent, the top-1 error law, the [S23] verdict and its resolution, the published-points
rule, the figure/report section, and `scaling plan --objective finetune-top1`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import finetune as F
from scaling.errors import BadInput

MODELS = {"m1": 1e5, "m2": 4e5, "m3": 1.6e6}  # params; forward FLOPs = 10 x params
EPOCHS = (1.0, 4.0)  # x4 epochs = x4 params: the cells pair up at equal compute
FT_LRS = (0.1, 0.2, 0.4)


def make_study(bonus=0.05, heldout=100_000, finetuned=True, seed=0, noise=0.0) -> pd.DataFrame:
    """Pre-training rows (2 LRs per cell) and, per cell's best run, 3 fine-tune LRs. At equal
    compute the small model trained 4x longer has the lower pre-training loss, while the
    large model trained 1x has the higher fine-tuned top-1 (by `bonus`): [S23]'s finding."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, n in MODELS.items():
        for ep in EPOCHS:
            flops = 3 * 10 * n * 1e4 * ep
            cell_loss = 3.0 * (flops / 1e10) ** -0.05 + (0.02 if ep == 1.0 else -0.02)
            for k, lr in enumerate((0.4, 0.8)):
                rows.append({"trial_id": f"{model}-{ep:g}-{lr}", "model": model, "family": "nfnet", "params": n,
                             "epochs": ep, "lr": lr, "heldout_loss": cell_loss + 0.01 * k, "train_flops": flops,
                             "examples_seen": 1e4 * ep, "dataset": "procedural", "seed": 0, "status": "done",
                             "stage": "pretrain", "heldout_accuracy": 0.3})
            if not finetuned:
                continue
            err = 0.6 * (flops / 3e9) ** -0.1
            top1 = 1 - err + (bonus if (ep == 1.0 and n > 1e5) else -bonus if (ep == 4.0 and n < 1.6e6) else 0.0)
            for lr in FT_LRS:
                acc = top1 - 0.03 * np.log2(lr / 0.2) ** 2 + noise * rng.standard_normal()
                rows.append({"trial_id": f"ft-{model}-{ep:g}-{lr}", "model": model, "family": "nfnet", "params": n,
                             "epochs": 2.0, "lr": lr, "heldout_loss": 1.0 - acc, "heldout_accuracy": acc,
                             "train_flops": 3 * 10 * n * 2e3 * 2, "examples_seen": 4e3,
                             "dataset": f"fashion-mnist:train_size=2000,heldout={heldout}", "seed": 0,
                             "status": "done", "stage": "finetune", "parent_trial_id": f"{model}-{ep:g}-0.4"})
    return pd.DataFrame(rows)


def test_join_keeps_finished_children_of_known_parents_and_counts_the_rest():
    raw = make_study()
    extra = raw[raw["stage"] == "finetune"].iloc[:2].copy()
    extra["trial_id"] = ["orphan", "pending"]
    extra.loc[extra.index[0], "parent_trial_id"] = "no-such-parent"
    extra.loc[extra.index[1], "status"] = "pending"
    runs, notes = F.join_parents(pd.concat([raw, extra], ignore_index=True))
    assert len(runs) == len(MODELS) * len(EPOCHS) * len(FT_LRS)
    assert any("1 fine-tune run(s) whose parent is not among" in n for n in notes)
    assert any("not finished 'done'" in n and "pending: 1" in n for n in notes)
    r = runs.iloc[0]
    assert r["total_flops"] == pytest.approx(r["pretrain_flops"] + r["finetune_flops"])
    assert r["pretrain_flops"] == raw.set_index("trial_id").loc[r["parent_trial_id"], "train_flops"]


def test_runs_without_ids_or_datasets_are_noted_not_crashed():
    no_ids = F.analyse(make_study().drop(columns=["trial_id"]), resamples=20)
    assert no_ids.best.empty and any("parent is not among the runs" in n for n in no_ids.notes)
    no_data = F.analyse(make_study().drop(columns=["dataset", "seed"]), resamples=20)
    assert len(no_data.best) == 6 and not no_data.levels["resolved"].any()
    assert no_data.levels["note"].str.contains("held-out size unknown").all()


def test_best_lr_per_parent_and_its_grid_interval():
    runs, _ = F.join_parents(make_study())
    best = F.best_per_parent(runs)
    assert len(best) == len(MODELS) * len(EPOCHS)
    assert (best["lr"] == 0.2).all() and (best["lr_edge"] == "").all()
    assert (best["lr_below"] == 0.1).all() and (best["lr_above"] == 0.4).all()
    # an edge optimum is flagged and its interval is open on that side
    one = runs[runs["parent_trial_id"] == "m1-1-0.4"].copy()
    one.loc[one["lr"] == 0.4, "top1"] = 0.99
    b = F.best_per_parent(one).iloc[0]
    assert b["lr"] == 0.4 and b["lr_edge"] == "highest lr" and np.isnan(b["lr_above"])


def test_compute_levels_span_less_than_a_factor_two():
    lv = F.compute_levels(np.array([1.0, 1.5, 1.99, 2.0, 3.9, 8.0]))
    assert lv.tolist() == [0, 0, 0, 1, 1, 2]


def test_heldout_size_from_the_name_or_the_known_default():
    assert F.heldout_size("fashion-mnist:train_size=4000,heldout=2000") == 2000
    assert F.heldout_size("fashion-mnist") == 10_000
    assert np.isnan(F.heldout_size("folder:/data"))


def test_verdict_larger_and_fewer_is_found_and_resolved():
    ft = F.analyse(make_study(bonus=0.05), resamples=200)
    lv = ft.levels
    assert len(lv) == 2  # (m1 x4, m2 x1) and (m2 x4, m3 x1)
    assert (lv["size"] == "larger").all() and (lv["epochs"] == "fewer").all()
    assert lv["resolved"].all() and (lv["agreeing_resamples"] >= 0.95).all()
    assert ft.verdict["size"] == "larger" and ft.verdict["epochs"] == "fewer"
    assert ft.verdict["matches_paper"] and ft.verdict["resolved"]


def test_a_difference_inside_the_measurement_noise_is_not_resolved():
    # the same ordering, but 0.5 points apart on 200 held-out images (sd ~ 4.6 points)
    ft = F.analyse(make_study(bonus=0.0025, heldout=200), resamples=400)
    assert (ft.levels["size"] == "larger").all()
    assert not ft.levels["resolved"].any() and not ft.verdict["resolved"]
    assert (ft.levels["noise_sd"] > 5 * ft.levels["top1_difference"].abs()).all()


def test_same_cell_best_on_both_objectives_says_same():
    ft = F.analyse(make_study(bonus=-0.05), resamples=100)
    assert (ft.levels["size"] == "same").all() and (ft.levels["epochs"] == "same").all()
    assert "the same model" in ft.verdict["statement"] and not ft.verdict["matches_paper"]


def test_error_law_recovers_the_slope_with_an_interval_and_refuses_too_few_points():
    ft = F.analyse(make_study(bonus=0.0, noise=0.01), resamples=300)
    law = ft.laws[("nfnet", "pretrain")]
    lo, hi = law.intervals()["b"]
    assert law.params["b"] == pytest.approx(0.1, abs=0.03) and lo < 0.1 < hi and hi - lo < 0.2
    assert ("nfnet", "total") in ft.laws
    two = make_study(bonus=0.0)
    two = two[two["model"] == "m1"]  # 2 parents: no power law (needs 3 envelope points)
    few = F.analyse(two, resamples=50)
    assert not few.laws and any("do not support" in n for n in few.notes)
    assert few.verdict["levels"] == 0 and few.verdict["statement"].startswith("not testable")


def test_no_finetune_rows_means_no_section():
    assert F.analyse(make_study(finetuned=False)) is None


def test_published_points_only_on_imagenet():
    runs, _ = F.join_parents(make_study())
    ok, why = F.published_comparable(runs)
    assert not ok and "fashion-mnist" in why and "ImageNet" in why
    runs["dataset"] = "imagenet2012"
    assert F.published_comparable(runs) == (True, "")


def test_report_section_draws_the_figure_and_the_verdict(tmp_path):
    from analysis.finetune_plots import report_section

    ft = F.analyse(make_study(), resamples=100)
    html = "\n".join(report_section(ft, tmp_path, 1e9, "GFLOPs"))
    assert (tmp_path / "finetune_top1_vs_compute.png").stat().st_size > 10_000
    assert "larger model" in html and "published points not drawn" in html
    assert "Best fine-tune per parent" in html


def test_plan_picks_the_envelope_cell_the_budget_affords():
    ft = F.analyse(make_study(), resamples=100)
    budget = 1.3e11  # affords the two cells at 1.2e11; m2 x 1 epoch fine-tunes best
    p = F.plan(ft, budget)
    assert p["cell"]["model"] == "m2" and p["cell"]["epochs"] == 1.0 and p["cell"]["finetune_lr"] == 0.2
    lo, hi = p["predicted_top1_interval"]
    assert lo < p["predicted_top1"] < hi and not p["extrapolated"]
    with pytest.raises(BadInput, match="--extrapolate"):
        F.plan(ft, 1e16)
    assert F.plan(ft, 1e16, extrapolate=True)["extrapolated"]
    with pytest.raises(BadInput, match="no finished fine-tune"):
        F.plan(None, budget)


def _cli(capsys, *args):
    from study.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_objective_cli(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    make_study().to_csv(path, index=False)
    code, out, _ = _cli(capsys, "plan", "--csv", str(path), "--budget", "1.3e11", "--unit", "flops",
                        "--objective", "finetune-top1", "--json")
    assert code == 0
    p = json.loads(out)
    assert p["objective"] == "finetune-top1" and p["cell"]["model"] == "m2"
    bare = tmp_path / "pre.csv"
    make_study(finetuned=False).to_csv(bare, index=False)
    code, out, err = _cli(capsys, "plan", "--csv", str(bare), "--budget", "1e11", "--unit", "flops",
                          "--objective", "finetune-top1")
    assert code == 2 and err.strip().count("\n") == 0 and "no finished fine-tune trial" in err
    code, _, err = _cli(capsys, "plan", "--csv", str(path), "--budget", "1e11", "--unit", "flops",
                        "--objective", "top5")
    assert code == 2 and "--objective" in err


@pytest.mark.slow  # ~20-45 s on 2 loaded cores: the whole pre-training analysis runs as well
def test_analyze_adds_the_fine_tuning_section_when_fine_tune_rows_exist(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    make_study().to_csv(path, index=False)
    code, out, _ = _cli(capsys, "analyze", "--csv", str(path), "--out", str(tmp_path / "r"), "--resamples", "20",
                        "--json")
    assert code == 0
    d = json.loads(out)
    assert d["finetune"]["verdict"]["size"] == "larger" and d["finetune"]["parents"] == 6
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Fine-tuning: downstream top-1" in html and (tmp_path / "r" / "finetune_top1_vs_compute.png").exists()
