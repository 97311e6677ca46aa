"""At least 99% of the parametric bootstrap's refits converge on the synthetic designs of
bench/coverage_analysis.py (they used to stop at 40-90%: E -> 0 creeps slowly, and with
3 model sizes alpha can run off to infinity fitting the smallest model alone)."""
from __future__ import annotations

import numpy as np
import pytest

from analysis import chinchilla, fitting, synthetic

DESIGNS = {  # as bench/coverage_analysis.py (the identified ones; 4x3 is the demo's shape)
    "3x3": (("F0", "F2", "F4"), (0.25, 1, 4)),
    "4x3": (("F0", "F2", "F4", "F6"), (0.25, 1, 4)),
    "4x6": (("F0", "F2", "F4", "F6"), synthetic.EPOCHS),
}
LAW = synthetic.TRUE_LAW
TRUTH = np.array([[np.log(LAW["A"]), np.log(LAW["B"]), np.log(LAW["E"]), LAW["alpha"], LAW["beta"]]])


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("seed", [0, 4])  # seed 4: the worst one measured at the old cap (38% on 3x3)
def test_at_least_99_percent_of_refits_converge(design, seed):
    models, epochs = DESIGNS[design]
    opt = synthetic.make_optima(models=models, epochs=epochs, noise=0.01, seed=seed)
    fit = chinchilla.fit_approach3(opt, resamples=200, seed=seed, polish=False, starts=TRUTH)
    assert fit.converged_fraction >= 0.99, fit.converged_fraction
    assert np.isfinite(fit.samples["alpha"]).mean() >= 0.99


def test_a_refit_creeping_to_e_zero_is_restarted_at_the_boundary():
    """A data set whose best law has E = 0: the restart at E = 0 converges, with an
    objective no higher than where the creep stopped."""
    n = np.array([1e6, 3e6, 1e7, 3e7, 1e8, 1e6, 1e7, 1e8])
    d = np.array([1e8, 1e8, 1e8, 1e8, 1e8, 1e9, 1e9, 1e9])
    y = np.log(400.0 / n**0.3 + 900.0 / d**0.3)  # no floor: E = 0 exactly
    designs = chinchilla._designs(np.log(n), np.log(d))
    start = np.array([[np.log(400.0), np.log(900.0), np.log(0.5), 0.3, 0.3]])
    stopped = fitting.minimize_batched(start, designs, y, np.ones(n.size), max_iter=3)  # stopped by the cap
    assert not stopped.converged[0]
    fixed = fitting.boundary_restarts(stopped, designs, y)
    assert fixed.converged[0] and fixed.loss[0] <= stopped.loss[0]
    assert fixed.theta[0, 2] <= fitting.DEAD_TERM + 1  # E switched off


def test_refits_respect_the_exponent_bound():
    theta0 = np.array([[200.0, 3.0, 0.5, 3.9, 0.3]])
    n = np.geomspace(1e6, 1e8, 5).repeat(2)
    d = np.tile([1e8, 1e9], 5)
    y = np.log(2.0 + 1e3 / n**0.5 + 900.0 / d**0.3)
    res = fitting.minimize_batched(theta0, chinchilla._designs(np.log(n), np.log(d)), y, np.ones(n.size),
                                   max_iter=200, upper=chinchilla.REFIT_UPPER)
    assert (res.theta[:, 3:] <= chinchilla.EXPONENT_MAX).all()
