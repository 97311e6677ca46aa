"""Several architecture families: laws fitted per family, their crossover, the
family-aware planner (no other family's architecture; none at all for a family the
project does not know), and a mixed sweep through store, analysis and report."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import crossover, frontier, load, planner, synthetic
from analysis.pipeline import run_analysis
from scaling.errors import BadInput

# Family "nfnet": the [E24] law on the NFNet FLOPs relation (FLOPs/example ~ N^1.92, Table 3).
# Family "vit": a steeper law (alpha = beta = 0.5, lower floor) on a ViT-like relation,
# FLOPs/example = 394 N (2 x 197 tokens per parameter at 224 px / patch 16). Their true
# frontiers (synthetic.true_frontier, exact offset laws) cross near 1.7e21 FLOPs, inside
# both families' runs, at an angle of about 0.1 in log-log slope.
NFNET = dict(params=synthetic.NFNET_TABLE3["params"], flops=synthetic.flops_relation_of(), family="nfnet",
             names=list(synthetic.NFNET_TABLE3["model"]), law=synthetic.TRUE_LAW)
VIT = dict(params=[20e6, 40e6, 80e6, 160e6, 320e6, 640e6, 1.2e9], flops=(394.0, 1.0), family="vit",
           names=[f"vit-{i}" for i in range(7)], law=dict(E=1.0, A=35000.0, B=35000.0, alpha=0.5, beta=0.5))


def two_families(noise=0.005, seed=0, **vit) -> pd.DataFrame:
    a = synthetic.make_family_runs(**NFNET, noise=noise, seed=seed)
    b = synthetic.make_family_runs(**{**VIT, **vit}, noise=noise, seed=seed + 100)
    return pd.concat([a, b], ignore_index=True)


def true_crossing(fa: dict, fb: dict, lo=1e17, hi=1e25) -> float:
    """Where the two true frontiers E + k C^-b meet (bisection in log C; one crossing)."""
    def diff(c):
        return (fa["E"] + fa["k"] * c ** -fa["b"]) - (fb["E"] + fb["k"] * c ** -fb["b"])
    lo, hi = math.log(lo), math.log(hi)
    sign_lo = diff(math.exp(lo)) > 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (diff(math.exp(mid)) > 0) == sign_lo else (lo, mid)
    return math.exp(0.5 * (lo + hi))


@pytest.fixture(scope="module")
def mixed():
    runs, notes = load.clean(two_families())
    return run_analysis(runs, notes, resamples=200, seed=0, backtest=False)


def test_family_comes_from_the_column_else_the_model_name():
    df = pd.DataFrame({"model": ["F0", "F3+", "nfnet-d0.5-w0.125", "ViT-B/16", "vit-s16", "m0", "SoViT-400m/14"],
                       "params": 1e6, "lr": 0.1, "heldout_loss": 2.0, "train_flops": 1e15, "examples_seen": 1e4})
    runs, _ = load.clean(df)  # no family column: a CSV made elsewhere; names as the registry spells them
    assert list(runs["family"]) == ["nfnet", "nfnet", "nfnet", "vit", "vit", "unknown", "vit"]
    runs, _ = load.clean(df.assign(family=["NFNet", None, "", "vit", "ViT", "mine", "vit"]))
    assert list(runs["family"]) == ["nfnet", "nfnet", "nfnet", "vit", "vit", "mine", "vit"]


def test_crossing_solver_is_exact_for_two_power_laws():
    """L = 2 C^-0.1 and L = 5 C^-0.2 meet at ln C = ln(5/2) / 0.1."""
    first, every = crossover._first_crossing({"k": np.array([2.0]), "b": np.array([0.1])},
                                             {"k": np.array([5.0]), "b": np.array([0.2])}, 0.0, 20.0)
    assert first[0] == pytest.approx(math.log(2.5) / 0.1, abs=1e-9) and len(every[0]) == 1
    none, _ = crossover._first_crossing({"k": np.array([2.0]), "b": np.array([0.1])},
                                        {"k": np.array([5.0]), "b": np.array([0.2])}, 0.0, 5.0)
    assert np.isnan(none[0])


def test_crossover_of_two_known_laws_is_recovered_within_10pc(mixed):
    """Synthetic runs of two families with known laws (7 sizes x 6 epoch budgets x 7 lrs
    each, 0.5% noise): the crossover of their fitted frontier laws is within 10% in
    compute of the true frontiers' crossing (measured over 12 seeds: 0.92..1.02 of the
    truth; the small low bias is the lr-optimal envelope of a finite grid sitting above
    the true frontier), and its bootstrap interval holds the truth."""
    truth = true_crossing(synthetic.true_frontier(NFNET["law"], NFNET["flops"]),
                          synthetic.true_frontier(VIT["law"], VIT["flops"]))
    assert set(mixed.families) == {"nfnet", "vit"} and len(mixed.crossovers) == 1
    x = mixed.crossovers[0]
    assert x.families == ("nfnet", "vit") and x.law == "offset"
    assert abs(x.flops / truth - 1) < 0.10, (x.flops, truth)
    lo, hi = x.interval
    assert lo <= truth <= hi and lo <= x.flops <= hi
    assert x.crossing_fraction > 0.9 and (x.ahead_below, x.ahead_above) == ("nfnet", "vit")
    d = mixed.to_dict()["crossovers"][0]
    assert {"families", "flops", "interval", "ahead_below", "ahead_above", "crossing_fraction"} <= set(d)
    assert any(n.startswith("crossover: nfnet and vit cross at") for n in mixed.notes)


def test_laws_are_fitted_per_family_as_if_alone(mixed):
    """Each family's fits are exactly what an analysis of that family alone gives."""
    runs, notes = load.clean(synthetic.make_family_runs(**VIT, noise=0.005, seed=100))
    alone = run_analysis(runs, notes, resamples=200, seed=0, backtest=False)
    assert alone.family == "vit" and not alone.families and not alone.crossovers
    sub = mixed.families["vit"]
    for form in frontier.FORMS:
        assert sub.laws[form].params == pytest.approx(alone.laws[form].params, rel=1e-9)
    assert sub.approach3.params == pytest.approx(alone.approach3.params, rel=1e-9)
    assert set(mixed.opt["family"]) == {"nfnet", "vit"} and mixed.approach3 is None
    summary = mixed.to_dict()
    assert set(summary["families"]) == {"nfnet", "vit"} and summary["family"] is None
    single = alone.to_dict()
    assert list(single["families"]) == ["vit"] and single["crossovers"] == []


def test_families_that_do_not_cross_say_which_is_ahead():
    """The same law, but "vit" pays 4x the FLOPs per example: it is behind everywhere."""
    runs, notes = load.clean(two_families(law=NFNET["law"], flops=(4 * NFNET["flops"][0], NFNET["flops"][1]),
                                          params=NFNET["params"]))
    a = run_analysis(runs, notes, resamples=100, seed=0, backtest=False, approach3=False)
    x = a.crossovers[0]
    assert x.flops is None and x.interval is None
    assert x.ahead_below == x.ahead_above == "nfnet"
    assert "do not cross within" in x.statement() and "nfnet is ahead throughout" in x.statement()
    assert x.to_dict()["flops"] is None


def test_planner_stays_within_the_family(mixed):
    with pytest.raises(BadInput, match="--family"):
        planner.plan(mixed, 1e22, "flops")
    with pytest.raises(BadInput, match="not a family of the runs"):
        planner.plan(mixed, 1e22, "flops", family="resnet")
    nf = planner.plan(mixed, 1e22, "flops", family="nfnet")
    assert nf["family"] == "nfnet" and load.family_of_model(nf["recommended"]["model"]) == "nfnet"
    vit = planner.plan(mixed, 1e22, "flops", family="ViT")
    # "vit-0".."vit-6" are no ViT the project can build: no architecture at all, never an NFNet
    assert vit["family"] == "vit" and vit["recommended"] is None
    assert "none of the runs' model names is a vit" in vit["no_architecture"]
    assert "no concrete architecture" in planner.format_plan(vit)
    assert vit["examples"] == pytest.approx(vit["compute_optimal"]["examples"], rel=1e-9)


def test_vit_runs_get_a_vit_sized_at_their_own_resolution():
    """Runs of real ViT family members at 32 px and 10 classes, recorded without the
    resolution column: the planner infers both from the exact counts and recommends a ViT
    family member with the runs' shape rule (patch 4, MLP 4x, head width 32), trained on
    its own FLOPs per example; the named variant is a ViT, never an NFNet."""
    from scaling.models.registry import family, family_name

    vit = family("vit")
    names = [f"vit-w{w}-d{d}-m{4 * w}-h{w // 32}-p4" for w, d in ((64, 2), (64, 4), (128, 4), (128, 6),
                                                                    (192, 6), (256, 8))]
    counts = [vit.count(vit.get_config(n, num_classes=10), 32) for n in names]
    law = dict(E=0.5, A=60.0, B=200.0, alpha=0.4, beta=0.4)
    runs, notes = load.clean(synthetic.make_family_runs(
        [c.params for c in counts], family="vit", names=names, per_example=[c.flops for c in counts],
        dataset_size=50000, epochs=(1, 2, 4, 8, 16), noise=0.0, law=law))
    a = run_analysis(runs, notes, resamples=50, laws=False, backtest=False, polish=False)
    budget = a.compute_range[1] * 3
    p = planner.plan(a, budget, "flops", extrapolate=True)
    r = p["recommended"]
    assert (r["resolution"], r["num_classes"]) == (32, 10) and family_name(r["model"]) == "vit"
    cfg = vit.get_config(r["model"], num_classes=10)
    assert (cfg.patch_size, cfg.mlp_dim, cfg.width // cfg.num_heads) == (4, 4 * cfg.width, 32)
    assert vit.count(cfg, 32).flops == r["flops_per_example"] and family_name(r["nearest_named"]) == "vit"
    assert abs(math.log(r["params"] / p["compute_optimal"]["params"])) < math.log(1.5)  # the nearest member
    assert p["examples"] == pytest.approx(budget / (3 * r["flops_per_example"]))
    assert p["predicted_loss"] == pytest.approx(synthetic.true_loss(r["params"], p["examples"], law), rel=0.02)
    assert f"model: {r['model']} (width {cfg.width}, depth {cfg.depth}" in planner.format_plan(p)


POWER_FAMILY = dict(params=[20e6, 40e6, 80e6, 160e6, 320e6, 640e6], flops=(394.0, 1.0), family=None)


@pytest.mark.parametrize("noise,tol_n", [(0.0, 0.02), (0.005, 0.15)])
def test_unknown_family_plan_uses_the_runs_own_flops_relation(tmp_path, noise, tol_n):
    """Imported runs of a family the project does not know (no family column, model names
    m0..m5; FLOPs/example = 394 N): the plan names no architecture and predicts N_opt and
    the loss at (N_opt, D_opt = C / (3 f(N_opt))) from the runs' own relation: within 2% of
    the truth without noise (the loss also with 0.5% noise, where N_opt scatters ~10%). It
    used to recommend an NFNet at 224 px and predict the loss of that NFNet's FLOPs per
    example, 50% above the truth."""
    path = tmp_path / "theirs.csv"
    synthetic.make_family_runs(**POWER_FAMILY, noise=noise, seed=1).query("status == 'done'").to_csv(path, index=False)
    runs, notes = load.load_runs(csv=path)
    a = run_analysis(runs, notes, resamples=200, laws=False, backtest=False, polish=False)
    assert a.family == "unknown"
    budget = a.compute_range[1] * 3
    p = planner.plan(a, budget, "flops", extrapolate=True)
    n_true, d_true, loss_true = synthetic.true_optimal(budget, synthetic.TRUE_LAW, POWER_FAMILY["flops"])
    assert p["recommended"] is None and "not one this project knows" in p["no_architecture"]
    assert p["compute_optimal"]["flops_per_example_law"]["gamma"] == pytest.approx(1.0, abs=1e-9)
    assert p["params"] == p["compute_optimal"]["params"]
    assert p["examples"] == pytest.approx(p["compute_optimal"]["examples"], rel=1e-9)
    assert abs(p["params"] / n_true - 1) < tol_n
    assert abs(p["predicted_loss"] / loss_true - 1) < 0.02
    lo, hi = p["predicted_loss_interval"]
    assert lo <= p["predicted_loss"] <= hi and p["peak_lr"] > 0 and p["steps"] > 0
    assert p["epochs"] == pytest.approx(p["examples"] / 4e9)
    text = planner.format_plan(p)
    assert "no concrete architecture" in text and "nfnet" not in text.lower()
    e = planner.plan(a, 2, "epochs", extrapolate=True)  # an epoch budget: D_opt = 2 epochs
    assert e["recommended"] is None and e["epochs"] == pytest.approx(2)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True)


def test_mixed_sweep_through_store_analysis_report_and_plan(tmp_path):
    """Two families' runs imported into a store (their family column kept), then `scaling
    analyze --json` (crossovers with intervals, per-family fits, the comparison figure and
    per-family figures in the report) and `scaling plan` (needs --family)."""
    csv = tmp_path / "mixed.csv"
    two_families().query("status == 'done'").to_csv(csv, index=False)
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    out = cli("results", "import", str(csv), "--store", store)
    assert out.returncode == 0, out.stderr
    out = cli("analyze", "--store", store, "--out", str(tmp_path / "report"), "--resamples", "100", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert set(summary["families"]) == {"nfnet", "vit"}
    for fam in summary["families"].values():
        assert fam["approach3"]["params"]["alpha"] > 0 and set(fam["laws"]) == {"power", "offset"}
    (x,) = summary["crossovers"]
    assert x["families"] == ["nfnet", "vit"] and x["flops"] > 0 and len(x["interval"]) == 2
    assert x["interval"][0] <= x["flops"] <= x["interval"][1] and x["ahead_below"] == "nfnet"
    report = tmp_path / "report"
    html = (report / "report.html").read_text()
    for fig in ["family_comparison", "vit_comparison"] + [f"{f}_{fam}" for f in
                                                         ("loss_vs_compute", "optimal_lr", "optimal_size", "isoflop")
                                                         for fam in ("nfnet", "vit")]:
        assert (report / f"{fig}.png").stat().st_size > 1000 and f"{fig}.png" in html, fig
    assert "cross at" in html and json.loads((report / "fits.json").read_text())["crossovers"]
    out = cli("plan", "--store", store, "--budget", "1e22", "--unit", "flops")
    assert out.returncode == 2 and "--family" in out.stderr and len(out.stderr.splitlines()) == 1
    out = cli("plan", "--store", store, "--budget", "1e22", "--unit", "flops", "--family", "vit", "--json")
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    assert p["family"] == "vit" and (p["recommended"] is None or p["recommended"]["model"].lower().startswith("vit"))
