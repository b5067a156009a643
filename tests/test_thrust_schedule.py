"""Batched minimum-fuel thrust schedules: the 1-D optimum in closed form, constraint
satisfaction on 3-D lunar problems, and an independent fine-step re-integration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runs import run_cli_calls

from descent_opt.dynamics import G0_MPS2, Vehicle
from descent_opt.optimize.thrust_schedule import ScheduleProblem, ScheduleSpec, solve_schedules

pytestmark = pytest.mark.slow  # end to end: see pyproject.toml

MEDITCH_FINAL_MASS = 0.3953  # normalised optimum (h0 = 1, v0 = -0.783, g = 1, T = 1.227, c = 2.349)


def test_meditch_one_dimensional_minimum_fuel():
    """Within 0.5 % of the known optimal fuel, ending on a full-thrust burn."""
    vehicle = Vehicle(1.0, 0.2, 1.227, 0.0, 2.349 / G0_MPS2, 0.0)
    spec = ScheduleSpec(
        vehicle=vehicle,
        gravity_mps2=1.0,
        n_nodes=100,
        position_tol_m=1e-3,
        velocity_tol_mps=1e-3,
    )
    problem = ScheduleProblem(
        jnp.array([[0.0, 0.0, 1.0]]), jnp.array([[0.0, 0.0, -0.783]]), jnp.array([1.0])
    )
    s = jax.tree.map(lambda x: np.asarray(x)[0], solve_schedules(spec, problem))
    assert s.converged
    optimum = 1.0 - MEDITCH_FINAL_MASS
    assert abs(s.fuel_kg / optimum - 1.0) < 0.005, s.fuel_kg
    thrust = s.thrust_n[:, 2]
    assert np.all(np.abs(s.thrust_n[:, :2]) < 1e-6)  # vertical only (max_tilt 0)
    # The final burn of the optimum (~0.95 s of the 1.40 s flight) is at full thrust. The
    # coast arc is not asserted: the solver leaves small thrust blips there (costing ~0.2 %).
    assert np.all(thrust[-30:] > 0.95 * 1.227)


def _rk4_reintegrate(schedule, vehicle: Vehicle, gravity, substeps=200):
    """Fine-step RK4 of the true dynamics under the held thrust vectors (NumPy, float64)."""
    ve = vehicle.isp_s * G0_MPS2
    g = np.array([0.0, 0.0, -gravity])
    r = schedule.position_m[0].astype(float)
    v = schedule.velocity_mps[0].astype(float)
    m = float(schedule.mass_kg[0])
    times = schedule.time_s.astype(float)

    def deriv(state, thrust):
        _, vel, mass = state[:3], state[3:6], state[6]
        return np.concatenate([vel, thrust / mass + g, [-np.linalg.norm(thrust) / ve]])

    x = np.concatenate([r, v, [m]])
    for k, thrust in enumerate(schedule.thrust_n.astype(float)):
        h = (times[k + 1] - times[k]) / substeps
        for _ in range(substeps):
            k1 = deriv(x, thrust)
            k2 = deriv(x + 0.5 * h * k1, thrust)
            k3 = deriv(x + 0.5 * h * k2, thrust)
            k4 = deriv(x + h * k3, thrust)
            x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x[:3], x[3:6], m - x[6]


@pytest.fixture(scope="module")
def lunar_batch():
    vehicle = Vehicle(480.0, 340.0, 2000.0, 400.0, 320.0, 25.0)
    # Chunks of 4 and two workers: two threads each solve a padded share of one chunk.
    spec = ScheduleSpec(
        vehicle=vehicle,
        gravity_mps2=1.62,
        n_nodes=40,
        glide_slope_deg=30.0,
        chunk_size=4,
    )
    n = 6
    r0 = jnp.array([-300.0, 100.0, 1500.0]) + 100.0 * jax.random.normal(jax.random.key(0), (n, 3))
    v0 = jnp.array([10.0, -5.0, -30.0]) + 2.0 * jax.random.normal(jax.random.key(1), (n, 3))
    problems = ScheduleProblem(r0, v0, jnp.full(n, 480.0))
    s = jax.tree.map(np.asarray, solve_schedules(spec, problems, workers=2))
    return vehicle, spec, s, jax.tree.map(np.asarray, problems)


def test_lunar_batch_converges_within_bounds(lunar_batch):
    vehicle, spec, s, problems = lunar_batch
    assert s.fuel_kg.shape == (6,)
    # Results come back in the order of the problems whatever the shares and chunks.
    np.testing.assert_allclose(s.position_m[:, 0], problems.position0_m, atol=1e-9)
    np.testing.assert_allclose(s.velocity_mps[:, 0], problems.velocity0_mps, atol=1e-9)
    assert np.all(s.converged)
    assert np.all(s.terminal_position_error_m < spec.position_tol_m)
    assert np.all(s.terminal_velocity_error_mps < spec.velocity_tol_mps)
    magnitude = np.linalg.norm(s.thrust_n, axis=-1)
    assert np.all(magnitude >= vehicle.thrust_min_n - 1e-3)
    assert np.all(magnitude <= vehicle.thrust_max_n + 1e-3)
    tilt = np.degrees(np.arccos(np.clip(s.thrust_n[..., 2] / magnitude, -1.0, 1.0)))
    assert np.all(tilt <= vehicle.max_tilt_deg + 1e-3)
    r = s.position_m[:, 1:-1]
    elevation_margin = r[..., 2] - np.tan(np.radians(30.0)) * np.linalg.norm(r[..., :2], axis=-1)
    assert np.all(elevation_margin >= -spec.glide_tol_m)
    assert np.all(s.mass_kg[:, -1] >= vehicle.mass_dry_kg)
    # Above the ideal-rocket bound sqrt(|v0|^2 + 2 g h0) of an impulsive final burn.
    ideal = 480.0 * (
        1.0
        - np.exp(
            -np.sqrt(np.sum(s.velocity_mps[:, 0] ** 2, -1) + 2 * 1.62 * s.position_m[:, 0, 2])
            / (320.0 * G0_MPS2)
        )
    )
    assert np.all(s.fuel_kg > ideal)


def test_fine_step_reintegration_lands_and_reproduces_fuel(lunar_batch):
    """An independent RK4 of the held thrust lands within 1 m and 0.1 m/s and burns the
    reported fuel (to 0.1 %)."""
    vehicle, _, s, _ = lunar_batch
    for i in range(2):
        one = jax.tree.map(lambda x, i=i: x[i], s)
        r, v, fuel = _rk4_reintegrate(one, vehicle, 1.62)
        assert np.linalg.norm(r) < 1.0, r
        assert np.linalg.norm(v) < 0.1, v
        assert abs(fuel / one.fuel_kg - 1.0) < 1e-3


SMALL_JOB = [
    "+experiment=thrust_schedule",
    "thrust_schedule.batch_size=2",
    "thrust_schedule.n_nodes=20",
    "scenario.r0_m=[-50.0,0.0,800.0]",
    "scenario.v0_mps=[0.0,0.0,-20.0]",
]


@pytest.fixture(scope="module")
def small_jobs(tmp_path_factory):
    """The small job and the same with too little propellant, one after the other in one
    process: (run directory, (status, stdout, stderr)) of each."""
    root = tmp_path_factory.mktemp("schedule_cli")
    feasible, infeasible = root / "run", root / "infeasible"
    results = run_cli_calls(
        [*SMALL_JOB, f"hydra.run.dir={feasible}"],
        [*SMALL_JOB, "vehicle.mass_dry_kg=478", f"hydra.run.dir={infeasible}"],
        cwd=root,
    )
    return list(zip((feasible, infeasible), results))


def test_cli_writes_zero_order_hold_csv_that_reintegrates(small_jobs):
    """thrust_schedule.csv: header and row semantics of the public contract; an independent
    RK4 of its rows lands within 1 m and 0.1 m/s and burns the reported fuel."""
    import json
    from types import SimpleNamespace

    out, (status, _, stderr) = small_jobs[0]
    assert status == 0, stderr[-2000:]
    lines = (out / "thrust_schedule.csv").read_text().splitlines()
    assert lines[0].split(",") == [
        "t_s", "thrust_x_n", "thrust_y_n", "thrust_z_n", "mass_kg",
        "x_m", "y_m", "z_m", "vx_mps", "vy_mps", "vz_mps",
    ]  # fmt: skip
    table = np.array([[float(x) for x in ln.split(",")] for ln in lines[1:]])
    assert table.shape == (21, 11)
    assert np.all(np.diff(table[:, 0]) > 0)
    assert np.all(table[-1, 1:4] == 0.0)  # terminal row: zero thrust
    assert np.all(np.diff(table[:, 4]) <= 0)
    np.testing.assert_allclose(table[0, 5:], [-50.0, 0.0, 800.0, 0.0, 0.0, -20.0], atol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "fuel_kg",
        "time_of_flight_s",
        "terminal_position_error_m",
        "terminal_velocity_error_mps",
    ):
        assert np.isfinite(metrics[key])
    assert metrics["batch"]["n_problems"] == 2
    batch = np.load(out / "thrust_schedules.npz")
    assert batch["thrust_n"].shape == (2, 20, 3) and not np.isnan(batch["thrust_n"]).any()

    csv_schedule = SimpleNamespace(
        time_s=table[:, 0],
        thrust_n=table[:-1, 1:4],
        mass_kg=table[:, 4],
        position_m=table[:, 5:8],
        velocity_mps=table[:, 8:11],
    )
    vehicle = Vehicle(480.0, 340.0, 2000.0, 400.0, 320.0, 15.0)
    r, v, fuel = _rk4_reintegrate(csv_schedule, vehicle, 1.62)
    assert np.linalg.norm(r) < 1.0, r
    assert np.linalg.norm(v) < 0.1, v
    assert abs(fuel - metrics["fuel_kg"]) < 1e-3 * metrics["fuel_kg"]


def test_cli_reports_infeasible_problem_without_a_schedule(small_jobs):
    out, (status, _, stderr) = small_jobs[1]
    assert status == 2
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "infeasible" in lines[0] and "propellant" in lines[0], stderr
    assert not (out / "thrust_schedule.csv").exists()
    assert not (out / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# Against the independent convex reference (cvxpy + Clarabel, tests/reference_convex.py)
# ---------------------------------------------------------------------------------------------

# Steep glide slope (80 deg elevation) and a 15 deg pointing limit: from these starts the
# reference optimum touches the glide cone at one to three nodes and flies at the pointing limit
# on more than half of the intervals, so both constraints shape the answer.
ACTIVE_GLIDE_DEG, ACTIVE_TILT_DEG = 80.0, 15.0
ACTIVE_STARTS = [
    ((-300.0, 100.0, 3000.0), (15.0, -8.0, -50.0)),
    ((200.0, -150.0, 2500.0), (-12.0, 10.0, -45.0)),
    ((-100.0, -250.0, 3500.0), (5.0, 15.0, -55.0)),
    ((300.0, 200.0, 4000.0), (10.0, 8.0, -60.0)),
]
# Our fuel is that of the held-thrust schedule flown exactly; the reference's is that of its
# held-acceleration model. The two discretisations differ by O(dt * mass flow / mass) per
# interval, and the polish re-times the flight slightly: measured differences are below
# 0.002 %, so 0.05 % is the documented allowance below the reference.
DISCRETISATION_ALLOWANCE = 5e-4


@pytest.fixture(scope="module")
def convex_comparison():
    import reference_convex as rc

    vehicle = Vehicle(480.0, 340.0, 2000.0, 400.0, 320.0, ACTIVE_TILT_DEG)
    spec = ScheduleSpec(vehicle=vehicle, n_nodes=50, glide_slope_deg=ACTIVE_GLIDE_DEG)
    problems = ScheduleProblem(
        jnp.array([r for r, _ in ACTIVE_STARTS]),
        jnp.array([v for _, v in ACTIVE_STARTS]),
        jnp.full(len(ACTIVE_STARTS), 480.0),
    )
    ours = jax.tree.map(np.asarray, solve_schedules(spec, problems))
    refs = [
        rc.solve_free_tf(
            rc.LandingProblem(
                r0=r0, v0=v0, m0=480.0, m_dry=340.0, thrust_min_n=400.0, thrust_max_n=2000.0,
                isp_s=320.0, max_tilt_deg=ACTIVE_TILT_DEG, glide_slope_deg=ACTIVE_GLIDE_DEG,
                n_nodes=50,
            )
        )
        for r0, v0 in ACTIVE_STARTS
    ]  # fmt: skip
    return spec, ours, refs


def test_reference_cases_have_glide_slope_and_pointing_active(convex_comparison):
    _, _, refs = convex_comparison
    for ref in refs:
        assert ref is not None and ref.converged
        assert np.min(ref.glide_margin_m()[1:-1]) < 1e-2  # on the cone somewhere
        assert np.sum(ref.tilt_deg > ACTIVE_TILT_DEG - 1e-2) >= 10  # at the pointing limit


def test_fuel_matches_convex_reference(convex_comparison):
    """At most 0.5 % above the convex optimum, and never below it by more than the documented
    discretisation allowance; every schedule converged and respects its limits."""
    spec, ours, refs = convex_comparison
    assert np.all(ours.converged)
    for i, ref in enumerate(refs):
        ratio = ours.fuel_kg[i] / ref.fuel
        assert 1.0 - DISCRETISATION_ALLOWANCE <= ratio <= 1.005, (i, ours.fuel_kg[i], ref.fuel)
        # The final times agree too (the fuel is V-shaped in t_f around these optima).
        assert abs(ours.time_of_flight_s[i] / ref.t_f - 1.0) < 0.01
    magnitude = np.linalg.norm(ours.thrust_n, axis=-1)
    assert np.all(magnitude >= 400.0 - 1e-6) and np.all(magnitude <= 2000.0 + 1e-6)
    tilt = np.degrees(np.arccos(np.clip(ours.thrust_n[..., 2] / magnitude, -1.0, 1.0)))
    assert np.all(tilt <= ACTIVE_TILT_DEG + 1e-6)
    assert np.all(ours.glide_slope_violation_m <= spec.glide_tol_m)


def test_final_time_search_reaches_the_golden_section_optimum(convex_comparison):
    """The derivative-driven search over t_f (a handful of solves) ends where a fine
    golden-section search of the same fixed-t_f convex optimum ends, and the slope it steers
    by (envelope theorem, from the dynamics multipliers) is the derivative of that optimum."""
    from descent_opt.optimize import thrust_schedule as ts

    spec, ours, _ = convex_comparison
    i = 0
    r0, v0 = ACTIVE_STARTS[i]
    with jax.enable_x64(True):
        problem = ScheduleProblem(jnp.array(r0), jnp.array(v0), jnp.array(480.0))
        units = ts._units(spec, problem)
        # Thrust bounds expanded about the schedule's own mass profile.
        z_ref = jnp.log(jnp.asarray(ours.mass_kg[i, :-1]) / 480.0)
        solve = jax.jit(lambda t: ts._solve_convex(spec, problem, units, t, z_ref))

        def value(t):
            return float(solve(t).objective)

        tf = float(ours.time_of_flight_s[i])
        golden = (np.sqrt(5.0) - 1.0) / 2.0
        a, b = 0.95 * tf, 1.05 * tf
        x1, x2 = b - golden * (b - a), a + golden * (b - a)
        f1, f2 = value(x1), value(x2)
        while b - a > 1e-7 * tf:
            if f1 < f2:
                b, x2, f2 = x2, x1, f1
                x1 = b - golden * (b - a)
                f1 = value(x1)
            else:
                a, x1, f1 = x1, x2, f2
                x2 = a + golden * (b - a)
                f2 = value(x2)
        t_best = 0.5 * (a + b)
        fuel_best = 480.0 * -np.expm1(-value(t_best))
        assert ours.convex_fuel_kg[i] <= fuel_best * (1.0 + 5e-5), ours.convex_fuel_kg[i]
        assert abs(tf / t_best - 1.0) < 2e-3, (tf, t_best)
        assert ours.convex_solves[i] <= spec.tf_steps + spec.refine

        # The slope against a central difference (steps well above the solver's tolerance),
        # on both sides of the optimum.
        for t in (0.97 * t_best, 1.03 * t_best):
            h = 2e-3 * t
            fd = (value(t + h) - value(t - h)) / (2.0 * h)
            np.testing.assert_allclose(float(solve(t).slope), fd, rtol=1e-2)
