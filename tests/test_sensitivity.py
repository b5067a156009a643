"""Sensitivities: the estimators hold where the closed loop jumps (closed-form checks of the
measure-valued derivatives, the fault-rate identity and the range-end identity against
differences of the expectation), the ranked table agrees with central differences of the
smoothed risk on the same members, Sobol indices match known ones, and the job writes
its table and refuses bad input in one line."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runs import assert_refused, run_cli
from scipy.stats import norm

import descent_opt
from descent_opt import sensitivity as sens
from descent_opt.guidance import default_gains
from descent_opt.objectives import scenario_loss
from descent_opt.optimize.gains import tuning_sim
from descent_opt.scenarios import population_latents
from descent_opt.simulate import simulate_population
from descent_opt.sobol import indices, rank_agreement

# A low descent (1,500 m at 35 m/s) on flat ground: cheap flights.
LOW = [
    "sim.duration_s=60", "scenario.r0_m=[-50.0,0.0,1500.0]", "scenario.v0_mps=[0.0,0.0,-35.0]",
    "terrain=flat", "progress=false",
]  # fmt: skip
# Lower still, with the knowledge errors of tests/shared_models.SHORT_DESCENT.
SHORT = [
    "sim.duration_s=60", "scenario.r0_m=[0.0,0.0,300.0]", "scenario.v0_mps=[0.0,0.0,-20.0]",
    "scenario.position_sigma_m=[20.0,20.0,20.0]", "scenario.velocity_sigma_mps=[0.5,0.5,1.0]",
    "scenario.nav_altitude_sigma_m=20.0", "terrain=flat", "progress=false",
]  # fmt: skip


def test_partners_give_the_exact_derivative_of_a_jump():
    """A step function has no pathwise derivative; the Maxwell partner gives its
    expectation's derivative in a scale, the Rayleigh partners in a location."""
    z = np.random.default_rng(0).standard_normal(400_000)
    sigma, mu = 0.8, 0.3
    step = lambda x: (x > 1.0).astype(float)  # noqa: E731
    # sigma d/dsigma P[sigma z > 1] = phi(1 / sigma) / sigma
    scaled = np.mean(step(sigma * sens.maxwell_partner(z)) - step(sigma * z))
    assert scaled == pytest.approx(norm.pdf(1.0 / sigma) / sigma, rel=0.01)
    r = sens.rayleigh_partner(z)
    # d/dmu P[mu + sigma z > 1] = phi((1 - mu) / sigma) / sigma
    slope = np.mean(step(mu + sigma * r) - step(mu - sigma * r)) / (sigma * math.sqrt(2 * math.pi))
    assert slope == pytest.approx(norm.pdf((1.0 - mu) / sigma) / sigma, rel=0.01)
    m = sens.maxwell_partner(z)
    assert np.mean(m * m) == pytest.approx(3.0, rel=0.01)  # double-sided Maxwell
    assert np.all(np.sign(m) == np.sign(z))


def test_parameters_are_selected_by_name_or_prefix():
    assert sens.select(("faults.latency_s",)) == ("faults.latency_s[low]", "faults.latency_s[high]")
    assert sens.select(("scenario.position_sigma_m[z]", "vehicle.isp_s")) == (
        "scenario.position_sigma_m[z]", "vehicle.isp_s",
    )  # fmt: skip
    assert len(sens.select(("success",))) == 3 and sens.select(None) == tuple(sens.PARAMETERS)
    with pytest.raises(ValueError, match="faults.latency"):
        sens.select(("faults.latency",))  # a prefix must end at a dot or a bracket
    assert {p.kind for p in sens.PARAMETERS.values()} == set(sens.ESTIMATORS)


def test_sobol_indices_of_known_functions():
    """Ishigami's function (a = 7, b = 0.1) and a linear model: SALib's indices within
    their bootstrap intervals of the analytic ones; rank agreement of equal rankings 1."""
    ishigami = lambda x: (np.sin(x[:, 0]) + 7 * np.sin(x[:, 1]) ** 2  # noqa: E731
                          + 0.1 * x[:, 2] ** 4 * np.sin(x[:, 0]))  # fmt: skip
    (s,) = indices(ishigami, {k: (-np.pi, np.pi) for k in "abc"}, 1024, key=jax.random.key(0))
    for k, first, total in (("a", 0.3139, 0.5576), ("b", 0.4424, 0.4424), ("c", 0.0, 0.2437)):
        assert s[k]["S1_ci95"][0] <= first <= s[k]["S1_ci95"][1], (k, s[k])
        assert s[k]["ST_ci95"][0] <= total <= s[k]["ST_ci95"][1], (k, s[k])
    linear = lambda x: np.stack([x @ np.array([1.0, 2.0, 0.0]), x[:, 2]], 1)  # noqa: E731
    lin, last = indices(linear, {k: (0.0, 1.0) for k in "abc"}, 256, key=jax.random.key(1))
    for k, share in (("a", 0.2), ("b", 0.8), ("c", 0.0)):
        assert lin[k]["S1"] == pytest.approx(share, abs=0.01)
        assert lin[k]["ST"] == pytest.approx(share, abs=0.01)
    assert last["c"]["ST"] == pytest.approx(1.0, abs=1e-6)
    assert rank_agreement(np.array([0.1, 0.5, 0.3]), np.array([1.0, 9.0, 2.0])) == 1.0


def _setup(overrides, n):
    """The smoothed loop only (no success figures), its model, the default design and
    members ``0 .. n-1`` of the held-out population."""
    config = descent_opt.load_config(overrides)
    sim = tuning_sim(config.sim, config.optimizer.gate_softness)
    model = sens.Model.of(config.scenario, config.terrain, config.faults, sim, None,
                          config.success)  # fmt: skip
    gains = default_gains(config.altitude_breakpoints_m)
    key = config.population_key()
    z = population_latents(key, jnp.arange(n, dtype=jnp.uint32))

    def risk(moved):
        outcome = simulate_population(moved.sim, gains, sens.scenarios(moved, z))
        return np.asarray(scenario_loss(outcome, moved.success, config.objective), np.float64)

    return config, model, gains, key, risk


def _differences(model, risk, name, step):
    """Central differences of the mean smoothed risk, ``step`` units each way (kept within
    [0, 1] for a rate), per unit."""
    value, unit = sens.values(model, (name,))[name], sens.units(model, (name,))[name]
    up, down = value + step * unit, value - step * unit
    if sens.PARAMETERS[name].kind == "rate":
        up, down = min(up, 1.0), max(down, 0.0)
    moved = (risk(sens.with_values(model, {name: v})).mean() for v in (up, down))
    return (next(moved) - next(moved)) / ((up - down) / unit)


@pytest.mark.slow
def test_five_largest_agree_with_central_differences():
    """The acceptance check: on a cheap configuration the five largest scaled risk
    derivatives agree in sign and within 20 % with central differences of the same
    smoothed risk on the same members, at steps of 0.1 and 0.25 units (the differences
    of the expectation, not of one member's jumps: 4,096 members)."""
    n = 4096
    config, model, gains, key, risk = _setup(SHORT, n)
    table = sens.sensitivities(model, gains, config.objective, sens.select(None), n, key=key,
                               pathwise_chunk=None)  # fmt: skip
    rows = table.ranked()
    assert all(np.isnan(r["success_rate"]) for r in rows)  # no evaluation loop given
    for row in rows[:5]:
        for step in (0.1, 0.25):
            fd = _differences(model, risk, row["parameter"], step)
            assert np.sign(fd) == np.sign(row["risk"]), (row, step, fd)
            assert abs(fd - row["risk"]) <= 0.2 * abs(fd), (row, step, fd)


@pytest.mark.slow
def test_estimators_hold_where_the_loop_jumps():
    """Late acquisition below the start: landings turn into crashes as the acquisition
    range's low end or the altitude knowledge sigma moves, and the LRF's absence is a
    fault whose derivative no path sees. The range-end identity, the measure-valued
    derivative and the rate identity agree with central differences of the expectation
    (8,192 members; rates: E is linear in the rate, so a wide step is exact)."""
    n = 8192
    acquisition = [*LOW, "faults.acquisition_range_m=[700.0,1500.0]"]
    config, model, gains, key, risk = _setup(acquisition, n)
    names = ("faults.acquisition_range_m[low]", "scenario.nav_altitude_sigma_m")
    table = sens.sensitivities(model, gains, config.objective, names, n, key=key,
                               pathwise_chunk=None)  # fmt: skip
    for i, name in enumerate(names):
        for step in (0.1, 0.25):
            fd = _differences(model, risk, name, step)
            assert abs(fd - table.scaled[i, 0]) <= 0.2 * abs(fd), (name, step, fd, table.scaled[i])
    absent = [*LOW, "faults.absent_rate=0.2", "faults.late_acquisition_rate=0.0",
              "faults.rim_step_rate=0.0"]  # fmt: skip
    n = 2048
    config, model, gains, key, risk = _setup(absent, n)
    name = "faults.absent_rate"
    (scaled,) = sens.sensitivities(model, gains, config.objective, (name,), n, key=key,
                                   pathwise_chunk=None).scaled[:, 0]  # fmt: skip
    assert scaled > 0.2  # the rate's own scale: the risk the fault brings
    assert _differences(model, risk, name, 0.9) == pytest.approx(scaled, rel=0.1)


@pytest.mark.slow
def test_job_writes_the_ranked_table_and_refuses_bad_input(tmp_path):
    """A small run: the ranked table as CSV, Markdown, a bar chart and metrics.json, with
    the pathwise column and the Sobol comparison; bad input in one line naming the key,
    exit 2, nothing written."""
    run = tmp_path / "run"
    args = [
        "+experiment=sensitivity",
        *LOW,
        "sensitivity.n_scenarios=64",
        "sensitivity.parameters=[scenario.nav_altitude_sigma_m,faults.latency_s,vehicle,"
        "success.vertical_speed_max_mps,faults.absent_rate]",
        "sensitivity.sobol=true",
        "sensitivity.sobol_n=4",
        "sensitivity.sobol_scenarios=16",
    ]
    proc = run_cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    rows = m["parameters"]
    assert len(rows) == 9 and m["n_scenarios"] == 64
    sizes = [abs(r["risk"]) for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    for r in rows:
        assert set(r) >= {"parameter", "kind", "value", "unit", "risk", "risk_se",
                          "touchdown_speed_mps", "success_rate", "pathwise_risk"}  # fmt: skip
        assert math.isfinite(r["risk"]) and math.isfinite(r["pathwise_risk"])
    lines = (run / "sensitivity.csv").read_text().splitlines()
    assert len(lines) == 10 and lines[1].split(",")[1] == rows[0]["parameter"]
    assert "Sobol" in (run / "sensitivity.md").read_text()
    assert (run / "sensitivity.png").stat().st_size > 0
    s = m["sobol"]
    assert len(s["top"]) == 3 and -1.0 <= s["rank_agreement"] <= 1.0
    assert s["n_samples"] == 4 * (len(s["ranges"]) + 2)
    assert_refused("sensitivity", LOW, {
        "sensitivity.parameters=[scenario.no_such_sigma]": "sensitivity.parameters",
        "sensitivity.n_scenarios=0": "sensitivity.n_scenarios",
        "sensitivity.fd_step=0": "sensitivity.fd_step",
        "sensitivity.sobol_n=6": "sensitivity.sobol_n",
        "sensitivity.sobol_scenarios=0": "sensitivity.sobol_scenarios",
    }, tmp_path)  # fmt: skip
