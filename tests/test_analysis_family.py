"""analysis.family: what the planner recommends from."""
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
    assert family.candidates(runs)[1:] == (16, 10)
    assert family.infer_resolution(runs.assign(resolution=32.0)) == 32  # the column wins
    assert family.infer_resolution(runs.drop(columns="flops_per_example")) is None
