"""Guidance: a gain-scheduled feedback law on the navigation estimate.

Vertical channel: track a descent-rate envelope ``v_ref(h)`` with loop gain ``k(h)``, where
``h`` is a conservative estimated altitude ``h_est - altitude_margin_sigma * sigma_h``, so
the lander slows down when it is unsure of its height. When the LRF has not given an
accepted reading for ``lrf_stale_after_s`` below the altitude where it should work, the
contingency envelope takes over (a silent LRF is also evidence that the lander is still high).

Horizontal channel: ZEM/ZEV feedback ``a = k_r ZEM / t_go^2 - k_v ZEV / t_go`` toward the
target with zero horizontal velocity, ``t_go`` being the time the active envelope takes to
reach the ground from the scheduling altitude; ``k_r = 6, k_v = 2`` is the classical
energy-optimal law, ``k_r = 0, k_v < 0`` pure velocity nulling (the landing phase).

Every column is scheduled on estimated-altitude breakpoints: that schedule is the gain table.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from descent_opt.dynamics import Vehicle, clip_norm
from descent_opt.navigation import NavParams, NavState

SCHEDULED_COLUMNS = (
    "descent_rate_mps",
    "contingency_descent_rate_mps",
    "descent_rate_gain_per_s",
    "zem_gain",
    "zev_gain",
)
SCALAR_GAINS = ("altitude_margin_sigma", "tgo_min_s")
NAV_GAINS = ("accel_noise_mps2", "lrf_noise_m", "gate_sigma", "reacquire_after_s")


class GuidanceSpec(eqx.Module):
    """Fixed (not tuned) guidance settings."""

    lrf_expected_altitude_m: float = 3000.0
    lrf_stale_after_s: float = 2.0
    tgo_max_s: float = 200.0


class Gains(eqx.Module):
    """The tunable guidance and navigation parameters. All are positive except ``zev_gain``."""

    altitude_breakpoints_m: Float[Array, " k"]
    descent_rate_mps: Float[Array, " k"]
    contingency_descent_rate_mps: Float[Array, " k"]
    descent_rate_gain_per_s: Float[Array, " k"]
    zem_gain: Float[Array, " k"]
    zev_gain: Float[Array, " k"]
    altitude_margin_sigma: Float[Array, ""]
    tgo_min_s: Float[Array, ""]
    nav: NavParams


def default_gains(
    altitude_breakpoints_m=(0, 20, 50, 100, 200, 400, 700, 1000, 1500, 2000, 3000, 4000, 6000),
    braking_accel_mps2: float = 2.0,
    touchdown_rate_mps: float = 0.8,
    terminal_height_m: float = 30.0,
    terminal_slope_per_s: float = 0.08,
) -> Gains:
    """A hand-made starting design for nominal sensors: a slow terminal segment (descent
    rate ``v_td + c h`` up to ``terminal_height_m``, tolerant of altitude error) below
    constant-acceleration braking ``sqrt(2 a (h - terminal_height_m))``; classical ZEM/ZEV
    gains (velocity nulling only near the ground); a 1-sigma altitude margin; no contingency
    (its envelope equals the nominal one)."""
    h = jnp.asarray(np.asarray(altitude_breakpoints_m, dtype=float))
    rate = (
        touchdown_rate_mps
        + terminal_slope_per_s * jnp.minimum(h, terminal_height_m)
        + jnp.sqrt(2.0 * braking_accel_mps2 * jnp.maximum(h - terminal_height_m, 0.0))
    )
    low = h < 150.0  # landing phase: null horizontal velocity, tight descent-rate loop
    return Gains(
        altitude_breakpoints_m=h,
        descent_rate_mps=rate,
        contingency_descent_rate_mps=rate,
        descent_rate_gain_per_s=jnp.where(low, 1.0, 0.4),
        zem_gain=jnp.where(low, 0.05, 6.0),
        zev_gain=jnp.where(low, -2.0, 2.0),
        altitude_margin_sigma=jnp.asarray(1.0),
        tgo_min_s=jnp.asarray(5.0),
        nav=NavParams(
            accel_noise_mps2=jnp.asarray(0.01),
            lrf_noise_m=jnp.asarray(5.0),
            gate_sigma=jnp.asarray(4.0),
            reacquire_after_s=jnp.asarray(3.0),
        ),
    )


def time_to_go_s(
    rate_mps: Float[Array, " k"], breakpoints_m: Float[Array, " k"], height_m: Float[Array, ""]
) -> Float[Array, ""]:
    """Time to descend from ``height_m`` to the ground following a piecewise-linear descent
    rate envelope exactly (each segment: ``dh / logmean(v_i, v_i+1)``)."""
    v = jnp.maximum(rate_mps, 1e-3)
    a, b = v[:-1], v[1:]
    close = jnp.abs(b - a) < 1e-3 * a
    ratio = jnp.where(close, 2.0, b / a)
    logmean = jnp.where(close, 0.5 * (a + b), (b - a) / jnp.where(close, 1.0, jnp.log(ratio)))
    dh = jnp.diff(breakpoints_m)
    cumulative = jnp.concatenate([jnp.zeros(1), jnp.cumsum(dh / logmean)])
    beyond = jnp.maximum(height_m - breakpoints_m[-1], 0.0) / v[-1]
    return jnp.interp(height_m, breakpoints_m, cumulative) + beyond


def in_contingency(nav: NavState, spec: GuidanceSpec) -> Bool[Array, ""]:
    """LRF silent (or rejected) for too long below the altitude where it should work. A
    descent that starts below that altitude with no reading yet is in contingency at once."""
    return (nav.since_accept_s > spec.lrf_stale_after_s) & (
        nav.position_m[2] < spec.lrf_expected_altitude_m
    )


def thrust_command(
    gains: Gains,
    spec: GuidanceSpec,
    vehicle: Vehicle,
    nav: NavState,
    mass_kg: Float[Array, ""],
    gravity_mps2: float,
) -> Float[Array, "3"]:
    """Commanded thrust vector (N) from the navigation estimate."""
    h_est = nav.position_m[2]
    h_sched = jnp.maximum(h_est - gains.altitude_margin_sigma * nav.altitude_sigma_m, 0.0)
    bp = gains.altitude_breakpoints_m

    def schedule(column):
        return jnp.interp(h_sched, bp, column)

    def rate_and_slope(column):
        return jax.jvp(lambda h: jnp.interp(h, bp, column), (h_sched,), (jnp.ones_like(h_sched),))

    rate_nominal, slope_nominal = rate_and_slope(gains.descent_rate_mps)
    rate_contingency, slope_contingency = rate_and_slope(gains.contingency_descent_rate_mps)
    contingency = in_contingency(nav, spec)
    rate = jnp.where(contingency, rate_contingency, rate_nominal)
    slope = jnp.where(contingency, slope_contingency, slope_nominal)
    vz = nav.velocity_mps[2]
    # Feedforward rate * d(rate)/dh is the deceleration that follows the envelope exactly.
    accel_z = gravity_mps2 + rate * slope + schedule(gains.descent_rate_gain_per_s) * (-rate - vz)

    tgo_nominal = time_to_go_s(gains.descent_rate_mps, bp, h_sched)
    tgo_contingency = time_to_go_s(gains.contingency_descent_rate_mps, bp, h_sched)
    tgo = jnp.clip(
        jnp.where(contingency, tgo_contingency, tgo_nominal), gains.tgo_min_s, spec.tgo_max_s
    )
    r_h, v_h = nav.position_m[:2], nav.velocity_mps[:2]
    zem = -(r_h + v_h * tgo)
    zev = -v_h
    accel_h = schedule(gains.zem_gain) * zem / tgo**2 - schedule(gains.zev_gain) * zev / tgo

    # Vertical priority: bound the vertical thrust first, then give the horizontal what
    # remains within the magnitude and the tilt limit.
    max_tilt = jnp.deg2rad(vehicle.max_tilt_deg)
    thrust_z = jnp.clip(
        mass_kg * accel_z, vehicle.thrust_min_n * jnp.cos(max_tilt), vehicle.thrust_max_n
    )
    room = jnp.sqrt(jnp.maximum(vehicle.thrust_max_n**2 - thrust_z**2, 1e-6))
    thrust_h = clip_norm(mass_kg * accel_h, jnp.minimum(room, thrust_z * jnp.tan(max_tilt)))
    return jnp.concatenate([thrust_h, thrust_z[None]])
