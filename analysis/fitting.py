"""Robust fits of log-sum-exp laws in log space, batched over starts and bootstrap resamples.

Every law this package fits has the form  log L_hat = logsumexp_j (X_j @ theta)  with
each term linear in the parameters (the [H22] LSE form,
docs/references.md#approach-3-a-parametric-law-in-n-and-d):
  L = k C^-b            -> one term  [1, -log C]
  L = E + k C^-b        -> two terms [1, 0, 0] (e = log E) and [0, 1, -log C]
  L = E + A/N^a + B/D^b -> three terms.
The objective is the SUM (not mean, [E24]) of Huber losses of the log residuals,
weighted per point: bootstrap resamples are multinomial weights over the points, so
one resample is one row of a (B, n) weight matrix and all resamples are solved at once.

Optimiser: a batched Levenberg-Marquardt on the iteratively reweighted least-squares
majoriser of the Huber loss (the classical M-estimation algorithm), vectorised with
numpy over B problems. It stops per problem only when (a) the step of every parameter
that still affects a prediction is below `xtol`, (b) no damped step can lower a finite
objective, or (c) the objective has stopped falling (relative 1e-12 over 50 iterations:
a parameter drifting to a boundary such as E -> 0). A problem stopped by the iteration
cap is reported as NOT converged. The single full-data fit is then polished with scipy's
L-BFGS-B at tight tolerances and its status is reported ([E24]: the original Chinchilla
fit stopped early).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HUBER_DELTA = 1e-3  # [H22] Approach 3, docs/references.md#approach-3-a-parametric-law-in-n-and-d
# Gradient infinity-norm below which a fit counts as converged. Huber gradients scale with
# delta (1e-3) times the number of points, so 1e-8 is 5+ orders below any real slope.
GRAD_TOL = 1e-8
# Bootstrap refits start at the full-data optimum. Most converge in < 200 iterations; a
# resample whose infimum is E -> 0 creeps there for a few thousand (measured on the
# synthetic designs of bench/coverage_analysis.py: 500 left 40-90% converged, 5000 leaves
# 97.5-100%), so the cap is 5000 and what is left gets the boundary restarts below.
BOOTSTRAP_MAX_ITER = 5000
# A term switched off for a boundary restart: its log-scale parameter set this low
# (exp(-50) ~ 2e-22 of a prediction) is the limit "this term is 0" (e.g. E = 0).
DEAD_TERM = -50.0
# The "cases" bootstrap is kept as it was measured (docs/analysis.md), with its old cap.
CASES_MAX_ITER = 500
# A problem whose objective falls by less than FLAT_RTOL (relative) over FLAT_WINDOW
# iterations has converged in value even if a parameter keeps drifting to a boundary.
FLAT_WINDOW, FLAT_RTOL = 50, 1e-12
# ... or its fitted values (log L_hat at every point) moved by less than PRED_TOL over the
# window while the objective fell by less than STILL_RTOL: 1e-7 in log loss is a 0.00001%
# change of a prediction, orders below any measurement; what still moves is a direction
# of the parameters the data do not determine.
PRED_TOL, STILL_RTOL = 1e-7, 1e-9
# d log L_hat / d theta_p below this for every point: the parameter has left the data
DEAD_SENSITIVITY = 1e-4  # 0.01% of a prediction: far below any loss measurement noise


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _evaluate(theta, designs, y, w, delta):
    """Objective (B,), residuals (B, n), Jacobian of the log prediction (B, n, p)."""
    u = np.tensordot(theta, designs, axes=([1], [2]))  # (B, J, n), one BLAS call
    top = u.max(axis=1, keepdims=True)
    ex = np.exp(u - top)
    tot = ex.sum(axis=1, keepdims=True)
    r = (np.log(tot) + top)[:, 0, :] - np.atleast_2d(y)
    f = np.sum(w * huber(r, delta), axis=1)
    soft = ex / tot
    jac = soft[..., 0, :, None] * designs[0][None]
    for j in range(1, designs.shape[0]):
        jac = jac + soft[..., j, :, None] * designs[j][None]
    return f, r, jac


def objective(theta, designs, y, w, delta=HUBER_DELTA):
    """Summed weighted Huber loss for a batch of parameter vectors (B, p) -> (B,)."""
    u = np.tensordot(np.atleast_2d(theta), designs, axes=([1], [2]))
    top = u.max(axis=1)
    r = np.log(np.exp(u - top[:, None]).sum(axis=1)) + top - np.atleast_2d(y)
    return np.sum(np.atleast_2d(w) * huber(r, delta), axis=1)


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched solve of a x = b; a singular system (a term whose weight vanished, all-zero
    bootstrap weights) falls back to least squares for that problem alone."""
    try:
        return np.linalg.solve(a, b[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(ai, bi, rcond=None)[0] for ai, bi in zip(a, b)])


@dataclass
class BatchResult:
    theta: np.ndarray  # (B, p)
    loss: np.ndarray  # (B,)
    converged: np.ndarray  # (B,) bool
    iterations: int


def minimize_batched(theta0, designs, y, w, delta=HUBER_DELTA, xtol=1e-10, max_iter=2000,
                     upper=None) -> BatchResult:
    """Damped IRLS (Levenberg-Marquardt on the Huber majoriser) for B independent problems.

    `designs` (J, n, p), `y` (n,) or (B, n) log losses, `w` (B, n) or (n,) point weights,
    `upper` (p,) optional upper bounds: steps are projected onto them, so a parameter the
    data push past its bound stops there and the rest converge (projected LM).
    """
    theta = np.array(theta0, dtype=float, copy=True)
    b, p = theta.shape
    n = y.shape[-1]
    w = np.broadcast_to(np.asarray(w, dtype=float), (b, n))
    y = np.broadcast_to(y, (b, n))
    lam = np.full(b, 1.0)
    active = np.ones(b, dtype=bool)
    converged = np.zeros(b, dtype=bool)
    f, r, jac = _evaluate(theta, designs, y, w, delta)
    eye = np.eye(p)
    f_mark, pred_mark = f.copy(), r + y
    it = 0
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        ra, ja, wa = r[idx], jac[idx], w[idx]
        absr = np.abs(ra)
        inside = absr <= delta
        # IRLS weights of the Huber majoriser, and the exact (Gauss-Newton) Huber curvature
        omega = wa * np.where(inside, 1.0, delta / np.maximum(absr, 1e-300))
        grad = np.matmul(ja.transpose(0, 2, 1), (wa * np.clip(ra, -delta, delta))[:, :, None])[:, :, 0]
        jt = ja.transpose(0, 2, 1)
        h_irls = np.matmul(jt * omega[:, None, :], ja)
        h_in = np.matmul(jt * (wa * inside)[:, None, :], ja)
        # lam large -> a short IRLS (descent) step; lam small -> Newton on the piecewise
        # quadratic Huber loss, which converges in a few steps once the inliers are settled
        lhs = h_in + lam[idx, None, None] * h_irls
        ridge = 1e-12 * (1.0 + np.abs(np.einsum("bpp->bp", lhs)).max(axis=1))
        step = _solve(lhs + ridge[:, None, None] * eye[None], -grad)
        cand = theta[idx] + step
        if upper is not None:
            cand = np.minimum(cand, upper)
            step = cand - theta[idx]
        f_new, r_new, jac_new = _evaluate(cand, designs, y[idx], wa, delta)
        ok = np.isfinite(f_new) & (f_new <= f[idx])
        acc = idx[ok]
        theta[acc], f[acc], r[acc], jac[acc] = cand[ok], f_new[ok], r_new[ok], jac_new[ok]
        lam[acc] = np.maximum(lam[acc] / 3.0, 1e-9)
        rej = idx[~ok]
        lam[rej] *= 4.0
        # a parameter whose term no longer touches any prediction (E -> 0 drifting e to
        # -inf) is at a boundary: its step does not count against convergence
        live = np.max(np.abs(ja), axis=1) > DEAD_SENSITIVITY
        small = np.max(np.abs(step) * live, axis=1) < xtol * (1.0 + np.max(np.abs(theta[idx]), axis=1))
        done = idx[ok & small]
        converged[done] = True
        stuck = rej[(lam[rej] > 1e10) & np.isfinite(f[rej])]  # no damped step lowers f: a (numerical) minimum
        converged[stuck] = True
        active[done] = False
        active[stuck] = False
        if it % FLAT_WINDOW == 0:
            # objective flat over a window while the parameters still move: the optimum is
            # at a boundary of the law (e.g. E -> 0, e -> -inf); the loss is at its infimum
            flat = active & (f_mark - f <= FLAT_RTOL * np.maximum(f, 1e-300))
            # or the fitted values have stopped moving: the parameters drift along a ridge
            # the data cannot see (A up with alpha down, E -> 0), at the infimum in value
            pred = r + y
            still = np.max(np.abs(pred - pred_mark), axis=1) < PRED_TOL
            flat |= active & still & (f_mark - f <= STILL_RTOL * np.maximum(f, 1e-300))
            converged[flat] = True
            active[flat] = False
            f_mark, pred_mark = f.copy(), pred.copy()
    return BatchResult(theta, f, converged, it)


@dataclass
class PointFit:
    theta: np.ndarray
    loss: float
    status: str  # scipy L-BFGS-B message of the polish step
    success: bool
    starts: int
    starts_agreeing: int  # starts that reached the best objective (within 1e-9 relative)


def fit_multistart(starts, designs, y, delta=HUBER_DELTA, screen=512, keep=32, screen_iters=15,
                   polish=True) -> PointFit:
    """Fit from a grid of starts: evaluate the objective at every start, take a short
    batched descent from the best `screen` of them, converge the best `keep` fully,
    then polish the winner with L-BFGS-B at tight tolerances (`polish=False` skips the
    polish and its scipy.optimize import: the planner's fast path)."""
    starts = np.atleast_2d(np.asarray(starts, dtype=float))
    w = np.ones(y.shape[0])
    f0 = objective(starts, designs, y, w, delta)
    first = starts[np.argsort(np.where(np.isfinite(f0), f0, np.inf))[:screen]]
    short = minimize_batched(first, designs, y, w, delta, max_iter=screen_iters)
    order = np.argsort(np.where(np.isfinite(short.loss), short.loss, np.inf))[:keep]
    full = minimize_batched(short.theta[order], designs, y, w, delta)
    best = int(np.nanargmin(full.loss))
    agree = int(np.sum(full.loss <= full.loss[best] * (1 + 1e-9) + 1e-15))

    def fun(th):
        f, r, jac = _evaluate(th[None], designs, y, w[None], delta)
        g = np.einsum("n,np->p", np.clip(r[0], -delta, delta), jac[0])
        return float(f[0]), g

    if not polish:
        gnorm = float(np.max(np.abs(fun(full.theta[best])[1])))
        status = f"batched IRLS/Newton only (no L-BFGS-B polish); |grad|_inf = {gnorm:.1e}"
        return PointFit(full.theta[best], float(full.loss[best]), status, bool(full.converged[best]),
                        int(starts.shape[0]), agree)
    from scipy.optimize import minimize  # imported here: ~0.3 s the planner does not pay

    res = minimize(fun, full.theta[best], jac=True, method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000, "maxcor": 20})
    theta = res.x if res.fun <= full.loss[best] else full.theta[best]
    gnorm = float(np.max(np.abs(fun(theta)[1])))
    # L-BFGS-B's line search reports ABNORMAL when it cannot lower a loss that is already
    # minimal to machine precision (the Huber loss has no second derivative at |r| = delta);
    # the gradient norm is the real test of convergence.
    success = bool(res.success) or gnorm < GRAD_TOL
    status = f"L-BFGS-B: {res.message}; |grad|_inf = {gnorm:.1e}; {res.nit} iterations"
    return PointFit(theta, float(min(res.fun, full.loss[best])), status, success, int(starts.shape[0]), agree)


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Multinomial resampling of n points as integer weights (resamples, n): the "cases"
    bootstrap. Kept for comparison only: with few points a resample drops whole model
    sizes, and its intervals under-cover badly (docs/analysis.md, coverage tables)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)


# Singular values of the column-normalised Jacobian below this fraction of the largest
# count as zero: an exactly unidentified direction (2 model sizes for 3 size parameters)
# gives ~1e-16, a merely ill-conditioned but identified one (close sizes) > 1e-6.
RANK_RTOL = 1e-9


def linearise(theta: np.ndarray, designs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of the log prediction (n,) and its Jacobian (n, p) at one parameter vector."""
    _, r, jac = _evaluate(np.atleast_2d(theta), designs, np.atleast_2d(y), np.ones((1, y.shape[-1])), HUBER_DELTA)
    return r[0], jac[0]


def residual_dof(jac: np.ndarray) -> int:
    """Points minus the number of parameter directions the data pin down (the rank of the
    (n, p) Jacobian of the log prediction): the degrees of freedom left for the noise."""
    norms = np.linalg.norm(jac, axis=0)
    live = norms > DEAD_SENSITIVITY * np.sqrt(jac.shape[0])  # a parameter at a boundary (E -> 0) has none
    if not live.any():
        return jac.shape[0]
    sv = np.linalg.svd(jac[:, live] / norms[live], compute_uv=False)
    return int(jac.shape[0] - np.sum(sv > RANK_RTOL * sv[0]))


def parametric_samples(y_hat: np.ndarray, resid: np.ndarray, dof: int, resamples: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Simulated log losses (resamples, n) at the SAME points: y_hat + s_b z_b, z_b normal.

    The noise scale is not taken as known: s_b = s sqrt(dof / chi2_dof) with s^2 = RSS / dof,
    the residual variance's sampling distribution. For a linear fit this makes the spread of
    the refits exactly Student-t with dof degrees of freedom (the classical small-sample
    interval); the refits carry the law's nonlinearity (exponents, N_opt) on top."""
    s = np.sqrt(np.sum(resid**2) / dof)
    scale = s * np.sqrt(dof / rng.chisquare(dof, size=(resamples, 1)))
    return y_hat[None, :] + scale * rng.standard_normal((resamples, y_hat.size))


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    """R^2 of log losses (the space the fit is done in)."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if ss_tot == 0 else 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot


# An irreducible loss E below this many nats is at its bound 0 (E = exp(e), e -> -inf):
# far below any held-out loss difference a run can measure.
FLOOR_AT_BOUND = 1e-6


def floor_at_bound(params: dict) -> bool:
    """True when the fitted E sits at its bound 0: the runs show no floor yet, so E is not
    identified, and a bootstrap around the bound (every refit lands there too) would
    print a falsely tight interval for it."""
    return "E" in params and params["E"] < FLOOR_AT_BOUND


def param_intervals(params: dict, samples: dict, level: float) -> dict[str, tuple[float, float]]:
    """Percentile interval per parameter; E's is withheld (NaN) when E sits at its bound."""
    out = {k: interval(v, level) for k, v in samples.items()}
    if floor_at_bound(params):
        out["E"] = (float("nan"), float("nan"))
    return out


def interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile bootstrap interval, ignoring resamples that produced non-finite values."""
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


INTERVAL_METHODS = ("parametric", "cases")  # "cases": the old point-resampling bootstrap, for comparison


@dataclass
class Resampled:
    theta: np.ndarray  # (B, p) refits (kept even if not converged); NaN rows: intervals withheld
    converged_fraction: float  # refits that met the convergence test; NaN when withheld
    dof: int  # residual degrees of freedom of the full-data fit
    withheld: str  # why no interval is given ("" when intervals are given)


def scale_columns(designs: np.ndarray) -> list[int]:
    """The parameter that scales each term alone (a constant-1 column no other term uses,
    e.g. log E, log A, log B): setting it to DEAD_TERM switches that term off."""
    cols = []
    for j in range(designs.shape[0]):
        for c in range(designs.shape[2]):
            alone = all(not np.any(designs[k][:, c]) for k in range(designs.shape[0]) if k != j)
            if alone and np.all(designs[j][:, c] == 1.0):
                cols.append(c)
                break
    return cols


def boundary_restarts(res: BatchResult, designs: np.ndarray, y: np.ndarray, upper=None) -> BatchResult:
    """Refits stopped by the cap while creeping towards "a term is 0" (E -> 0, the usual
    case) are restarted AT that boundary, one term at a time; a restart that converges
    to an objective no higher than where the creep stopped is that refit's infimum, so
    it replaces it and counts as converged (the limit the creep was heading for)."""
    theta, loss, converged = res.theta.copy(), res.loss.copy(), res.converged.copy()
    for col in scale_columns(designs):
        todo = np.flatnonzero(~converged & np.isfinite(loss))
        if todo.size == 0:
            break
        start = theta[todo].copy()
        start[:, col] = DEAD_TERM
        again = minimize_batched(start, designs, np.atleast_2d(y)[todo] if np.ndim(y) == 2 else y,
                                 np.ones(designs.shape[1]), max_iter=BOOTSTRAP_MAX_ITER, upper=upper)
        take = again.converged & (again.loss <= loss[todo] * (1.0 + 1e-9))
        theta[todo[take]], loss[todo[take]], converged[todo[take]] = again.theta[take], again.loss[take], True
    return BatchResult(theta, loss, converged, res.iterations)


def parametric_bootstrap(theta_hat: np.ndarray, designs: np.ndarray, y: np.ndarray, resamples: int,
                         rng: np.random.Generator, not_identified: str = "", upper=None) -> Resampled:
    """Refit the law to `resamples` simulated data sets at the fitted points (see
    parametric_samples). Intervals are withheld, with the reason, when a parameter is not
    identified by the design (`not_identified`, from the caller, which knows the law) or no
    degree of freedom is left to estimate the noise. `upper`: bounds on the refits'
    parameters (minimize_batched)."""
    resid, jac = linearise(theta_hat, designs, y)
    dof = residual_dof(jac)
    withheld = not_identified or ("" if dof >= 1 else
                                  f"no degree of freedom left to estimate the noise ({y.size} points, "
                                  f"{y.size - dof} parameter directions)")
    nan = np.full((resamples, theta_hat.size), np.nan)
    if withheld or resamples == 0:
        return Resampled(nan, float("nan"), dof, withheld)
    y_sim = parametric_samples(y - resid, resid, dof, resamples, rng)
    with np.errstate(all="ignore"):
        boot = minimize_batched(np.repeat(theta_hat[None], resamples, axis=0), designs, y_sim,
                                np.ones(y.size), max_iter=BOOTSTRAP_MAX_ITER, upper=upper)
        boot = boundary_restarts(boot, designs, y_sim, upper)
    # Refits stopped by the iteration cap are KEPT at their last iterate: they are the data
    # sets whose law runs off along a ridge (alpha -> 0 with A -> inf, E -> 0, ...), i.e. the
    # ones the design cannot pin down. Dropping them (as the "cases" bootstrap does) hides
    # exactly the uncertainty the interval must show (measured: docs/analysis.md).
    theta = np.where(np.isfinite(boot.theta).all(axis=1, keepdims=True), boot.theta, np.nan)
    return Resampled(theta, float(boot.converged.mean()), dof, "")
