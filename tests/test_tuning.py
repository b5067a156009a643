"""Gain tuning: the training step compiled once per setting, the weighted risk, failure
replay's stratified minibatches (unbiased, resumable) and adversarial minibatches."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_models import SHORT_DESCENT, VEHICLE

from descent_opt.faults import FaultCatalog
from descent_opt.guidance import default_gains
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria, weighted_cvar
from descent_opt.optimize import gains as tuning
from descent_opt.scenarios import LATENT_NAMES, ScenarioSampler, TerrainSpec
from descent_opt.simulate import SimSpec
from descent_opt.worst_case import ascend


@pytest.mark.slow
def test_training_step_traced_once_across_steps_and_catalogs(monkeypatch):
    """Count traces of the objective inside the jitted training step: the first call traces
    it once (not twice: weakly typed gains would be re-traced after Adam's first update),
    and a second call with another fault catalog (array leaves of the sampler) reuses it."""
    traces = []
    original = tuning.population_risk

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tuning, "population_risk", counting)
    spec = SimSpec(vehicle=VEHICLE, dt_s=0.5, duration_s=30.0)
    train = tuning.TrainSpec(steps=3, batch_size=6, warmup_steps=1, replay_every=0)  # unique

    def tune(catalog, seed):
        sampler = ScenarioSampler(SHORT_DESCENT, TerrainSpec(kind="flat"), catalog, 480.0)
        return tuning.tune_gains(
            spec,
            default_gains(),
            sampler,
            SuccessCriteria(),
            ObjectiveSpec(),
            train,
            key=jax.random.key(seed),
        )

    _, history = tune(FaultCatalog.nominal(), 0)
    assert len(history["objective"]) == 3
    assert len(traces) == 1
    tune(FaultCatalog(), 1)
    assert len(traces) == 1


def test_weighted_cvar_equals_worst_mean_for_equal_weights():
    losses = jax.random.normal(jax.random.key(0), (200,))
    weights = jnp.full(200, 1.0 / 200)
    worst = jnp.sort(losses)[::-1]
    np.testing.assert_allclose(weighted_cvar(losses, weights, 0.9), jnp.mean(worst[:20]), rtol=1e-5)
    # A boundary member counts in part: the worst 10 % of mass is 2.5 of 25 members.
    few = jnp.arange(25.0)
    np.testing.assert_allclose(
        weighted_cvar(few, jnp.full(25, 0.04), 0.9), (24 + 23 + 0.5 * 22) / 2.5, rtol=1e-6
    )


def test_replay_minibatch_is_an_unbiased_estimate_of_the_pool():
    """Weights sum to 1 and the weighted mean of the pool's losses over stratified draws
    averages to the pool's mean (exactly in expectation: checked over many minibatches)."""
    pool = 1000
    losses = np.random.default_rng(0).lognormal(size=pool)
    worst = np.sort(np.argsort(-losses)[:50])
    estimates = []
    for i in range(2000):
        idx, w = tuning.replay_minibatch(worst, pool, 64, 0.5, key=jax.random.key(i))
        assert w.sum() == pytest.approx(1.0, rel=1e-6) and len(idx) == 64
        assert np.isin(idx[:32], worst).all() and not np.isin(idx[32:], worst).any()
        estimates.append(float(np.sum(w * losses[idx])))
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - losses.mean()) < 4 * se


@pytest.mark.slow
def test_failure_replay_resumes_bit_identically_and_frozen_gains_stay():
    """Failure replay draws half of each minibatch's catalog members from the riskiest of a
    pool flown forward every 2 steps, and a quarter of the minibatch is worst cases of the
    current gains searched every 2 steps (adversarial tuning); stopped after step 3
    (mid-pool, mid-search) and resumed from the saved state it ends with the gains of an
    uninterrupted run. A frozen gain (here one that starts at 0, which log-parameterised
    tuning could not even represent) keeps its value exactly while the others move. The
    worst-case search behind the minibatch (its compiled step, at the same 2 cases) raises
    the smoothed loss of its starting points."""
    spec = SimSpec(vehicle=VEHICLE, dt_s=0.5, duration_s=30.0)
    sampler = ScenarioSampler(SHORT_DESCENT, TerrainSpec(kind="flat"), FaultCatalog(), 480.0)
    start = default_gains(heavy_tail_weight=0.0)
    train = tuning.TrainSpec(
        steps=5, batch_size=8, warmup_steps=1, replay_every=2, replay_pool=24, replay_worst=4,
        replay_fraction=0.5, frozen=("heavy_tail_weight", "zem_gain"),
        adversarial_fraction=0.25, adversarial_every=2, adversarial_steps=3,
    )  # fmt: skip
    assert tuning.adversarial_count(train) == 2
    args = (spec, start, sampler, SuccessCriteria(), ObjectiveSpec(), train)
    saved = {}

    def keep(state):  # a copy: the history lists grow on after the step
        history = {k: list(v) for k, v in state.history.items()}
        saved[state.step] = dataclasses.replace(state, history=history)

    whole, history = tuning.tune_gains(*args, key=jax.random.key(1), on_step=keep)
    assert saved[3].replay_worst is not None and len(saved[3].replay_worst) == 4
    assert saved[3].adversarial_rows.shape == (2, len(LATENT_NAMES))
    resumed, again = tuning.tune_gains(*args, key=jax.random.key(1), start=saved[3])
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(history["objective"], again["objective"])

    assert float(whole.nav.heavy_tail_weight) == 0.0
    np.testing.assert_array_equal(np.asarray(whole.zem_gain), np.asarray(start.zem_gain))
    moved = np.asarray(whole.descent_rate_mps) != np.asarray(start.descent_rate_mps)
    assert moved.any()

    smooth = tuning.tuning_sim(spec, train.gate_softness)
    values = []
    ascend(
        smooth, start, sampler, SuccessCriteria(), ObjectiveSpec(),
        np.asarray(jax.random.uniform(jax.random.key(5), (2, len(LATENT_NAMES)))),
        key=jax.random.key(5), steps=4, learning_rate=0.3, sigma_bound=3.0,
        after_step=lambda y, v: values.append(v),
    )  # fmt: skip
    assert np.all(values[-1] > values[0]), values
