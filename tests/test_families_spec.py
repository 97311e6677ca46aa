"""The five-family sweep without training: the bundled `families` spec expands and
validates (one ladder per family, each with its own grid keys, recipe and LR grid), and
the report draws more than two families' frontiers and crossovers on one figure (from
synthetic runs of known laws)."""
from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest

from analysis import load, plots, synthetic
from analysis.pipeline import run_analysis
from scaling.models import registry
from scaling.train.config import TrainConfig
from sweeps.spec import BUNDLED_DIR, expand, load_spec

FAMILIES = ("nfnet", "vit", "effnetv2", "g16", "coatnet")
# The range each family's LR grid must stay in: the scale of its optimizer (an SGD LR for
# an Adam or RMSProp family would train nothing). NFNet: SGD ([B21]'s 0.1 x batch/256
# scale up to the demo's 0.8); the Adam/RMSProp families: around 1e-3 (docs/models.md).
LR_RANGE = {"nfnet": (0.05, 2.0), "vit": (2e-4, 0.02), "effnetv2": (2e-4, 0.02), "g16": (2e-4, 0.02),
            "coatnet": (2e-4, 0.02)}


@pytest.fixture(scope="module")
def spec():
    return load_spec("families", require_data=True)  # opens the procedural dataset too


@pytest.fixture(scope="module")
def trials(spec):
    return expand(spec)


def test_every_family_has_a_ladder_of_three_sizes_two_or_more_budgets_and_three_lrs(spec, trials):
    assert spec.name == "families" and spec.resolution >= 32  # CoAtNet's attention needs >= 32 px
    assert {t.family for t in trials} == set(FAMILIES)
    per_family = {}
    for fam in FAMILIES:
        mine = [t for t in trials if t.family == fam]
        models = {t.config["model"] for t in mine}
        epochs = {t.config["epochs"] for t in mine}
        lrs = {t.config["lr"] for t in mine}
        assert len(models) == 3 and len(epochs) >= 2 and len(lrs) == 3, fam
        assert len(mine) == len(models) * len(epochs) * len(lrs) * len(spec.seeds), fam  # a full product
        assert all(registry.family_name(m) == fam for m in models), fam
        lo, hi = LR_RANGE[fam]
        assert all(lo <= lr <= hi for lr in lrs), (fam, sorted(lrs))
        sizes = sorted(t.params for t in mine if t.config["lr"] == min(lrs) and t.config["epochs"] == min(epochs))
        assert sizes[-1] >= 3 * sizes[0], (fam, sizes)  # a ladder: the largest >= 3x the smallest
        per_family[fam] = len(mine)
    assert len(trials) == sum(per_family.values()) == len({t.trial_id for t in trials})


def test_each_grid_table_uses_one_familys_keys_and_recipe(spec, trials):
    raw = tomllib.loads((BUNDLED_DIR / "families.toml").read_text())
    tables = raw["grid"]
    assert len(tables) == len(FAMILIES) == len(spec.groups)
    seen = []
    for table, group in zip(tables, spec.groups):
        keyed = {f.name for f in registry.FAMILIES.values() if any(k in table for k in f.grid_keys)}
        named = {registry.family_name(m) for m in table.get("models", [])}
        (fam,) = keyed | named  # exactly one family per table
        assert {registry.family_name(r.name) for r in group.models} == {fam}
        seen.append(fam)
    assert sorted(seen) == sorted(FAMILIES)
    for t in trials:
        cfg = TrainConfig(**t.config)
        cfg.validate()  # the family's own recipe accepts the trial's optimizer table
        recipe = registry.recipe_config(t.config["model"], t.config.get("optimizer", {}))
        assert type(recipe) is registry.family_of(t.config["model"]).recipe
    lr_extension = raw["lr_extension"]
    assert lr_extension["enabled"] and lr_extension["max_steps"] == 1  # bounded cost


# ------------------------------------------------------------ the figure, N > 2 families

# Three "power-law families" (analysis.synthetic): laws chosen so that two pairs cross
# inside the runs' compute and one pair does not (checked below from the fits).
LAWS = {
    "nfnet": dict(flops=synthetic.flops_relation_of(), law=synthetic.TRUE_LAW,
                  params=list(synthetic.NFNET_TABLE3["params"][:5])),
    "coatnet": dict(flops=(200.0, 1.0), law=dict(E=1.5, A=3000.0, B=8000.0, alpha=0.42, beta=0.42),
                    params=[25e6, 42e6, 75e6, 168e6, 300e6]),
    "effnetv2": dict(flops=(300.0, 1.0), law=dict(E=1.7, A=800.0, B=3000.0, alpha=0.38, beta=0.38),
                     params=[10e6, 22e6, 54e6, 120e6, 240e6]),
}


@pytest.fixture(scope="module")
def three():
    parts = [synthetic.make_family_runs(family=f, names=[f"{f}-{i}" for i in range(len(d["params"]))],
                                        noise=0.005, seed=10 * i, **d) for i, (f, d) in enumerate(LAWS.items())]
    runs, notes = load.clean(pd.concat(parts, ignore_index=True))
    return run_analysis(runs, notes, resamples=50, seed=0, backtest=False)


def test_the_comparison_figure_draws_every_familys_frontier_and_every_crossing(three):
    a = three
    assert sorted(a.families) == sorted(LAWS) and len(a.crossovers) == 3  # every pair
    crossing = [x for x in a.crossovers if x.flops is not None]
    assert 1 <= len(crossing) < 3  # both kinds of pair are drawn
    fig = plots.comparison_figure(a, 1.0, "FLOPs")
    ax = fig.axes[0]
    labels = [h.get_label() for h in ax.get_legend().legend_handles]
    for fam, sub in a.families.items():
        assert any(lab.startswith(f"{fam}: frontier points") for lab in labels), fam
        assert any(lab.startswith(f"{fam}: L = ") for lab in labels), fam
        law = sub.laws["offset"]
        drawn = [ln for ln in ax.get_lines() if ln.get_label().startswith(f"{fam}: L = ")]
        x, y = drawn[0].get_data()  # the law's curve itself, not just a legend entry
        assert np.allclose(y, law.predict(x))
    for i, x in enumerate(crossing):
        a_, b_ = x.families
        (marker,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(f"[{i + 1}] {a_} / {b_} cross at")]
        cx, cy = marker.get_data()
        assert cx[0] == pytest.approx(x.flops)
        assert cy[0] == pytest.approx(float(a.families[a_].laws[x.law].predict(np.array([x.flops]))[0]))
        # on the other family's law too: that is what a crossing is
        assert cy[0] == pytest.approx(float(a.families[b_].laws[x.law].predict(np.array([x.flops]))[0]), rel=1e-6)
    for x in a.crossovers:
        if x.flops is None:
            assert f"{' / '.join(x.families)}: no crossing in range ({x.ahead_below} ahead)" in labels
    plots.plt.close(fig)


def test_the_report_of_three_families_has_the_figure_and_every_pair(three, tmp_path):
    from analysis.report import write_report

    write_report(three, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert (tmp_path / "family_comparison.png").stat().st_size > 5000 and "family_comparison.png" in html
    for x in three.crossovers:
        assert " / ".join(x.families) in html
    for fam in LAWS:
        assert (tmp_path / f"loss_vs_compute_{fam}.png").exists()


def test_markers_sit_where_the_drawn_laws_cross_when_a_pair_prefers_another_law():
    """A family without the offset law makes the figure draw power laws for every family;
    a pair that has both is reported with its offset crossing, but its marker must use the
    crossing of the power laws (by_law), or it would float off the drawn curves."""
    from analysis.crossover import Crossover

    x = Crossover(("a", "b"), "offset", (1e9, 1e11), (1e9, 1e11), flops=2e10, crossings=[2e10],
                  interval=(1e10, 4e10), crossing_fraction=0.9, ahead_below="a", ahead_above="b", level=0.95,
                  by_law={"power": {"flops": 5e9, "interval": [3e9, 8e9], "crossing_fraction": 0.8,
                                    "ahead_below": "b", "ahead_above": "a"}})
    assert plots._drawn_crossing(x, "offset") == (2e10, (1e10, 4e10), "a")
    assert plots._drawn_crossing(x, "power") == (5e9, (3e9, 8e9), "b")
    no_power = Crossover(("a", "b"), "offset", (1e9, 1e11), None, flops=None, crossings=[], interval=None,
                         crossing_fraction=0.1, ahead_below="a", ahead_above="a", level=0.95)
    assert plots._drawn_crossing(no_power, "power") == (None, None, "a")
