"""Synthetic runs drawn from known laws, for tests and the benchmark.

Model sizes and FLOPs per example are the published NFNet family
(docs/references.md#table-3-parameters-and-macs, [B21] Table 3: params and MACs at test
resolution), so (params, FLOPs/example) pairs are realistic for a ConvNet (FLOPs/example is NOT proportional to params). The held-out loss
at the optimal learning rate follows L(N, D) = E + A/N^alpha + B/D^beta; off the optimum
it grows quadratically in log2(lr); the optimal lr falls with epochs, faster for bigger
models ([S23] Figure 3: about 1.6 at small budgets); too high a lr diverges.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# [B21] Table 3 (docs/references.md#table-3-parameters-and-macs): name, depth multiplier,
# params, MACs (test resolution).
NFNET_TABLE3 = pd.DataFrame(
    [("F0", 1, 71.5e6, 12.38e9), ("F1", 2, 132.6e6, 35.54e9), ("F2", 3, 193.8e6, 62.59e9),
     ("F3", 4, 254.9e6, 114.76e9), ("F4", 5, 316.1e6, 215.24e9), ("F5", 6, 377.2e6, 289.76e9),
     ("F6", 7, 438.4e6, 377.28e9)],
    columns=["model", "depth_mult", "params", "macs"],
)

# Chinchilla refit by [E24] (docs/references.md#the-chinchilla-refit), used as a plausible "true" law.
TRUE_LAW = {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.348, "beta": 0.366}
DATASET_SIZE = 4e9  # JFT-4B, [S23] (docs/references.md#models-and-data)
EPOCHS = (0.25, 0.5, 1, 2, 4, 8)  # [S23] epoch budgets
BATCH = 4096  # [S23]


def true_loss(params, examples, law=TRUE_LAW):
    return law["E"] + law["A"] / np.asarray(params) ** law["alpha"] + law["B"] / np.asarray(examples) ** law["beta"]


def true_lr_opt(params, epochs):
    """1.6 at 0.25 epochs, falling as epochs^-s with s growing with model size ([S23] Fig. 3 shape)."""
    s = 0.1 + 0.15 * np.log2(np.asarray(params) / 71.5e6) / np.log2(438.4e6 / 71.5e6)
    return 1.6 * (np.asarray(epochs) / 0.25) ** (-s)


def make_runs(models=("F0", "F1", "F2", "F3", "F4", "F5", "F6"), epochs=EPOCHS, lr_grid=None, seeds=1,
              noise=0.01, lr_curvature=0.02, dataset_size=DATASET_SIZE, seed=0, law=TRUE_LAW) -> pd.DataFrame:
    """One row per trial, with the CSV-import columns (docs/sweeps.md#import--export) plus
    status."""
    rng = np.random.default_rng(seed)
    lr_grid = 2.0 ** np.arange(-4, 3) if lr_grid is None else np.asarray(lr_grid)
    table = NFNET_TABLE3.set_index("model").loc[list(models)]
    rows = []
    for name, m in table.iterrows():
        fwd = 2.0 * m["macs"]  # 2 FLOPs per MAC (docs/units.md#three-records-per-run)
        for ep in epochs:
            examples = ep * dataset_size
            best = true_loss(m["params"], examples, law)
            lr_opt = true_lr_opt(m["params"], ep)
            for lr in lr_grid:
                for s in range(seeds):
                    dist = np.log2(lr / lr_opt)
                    diverged = dist > 2.5
                    loss = best + lr_curvature * dist**2
                    loss *= np.exp(noise * rng.standard_normal())
                    rows.append({"model": name, "depth_mult": float(m["depth_mult"]), "width_mult": 1.0,
                                 "params": m["params"], "examples_seen": examples, "epochs": ep, "lr": lr,
                                 "heldout_loss": np.nan if diverged else loss,
                                 "train_flops": 3.0 * fwd * examples, "batch_size": BATCH,
                                 "dataset": "synthetic", "sweep": "synthetic", "seed": s,
                                 "status": "diverged" if diverged else "done"})
    return pd.DataFrame(rows)


def make_optima(models=("F0", "F1", "F2", "F3", "F4", "F5", "F6"), epochs=EPOCHS, noise=0.01, seed=0,
                dataset_size=DATASET_SIZE, law=TRUE_LAW) -> pd.DataFrame:
    """Points AT the lr optimum, drawn straight from L(N, D) with multiplicative noise
    (the rows analysis.lr.optimal_lr would produce), for testing the Approach 3 fit alone."""
    rng = np.random.default_rng(seed)
    t = NFNET_TABLE3.set_index("model").loc[list(models)].reset_index()
    df = t.merge(pd.DataFrame({"epochs": list(epochs)}), how="cross")
    df["examples_seen"] = df["epochs"] * dataset_size
    df["flops_per_example"] = 2.0 * df["macs"]
    df["train_flops"] = 3.0 * df["flops_per_example"] * df["examples_seen"]
    df["heldout_loss"] = true_loss(df["params"], df["examples_seen"], law) * np.exp(noise * rng.standard_normal(len(df)))
    return df


def make_frontier(n=30, k=60.0, b=0.05, E=0.0, noise=0.02, seed=0, cmin=1e17, cmax=1e22):
    """(compute, loss) points from L = E + k C^-b with multiplicative noise (frontier fits)."""
    rng = np.random.default_rng(seed)
    c = np.exp(np.linspace(np.log(cmin), np.log(cmax), n))
    loss = (E + k * c ** (-b)) * np.exp(noise * rng.standard_normal(n))
    return c, loss


# ------------------------------------------------------------------ families of any architecture

def flops_relation_of(table: pd.DataFrame = NFNET_TABLE3) -> tuple[float, float]:
    """(c, gamma) of forward FLOPs/example = c N^gamma, log-log least squares over a table
    with params and macs (2 FLOPs per MAC): the NFNet family's is (c, gamma) of Table 3."""
    gamma, logc = np.polyfit(np.log(table["params"]), np.log(2.0 * table["macs"]), 1)
    return float(np.exp(logc)), float(gamma)


def true_optimal(compute, law=TRUE_LAW, flops=(1.0, 1.0)):
    """The true (N_opt, D_opt, L*) at training compute C of L(N, D) along C = 3 c N^gamma D
    (the closed form of analysis.chinchilla, evaluated at the truth)."""
    c, gamma = flops
    a, b = law["alpha"], law["beta"]
    denom = a + gamma * b
    compute = np.asarray(compute, float)
    n = (a * law["A"] / (gamma * b * law["B"])) ** (1.0 / denom) * (compute / (3.0 * c)) ** (b / denom)
    d = compute / (3.0 * c * n**gamma)
    return n, d, true_loss(n, d, law)


def true_frontier(law=TRUE_LAW, flops=(1.0, 1.0)) -> dict[str, float]:
    """The true compute-optimal frontier of L(N, D) along C = 3 c N^gamma D, which is exactly
    the offset law L*(C) = E + k C^-b with b = alpha beta / (alpha + gamma beta)
    (both terms of L fall as C^-b at the optimum)."""
    a, b = law["alpha"], law["beta"]
    exponent = a * b / (a + flops[1] * b)
    c0 = 1e20
    return {"E": law["E"], "k": float((true_optimal(c0, law, flops)[2] - law["E"]) * c0**exponent), "b": exponent}


def make_family_runs(params, flops=(1.0, 1.0), family: str | None = "unknown", names=None, epochs=EPOCHS,
                     lr_grid=None, seeds=1, noise=0.01, lr_curvature=0.02, dataset_size=DATASET_SIZE, seed=0,
                     law=TRUE_LAW, per_example=None, resolution=None) -> pd.DataFrame:
    """Runs of a "power-law family": models of the given parameter counts whose forward
    FLOPs per example are exactly c N^gamma (`flops` = (c, gamma)), or `per_example` (one
    value per model, e.g. from a counter), losses from L(N, D) as in make_runs. `family`
    fills the run record's family column (None: no column, as in a CSV made elsewhere);
    `names` default to m0, m1, ... (recognisable as no family); `resolution` fills that
    column when given."""
    rng = np.random.default_rng(seed)
    lr_grid = 2.0 ** np.arange(-4, 3) if lr_grid is None else np.asarray(lr_grid)
    params = [float(p) for p in params]
    names = [f"m{i}" for i in range(len(params))] if names is None else list(names)
    rows = []
    fwds = [flops[0] * n ** flops[1] for n in params] if per_example is None else [float(f) for f in per_example]
    for name, n, fwd in zip(names, params, fwds):
        for ep in epochs:
            examples = ep * dataset_size
            best = true_loss(n, examples, law)
            lr_opt = true_lr_opt(n, ep)
            for lr in lr_grid:
                for s in range(seeds):
                    dist = np.log2(lr / lr_opt)
                    diverged = dist > 2.5
                    loss = (best + lr_curvature * dist**2) * np.exp(noise * rng.standard_normal())
                    rows.append({"model": name, "params": n, "flops_per_example": fwd, "examples_seen": examples,
                                 "epochs": ep, "lr": lr, "heldout_loss": np.nan if diverged else loss,
                                 "train_flops": 3.0 * fwd * examples, "batch_size": BATCH, "dataset": "synthetic",
                                 "sweep": "synthetic", "seed": s, "status": "diverged" if diverged else "done"})
    df = pd.DataFrame(rows)
    if family is not None:
        df.insert(1, "family", family)
    if resolution is not None:
        df["resolution"] = resolution
    return df
