"""Rare-failure probabilities of the closed loop: the latent limit state flies exactly the
members plain sampling draws, re-flies any evaluation by its index, and the rare_event job
reports its estimate and refuses bad input in one line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runs import assert_refused, run_cli

import descent_opt
from descent_opt import rare_event
from descent_opt.faults import FAULT_CLASSES, given
from descent_opt.guidance import default_gains
from descent_opt.jobs import rare_event as rare_event_job
from descent_opt.latent_flights import LatentFlights, failure_margin
from descent_opt.objectives import landing_metrics
from descent_opt.scenarios import population_latents, to_normal
from descent_opt.simulate import simulate_population

# A short, low descent on flat ground with nominal sensors: cheap flights.
FLIGHT = [
    "sim.duration_s=60", "scenario.r0_m=[-50.0,0.0,1500.0]", "scenario.v0_mps=[0.0,0.0,-35.0]",
    "terrain=flat", "faults=nominal", "progress=false",
]  # fmt: skip

# The same flights with the realistic catalog, by plain sampling of 256 flights a stage (the
# batch shape flown above: the same program).
FAULTY = [o for o in FLIGHT if o != "faults=nominal"] + [
    "rare_event.method=monte_carlo", "rare_event.n_final=256", "rare_event.keep=0",
]  # fmt: skip


def _flights():
    config = descent_opt.load_config(FLIGHT)
    gains = default_gains(config.altitude_breakpoints_m)
    key = config.population_key()
    g = LatentFlights(config.sim, gains, config.sampler(), config.success, key=key)
    return config, gains, key, g


def test_limit_state_flies_the_members_plain_sampling_draws():
    """g of the members' own normal view scores each member as plain sampling flies it:
    its failure margin, above 1 exactly where the success rules break; re-flying
    evaluations by their index gives their scores again, and a second call carries on
    counting."""
    config, gains, key, g = _flights()
    n = 256
    x = np.asarray(to_normal(population_latents(key, jnp.arange(n, dtype=jnp.uint32))))
    g.threshold = 1.0
    score = g(x)
    m = landing_metrics(
        simulate_population(config.sim, gains, config.sampler()(key, n)), config.success
    )
    # The same members through another program: equal to float32 rounding.
    np.testing.assert_allclose(score, np.asarray(failure_margin(m, config.success)), rtol=1e-5)
    np.testing.assert_array_equal(score > 1.0, ~np.asarray(m.success))
    assert g.evaluations == n
    assert [e[0] for e in g.exceedances] == list(np.flatnonzero(score >= 1.0))
    again = g.fly(x, 0)["score"]  # evaluations 0 .. n - 1 again: the same flights
    np.testing.assert_array_equal(again, score)
    g(x)  # evaluations n .. 2n - 1: the same draws with new keyed parts (sensor noise)
    assert g.evaluations == 2 * n


@pytest.mark.slow
def test_job_reports_the_estimate_and_refuses_bad_input(tmp_path):
    """A small cross-entropy run of the touchdown-speed tail: the metrics a review reads,
    the budget respected, failures re-flown to their score; bad input in one line, exit 2,
    nothing written."""
    run = tmp_path / "re"
    args = ["+experiment=rare_event", *FLIGHT, "rare_event.event=touchdown_speed",
            "rare_event.threshold_mps=1.6", "rare_event.n_per_level=500",
            "rare_event.n_final=1000", "rare_event.max_levels=6", "rare_event.keep=3"]  # fmt: skip
    proc = run_cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    for key in ("failure_probability", "failure_probability_ci95", "cov",
                "effective_sample_size", "n_simulations", "proposal", "failures"):  # fmt: skip
        assert key in m, key
    assert m["n_simulations"] <= 500 * 6 + 1000
    low, high = m["failure_probability_ci95"]
    assert 0.0 <= low <= m["failure_probability"] <= high <= 1.0
    assert m["failure_probability"] > 0.0 and len(m["failures"]) == 3
    for f in m["failures"]:
        # Re-flown alone: the same flight in a program of another batch shape, equal to
        # float32 rounding.
        assert f["score"] >= 1.6 and f["rescore"] == pytest.approx(f["score"], rel=1e-4)
        assert len(f["latents"]) == 30
    bad = {
        "rare_event.n_per_level=0": "rare_event.n_per_level",
        "rare_event.n_final=-5": "rare_event.n_final",
        "rare_event.threshold_mps=-1.0": "rare_event.threshold_mps",
        "rare_event.method=importance": "rare_event.method",
        "rare_event.event=touchdown_speed": "rare_event.threshold_mps",
    }
    assert_refused("rare_event", FLIGHT, bad, tmp_path)


def test_by_fault_estimates_each_class_on_the_catalog_given_it():
    """rare_event.by_fault leaves the overall estimate as it was, bit for bit, and adds per
    fault class the probability given the class, flown on given(catalog, class) with the
    class's own keys: flown again by hand from those keys on the catalog with the class's
    rate set to 1 (lrf_absent: faults.absent_rate=1.0) it is the same to the bit, and far
    above the overall probability (without its LRF the short descent fails about half the
    time). catalog_rate is the class's share of the catalog, contribution that times the
    conditional probability."""
    plain = rare_event_job.run(descent_opt.load_config(FAULTY))
    config = descent_opt.load_config([*FAULTY, "rare_event.by_fault=true"])
    result = rare_event_job.run(config)
    assert "by_fault" not in plain
    for key in ("failure_probability", "failure_probability_ci95", "cov", "n_simulations"):
        assert result[key] == plain[key], key
    by_fault = result["by_fault"]
    catalog = config.faults
    assert list(by_fault) == list(FAULT_CLASSES)  # every class occurs in the realistic catalog
    assert by_fault["lrf_absent"]["catalog_rate"] == catalog.absent_rate
    assert by_fault["rim_step"]["catalog_rate"] == catalog.rim_step_rate
    lo, hi = catalog.acquisition_range_m
    assert by_fault["acquisition_below_1200m"]["catalog_rate"] == pytest.approx(
        catalog.late_acquisition_rate * (1200.0 - lo) / (hi - lo)
    )
    for c in by_fault.values():
        assert c["n_simulations"] == 256
        assert c["contribution"] == c["catalog_rate"] * c["failure_probability"]
    # Without its LRF the short descent fails about half the time (its 300 m altitude
    # knowledge error); the realistic catalog draws no LRF once in 500.
    absent = by_fault["lrf_absent"]
    assert 0.3 < absent["failure_probability"] < 0.7
    assert absent["failure_probability"] > 10 * result["failure_probability"]
    # The class's flights by hand: the catalog with absent_rate=1, keyed for class i.
    i = list(FAULT_CLASSES).index("lrf_absent")
    by_hand = descent_opt.load_config([*FAULTY, "faults.absent_rate=1.0"])
    assert by_hand.faults == given(catalog, "lrf_absent")
    gains = default_gains(config.altitude_breakpoints_m)
    key = jax.random.fold_in(config.population_key(), i + 1)
    g = LatentFlights(by_hand.sim, gains, by_hand.sampler(), by_hand.success, key=key)
    est = rare_event.monte_carlo(
        g, g.dim, 1.0, key=np.random.default_rng([config.seed, i + 1]), n=256, keep=0
    )
    assert est.probability == absent["failure_probability"]


@pytest.mark.slow
def test_job_reports_by_fault_from_the_command_line(tmp_path):
    """rare_event.by_fault=true by cross-entropy on a small budget: metrics.json holds a
    block per fault class with the figures of the overall estimate, the summary prints a
    line per class and the progress bars name the class."""
    run = tmp_path / "bf"
    args = ["+experiment=rare_event", *FLIGHT, "faults=realistic", "progress=true",
            "rare_event.by_fault=true", "rare_event.n_per_level=100", "rare_event.n_final=200",
            "rare_event.max_levels=2", "rare_event.keep=1", f"hydra.run.dir={run}"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert list(m["by_fault"]) == list(FAULT_CLASSES)
    for name, c in m["by_fault"].items():
        assert set(c) == {"failure_probability", "failure_probability_ci95", "cov",
                          "n_simulations", "effective_sample_size", "converged",
                          "catalog_rate", "contribution"}  # fmt: skip
        assert 0 < c["n_simulations"] <= 100 * 2 + 200
        low, high = c["failure_probability_ci95"]
        assert 0.0 <= low <= c["failure_probability"] <= high <= 1.0
        assert f"given {name} (rate " in proc.stdout
        assert f"| {name}" in proc.stderr
    assert m["by_fault"]["lrf_absent"]["failure_probability"] > 0.3
