"""Divergence guards: a tuning step whose objective or gradient is not finite stops tuning
with a message naming the step and returns no gains; non-finite gains are never written; a flight
that diverges is counted, listed with the step where its state stopped being finite, and
kept out of the percentiles."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import numpy as np
import pytest
from shared_models import SHORT_DESCENT, VEHICLE

import descent_opt
from descent_opt.export import write_gain_table
from descent_opt.faults import FaultCatalog
from descent_opt.guidance import default_gains
from descent_opt.jobs import monte_carlo
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria
from descent_opt.optimize import gains as tuning
from descent_opt.scenarios import ScenarioSampler, TerrainSpec
from descent_opt.simulate import SimSpec

pytestmark = pytest.mark.slow  # end to end: see pyproject.toml


def _tune(mass_initial_kg: float, steps: int):
    """A few tuning steps on short descents (a static setting of this module's own)."""
    sampler = ScenarioSampler(
        SHORT_DESCENT, TerrainSpec(kind="flat"), FaultCatalog(), mass_initial_kg
    )
    return tuning.tune_gains(
        SimSpec(vehicle=VEHICLE, dt_s=0.5, duration_s=30.0),
        default_gains(),
        sampler,
        SuccessCriteria(),
        ObjectiveSpec(),
        tuning.TrainSpec(steps=steps, batch_size=5, warmup_steps=1, replay_every=0),
        key=jax.random.key(0),
    )


def test_nonfinite_objective_stops_tuning_at_its_step():
    # A start mass that is not a number makes every flight, and so the objective, NaN.
    with pytest.raises(tuning.NonFiniteTraining, match="step 0: objective nan, 73 of the 76"):
        _tune(np.nan, steps=2)  # the next test's program


def test_history_counts_nonfinite_gradient_entries():
    _, history = _tune(480.0, steps=2)
    np.testing.assert_array_equal(history["nonfinite_grad"], [0.0, 0.0])


def test_nonfinite_gains_are_never_written(tmp_path):
    gains = default_gains()
    bad = eqx.tree_at(lambda g: g.descent_rate_mps, gains, gains.descent_rate_mps.at[3].set(np.nan))
    with pytest.raises(ValueError, match="schedule.descent_rate_mps is not finite"):
        write_gain_table(bad, tmp_path, {})
    assert list(tmp_path.iterdir()) == []


def test_diverged_flights_are_counted_and_located():
    config = descent_opt.load_config(
        ["+experiment=monte_carlo", "evaluation.n_scenarios=50", "terrain=flat"]
    )
    # A mass dispersion that is not a number: every member's flight diverges at once.
    broken = dataclasses.replace(
        config, scenario=eqx.tree_at(lambda s: s.mass_sigma_kg, config.scenario, np.nan)
    )
    m = monte_carlo.run(broken).metrics
    assert m["n_scenarios"] == 50 and m["n_nonfinite"] == 50 and m["success_rate"] == 0.0
    assert m["nonfinite_indices"] == list(range(50))
    assert [d["index"] for d in m["nonfinite"]] == [0, 1, 2, 3, 4]
    assert all(d["first_nonfinite_step"] == 0 for d in m["nonfinite"])
    assert m["failures"] == []  # nothing finite to rank
    clean = monte_carlo.run(config).metrics
    assert clean["n_nonfinite"] == 0 and clean["nonfinite"] == []
