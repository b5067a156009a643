"""Worst-case search: the search cube maps onto the catalog's support exactly, the searches
spend the budget they are given and report hard flights that re-fly to the same speed, the
gradient ascent climbs the loss it ascends, and the worst_case job reports its table and
refuses bad input in one line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runs import assert_refused, run_cli
from scipy.special import ndtr

import descent_opt
from descent_opt.faults import (
    FAULT_CLASSES,
    FaultCatalog,
    class_rate,
    sample_faults,
    without,
)
from descent_opt.guidance import default_gains
from descent_opt.optimize.gains import tuning_sim
from descent_opt.scenarios import LATENT_NAMES
from descent_opt.worst_case import (
    GRADIENT_COST,
    SearchRun,
    WorstCaseSearch,
    WorstCaseSpec,
    describe,
    latent_rows,
)

# A short, low descent on flat ground with the default catalog: cheap flights.
FLIGHT = [
    "sim.duration_s=60", "scenario.r0_m=[-50.0,0.0,1500.0]", "scenario.v0_mps=[0.0,0.0,-35.0]",
    "terrain=flat", "progress=false",
]  # fmt: skip
D = len(LATENT_NAMES)


def _column(name: str) -> int:
    return LATENT_NAMES.index(name)


def test_search_cube_maps_onto_the_catalogs_support():
    """Normals at sigma_bound (2y - 1); fault values at the y-quantile of their range
    (uniform y exactly); a fault of rate 0 < r < 1 present where y < 1/2, never at rate 0,
    always at rate 1."""
    catalog = FaultCatalog(latency_rate=0.3, absent_rate=0.0, late_acquisition_rate=1.0)
    y = np.random.default_rng(0).random((200, D))
    x = np.asarray(latent_rows(jnp.asarray(y), catalog, 2.5))
    assert np.all(np.isfinite(x))
    for name in LATENT_NAMES[:16] + ("bias", "scale_factor"):
        np.testing.assert_allclose(
            x[:, _column(name)], 2.5 * (2 * y[:, _column(name)] - 1), atol=1e-6
        )
    for name in ("acquisition_range", "latency", "rim_step_height", "heavy_tail_scale"):
        np.testing.assert_allclose(ndtr(x[:, _column(name)]), y[:, _column(name)], atol=2e-6)
    u = ndtr(x[:, _column("latency_occurs")])
    np.testing.assert_array_equal(u < 0.3, y[:, _column("latency_occurs")] < 0.5)
    assert not np.any(ndtr(x[:, _column("absent_occurs")]) <= catalog.absent_rate)  # rate 0: never
    # rate 1: always present, the draw halfway below the rate
    np.testing.assert_allclose(ndtr(x[:, _column("late_acquisition_occurs")]), 0.5, atol=1e-6)


def test_describe_gives_the_values_the_point_flies():
    catalog = FaultCatalog()
    y = np.full(D, 0.75)
    y[_column("latency_occurs")] = 0.2  # present
    y[_column("rim_step_occurs")] = 0.9  # absent
    d = describe(y, catalog, 3.0)
    assert d["sigmas"]["nav_position_z"] == pytest.approx(1.5)
    assert "latency" in d["present"] and "rim_step" not in d["present"]
    lo, hi = catalog.latency_s
    assert d["faults"]["latency_s"] == pytest.approx(lo + 0.75 * (hi - lo), rel=1e-5)
    assert d["faults"]["rim_step_height_m"] == 0.0
    assert d["faults"]["bias_m"] == pytest.approx(1.5 * catalog.bias_sigma_m, rel=1e-5)


@pytest.mark.parametrize("fault_class", ["acquisition_below_1200m", "lrf_absent", "rim_step"])
def test_without_is_the_catalog_conditioned_on_the_class_being_absent(fault_class):
    """Sampling the conditioned catalog matches rejection sampling of the plain one: no
    member in the class, and the acquisition range's distribution the same."""
    catalog = FaultCatalog(absent_rate=0.2)
    n = 40_000
    plain = jax.tree.map(np.asarray, sample_faults(catalog, n, key=jax.random.key(1)))
    kept = ~np.asarray(FAULT_CLASSES[fault_class](plain))
    conditioned = without(catalog, fault_class)
    drawn = jax.tree.map(np.asarray, sample_faults(conditioned, n, key=jax.random.key(2)))
    assert not np.any(FAULT_CLASSES[fault_class](drawn))
    assert class_rate(conditioned, fault_class) == 0.0
    a, b = plain.acquisition_range_m[kept], drawn.acquisition_range_m
    for q in (0.1, 0.5, 0.9):  # quantiles within a few standard errors
        assert np.mean(b < np.quantile(a, q)) == pytest.approx(q, abs=0.012)
    assert np.mean(drawn.latency_s > 0) == pytest.approx(catalog.latency_rate, abs=0.012)


def test_search_run_counts_flights_to_the_first_failure():
    run = SearchRun("random", 0)
    ok = {"success": np.ones(4, bool), "touchdown_speed_mps": np.array([1.0, 2.0, 1.5, 0.5])}
    run.record(np.zeros((4, D)), np.arange(4), ok)
    run.charge(12)  # a gradient pass of four scenarios
    bad = {
        "success": np.array([True, False, False]),
        "touchdown_speed_mps": np.array([1.0, 5.0, 4.0]),
    }
    run.record(np.ones((3, D)), np.array([7, 8, 9]), bad)
    assert run.first_failure_flights == 4 + 12 + 2
    assert run.flights == 19 and run.worst_speed_mps == 5.0 and run.worst_member == 8
    assert run.progress == [(4, 2.0), (19, 5.0)]


@pytest.fixture(scope="module")
def search():
    config = descent_opt.load_config(FLIGHT)
    spec = WorstCaseSpec(screen=32, restarts=16, steps=4, seeds=1, reference_samples=0)
    gains = default_gains(config.altitude_breakpoints_m)
    smooth = tuning_sim(config.sim, config.optimizer.gate_softness)
    s = WorstCaseSearch(
        config.sim, smooth, gains, config.sampler(without(config.faults, "lrf_absent")),
        config.success, config.objective, spec, key=config.population_key(), rng_seed=0,
    )  # fmt: skip
    return config, gains, smooth, s


@pytest.mark.slow
def test_random_and_cma_es_spend_the_same_budget_deterministically(search):
    _, _, _, s = search
    budget = s.budget()
    r1, r2 = s.run("random", 0), s.run("random", 0)
    assert r1.flights == budget and r1.worst_speed_mps == r2.worst_speed_mps
    c = s.run("cma_es", 0)
    assert budget - 16 < c.flights <= budget
    assert c.worst_speed_mps == s.run("cma_es", 0).worst_speed_mps
    # the random search's worst re-flies as its member
    again = s.fly(s.flights(0), r1.worst_y[None, :], r1.worst_member)
    assert float(again["touchdown_speed_mps"][0]) == pytest.approx(r1.worst_speed_mps, rel=1e-4)


@pytest.mark.slow
def test_job_reports_the_falsification_table_and_refuses_bad_input(tmp_path):
    """Two seeds of each search on a short descent: every run within the budget, the
    gradient search's ascent raising its smoothed target step by step, the worst case the
    worst of all runs and its trace's flight the same speed; bad input in one line."""
    run = tmp_path / "wc"
    args = ["+experiment=worst_case", *FLIGHT, "worst_case.seeds=2", "worst_case.restarts=8",
            "worst_case.steps=4", "worst_case.screen=16",
            "worst_case.reference_samples=500"]  # fmt: skip
    proc = run_cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["budget_flights"] == 16 + 4 * 8 * (GRADIENT_COST + 1)
    assert m["excluded_fault_classes"] == ["lrf_absent"]
    for method in ("gradient", "random", "cma_es"):
        a = m["arch"][method]
        assert len(a["runs"]) == 2 and 0 <= a["falsified"] <= 2
        assert all(r["flights"] <= m["budget_flights"] for r in a["runs"])
    for r in m["arch"]["gradient"]["runs"]:  # the ascent raises the smoothed impact speed
        target = r["smoothed_target"]
        assert len(target) == 4 and target[-1] > 1.5 * target[0], target
    worst = m["worst_case"]
    best = max(r["worst_touchdown_speed_mps"] for a in m["arch"].values() for r in a["runs"])
    assert worst["touchdown_speed_mps"] == best
    # the trace's flight is the worst case flown again (another batch shape: float rounding)
    assert worst["flight"]["touchdown_speed_mps"] == pytest.approx(best, rel=1e-4)
    assert "absent" not in worst["present"]
    for name in ("worst_case.png", "search_progress.png", "worst_case_trace.csv"):
        assert (run / name).stat().st_size > 0
    bad = {
        "worst_case.budget=0": "worst_case.budget",
        "worst_case.restarts=0": "worst_case.restarts",
        "worst_case.methods=[annealing]": "worst_case.methods",
        "worst_case.sigma_bound=-1": "worst_case.sigma_bound",
        "optimizer.adversarial_fraction=1.0": "optimizer.adversarial_fraction",
        "optimizer.adversarial_fraction=-0.1": "optimizer.adversarial_fraction",
    }
    assert_refused("worst_case", FLIGHT, bad, tmp_path)
