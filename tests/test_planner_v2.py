"""The planner's second version: shape along the sweep's own ladder (and a shape-aware
law), data repetition, seed noise, the two-trial lr, the IsoFLOP parabolas, aggregated
notes."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from analysis import chinchilla, family, load, lr, planner, repetition, seeds, shape, synthetic
from analysis.pipeline import run_analysis

DEMO_WIDTHS = (0.03125, 0.0625, 0.09375, 0.125)  # sweeps/specs/demo.toml's grid at depth x0.25
LAW = dict(E=0.5, A=30.0, B=60.0, alpha=0.4, beta=0.4)  # toy constants: 1-3 nats at the demo's sizes


def demo_like_runs(widths=DEMO_WIDTHS, depth=0.25, epochs=(0.5, 1.5, 4.5), unique=16384, law=None, seeds_=1,
                   noise=0.005) -> pd.DataFrame:
    """NFNet members at 16 px and 10 classes, counted exactly, losses from a law."""
    nfnet = family.registry_family("nfnet")
    names, params, fwd = [], [], []
    for w in widths:
        cfg = nfnet.member(num_classes=10, depth_mult=depth, width_mult=w)
        c = nfnet.count(cfg, 16)
        names.append(nfnet.model_name(cfg))
        params.append(c.params)
        fwd.append(c.flops)
    law = law or LAW
    # lrs 0.25..32 bracket synthetic.true_lr_opt at these sizes (it rises with epochs below ~1e6 params)
    df = synthetic.make_family_runs(params, family="nfnet", names=names, per_example=fwd, epochs=epochs,
                                    dataset_size=unique, law=law, noise=noise, seeds=seeds_,
                                    lr_grid=2.0 ** np.arange(-2, 6))
    return df.assign(depth_mult=depth, width_mult=df["model"].map(dict(zip(names, widths))))


def analyse(df, resamples=50):
    runs, notes = load.clean(df)
    return run_analysis(runs, notes, resamples=resamples, laws=False, backtest=False, polish=False)


@pytest.fixture(scope="module")
def demo_plan():
    a = analyse(demo_like_runs())
    return a, planner.plan(a, a.compute_range[1] * 10, "flops", extrapolate=True)


# ------------------------------------------------------------------------- shape
def test_demo_plan_stays_on_the_ladder_or_warns(demo_plan):
    """The demo sweeps widths at depth x0.25 only: the plan keeps depth x0.25 (it once
    recommended depth x6), and a width beyond the swept ones gets the warning."""
    a, p = demo_plan
    r = p["recommended"]
    assert r["depth_mult"] == 0.25
    assert p["shape"]["source"] == "ladder" and set(p["shape"]["ladder"]) == {"width_mult"}
    assert p["shape"]["fixed"] == {"depth_mult": 0.25}
    beyond = r["width_mult"] > max(DEMO_WIDTHS)
    warned = [w for w in p["warnings"] if w.startswith("WARNING: shape extrapolation")]
    assert bool(warned) == beyond
    if beyond:
        assert f"{r['width_mult'] / 0.125:.3g}x the largest swept (width_mult x0.125)" in warned[0]
    assert abs(math.log(r["params"] / p["compute_optimal"]["params"])) < math.log(1.6)
    text = planner.format_plan(p)
    assert "shape: on the sweep's own ladder (width_mult ~ N^" in text and "depth_mult 0.25" in text


def test_extrapolation_names_how_far_outside():
    nfnet = family.registry_family("nfnet")
    runs = demo_like_runs().query("status == 'done'")
    ladder = family.candidates_for("nfnet", runs)
    deep = ladder._member({"depth_mult": 6.0, "width_mult": 0.03125})
    (line,) = ladder.extrapolation(deep)
    assert line.startswith("WARNING: shape extrapolation: nfnet-d6-w0.03125 has depth_mult x6, 24x the largest "
                           "swept (depth_mult x0.25)")
    small = ladder._member({"depth_mult": 0.25, "width_mult": 0.015625})
    assert "1/2 of the smallest swept (width_mult x0.03125)" in ladder.extrapolation(small)[0]
    assert ladder.extrapolation(ladder._member({"depth_mult": 0.25, "width_mult": 0.0625})) == []
    assert nfnet.model_name(nfnet.member(num_classes=10, depth_mult=0.25, width_mult=0.125)) in \
        {m["model"] for m in ladder.members_near(1e5)}


def test_ladder_is_generic_over_the_registry_and_a_family_without_members_gets_none(monkeypatch):
    """ViT members by width, depth, MLP width and heads: the ladder keeps the runs' ratios
    (MLP 4x, head width 32) and rounds to steps of the swept values; a family that does
    not provide shape/member has no ladder (the no-architecture answer)."""
    from scaling.models import registry

    vit = registry.family("vit")
    names = [f"vit-w{w}-d{d}-m{4 * w}-h{w // 32}-p4" for w, d in ((64, 2), (128, 4), (192, 6), (256, 8))]
    params = [vit.count(vit.get_config(n, num_classes=10), 32).params for n in names]
    runs = pd.DataFrame({"model": names, "params": params, "resolution": 32})
    ladder = family.candidates_for("vit", runs)
    assert (ladder.resolution, ladder.num_classes) == (32, 10)
    assert ladder.steps == {"width": 64.0, "depth": 2.0, "mlp_dim": 256.0, "num_heads": 2.0}
    m = ladder.nearest(3 * params[-1])
    cfg = vit.get_config(m["model"], num_classes=10)
    assert cfg.mlp_dim == 4 * cfg.width and cfg.width // cfg.num_heads == 32 and cfg.width > 256
    assert any("width" in w and "largest swept" in w for w in ladder.extrapolation(m))
    monkeypatch.setitem(registry.FAMILIES, "vit", dataclasses.replace(vit, member=None))
    assert family.candidates_for("vit", runs) is None
    assert "none of the runs' model names" not in family.no_architecture_reason("vit")


def shape_opt(s_true=0.3, x0=0.5, c0=1e12, noise=0.0, seed=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """lr-optimal points of a sweep that varies depth at 2 fixed sizes x 3 budgets: the loss
    is a parabola in log depth whose vertex is x0 (C / c0)^s_true."""
    rng = np.random.default_rng(seed)
    rows, coords = [], []
    for size in (1e5, 4e5):
        for depth in (0.125, 0.25, 0.5, 1.0, 2.0):
            name = f"s{size:g}-d{depth}"
            coords.append({"model": name, "depth_mult": depth})
            for ep in (1.0, 3.0, 9.0):
                c = 6 * size * 1e4 * ep * 100
                best = x0 * (c / c0) ** s_true
                loss = 2.0 + 0.05 * (math.log(depth / best)) ** 2 + noise * rng.standard_normal()
                rows.append({"model": name, "params": size * (1 + 0.05 * math.log2(depth)), "epochs": ep,
                             "train_flops": c, "heldout_loss": loss, "examples_seen": 1e4 * ep})
    return pd.DataFrame(rows), pd.DataFrame(coords)


def test_shape_law_recovers_the_optimal_shape_as_a_power_of_compute():
    opt, coords = shape_opt(noise=0.001)
    law, why = shape.fit_shape_law(opt, coords)
    assert why == "" and law.coordinate == "depth_mult" and law.n_cells == 6
    assert law.s == pytest.approx(0.3, abs=0.05)
    c = 1e14
    lo, hi = law.interval(c)
    truth = 0.5 * (c / 1e12) ** 0.3
    assert lo <= truth <= hi and law.predict(c) == pytest.approx(truth, rel=0.15)
    assert law.to_dict(c)["interval"] == (lo, hi)


def test_no_shape_law_without_shapes_at_fixed_size():
    opt, coords = shape_opt()
    one = coords[coords["depth_mult"].isin([0.25, 0.5])]
    law, why = shape.fit_shape_law(opt[opt["model"].isin(one["model"])], one)
    assert law is None and "no sweep of shapes at fixed size" in why


# -------------------------------------------------------------------- repetition
R_STAR, UNIQUE = 3.0, 16384


def constrained_runs(epochs=(0.5, 1.5, 4.5, 13.5), noise=0.002):
    """demo_like_runs whose losses follow the data-constrained law (R* = 3)."""
    df = demo_like_runs(epochs=epochs, law=LAW, noise=noise)
    done = df["status"] == "done"
    plain = synthetic.true_loss(df["params"], df["examples_seen"], LAW)
    d_eff = repetition.effective_data(df["examples_seen"], UNIQUE, R_STAR)
    constrained = synthetic.true_loss(df["params"], d_eff, LAW)
    df.loc[done, "heldout_loss"] = df.loc[done, "heldout_loss"] - plain[done] + constrained[done]
    return df


def test_plan_uses_the_data_constrained_law_when_runs_repeat_data():
    a = analyse(constrained_runs())
    p = planner.plan(a, a.compute_range[1] * 10, "flops", extrapolate=True)
    rep = p["repetition"]
    assert rep["law"] == "data-constrained" and p["compute_optimal"]["law"] == "data-constrained"
    assert rep["fit"]["params"]["R_star"] == pytest.approx(R_STAR, rel=0.5)
    truth = synthetic.true_loss(p["params"], repetition.effective_data(p["examples"], UNIQUE, R_STAR), LAW)
    assert p["predicted_loss"] == pytest.approx(truth, rel=0.03)
    assert rep["effective_examples"] < p["examples"]
    if p["epochs"] > 13.5:
        assert any(w.startswith("WARNING: epoch extrapolation") for w in p["warnings"])
    text = planner.format_plan(p)
    assert "data repetition: the plan uses the data-constrained law" in text and "fresh ones" in text
    # another dataset: 10x the unique examples, the same budget -> a tenth of the epochs
    q = planner.plan(a, a.compute_range[1] * 10, "flops", extrapolate=True, dataset_size=10 * UNIQUE)
    assert q["dataset_size"] == 10 * UNIQUE and q["dataset_size_from"] == "--dataset-size"
    assert q["predicted_loss"] < p["predicted_loss"]


def test_plain_law_kept_when_no_run_repeats_data():
    a = analyse(demo_like_runs(epochs=(0.125, 0.25, 0.5, 1.0)))
    p = planner.plan(a, a.compute_range[1] * 3, "flops", extrapolate=True)
    assert p["repetition"]["law"] == "plain" and "no run repeats data" in p["repetition"]["why"]
    assert p["epochs"] > 1 and any(w.startswith("WARNING: epoch extrapolation") for w in p["warnings"])


def test_constrained_optimum_matches_the_plain_one_without_repetition():
    fit = chinchilla.ChinchillaFit(params=dict(LAW), samples={}, flops=chinchilla.FlopsRelation(6.0, 1.0, 3), r2=1,
                                   status="", success=True, starts=1, starts_agreeing=1, converged_fraction=1,
                                   n_points=1)
    n_plain, _ = fit.optimal(1e15)
    n_c, _ = repetition.constrained_optimal(LAW | {"R_star": 1e9}, fit.flops, 1e15, 1e30, float(n_plain))
    assert float(n_c) == pytest.approx(float(n_plain), rel=0.02)
    n_small, _ = repetition.constrained_optimal(LAW | {"R_star": 1.0}, fit.flops, 1e15, 1e3, float(n_plain))
    assert float(n_small) > float(n_plain)  # scarce data: spend the compute on a bigger model


# -------------------------------------------------------------------- seed noise
def test_seed_scatter_is_measured_and_widens_the_loss_interval():
    df = demo_like_runs(seeds_=3, noise=0.02)
    s = seeds.seed_scatter(df.query("status == 'done'"))
    assert s["sd_log"] == pytest.approx(0.02, rel=0.3) and s["cells"] > 10
    a = analyse(df)
    p = planner.plan(a, a.compute_range[1] * 3, "flops", extrapolate=True)
    assert p["seed_noise"]["sd_log"] == pytest.approx(s["sd_log"])
    (lo0, hi0), (lo, hi) = p["predicted_loss_interval_without_seed_noise"], p["predicted_loss_interval"]
    assert lo < lo0 and hi > hi0
    assert "including seed noise" in planner.format_plan(p)


def test_without_replicates_the_plan_says_seed_noise_is_left_out(demo_plan):
    _, p = demo_plan
    assert p["seed_noise"] is None
    assert "the intervals do not include seed noise" in planner.format_plan(p)


# ---------------------------------------------------------------- two-trial lr
def test_second_lr_trial_follows_the_law_and_says_when_to_stop(demo_plan):
    a, p = demo_plan
    t = p["second_lr_trial"]
    assert t["first_lr"] == p["peak_lr"]
    assert t["second_lr"] == pytest.approx(p["peak_lr"] / 2 if t["direction"] == "down" else p["peak_lr"] * 2)
    assert "stop and keep" in t["stop_rule"] and "lr in two trials [S23]" in planner.format_plan(p)
    opt = pd.DataFrame({"model": ["m"], "epochs": [1.0], "params": [1e6], "lr_opt": [0.4]})
    law = lr.LrLaw(a=math.log2(0.4), s=-0.2, t=0.0, cov=np.zeros((3, 3)), n_cells=5, n_edge=0, scatter=0.1)
    far = lr.two_trials(float(law.predict(1e6, 16.0)), 1e6, 16.0, opt, law)
    assert far["direction"] == "down" and far["second_lr"] == pytest.approx(far["first_lr"] / 2)
    near = lr.two_trials(float(law.predict(1e6, 0.25)), 1e6, 0.25, opt, law)
    assert near["direction"] == "up"  # fewer epochs than the runs: the lr rises


# -------------------------------------------------------------------- IsoFLOP
def test_isoflop_parabolas_go_through_their_own_bins_points():
    opt = synthetic.make_optima(noise=0.002)
    iso = chinchilla.isoflop_profiles(opt, level=0.95)
    drawn = iso[iso["drawn"]]
    assert len(drawn) and (iso.loc[~iso["drawn"], "n_models"] < 3).all()
    opt = opt.assign(bin=np.floor(np.log10(opt["train_flops"]) / 0.5).astype(int))
    for row in drawn.itertuples():
        g = opt[opt["bin"] == row.bin]
        x = np.log(g["params"].to_numpy(float))
        resid = g["heldout_loss"].to_numpy(float) - (row.c2 * x ** 2 + row.c1 * x + row.c0)
        # least squares on the bin's own points: residuals centred on them, smaller than their spread
        assert abs(resid.mean()) < 1e-9 and np.sqrt(np.mean(resid ** 2)) < g["heldout_loss"].std(ddof=0)
        assert row.c2 == pytest.approx(np.polyfit(x, g["heldout_loss"], 2)[0], rel=1e-6)
        if np.isfinite(row.n_parabola_lo):
            assert row.n_parabola_lo <= row.n_parabola <= row.n_parabola_hi


def test_an_unbounded_or_missing_minimum_cannot_stretch_the_isoflop_axis():
    """A nearly flat bin's vertex interval can span 1e-81..1e90 params (the demo's did):
    the axis stays on the drawn sizes, the legend says "unbounded", and a bin that curves
    down says it has no minimum."""
    from types import SimpleNamespace

    from analysis import plots

    pts = pd.DataFrame({"train_flops": [1.0e10] * 3 + [5.0e10] * 3, "params": [3e4, 1e5, 3e5] * 2,
                        "heldout_loss": [1.8, 2.0, 2.0, 1.25, 1.45, 1.8]})
    iso = pd.DataFrame([
        dict(bin=20, compute=1e10, drawn=True, c2=-0.05, c1=1.0, c0=-3.0, n_parabola=np.nan,
             n_parabola_lo=np.nan, n_parabola_hi=np.nan, n_approach3=5e4),
        dict(bin=21, compute=5e10, drawn=True, c2=0.06, c1=-1.3, c0=8.2, n_parabola=5.5e4,
             n_parabola_lo=1.2e-81, n_parabola_hi=2.4e90, n_approach3=8e4)])
    fig = plots.isoflop_figure(SimpleNamespace(isoflop=iso, opt=pts), 1.0, "flops")
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo == pytest.approx(3e4 / plots.MINIMA_MARGIN) and hi == pytest.approx(3e5 * plots.MINIMA_MARGIN)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "curves down: no minimum" in labels[0] and "interval unbounded" in labels[1]


def test_no_isoflop_design_is_said_not_drawn():
    from analysis import plots

    df = demo_like_runs(widths=(0.03125, 0.125), epochs=(0.5, 1.5, 4.5, 13.5))
    a = analyse(df)
    assert not chinchilla.has_isoflop_design(a.isoflop)
    assert any("no IsoFLOP design" in n for n in a.notes)
    assert plots.isoflop_figure(a, 1.0, "flops") is None


# --------------------------------------------------------------------- notes
def test_edge_notes_are_one_line_per_kind():
    opt = pd.DataFrame({"model": [f"m{i}" for i in range(240)] + ["x"], "epochs": 1.0,
                        "edge": ["too few lrs"] * 240 + ["low"]})
    from analysis.pipeline import edge_notes

    notes = edge_notes(opt)
    assert len(notes) == 2
    assert notes[1].startswith("240 x lr optimum not bracketed (too few lrs), e.g. m0@1ep, m1@1ep, m2@1ep and 237 more")
    assert notes[0].startswith("1 x lr optimum not bracketed (low), e.g. x@1ep; extend the lr grid")


def test_bundled_shape_spec_sweeps_shapes_at_one_size():
    """sweeps/specs/shape.toml: >= MIN_SHAPES depths within SAME_SIZE in params, 3 budgets
    (so the shape law has cells at 3 computes), and few trials (toy scale)."""
    from scaling.models.registry import family as fam_of
    from sweeps.spec import expand, load_spec

    spec = load_spec("shape")
    trials = expand(spec)
    nfnet = fam_of("nfnet")
    shapes, ladder = (sorted({t.config["model"] for t in trials} & {r.name for r in g.models})
                      for g in spec.groups)
    counts = [nfnet.count(nfnet.get_config(m, num_classes=spec.num_classes), spec.resolution).params for m in shapes]
    depths = {nfnet.shape(nfnet.get_config(m, num_classes=10))["depth_mult"] for m in shapes}
    assert len(depths) >= shape.MIN_SHAPES and max(counts) / min(counts) <= shape.SAME_SIZE
    # and a ladder of sizes through one of the shapes, >= 10x in params, for Approach 3's N_opt
    sizes = [nfnet.count(nfnet.get_config(m, num_classes=10), spec.resolution).params for m in ladder + shapes[1:2]]
    assert max(sizes) / min(sizes) >= 10
    assert len(spec.epochs) == 3 and len(trials) <= 45


def test_every_registry_family_with_multipliers_gets_a_ladder():
    """Any family with shape/member/count works, not only NFNet and ViT (CoAtNet, the
    EfficientNet families): a 4x larger N gives a bigger member of that family, its derived
    coordinates (CoAtNet's stage depths) rebuilt by the family, with the shape warning."""
    from scaling.models.registry import FAMILIES

    tried = 0
    for name, fam in FAMILIES.items():
        base = fam.shape(fam.get_config(fam.example, num_classes=10))
        if not {"depth_mult", "width_mult"} <= set(base):
            continue
        names = [fam.model_name(fam.member(num_classes=10, **{**base, "depth_mult": d, "width_mult": w}))
                 for d, w in ((0.25, 0.25), (0.5, 0.375), (0.5, 0.5))]
        params = [fam.count(fam.get_config(n, num_classes=10), 32).params for n in names]
        ladder = family.candidates_for(name, pd.DataFrame({"model": names, "params": params, "resolution": 32}))
        assert set(ladder.varying) == {"depth_mult", "width_mult"}, name
        m = ladder.nearest(4 * params[-1])
        assert load.family_of_model(m["model"]) == name and 2.5 < m["params"] / params[-1] < 6, (name, m)
        assert any(w.startswith("WARNING: shape extrapolation") for w in ladder.extrapolation(m)), name
        tried += 1
    assert tried >= 1


def test_plan_takes_the_shape_from_the_shape_aware_law():
    """Two sizes x 3 depths each (as sweeps/specs/shape.toml, plus a larger group) and the
    spec's size ladder at depth x0.25 (without it Approach 3 is not identified: alpha ran to
    8), losses with a depth penalty around depth_opt = 0.3 (C / 1e10)^0.15: the plan's shape
    comes from the shape-aware law, its depth near the truth at the budget, its size near N_opt."""
    nfnet = family.registry_family("nfnet")
    members = [(0.125, 0.078125), (0.25, 0.078125), (0.5, 0.0625), (0.125, 0.125), (0.5, 0.09375), (0.75, 0.078125),
               (0.25, 0.03125), (0.25, 0.25)]
    cfgs = [nfnet.member(num_classes=10, depth_mult=d, width_mult=w) for d, w in members]
    counts = [nfnet.count(c, 16) for c in cfgs]
    names = [nfnet.model_name(c) for c in cfgs]
    df = synthetic.make_family_runs([c.params for c in counts], family="nfnet", names=names,
                                    per_example=[c.flops for c in counts], epochs=(0.5, 1.5, 4.5), dataset_size=16384,
                                    law=LAW, noise=0.0, lr_grid=2.0 ** np.arange(-2, 6))
    depth = df["model"].map(dict(zip(names, [d for d, _ in members])))
    best = 0.3 * (df["train_flops"] / 1e10) ** 0.15
    df["heldout_loss"] = df["heldout_loss"] + 0.1 * np.log(depth / best) ** 2
    a = analyse(df)
    budget = a.compute_range[1] * 3
    p = planner.plan(a, budget, "flops", extrapolate=True)
    law = p["shape"]["law"]
    assert p["shape"]["source"] == "shape-aware law" and law["coordinate"] == "depth_mult"
    assert law["s"] == pytest.approx(0.15, abs=0.05) and law["n_cells"] >= 3
    truth = 0.3 * (budget / 1e10) ** 0.15
    assert law["at_budget"] == pytest.approx(truth, rel=0.2)
    assert p["recommended"]["depth_mult"] == shape._round_mult(law["at_budget"])
    assert abs(math.log(p["params"] / p["compute_optimal"]["params"])) < math.log(1.6)
    assert "shape: from the shape-aware law [A23]" in planner.format_plan(p)
