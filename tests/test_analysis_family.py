"""analysis.family and the planner's sizing: what it recommends, at which resolution."""
import pandas as pd


def test_planner_resolution_is_inferred_from_flops_when_the_column_is_missing():
    """Runs imported without `resolution`: the planner must size its recommendation at the
    runs' own resolution (16 px here), not the 224 px default (a 200x FLOPs error that
    once recommended 0 steps)."""
    from analysis import family
    from scaling.models.config import family_config
    from scaling.models.counts import count

    rows = []
    for w in (0.0625, 0.125):
        c = count(family_config(0.25, w, num_classes=10), 16)
        rows.append({"model": f"w{w}", "depth_mult": 0.25, "width_mult": w, "params": c.params,
                     "flops_per_example": float(c.flops)})
    runs = pd.DataFrame(rows)
    assert family.infer_resolution(runs) == 16
    ladder = family.candidates_for("nfnet", runs)
    assert (ladder.resolution, ladder.num_classes) == (16, 10)
    assert family.infer_resolution(runs.assign(resolution=32.0)) == 32  # the column wins
    assert family.infer_resolution(runs.drop(columns="flops_per_example")) is None


def test_the_class_count_of_grayscale_runs_is_inferred():
    """Fashion-MNIST runs have a 1-channel stem: the class count must still be found (10),
    not fall back to the 1000-class default (which once put 2.55M params on a 1.79M model)."""
    from analysis import family
    from scaling.models.config import family_config
    from scaling.models.counts import count

    rows = []
    for w in (0.0625, 0.25):
        c = count(family_config(0.25, w, num_classes=10), 28, channels=1)
        rows.append({"model": f"nfnet-d0.25-w{w}", "depth_mult": 0.25, "width_mult": w, "params": c.params,
                     "flops_per_example": float(c.flops), "resolution": 28.0})
    runs = pd.DataFrame(rows)
    assert family.infer_setup(runs, family.registry_family("nfnet")) == (28, 10)
    assert family.candidates_for("nfnet", runs).num_classes == 10


def test_plan_refuses_a_budget_below_one_batch():
    import pytest

    from analysis import load, planner, synthetic
    from analysis.pipeline import run_analysis
    from scaling.errors import BadInput

    runs, notes = load.clean(synthetic.make_runs(models=("F0", "F1", "F3", "F5"), epochs=(0.25, 1, 4)))
    a = run_analysis(runs, notes, resamples=20, laws=False, backtest=False, polish=False)
    with pytest.raises(BadInput, match="less than one batch"):
        planner.plan(a, 1e12, "flops", extrapolate=True)
