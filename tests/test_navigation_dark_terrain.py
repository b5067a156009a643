"""The filter over dark terrain (IM-2): heavy-tailed LRF ranges.

- Adaptive noise level: a filter that assumes the nominal LRF noise grows overconfident on
  Student-t ranges (a few metres of sigma on an error of tens); one that learns the noise from
  its innovations, starts from a conservative level and floors its sigma at a fraction of it
  stays honest, and leaves a clean altimeter's noise alone.
- Terminal phase: once converged and below ``terminal_noise_ratio`` noise levels, a range is
  held off (the estimate flies on the IMU) without looking like a silent altimeter; a filter
  still on its prior fuses ranges whatever altitude it believes.
- Gain tables written before these gains existed load with them at 0: the filter they flew.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from descent_opt import navigation as nav_lib
from descent_opt.navigation import NavParams

GRAVITY = 1.62
DT = 0.25
N = 240  # 60 s of readings at 4 Hz
M = 2000  # independent filters
TAIL_SCALE_M = 15.0

NOMINAL_NAV = dict(
    accel_noise_mps2=jnp.asarray(0.012),
    lrf_noise_m=jnp.asarray(4.0),
    gate_sigma=jnp.asarray(4.5),
    reacquire_after_s=jnp.asarray(3.0),
    heavy_tail_weight=jnp.asarray(0.05),
)
FIXED = NavParams(**NOMINAL_NAV)  # the filter of older gain tables
ADAPTIVE = NavParams(
    **NOMINAL_NAV,
    noise_adapt_rate=jnp.asarray(0.05),
    lrf_noise_start_m=jnp.asarray(40.0),
    sigma_floor_ratio=jnp.asarray(0.4),
)


def _truth():
    """A powered vertical descent from 2 km at 40 m/s, decelerating (IMU exact)."""
    z = np.empty(N + 1)
    v = np.empty(N + 1)
    z[0], v[0] = 2000.0, -40.0
    force = np.full(N, GRAVITY + 0.25)
    for k in range(N):
        a = force[k] - GRAVITY
        z[k + 1] = z[k] + v[k] * DT + 0.5 * a * DT**2
        v[k + 1] = v[k] + a * DT
    return z, v, force


Z, V, FORCE = _truth()


def _readings(tail_scale_m, seed=0):
    """LRF altitudes of M units: truth + 1 m Gaussian + scale x Student-t(2)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(1e-7, 1.0 - 1e-7, size=(M, N))
    t2 = (2.0 * u - 1.0) / np.sqrt(2.0 * u * (1.0 - u))
    noise = rng.normal(size=(M, N)) + tail_scale_m * t2
    return jnp.asarray(Z[1:] + noise, dtype=jnp.float32)


@eqx.filter_jit
def _fly(params, readings):
    """Every unit's filter from a 300 m prior (estimate 150 m high) over all its readings;
    the final states."""

    def one(alt):
        nav = nav_lib.initial_nav(
            jnp.asarray([0.0, 0.0, Z[0] + 150.0], jnp.float32),
            jnp.asarray([0.0, 0.0, V[0]], jnp.float32),
            300.0,
            0.1,
            1e-3,
            params.lrf_noise_start_m,
        )

        def body(nav, x):
            force, z = x
            nav = nav_lib.predict(nav, (0.0, 0.0, force), GRAVITY, params, DT)
            nav, _ = nav_lib.update(nav, z, jnp.asarray(True), params, DT)
            return nav, None

        return jax.lax.scan(body, nav, (jnp.asarray(FORCE, jnp.float32), alt))[0]

    return jax.vmap(one)(readings)


def _error_and_sigma(nav):
    return np.asarray(nav.position_m[2], np.float64) - Z[-1], np.asarray(nav.altitude_sigma_m)


def test_fixed_noise_filter_is_overconfident_over_dark_terrain():
    """The mechanism of the dark-terrain failures: assuming the nominal noise on ranges with a
    15 m Student-t tail, the filter reports a sigma of a few metres while a large share of
    units are off by more than 3 of them."""
    err, sigma = _error_and_sigma(_fly(FIXED, _readings(TAIL_SCALE_M)))
    assert np.median(sigma) < 3.0
    assert np.mean(np.abs(err) > 3.0 * sigma) > 0.2


def test_adaptive_noise_keeps_the_filter_honest_over_dark_terrain():
    """Learning the noise level from the innovations: the level settles near the
    Gaussian-equivalent sigma of the ranges (sqrt(pi / 2) times their mean absolute error,
    ~1.4 x 15 m for a Student-t(2), less what the gate clips), and the reported sigma covers
    the error: few units beyond 3 sigmas and the RMS error under the median sigma (the fixed
    filter's RMS error is ~6 of its sigmas: 4.9 m on 0.8 m)."""
    nav = _fly(ADAPTIVE, _readings(TAIL_SCALE_M))
    err, sigma = _error_and_sigma(nav)
    level = np.asarray(nav.noise_scale_m)
    assert 15.0 < np.median(level) < 40.0
    assert np.mean(np.abs(err) > 3.0 * sigma) < 0.02
    assert np.sqrt(np.mean(err**2)) < np.median(sigma)


def test_adaptive_noise_leaves_a_clean_altimeter_alone():
    """With nominal ranges (1 m Gaussian) the learnt level falls below ``lrf_noise_m``, so the
    filter ends as confident and as accurate as the fixed one."""
    readings = _readings(0.0)
    nav = _fly(ADAPTIVE, readings)
    err, sigma = _error_and_sigma(nav)
    fixed_err, fixed_sigma = _error_and_sigma(_fly(FIXED, readings))
    assert np.median(np.asarray(nav.noise_scale_m)) < 4.0
    assert np.sqrt(np.mean(err**2)) < 1.0
    assert np.median(sigma) == pytest.approx(np.median(fixed_sigma), rel=0.1)
    assert np.sqrt(np.mean(fixed_err**2)) < 1.0


def _low_nav(sigma_m, level_m=30.0, altitude_m=20.0):
    nav = nav_lib.initial_nav(
        jnp.asarray([0.0, 0.0, altitude_m]), jnp.asarray([0.0, 0.0, -1.0]), sigma_m, 0.1, 1e-3
    )
    return eqx.tree_at(lambda n: (n.noise_scale_m, n.since_accept_s), nav, (
        jnp.asarray(level_m), jnp.asarray(5.0)))  # fmt: skip


TERMINAL = eqx.tree_at(lambda p: p.terminal_noise_ratio, ADAPTIVE, jnp.asarray(1.5))


def test_terminal_phase_holds_ranges_off_near_the_ground():
    """Converged (sigma 15 m under a 30 m noise level) at 20 m, below 1.5 noise levels: a range
    35 m up (what a censored heavy-tailed LRF returns near the ground) leaves the estimate, its
    covariance and the noise level alone, is not accepted, and still counts as a live LRF
    (no contingency)."""
    nav = _low_nav(15.0)
    assert bool(nav_lib.terminal(nav, TERMINAL))
    new, accepted = nav_lib.update(nav, jnp.asarray(55.0), jnp.asarray(True), TERMINAL, DT)
    assert not bool(accepted)
    assert float(new.position_m[2]) == 20.0
    np.testing.assert_array_equal(np.asarray(new.cov), np.asarray(nav.cov))
    assert float(new.noise_scale_m) == 30.0
    assert float(new.since_accept_s) == 0.0
    assert float(new.rejecting_s) == 0.0
    # Without the terminal phase the same range pulls the estimate up.
    fused, ok = nav_lib.update(nav, jnp.asarray(55.0), jnp.asarray(True), ADAPTIVE, DT)
    assert bool(ok) and float(fused.position_m[2]) > 20.5


def test_terminal_phase_needs_a_converged_filter():
    """Still on its 300 m prior (a late altimeter, a wrong initial estimate), the filter fuses
    a range whatever altitude it believes: it has no altitude of its own to hold on to."""
    nav = _low_nav(300.0)
    assert not bool(nav_lib.terminal(nav, TERMINAL))
    new, accepted = nav_lib.update(nav, jnp.asarray(400.0), jnp.asarray(True), TERMINAL, DT)
    assert bool(accepted)
    assert float(new.position_m[2]) > 300.0


def test_tables_without_the_new_gains_fly_the_old_filter():
    """A table written before the adaptive-noise gains loads them at 0, and the filter with them
    at 0 is the fixed-noise one, step for step."""
    from descent_opt.export import gains_from_dict, gains_to_dict
    from descent_opt.guidance import NAV_GAINS_ADDED, default_gains

    data = gains_to_dict(default_gains())
    for name in NAV_GAINS_ADDED:
        if name != "heavy_tail_weight":
            del data["navigation"][name]
    nav = gains_from_dict(data).nav
    for name in ("noise_adapt_rate", "lrf_noise_start_m", "sigma_floor_ratio",
                 "terminal_noise_ratio"):  # fmt: skip
        assert float(getattr(nav, name)) == 0.0
    readings = _readings(TAIL_SCALE_M)[:64]
    legacy = eqx.tree_at(
        lambda p: (p.noise_adapt_rate, p.lrf_noise_start_m, p.sigma_floor_ratio,
                   p.terminal_noise_ratio),
        ADAPTIVE, (0.0, 0.0, 0.0, 0.0),
    )  # fmt: skip
    a = _fly(legacy, readings)
    b = _fly(FIXED, readings)
    np.testing.assert_array_equal(np.asarray(a.position_m[2]), np.asarray(b.position_m[2]))
    np.testing.assert_array_equal(np.asarray(a.cov_hh), np.asarray(b.cov_hh))
