"""Vertical Kalman filter: convergence on clean data, the innovation gate, the two rejection
policies and the soft gate.

The truth is generated in NumPy (float64) with the filter's own motion model (specific force
held over each step), so with an exact IMU and exact LRF altitudes the only errors are the
initial knowledge error, the accelerometer bias and float32 rounding.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from descent_opt import navigation as nav_lib
from descent_opt.navigation import NavParams

GRAVITY = 1.62
DT = 0.1
N_CONVERGE = 600  # 60 s of 10 Hz data
N_TOTAL = N_CONVERGE + 200
BIAS = 0.005  # true vertical accelerometer bias, m/s^2
PARAMS = NavParams(
    accel_noise_mps2=jnp.asarray(0.01),
    lrf_noise_m=jnp.asarray(2.0),
    gate_sigma=jnp.asarray(4.0),
    reacquire_after_s=jnp.asarray(3.0),
    heavy_tail_weight=jnp.asarray(0.0),
)


def _truth():
    """Altitude, vertical speed and thrust specific force of a powered vertical descent from
    2 km at 20 m/s (ends near 400 m: it never reaches the ground)."""
    t = np.arange(N_TOTAL) * DT
    force = 1.5 + 0.3 * np.sin(0.05 * t)
    z = np.empty(N_TOTAL + 1)
    v = np.empty(N_TOTAL + 1)
    z[0], v[0] = 2000.0, -20.0
    for k in range(N_TOTAL):
        a = force[k] - GRAVITY
        z[k + 1] = z[k] + v[k] * DT + 0.5 * a * DT**2
        v[k + 1] = v[k] + a * DT
    imu = np.zeros((N_TOTAL, 3))
    imu[:, 2] = force + BIAS
    imu[:, 0] = 0.02  # horizontal specific force does not touch the vertical channel
    return z, v, imu


Z, V, IMU = _truth()


@functools.partial(jax.jit, static_argnames=("policy", "softness"))
def _run(nav, imu, altitude, valid, policy="reacquire", softness=0.0):
    """predict + update for every sample; returns the final state and per-step histories."""

    def body(nav, x):
        accel, alt, ok = x
        nav = nav_lib.predict(nav, accel, GRAVITY, PARAMS, DT)
        nav, accepted = nav_lib.update(nav, alt, ok, PARAMS, DT, policy, softness)
        return nav, (
            nav.position_m[2],
            nav.velocity_mps[2],
            nav.accel_bias_mps2,
            nav.altitude_sigma_m,
            accepted,
            nav.lrf_disabled,
        )

    return jax.lax.scan(body, nav, (imu, altitude, valid))


def _replace(nav, **fields):
    names = tuple(fields)
    return eqx.tree_at(lambda n: tuple(getattr(n, f) for f in names), nav, tuple(fields.values()))


def _f32(x):
    return jnp.asarray(x, dtype=jnp.float32)


def _initial():
    """Start 300 m too high (1 sigma of a 300 m prior), velocity known, bias prior 0.01."""
    return nav_lib.initial_nav(
        _f32([0.0, 0.0, Z[0] + 300.0]), _f32([0.0, 0.0, V[0]]), 300.0, 0.1, 0.01
    )


@pytest.fixture(scope="module")
def converged():
    nav, hist = _run(
        _initial(), _f32(IMU[:N_CONVERGE]), _f32(Z[1 : N_CONVERGE + 1]), jnp.ones(N_CONVERGE, bool)
    )
    return jax.block_until_ready(nav), hist


def test_filter_converges_on_clean_data(converged):
    """300 m initial error: every clean reading is accepted, the altitude error falls below
    1 m within the first second and stays below 0.5 m over the last 30 s (the reported sigma
    there is ~0.3 m), the bias estimate reaches the true 5e-3 m/s^2 to 10 % and within 3 of
    its own sigmas, and the reported altitude sigma shrinks by > 100x."""
    nav, (alt, vz, bias, sigma, accepted, disabled) = converged
    err = np.asarray(alt, dtype=np.float64) - Z[1 : N_CONVERGE + 1]
    assert np.all(np.asarray(accepted))
    assert not np.any(np.asarray(disabled))
    assert abs(err[9]) < 1.0
    assert np.max(np.abs(err[N_CONVERGE // 2 :])) < 0.5
    assert abs(float(vz[-1]) - V[N_CONVERGE]) < 0.05
    bias_sigma = float(np.sqrt(nav.cov[2, 2]))
    assert abs(float(bias[-1]) - BIAS) < 0.1 * BIAS
    assert abs(float(bias[-1]) - BIAS) < 3 * bias_sigma
    assert float(sigma[-1]) < 300.0 / 100.0
    assert float(sigma[-1]) < float(sigma[0])
    # Covariance stays symmetric positive definite.
    cov = np.asarray(nav.cov, dtype=np.float64)
    np.testing.assert_allclose(cov, cov.T, atol=0)
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def _predicted(nav, k):
    """Filter state after the IMU prediction of step k (before its LRF update)."""
    return nav_lib.predict(nav, _f32(IMU[k]), GRAVITY, PARAMS, DT)


def test_gate_rejects_planted_outlier(converged):
    """A reading 200 m off after convergence (hundreds of sigmas) is rejected and leaves the
    estimate exactly where the prediction put it; the next clean reading is accepted."""
    nav, _ = converged
    k = N_CONVERGE
    pred = _predicted(nav, k)
    after, accepted = nav_lib.update(pred, _f32(Z[k + 1] + 200.0), jnp.asarray(True), PARAMS, DT)
    assert not bool(accepted)
    np.testing.assert_array_equal(np.asarray(after.position_m), np.asarray(pred.position_m))
    np.testing.assert_array_equal(np.asarray(after.velocity_mps), np.asarray(pred.velocity_mps))
    assert float(after.accel_bias_mps2) == float(pred.accel_bias_mps2)
    np.testing.assert_allclose(np.asarray(after.cov), np.asarray(pred.cov), rtol=1e-6)
    assert float(after.rejecting_s) == pytest.approx(DT)
    assert not bool(after.lrf_disabled)

    pred2 = _predicted(after, k + 1)
    after2, accepted2 = nav_lib.update(pred2, _f32(Z[k + 2]), jnp.asarray(True), PARAMS, DT)
    assert bool(accepted2)
    assert float(after2.rejecting_s) == 0.0
    assert float(after2.since_accept_s) == 0.0


def test_invalid_reading_is_ignored(converged):
    """valid=False: no correction and not counted as a rejection, whatever the value."""
    nav, _ = converged
    pred = _predicted(nav, N_CONVERGE)
    after, accepted = nav_lib.update(pred, _f32(-5000.0), jnp.asarray(False), PARAMS, DT)
    assert not bool(accepted)
    np.testing.assert_array_equal(np.asarray(after.position_m), np.asarray(pred.position_m))
    assert float(after.rejecting_s) == 0.0


def _step_run(nav, policy, n_step=60):
    """n_step readings 300 m above the truth (a terrain rim under the beam), then clean."""
    k0 = N_CONVERGE
    altitude = Z[k0 + 1 : N_TOTAL + 1].copy()
    altitude[:n_step] += 300.0
    n = N_TOTAL - k0
    return _run(nav, _f32(IMU[k0:]), _f32(altitude), jnp.ones(n, bool), policy=policy)


def _timeout_index(accepted):
    """Index of the first accepted reading of the +300 m run."""
    accepted = np.asarray(accepted)
    assert accepted.any()
    return int(np.argmax(accepted))


def test_reacquire_policy_resets_to_reading_after_timeout(converged):
    """'reacquire': the +300 m readings are rejected until the run of rejections exceeds
    reacquire_after_s = 3 s (reading 30 or 31 at 10 Hz, depending on float32 accumulation of
    dt), then the altitude is reset to that reading exactly, its variance to the LRF's, and
    the following (consistent) +300 m readings are accepted."""
    nav, _ = converged
    _, (alt, _, _, sigma, accepted, disabled) = _step_run(nav, "reacquire")
    j = _timeout_index(accepted)
    assert j in (29, 30)  # 0-based: the 30th or 31st rejected reading times out
    reading = np.float32(Z[N_CONVERGE + 1 + j] + 300.0)
    assert float(alt[j]) == pytest.approx(float(reading), abs=1e-3)
    assert float(sigma[j]) == pytest.approx(float(PARAMS.lrf_noise_m), rel=1e-5)
    # Before the reset the estimate ignored the step (dead reckoning is exact: error < 1 m).
    err_before = np.asarray(alt[:j], dtype=np.float64) - Z[N_CONVERGE + 1 : N_CONVERGE + 1 + j]
    assert np.max(np.abs(err_before)) < 1.0
    assert np.all(np.asarray(accepted[j:60]))
    assert not np.any(np.asarray(disabled))


def test_reacquire_reset_zeroes_altitude_correlations(converged):
    """The reset drops the altitude's correlations with velocity and bias (single update)."""
    nav, _ = converged
    nav = _replace(nav, rejecting_s=jnp.asarray(2.95, jnp.float32))
    pred = _predicted(nav, N_CONVERGE)
    after, accepted = nav_lib.update(
        pred, _f32(Z[N_CONVERGE + 1] + 300.0), jnp.asarray(True), PARAMS, DT
    )
    assert bool(accepted)
    cov = np.asarray(after.cov)
    assert cov[0, 0] == pytest.approx(4.0)
    np.testing.assert_array_equal(cov[0, 1:], 0.0)
    np.testing.assert_array_equal(cov[1:, 0], 0.0)
    assert float(after.rejecting_s) == 0.0


def test_latch_policy_disables_lrf_for_good(converged):
    """'latch' (HAKUTO-R Mission 1): after the same timeout the LRF is declared failed; no
    later reading is accepted, even clean ones, and the filter then evolves exactly as
    with no LRF at all from that point (compared with a run fed only invalid readings)."""
    nav, _ = converged
    final, (alt, _, _, _, accepted, disabled) = _step_run(nav, "latch")
    disabled = np.asarray(disabled)
    assert not np.any(np.asarray(accepted))
    j = int(np.argmax(disabled))
    assert j in (29, 30) and np.all(disabled[j:]) and not np.any(disabled[:j])
    assert bool(final.lrf_disabled)

    # Replay: the same first j + 1 steps, then invalid readings only.
    k0 = N_CONVERGE
    n = N_TOTAL - k0
    altitude = Z[k0 + 1 : N_TOTAL + 1].copy()
    altitude[:60] += 300.0
    valid = np.arange(n) <= j
    _, (alt_dead, *_) = _run(
        nav, _f32(IMU[k0:]), _f32(altitude), jnp.asarray(valid), policy="latch"
    )
    np.testing.assert_array_equal(np.asarray(alt), np.asarray(alt_dead))


@pytest.mark.parametrize("excess", [-3.0, -0.5, 0.0, 0.5, 3.0])
def test_soft_gate_weight_near_threshold(excess):
    """gate_softness = 1: the correction is weighted by sigmoid((gate^2 - d^2) / softness).
    Put the innovation at d^2 = gate^2 + excess and recover the weight from the altitude
    correction w * P00 / S * innovation (P00 = 100, S = 104: the correction is ~40 m, so
    float32 recovers w to ~1e-5). The hard decision (accepted) still follows the gate."""
    softness = 1.0
    nav = nav_lib.initial_nav(_f32([0.0, 0.0, 50.0]), _f32([0.0, 0.0, -1.0]), 10.0, 0.5, 1e-3)
    s = 100.0 + 4.0
    d2 = 16.0 + excess
    innovation = np.sqrt(d2 * s)
    new, accepted = nav_lib.update(
        nav, _f32(50.0 + innovation), jnp.asarray(True), PARAMS, DT, "reacquire", softness
    )
    weight = (float(new.position_m[2]) - 50.0) / (100.0 / s * innovation)
    expected = 1.0 / (1.0 + np.exp(-(16.0 - d2) / softness))
    assert 0.0 < weight < 1.0
    assert weight == pytest.approx(expected, abs=2e-5)
    # Covariance shrinks by the same weight: P00' = P00 - w P00^2 / S.
    assert float(new.cov[0, 0]) == pytest.approx(100.0 - expected * 100.0**2 / s, rel=1e-5)
    if excess == 0.0:
        return  # exactly on the threshold the hard decision depends on rounding
    assert bool(accepted) == (excess < 0.0)

    hard, hard_accepted = nav_lib.update(
        nav, _f32(50.0 + innovation), jnp.asarray(True), PARAMS, DT
    )
    hard_weight = (float(hard.position_m[2]) - 50.0) / (100.0 / s * innovation)
    assert hard_weight == pytest.approx(1.0 if excess < 0.0 else 0.0, abs=1e-5)
    assert bool(hard_accepted) == (excess < 0.0)


def test_soft_gate_ignores_unusable_readings():
    """Soft weights apply only to usable readings: an invalid one gets weight 0."""
    nav = nav_lib.initial_nav(_f32([0.0, 0.0, 50.0]), _f32([0.0, 0.0, -1.0]), 10.0, 0.5, 1e-3)
    new, _ = nav_lib.update(nav, _f32(55.0), jnp.asarray(False), PARAMS, DT, "reacquire", 1.0)
    assert float(new.position_m[2]) == 50.0
    np.testing.assert_array_equal(np.asarray(new.cov), np.asarray(nav.cov))
