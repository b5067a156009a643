"""Tests for descent_opt.rare_event on limit states whose probability is known in closed form.

Every estimate is checked on a fixed set of seeds, all of which must pass: the estimate within
three of its own stated standard errors of the truth (``|p_hat - p| <= 3 cov p``), which an
estimator with an honest ``cov`` misses with a probability of a few per mille per seed. The
counts are printed (``pytest -s``) and ``g`` is wrapped to count its evaluations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from descent_opt.rare_event import (
    RareEventEstimate,
    cross_entropy,
    monte_carlo,
    subset_simulation,
)

SEEDS = (0, 1, 2, 3, 4)
# The targets are CoV <= 10 % at p = 1e-4 within 1e5 runs and <= 20 % at p = 1e-6 within
# 1e6; the runs asserted here are well under those budgets.
TARGETS = {1e-4: (0.10, 70_000), 1e-6: (0.20, 100_000)}
# Subset simulation's samples per level for each p (its cost grows with log 1/p).
SUS_N = {1e-4: 15_000, 1e-6: 10_000}
A20 = np.random.default_rng(20).standard_normal(20)
A20 /= np.linalg.norm(A20)  # a direction that is not a latent axis


class Counted:
    """Wraps ``g`` and counts the rows it is evaluated on."""

    def __init__(self, g):
        self.g, self.n, self.calls = g, 0, 0

    def __call__(self, z):
        self.n += len(z)
        self.calls += 1
        return self.g(z)


def axis(z):
    return z[:, 0]


def linear20(z):
    return z @ A20


def two_sided(z):
    return np.maximum(z[:, 0], -z[:, 0])


def two_sided_rotated(z):
    return np.abs(z @ A20)


def _run(method, g, dim, threshold, seed, **kw) -> RareEventEstimate:
    counted = Counted(g)
    est = method(counted, dim, threshold, key=seed, **kw)
    assert est.n_simulations == counted.n
    return est


def _check(est: RareEventEstimate, p: float, label: str) -> None:
    print(
        f"{label}: p={p:.3e} estimate={est.probability:.3e} cov={est.cov:.3f} "
        f"n_simulations={est.n_simulations} levels={len(est.levels)}"
    )
    assert est.converged
    assert abs(est.probability - p) <= 3 * est.cov * p, label


def _kwargs(method, p: float) -> dict:
    return {"n_per_level": SUS_N[p]} if method is subset_simulation else {}


@pytest.mark.parametrize("p", [1e-4, 1e-6])
@pytest.mark.parametrize("method", [cross_entropy, subset_simulation])
@pytest.mark.parametrize("g, dim", [(axis, 1), (linear20, 20)], ids=["axis", "linear20"])
def test_half_space(g, dim, method, p):
    """g = z0 in one dimension, and g = a . z with |a| = 1 in 20 dimensions, a off every
    axis: p = 1 - Phi(t) both, within error and within the budget."""
    cov_target, budget = TARGETS[p]
    for seed in SEEDS:
        est = _run(method, g, dim, norm.isf(p), seed, **_kwargs(method, p))
        _check(est, p, f"{method.__name__} {g.__name__} seed {seed}")
        assert est.cov <= cov_target and est.n_simulations <= budget


@pytest.mark.parametrize("adapt_scale", [True, False])
def test_cross_entropy_60d(adapt_scale):
    """The product's latent dimension: a linear limit state in 60 dimensions at p = 1e-4."""
    a = np.ones(60) / math.sqrt(60)
    p = 1e-4
    for seed in SEEDS:
        est = _run(cross_entropy, lambda z: z @ a, 60, norm.isf(p), seed, adapt_scale=adapt_scale)
        _check(est, p, f"cross_entropy 60-d adapt_scale={adapt_scale} seed {seed}")
        assert est.cov <= 0.10


def test_two_half_spaces():
    """The union z0 >= t or z0 <= -t (p = 2 (1 - Phi(t))), in 20 dimensions. Subset
    simulation gets it along an axis and along a rotated direction. Cross-entropy gets it
    along an axis through the scale (sigma_0 at the clip, mu_0 near 0), but along the rotated
    direction its diagonal Gaussian cannot widen: the levels stall and ``converged`` is False,
    the limitation the module docstring states."""
    p = 1e-4
    t = norm.isf(p / 2)
    for seed in SEEDS:
        for g in (two_sided, two_sided_rotated):
            est = _run(subset_simulation, g, 20, t, seed, n_per_level=15_000)
            _check(est, p, f"subset_simulation {g.__name__} seed {seed}")
        est = _run(cross_entropy, two_sided, 20, t, seed)
        _check(est, p, f"cross_entropy two_sided seed {seed}")
        assert est.proposal_std[0] == 3.0 and abs(est.proposal_mean[0]) < 0.5
        stalled = _run(cross_entropy, two_sided_rotated, 20, t, seed, max_levels=10)
        print(f"cross_entropy two_sided_rotated seed {seed}: levels {stalled.levels[-3:]}")
        assert not stalled.converged and len(stalled.levels) == 10
        assert max(stalled.levels) < 0.6 * t


def test_interval_coverage():
    """The 95 % interval covers p = 1e-3 in at least 16 of 20 seeded runs for each method
    (with a true coverage of 95 %, fewer than 16 happens with probability 0.3 %). Small
    samples, so that the interval is wide enough for its shape to matter."""
    p = 1e-3
    t = norm.isf(p)
    runs = {
        "monte_carlo": lambda seed: monte_carlo(axis, 1, t, key=seed, n=20_000),
        "cross_entropy": lambda seed: cross_entropy(
            linear20, 20, t, key=seed, n_per_level=1_000, n_final=1_000
        ),
        "subset_simulation": lambda seed: subset_simulation(
            linear20, 20, t, key=seed, n_per_level=2_000
        ),
    }
    for name, run in runs.items():
        covered = sum(lo <= p <= hi for lo, hi in (run(seed).ci95 for seed in range(20)))
        print(f"{name}: the 95 % interval covers p in {covered} of 20")
        assert covered >= 16, name


def test_monte_carlo_reference():
    """Plain Monte Carlo: the Clopper-Pearson interval and cov of the binomial count."""
    p = 1e-3
    counted = Counted(axis)
    est = monte_carlo(counted, 3, norm.isf(p), key=7, n=250_000, batch=100_000)
    assert counted.calls == 3 and counted.n == est.n_simulations == 250_000
    k = est.n_failures
    assert est.probability == k / 250_000
    assert est.cov == pytest.approx(math.sqrt((1 - est.probability) / k))
    assert est.ci95[0] <= p <= est.ci95[1]
    assert abs(est.probability - p) <= 3 * est.cov * p


@pytest.mark.parametrize(
    "run",
    [
        lambda g, t, key: monte_carlo(g, 4, t, key=key, n=50_000, batch=20_000, keep=7),
        lambda g, t, key: cross_entropy(g, 4, t, key=key, keep=7),
        lambda g, t, key: subset_simulation(g, 4, t, key=key, keep=7),
    ],
    ids=["monte_carlo", "cross_entropy", "subset_simulation"],
)
def test_failures_and_determinism(run):
    """``failures_z`` are distinct failures, worst first, at most ``keep``; a seed gives the
    same estimate every time, also as a Generator; another seed another estimate."""

    def g(z):
        return z[:, 0] + 0.5 * z[:, 1]

    t = 3.0
    est = run(g, t, 3)
    assert est.failures_z.shape == (7, 4) and est.failures_g.shape == (7,)
    np.testing.assert_array_equal(g(est.failures_z), est.failures_g)
    assert np.all(est.failures_g >= t) and np.all(np.diff(est.failures_g) <= 0)
    assert len(np.unique(est.failures_z, axis=0)) == 7
    again = run(g, t, 3)
    from_generator = run(g, t, np.random.default_rng(3))
    for other in (again, from_generator):
        assert other.probability == est.probability and other.cov == est.cov
        assert other.n_simulations == est.n_simulations and other.levels == est.levels
        np.testing.assert_array_equal(other.failures_z, est.failures_z)
    assert run(g, t, 4).probability != est.probability


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        cross_entropy(lambda z: z, 2, 1.0, key=0)
    with pytest.raises(ValueError, match="NaN"):
        monte_carlo(lambda z: np.full(len(z), np.nan), 2, 1.0, key=0, n=10)
    with pytest.raises(ValueError, match="multiple"):
        subset_simulation(axis, 1, 3.0, key=0, n_per_level=1_005, p0=0.1)
    with pytest.raises(ValueError, match="dim"):
        monte_carlo(axis, 0, 1.0, key=0, n=10)


def test_no_failure_seen():
    """A threshold nothing reaches: probability 0, cov inf, the uninformative interval."""
    est = monte_carlo(axis, 1, 50.0, key=0, n=1_000)
    assert est.probability == 0 and est.cov == math.inf and est.failures_z.shape == (0, 1)
    est = subset_simulation(axis, 1, 50.0, key=0, n_per_level=1_000, max_levels=3)
    assert est.probability == 0 and not est.converged and est.ci95 == (0.0, 1.0)
