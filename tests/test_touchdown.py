"""Touchdown detection and interpolation: the dynamics helper in isolation, then through the
full closed-loop simulator (flat and sloped ground, a start below the surface, a lander that
is still airborne at the horizon)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_models import SHORT_DESCENT, VEHICLE

from descent_opt import dynamics, guidance
from descent_opt.dynamics import LanderState
from descent_opt.faults import FaultCatalog
from descent_opt.scenarios import TerrainSpec, replace_member, sample_scenarios
from descent_opt.simulate import SimSpec, simulate_traces

SPEC = SimSpec(vehicle=VEHICLE, dt_s=0.25, duration_s=60.0)
SCENARIO_SPEC = SHORT_DESCENT
N = 8
BELOW, AT_SURFACE, TOO_HIGH = 5, 6, 7  # members replaced with edge cases
NORMAL = slice(0, 5)


def _population(terrain: TerrainSpec, seed: int = 0):
    pop = sample_scenarios(
        SCENARIO_SPEC, terrain, FaultCatalog.nominal(), 480.0, N, key=jax.random.key(seed)
    )
    pop = replace_member(pop, BELOW, position0_m=jnp.array([3.0, -4.0, -2.0]))
    pop = replace_member(pop, AT_SURFACE, position0_m=jnp.array([1.0, 1.0, 0.0]))
    # From 8 km the lander cannot be down within 60 s (it starts at 20 m/s, g = 1.62 m/s^2).
    return replace_member(pop, TOO_HIGH, position0_m=jnp.array([0.0, 0.0, 8000.0]))


@pytest.fixture(scope="module")
def flat_run():
    pop = _population(TerrainSpec(kind="flat"))
    out, trace = simulate_traces(SPEC, guidance.default_gains(), pop)
    return pop, jax.block_until_ready(out), trace


def _linear_states(h0, h1):
    before = LanderState(
        position_m=jnp.array([1.0, 2.0, h0]),
        velocity_mps=jnp.array([0.5, -0.5, -3.0]),
        mass_kg=jnp.asarray(400.0),
        thrust_n=jnp.asarray(800.0),
        tilt_rad=jnp.array([0.01, 0.0]),
    )
    after = LanderState(
        position_m=jnp.array([1.5, 1.5, h1]),
        velocity_mps=jnp.array([0.7, -0.1, -2.0]),
        mass_kg=jnp.asarray(399.5),
        thrust_n=jnp.asarray(900.0),
        tilt_rad=jnp.array([0.03, 0.02]),
    )
    return before, after


@pytest.mark.parametrize("h0,h1", [(10.0, -5.0), (0.3, -0.1), (4.0, 0.0), (1e-3, -2.0)])
def test_interpolate_touchdown_linear_descent_is_exact(h0, h1):
    """Height linear in the state (flat ground): the crossing fraction is h0 / (h0 - h1),
    every leaf is interpolated with it, and the interpolated height is 0 (float32 rounding of
    |h| <= 10 m: 1e-5 m)."""
    before, after = _linear_states(h0, h1)
    state, fraction = dynamics.interpolate_touchdown(
        before, after, jnp.asarray(h0), jnp.asarray(h1)
    )
    f = h0 / (h0 - h1)
    np.testing.assert_allclose(float(fraction), f, rtol=1e-6)
    assert abs(float(state.position_m[2])) < 1e-5
    for got, a, b in zip(jax.tree.leaves(state), jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_allclose(
            np.asarray(got),
            np.asarray(a) + f * (np.asarray(b) - np.asarray(a)),
            rtol=1e-6,
            atol=1e-6,
        )


def test_interpolate_touchdown_fraction_is_clipped():
    """Already below at the start of the step: fraction 0 (the 'before' state); no crossing
    (both heights equal and positive): fraction clipped to 1, never outside [0, 1]."""
    before, after = _linear_states(-1.0, -3.0)
    state, fraction = dynamics.interpolate_touchdown(
        before, after, jnp.asarray(-1.0), jnp.asarray(-3.0)
    )
    assert float(fraction) == 0.0
    np.testing.assert_array_equal(np.asarray(state.position_m), np.asarray(before.position_m))
    _, fraction = dynamics.interpolate_touchdown(before, after, jnp.asarray(2.0), jnp.asarray(2.0))
    assert 0.0 <= float(fraction) <= 1.0


def test_normal_descents_land_on_flat_ground(flat_run):
    """Scenarios from ~300 m land inside the horizon, the touchdown state is on the ground
    (z = 0 to float32 rounding of the last step's ~1 m interpolation), speeds are gentle with
    the default gains, the final height is 0 and some fuel was burnt."""
    _, out, _ = flat_run
    assert np.all(np.asarray(out.landed[NORMAL]))
    t = np.asarray(out.touchdown_time_s[NORMAL])
    assert np.all((t > 0.0) & (t < SPEC.duration_s))
    np.testing.assert_allclose(np.asarray(out.touchdown_position_m[NORMAL, 2]), 0.0, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.final_height_m[NORMAL]), 0.0)
    vz = -np.asarray(out.touchdown_velocity_mps[NORMAL, 2])
    assert np.all((vz > 0.0) & (vz < 2.0))
    assert np.all(np.asarray(out.fuel_kg[NORMAL]) > 0.0)
    assert not np.any(np.asarray(out.exhausted))


def test_touchdown_time_and_state_consistent_with_trace(flat_run):
    """The touchdown lies inside the step whose end is the first below ground: with k that
    step, t_td = (k + f) dt for f in [0, 1]. Independently of the code's fraction, the
    trapezoid rule gives z1 = z0 + (v0 + v1) dt / 2 and linear interpolation gives
    v_td = v0 + f (v1 - v0); solving for v1 and substituting, f (z0 - z1) must equal z0."""
    _, out, trace = flat_run
    dt = SPEC.dt_s
    height = np.asarray(trace.height_m, dtype=np.float64)
    for i in range(NORMAL.stop):
        k = int(np.argmax(height[i] == 0.0))
        assert k > 0 and np.all(height[i, :k] > 0.0) and np.all(height[i, k:] == 0.0)
        f = float(out.touchdown_time_s[i]) / dt - k
        assert -1e-4 <= f <= 1.0 + 1e-4
        z0 = float(trace.altitude_m[i, k - 1])
        v0 = float(trace.vertical_speed_mps[i, k - 1])
        v_td = float(out.touchdown_velocity_mps[i, 2])
        if f > 0.05:  # v1 is ill-conditioned for tiny f
            v1 = v0 + (v_td - v0) / f
            z1 = z0 + 0.5 * (v0 + v1) * dt
            # float32: t_td ~ 32 s carries f to ~2e-5, z0 ~ 0.2 m: residual ~1e-5 m at most.
            np.testing.assert_allclose(f * (z0 - z1), z0, atol=1e-4)
        # Frozen afterwards: the trace holds the touchdown state.
        np.testing.assert_allclose(
            np.asarray(trace.altitude_m[i, k:]), float(out.touchdown_position_m[i, 2])
        )


def test_start_below_or_at_surface_counts_as_landed_at_t0(flat_run):
    """A start at or below the terrain is landed before the first step: touchdown time 0,
    the lander frozen at its initial state (no fuel used), final height reported as 0 and
    no LRF acceptance recorded."""
    pop, out, _ = flat_run
    for i in (BELOW, AT_SURFACE):
        assert bool(out.landed[i])
        assert float(out.touchdown_time_s[i]) == 0.0
        np.testing.assert_array_equal(
            np.asarray(out.touchdown_position_m[i]), np.asarray(pop.position0_m[i])
        )
        np.testing.assert_array_equal(
            np.asarray(out.touchdown_velocity_mps[i]), np.asarray(pop.velocity0_mps[i])
        )
        assert float(out.fuel_kg[i]) == 0.0
        assert float(out.final_height_m[i]) == 0.0
        assert float(out.lrf_first_accept_height_m[i]) == -1.0
        assert not bool(out.exhausted[i])


def test_not_landed_at_horizon(flat_run):
    """Still flying at the end: landed False, touchdown time reported as the horizon, the
    final height equals the final altitude on flat ground and is clearly positive."""
    _, out, trace = flat_run
    i = TOO_HIGH
    assert not bool(out.landed[i])
    assert float(out.touchdown_time_s[i]) == SPEC.duration_s
    assert float(out.final_height_m[i]) > 1000.0
    np.testing.assert_allclose(
        float(out.final_height_m[i]), float(out.touchdown_position_m[i, 2]), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(trace.altitude_m[i, -1]), float(out.touchdown_position_m[i, 2]), rtol=1e-6
    )


def test_touchdown_on_slope_is_on_the_plane():
    """On a 5 deg plane the height is linear in position, so the interpolated touchdown
    point lies on the plane: z = tan(5 deg) * (x cos az + y sin az) to 1e-4 m. (Same array
    shapes as the flat run: no recompilation.)"""
    pop = _population(TerrainSpec(kind="slope", slope_deg=5.0, slope_azimuth_deg=40.0), seed=1)
    out, _ = simulate_traces(SPEC, guidance.default_gains(), pop)
    p = np.asarray(out.touchdown_position_m[NORMAL], dtype=np.float64)
    assert np.all(np.asarray(out.landed[NORMAL]))
    az = np.deg2rad(40.0)
    plane = np.tan(np.deg2rad(5.0)) * (p[:, 0] * np.cos(az) + p[:, 1] * np.sin(az))
    np.testing.assert_allclose(p[:, 2], plane, atol=1e-4)
    assert np.max(np.abs(plane)) > 0.1  # the test would notice z = 0
