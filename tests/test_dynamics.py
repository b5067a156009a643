"""True-dynamics checks against closed forms: free fall, rocket equation, hover, propellant
exhaustion, the actuator model and the tilt <-> axis maps.

Everything runs in the library's default float32; tolerances are derived from the float32
unit roundoff accumulated over the number of steps, not tuned to pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_models import VEHICLE

from descent_opt import dynamics
from descent_opt.dynamics import G0_MPS2, LanderState, Vehicle

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
GRAVITY = 1.62


def _state(position, velocity, mass, thrust=0.0, tilt=(0.0, 0.0)) -> LanderState:
    return LanderState(
        position_m=jnp.asarray(position, dtype=jnp.float32),
        velocity_mps=jnp.asarray(velocity, dtype=jnp.float32),
        mass_kg=jnp.asarray(mass, dtype=jnp.float32),
        thrust_n=jnp.asarray(thrust, dtype=jnp.float32),
        tilt_rad=jnp.asarray(tilt, dtype=jnp.float32),
    )


@functools.partial(jax.jit, static_argnames=("vehicle", "n", "gravity", "dt"))
def _run_step(vehicle, state, command, n, gravity, dt):
    """``n`` steps of dynamics.step (actuator + propagation) with a fixed thrust command."""

    def body(s, _):
        s, _ = dynamics.step(vehicle, s, command, gravity, dt)
        return s, s

    return jax.lax.scan(body, state, None, length=n)


@functools.partial(jax.jit, static_argnames=("vehicle", "n", "gravity", "dt", "hover"))
def _run_propagate(vehicle, state, thrust, n, gravity, dt, hover=False):
    """``n`` steps of dynamics.propagate with the actuator bypassed and zero tilt: fixed
    ``thrust``, or with ``hover`` the weight ``mass * gravity`` of the start of each step."""

    def body(s, _):
        t = s.mass_kg * gravity if hover else thrust
        s, force = dynamics.propagate(vehicle, s, t, jnp.zeros(2), gravity, dt)
        return s, (s, force)

    return jax.lax.scan(body, state, None, length=n)


def test_free_fall_matches_ballistic_closed_form():
    """Engine off (thrust_min 0, zero command): z0 + v0 t - g t^2/2, v0 - g t, mass constant.

    The trapezoid rule is exact for constant acceleration, so the only error is float32
    rounding: at most ~1 ulp of |z| (~1000 m) per step, i.e. n * eps * 1000 m."""
    vehicle = Vehicle(480.0, 340.0, 2000.0, 0.0, 320.0, 15.0)
    z0, v0 = np.array([10.0, -20.0, 1000.0]), np.array([3.0, -2.0, -5.0])
    n, dt = 100, 0.1
    start = dynamics.initial_state(vehicle, z0, v0)
    assert float(start.thrust_n) == 0.0
    _, hist = _run_step(vehicle, start, jnp.zeros(3), n, GRAVITY, dt)

    t = dt * np.arange(1, n + 1)[:, None]
    g = np.array([0.0, 0.0, GRAVITY])
    expected_pos = z0 + v0 * t - 0.5 * g * t**2
    expected_vel = v0 - g * t
    np.testing.assert_allclose(
        np.asarray(dynamics.stack(hist.position_m)), expected_pos, rtol=0, atol=n * EPS32 * 1000
    )
    np.testing.assert_allclose(
        np.asarray(dynamics.stack(hist.velocity_mps)), expected_vel, rtol=0, atol=n * EPS32 * 20
    )
    np.testing.assert_array_equal(np.asarray(hist.mass_kg), np.float32(480.0))
    np.testing.assert_array_equal(np.asarray(hist.thrust_n), 0.0)


def test_rocket_equation_full_vertical_thrust():
    """Gravity 0, full thrust, zero tilt for 40 s: mass loss T t / (Isp g0) and velocity gain
    Isp g0 ln(m0 / m1). Each step rounds the mass by <= half an ulp of 480 kg (3e-5 kg) and
    the velocity by <= half an ulp of ~170 m/s, so a 1e-5 relative tolerance on the velocity
    and n half-ulps on the mass are float32 bounds with margin."""
    n, dt, thrust = 80, 0.5, 2000.0
    m0 = 480.0
    start = _state([0.0, 0.0, 100.0], [0.0, 0.0, 0.0], m0, thrust)
    final, (hist, force) = _run_propagate(VEHICLE, start, jnp.float32(thrust), n, 0.0, dt)

    ve = 320.0 * G0_MPS2
    t = n * dt
    m1 = m0 - thrust / ve * t
    assert abs(float(final.mass_kg) - m1) <= n * 0.5 * np.spacing(np.float32(m0))
    np.testing.assert_allclose(float(final.velocity_mps[2]), ve * np.log(m0 / m1), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(final.velocity_mps[:2]), 0.0)
    # Altitude: integral of ve ln(m0 / (m0 - mdot s)) ds, trapezoid-sampled: check the exact
    # integral to the trapezoid error (the velocity is convex in time, dt^2 t v'' / 12).
    mdot = thrust / ve
    exact_alt = ve * ((m1 / mdot) * np.log(m1 / m0) + t)
    vdd = ve * mdot**2 / m1**2
    float_slack = n * float(np.spacing(np.float32(final.position_m[2])))
    assert abs(float(final.position_m[2]) - 100.0 - exact_alt) <= dt**2 * t * vdd / 12 + float_slack
    # The returned specific force is the mean thrust acceleration over each step.
    masses = np.concatenate([[m0], np.asarray(hist.mass_kg, dtype=np.float64)])
    np.testing.assert_allclose(
        np.asarray(force[2]), ve * np.log(masses[:-1] / masses[1:]) / dt, rtol=2e-3
    )


def test_hover_altitude_drift_matches_prediction():
    """Thrust = m g at the start of every step, vertical: the burn within the step lightens
    the lander, so each step gains delta = -ve ln(1 - g dt / ve) - g dt ~ g^2 dt^2 / (2 ve).
    The altitude then drifts up by ~delta * n^2 dt / 2 = g^2 dt t^2 / (4 ve) (37.6 mm over 60 s
    at dt = 0.05). Assert the drift is that to 5 mm (float32 rounding of z ~ 100 m over
    1200 steps is <= 1200 * 4e-6 m) and below the 5 cm hover bound."""
    n, dt = 1200, 0.05
    start = _state([0.0, 0.0, 100.0], [0.0, 0.0, 0.0], 480.0, 480.0 * GRAVITY)
    final, (hist, _) = _run_propagate(VEHICLE, start, None, n, GRAVITY, dt, hover=True)

    ve = 320.0 * G0_MPS2
    delta = -ve * np.log1p(-GRAVITY * dt / ve) - GRAVITY * dt
    predicted = delta * dt * n**2 / 2.0
    drift = np.asarray(hist.position_m[2]) - 100.0
    assert abs(drift[-1] - predicted) < 5e-3
    assert np.max(np.abs(drift)) < 0.05
    assert abs(float(final.velocity_mps[2]) - n * delta) < 1e-4
    assert float(final.mass_kg) < 480.0  # it did burn


def test_propellant_exhaustion():
    """1 kg above dry mass at full thrust (0.637 kg/s, dt 1 s): step 1 burns 0.637 kg, step 2
    only the remaining 0.363 kg, then the engine delivers nothing. Mass never drops below
    dry (to one float32 ulp), and the partial step's velocity change is exactly the rocket
    equation for the remaining propellant."""
    dt, thrust = 1.0, 2000.0
    ve = 320.0 * G0_MPS2
    dry = VEHICLE.mass_dry_kg
    start = _state([0.0, 0.0, 500.0], [0.0, 0.0, 0.0], dry + 1.0, thrust)
    _, (hist, force) = _run_propagate(VEHICLE, start, jnp.float32(thrust), 5, 0.0, dt)
    mass = np.asarray(hist.mass_kg, dtype=np.float64)
    vz = np.asarray(hist.velocity_mps[2], dtype=np.float64)
    thrust_out = np.asarray(hist.thrust_n, dtype=np.float64)
    ulp = float(np.spacing(np.float32(dry)))

    assert np.all(mass >= dry - ulp)
    np.testing.assert_allclose(mass[1:], dry, atol=ulp)
    np.testing.assert_allclose(mass[0], dry + 1.0 - thrust / ve * dt, atol=ulp)
    # Step 2: partial burn of exactly the propellant left in the state after step 1 (its
    # float32 value, so the only error is the rounding of the velocity sum, ~1e-6 relative).
    m_after_1 = mass[0]
    np.testing.assert_allclose(vz[1] - vz[0], ve * np.log(m_after_1 / dry), rtol=1e-5)
    remaining_fraction = (m_after_1 - dry) / (thrust / ve * dt)
    np.testing.assert_allclose(thrust_out[1], thrust * remaining_fraction, rtol=1e-5)
    # Tanks empty: no thrust, no velocity change, no specific force.
    np.testing.assert_array_equal(thrust_out[2:], 0.0)
    np.testing.assert_array_equal(vz[2:], vz[1])
    np.testing.assert_array_equal(np.asarray(dynamics.stack(force))[2:], 0.0)


def test_exhausted_lander_falls_freely_through_step():
    """Through dynamics.step (actuator included) a dry lander commanded to full thrust
    follows free fall: the actuator may command thrust but nothing is burnt."""
    dry = VEHICLE.mass_dry_kg
    start = _state([0.0, 0.0, 500.0], [0.0, 0.0, -10.0], dry, 1000.0)
    final, hist = _run_step(VEHICLE, start, jnp.array([0.0, 0.0, 2000.0]), 10, GRAVITY, 0.5)
    t = 5.0
    np.testing.assert_allclose(float(final.velocity_mps[2]), -10.0 - GRAVITY * t, atol=1e-4)
    np.testing.assert_allclose(
        float(final.position_m[2]), 500 - 10 * t - GRAVITY * t**2 / 2, atol=1e-3
    )
    np.testing.assert_array_equal(np.asarray(hist.mass_kg), np.float32(dry))


@pytest.mark.parametrize("t0,tc", [(800.0, 1500.0), (1900.0, 500.0), (400.0, 2000.0)])
def test_actuator_first_order_lag(t0, tc):
    """One step of dt from T0 toward a vertical command Tc: Tc + (T0 - Tc) exp(-dt / tau)
    (exact discretisation of the first-order lag); float32 relative rounding."""
    dt = 0.1
    state = _state([0, 0, 100], [0, 0, 0], 480.0, t0)
    thrust, tilt = dynamics.actuate(VEHICLE, state, jnp.array([0.0, 0.0, tc]), dt)
    expected = tc + (t0 - tc) * np.exp(-dt / VEHICLE.thrust_time_constant_s)
    np.testing.assert_allclose(float(thrust), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(tilt), 0.0)


@pytest.mark.parametrize("command,target", [(5000.0, 2000.0), (100.0, 400.0), (0.0, 400.0)])
def test_actuator_clips_command_to_throttle_range(command, target):
    """Commands outside [thrust_min, thrust_max] act as the nearest limit: after many time
    constants the thrust sits at the limit (exp(-50) residual)."""
    vehicle = Vehicle(480.0, 340.0, 2000.0, 400.0, 320.0, 15.0, thrust_time_constant_s=0.1)
    state = _state([0, 0, 100], [0, 0, 0], 480.0, 1000.0)
    thrust, _ = dynamics.actuate(vehicle, state, jnp.array([0.0, 0.0, command]), 5.0)
    np.testing.assert_allclose(float(thrust), target, rtol=1e-6)


def test_actuator_tilt_rate_limit_and_max_tilt():
    """A 45 deg command leaning toward azimuth 30 deg: each 0.2 s step tilts by exactly
    10 deg/s * 0.2 s = 2 deg along the command azimuth, and the tilt saturates at 15 deg."""
    dt, n = 0.2, 12
    az = np.deg2rad(30.0)
    command = 1000.0 * np.array(
        [np.sin(np.pi / 4) * np.cos(az), np.sin(np.pi / 4) * np.sin(az), np.cos(np.pi / 4)]
    )
    state = dynamics.initial_state(VEHICLE, [0, 0, 1000], [0, 0, 0])
    tilts = []
    for _ in range(n):
        thrust, tilt = dynamics.actuate(VEHICLE, state, jnp.asarray(command, jnp.float32), dt)
        state = LanderState(state.position_m, state.velocity_mps, state.mass_kg, thrust, tilt)
        tilts.append(np.asarray(tilt, dtype=np.float64))
    tilts = np.array(tilts)
    angles = np.rad2deg(np.linalg.norm(tilts, axis=1))
    expected = np.minimum(2.0 * np.arange(1, n + 1), 15.0)
    np.testing.assert_allclose(angles, expected, atol=1e-4)
    np.testing.assert_allclose(np.arctan2(tilts[:, 1], tilts[:, 0]), az, atol=1e-5)
    assert np.all(np.diff(angles) <= 10.0 * dt + 1e-4)


def test_actuator_tilt_never_exceeds_max_for_random_commands():
    """Random strongly tilted commands, each held 20 steps then switched (reversals
    included): per-step tilt change <= rate * dt and |tilt| <= max_tilt (float32 slack
    1e-6 rad), and the limit is actually reached."""
    dt = 0.25
    cmds = jax.random.normal(jax.random.key(3), (10, 3)) * jnp.array([1000.0, 1000.0, 500.0])
    cmds = jnp.repeat(cmds.at[:, 2].set(jnp.abs(cmds[:, 2]) + 50.0), 20, axis=0)

    def body(state, cmd):
        thrust, tilt = dynamics.actuate(VEHICLE, state, cmd, dt)
        new = LanderState(state.position_m, state.velocity_mps, state.mass_kg, thrust, tilt)
        return new, tilt

    _, tilts = jax.lax.scan(body, dynamics.initial_state(VEHICLE, [0, 0, 1000], [0, 0, 0]), cmds)
    tilts = np.asarray(dynamics.stack(tilts), dtype=np.float64)
    steps = np.linalg.norm(np.diff(np.vstack([np.zeros(2), tilts]), axis=0), axis=1)
    assert np.max(steps) <= np.deg2rad(10.0) * dt + 1e-6
    assert np.max(np.linalg.norm(tilts, axis=1)) <= np.deg2rad(15.0) + 1e-6
    assert np.max(np.linalg.norm(tilts, axis=1)) > np.deg2rad(14.0)  # the limit is reached


def test_zero_max_tilt_keeps_thrust_vertical():
    """max_tilt_deg = 0: whatever the command direction, the axis stays +z."""
    vehicle = Vehicle(480.0, 340.0, 2000.0, 400.0, 320.0, 0.0)
    state = dynamics.initial_state(vehicle, [0, 0, 1000], [0, 0, 0])
    for cmd in ([1000.0, 0.0, 100.0], [-500.0, 700.0, 1000.0], [0.0, 300.0, -10.0]):
        new, _ = dynamics.step(vehicle, state, jnp.asarray(cmd), GRAVITY, 0.5)
        np.testing.assert_array_equal(np.asarray(new.tilt_rad), 0.0)
        np.testing.assert_array_equal(np.asarray(new.velocity_mps[:2]), 0.0)


def test_axis_tilt_round_trip():
    """axis_from_tilt gives a unit vector at angle |tilt| from +z leaning along tilt, and
    tilt_from_vector inverts it for any positive scaling (float32: 1e-5 rad), including
    tilts in the small-angle branch (< 1e-4 rad)."""
    tilts = jax.random.uniform(jax.random.key(0), (64, 2), minval=-1.0, maxval=1.0)
    tilts = jnp.concatenate([tilts, jnp.array([[0.0, 0.0], [5e-5, -3e-5], [1e-3, 0.0]])])
    axes = dynamics.stack(jax.vmap(dynamics.axis_from_tilt)(tilts))
    angle = np.linalg.norm(np.asarray(tilts, dtype=np.float64), axis=1)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(axes), axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(axes[:, 2]), np.cos(angle), atol=1e-6)
    back = dynamics.stack(jax.vmap(lambda a: dynamics.tilt_from_vector(3.7 * a))(axes))
    np.testing.assert_allclose(np.asarray(back), np.asarray(tilts), atol=1e-5)


def test_axis_from_tilt_jacobian_at_zero_is_identity():
    """At zero tilt the axis is (tx, ty, 1 - |t|^2/2): Jacobian [[1,0],[0,1],[0,0]], finite
    (safe_norm must not leak NaN from sqrt at 0). Same for tilt_from_vector at +z."""

    def axis(tilt):
        return dynamics.stack(dynamics.axis_from_tilt(tilt))

    jac = jax.jacfwd(axis)(jnp.zeros(2))
    jac_rev = jax.jacrev(axis)(jnp.zeros(2))
    expected = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(jac), expected, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jac_rev), expected, atol=1e-7)
    jac_inv = jax.jacrev(lambda v: dynamics.stack(dynamics.tilt_from_vector(v)))(
        jnp.array([0.0, 0.0, 1.0])
    )
    np.testing.assert_allclose(np.asarray(jac_inv), [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("duration_s", [1e-3, 1.5, 60.0])
def test_hold_thrust_matches_fine_rk4(duration_s):
    """The closed-form constant-thrust flight agrees with a fine RK4 of r'' = T/m + g,
    m' = -|T|/ve, for tiny burns (series branch) as well as long ones."""
    ve, g = 320.0 * G0_MPS2, 1.62
    thrust = np.array([300.0, -200.0, 1900.0])

    def deriv(x):
        return np.concatenate(
            [x[3:6], thrust / x[6] + [0.0, 0.0, -g], [-np.linalg.norm(thrust) / ve]]
        )

    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 480.0])
    steps = 2000
    h = duration_s / steps
    for _ in range(steps):
        k1 = deriv(x)
        k2 = deriv(x + 0.5 * h * k1)
        k3 = deriv(x + 0.5 * h * k2)
        k4 = deriv(x + h * k3)
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    with jax.enable_x64(True):
        r, v, m = dynamics.hold_thrust(
            jnp.array([1.0, 2.0, 3.0]), jnp.array([4.0, 5.0, 6.0]), jnp.asarray(480.0),
            jnp.asarray(thrust), g, ve, jnp.asarray(duration_s),
        )  # fmt: skip
    np.testing.assert_allclose(np.asarray(r), x[:3], rtol=0, atol=1e-8 * max(1.0, duration_s**2))
    np.testing.assert_allclose(np.asarray(v), x[3:6], rtol=0, atol=1e-9 * max(1.0, duration_s))
    np.testing.assert_allclose(float(m), x[6], rtol=1e-12)
