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
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from descent_opt.dynamics import Scalar, Vec3, Vehicle, clip_norm
from descent_opt.navigation import NavParams, NavState

SCHEDULED_COLUMNS = (
    "descent_rate_mps",
    "contingency_descent_rate_mps",
    "descent_rate_gain_per_s",
    "zem_gain",
    "zev_gain",
)
# Altitudes (m) at which the scheduled gains are tabulated (``guidance.altitude_breakpoints_m``).
ALTITUDE_BREAKPOINTS_M = (0.0, 20.0, 50.0, 100.0, 200.0, 400.0, 700.0, 1000.0, 1500.0, 2000.0,
                          3000.0, 4000.0, 6000.0)  # fmt: skip
SCALAR_GAINS = ("altitude_margin_sigma", "tgo_min_s")
NAV_GAINS = (
    "accel_noise_mps2",
    "lrf_noise_m",
    "gate_sigma",
    "reacquire_after_s",
    "heavy_tail_weight",
    "noise_adapt_rate",
    "lrf_noise_start_m",
    "sigma_floor_ratio",
    "terminal_noise_ratio",
)
# Written by every table since they were added; older tables lack them and flew without them.
NAV_GAINS_ADDED = {
    "heavy_tail_weight": 0.0,
    "noise_adapt_rate": 0.0,
    "lrf_noise_start_m": 0.0,
    "sigma_floor_ratio": 0.0,
    "terminal_noise_ratio": 0.0,
}


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
    altitude_breakpoints_m=ALTITUDE_BREAKPOINTS_M,
    braking_accel_mps2: float = 2.0,
    touchdown_rate_mps: float = 0.8,
    terminal_height_m: float = 30.0,
    terminal_slope_per_s: float = 0.08,
    heavy_tail_weight: float = 0.05,
    noise_adapt_rate: float = 0.05,
    lrf_noise_start_m: float = 40.0,
    sigma_floor_ratio: float = 0.4,
    terminal_noise_ratio: float = 1.5,
) -> Gains:
    """A hand-made starting design for nominal sensors: a slow terminal segment (descent
    rate ``v_td + c h`` up to ``terminal_height_m``, tolerant of altitude error) below
    constant-acceleration braking ``sqrt(2 a (h - terminal_height_m))``; classical ZEM/ZEV
    gains (velocity nulling only near the ground); a 1-sigma altitude margin; no contingency
    (its envelope equals the nominal one); readings weighted as Student-t with 19 degrees of
    freedom (``heavy_tail_weight`` 0.05: nearly Gaussian); a filter that learns the LRF's
    noise level from its innovations (``noise_adapt_rate``), starting from a conservative
    40 m, floors its altitude sigma at 0.4 of that level and flies the last 1.5 levels of
    estimated altitude on the IMU (:mod:`descent_opt.navigation`: what keeps it honest over
    dark terrain)."""
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
        altitude_margin_sigma=jnp.asarray(1.0, dtype=float),
        tgo_min_s=jnp.asarray(5.0, dtype=float),
        nav=NavParams(
            accel_noise_mps2=jnp.asarray(0.01, dtype=float),
            lrf_noise_m=jnp.asarray(5.0, dtype=float),
            gate_sigma=jnp.asarray(4.0, dtype=float),
            reacquire_after_s=jnp.asarray(3.0, dtype=float),
            heavy_tail_weight=jnp.asarray(heavy_tail_weight, dtype=float),
            noise_adapt_rate=jnp.asarray(noise_adapt_rate, dtype=float),
            lrf_noise_start_m=jnp.asarray(lrf_noise_start_m, dtype=float),
            sigma_floor_ratio=jnp.asarray(sigma_floor_ratio, dtype=float),
            terminal_noise_ratio=jnp.asarray(terminal_noise_ratio, dtype=float),
        ),
    )


def _tgo_table(rate_mps: Float[Array, " k"], breakpoints_m: Float[Array, " k"]):
    """Time to descend from each breakpoint to the ground following a piecewise-linear
    descent-rate envelope exactly (each segment: ``dh / logmean(v_i, v_i+1)``), and the
    rate used above the last breakpoint."""
    v = jnp.maximum(rate_mps, 1e-3)
    a, b = v[:-1], v[1:]
    close = jnp.abs(b - a) < 1e-3 * a
    ratio = jnp.where(close, 2.0, b / a)
    logmean = jnp.where(close, 0.5 * (a + b), (b - a) / jnp.where(close, 1.0, jnp.log(ratio)))
    dh = jnp.diff(breakpoints_m)
    return jnp.concatenate([jnp.zeros(1, dh.dtype), jnp.cumsum(dh / logmean)]), v[-1]


class _Column(eqx.Module):
    """A piecewise-linear schedule as its value at the first breakpoint and its slope on each
    segment: ``f(h) = start + sum_i slope_i clip(h - b_i, 0, b_i+1 - b_i)``, constant
    outside the breakpoints."""

    start: Float[Array, ""]
    slopes: Float[Array, " k-1"]

    @classmethod
    def of(cls, values: Float[Array, " k"], breakpoints_m: Float[Array, " k"]) -> "_Column":
        return cls(values[0], jnp.diff(values) / jnp.diff(breakpoints_m))

    def value(self, ramps) -> Float[Array, "*b"]:
        if not isinstance(ramps, tuple):
            return self.start + jnp.sum(self.slopes * ramps, axis=-1)
        out = self.start
        for i, r in enumerate(ramps):
            out = out + self.slopes[i] * r
        return out

    def slope(self, segment) -> Float[Array, "*b"]:
        """Derivative in h: the slope of the segment holding h (as ``jnp.interp``'s, 0
        outside the breakpoints)."""
        if not isinstance(segment, tuple):
            return jnp.sum(jnp.where(segment, self.slopes, 0.0), axis=-1)
        out = 0.0
        for i, inside in enumerate(segment):
            out = out + jnp.where(inside, self.slopes[i], 0.0)
        return out


class Schedule(eqx.Module):
    """Gains prepared for flight, once per flight instead of once per step: segment slopes of
    every scheduled column and the time-to-go tables of both envelopes. Each step locates its
    scheduling altitude among the breakpoints once (:meth:`locate`) and every column reuses
    that.

    ``unrolled``: the segments as separate scalars (under vmap, each one population-long
    array: the fastest forward flight of large populations) or as one short vector per
    scenario (a program several times smaller: faster to compile and to differentiate)."""

    gains: Gains
    columns: dict[str, _Column]
    tgo_nominal: _Column
    tgo_contingency: _Column
    top_rate_nominal_mps: Float[Array, ""]
    top_rate_contingency_mps: Float[Array, ""]
    unrolled: bool = eqx.field(static=True, default=True)

    def locate(self, height_m):
        """Clipped ramps ``clip(h - b_i, 0, b_i+1 - b_i)`` and the segment-membership flags
        ``b_i <= h < b_i+1`` (the last segment closed) of a scheduling altitude."""
        bp = self.gains.altitude_breakpoints_m
        k = bp.shape[0]
        if not self.unrolled:
            lower, upper = bp[:-1], bp[1:]
            h = jnp.asarray(height_m)[..., None]
            last = jnp.arange(k - 1) == k - 2
            inside = (h >= lower) & ((h < upper) | (last & (h <= upper)))
            return jnp.clip(h - lower, 0.0, upper - lower), inside
        at_or_above = [height_m >= bp[i] for i in range(k)]
        ramps = tuple(jnp.clip(height_m - bp[i], 0.0, bp[i + 1] - bp[i]) for i in range(k - 1))
        segment = tuple(at_or_above[i] & ~at_or_above[i + 1] for i in range(k - 2)) + (
            at_or_above[k - 2] & (height_m <= bp[k - 1]),
        )
        return ramps, segment


def prepare(gains: Gains, *, unrolled: bool = True) -> Schedule:
    """The flight form of a gain table (differentiable in the gains)."""
    bp = gains.altitude_breakpoints_m
    tgo_n, top_n = _tgo_table(gains.descent_rate_mps, bp)
    tgo_c, top_c = _tgo_table(gains.contingency_descent_rate_mps, bp)
    return Schedule(
        gains=gains,
        columns={name: _Column.of(getattr(gains, name), bp) for name in SCHEDULED_COLUMNS},
        tgo_nominal=_Column.of(tgo_n, bp),
        tgo_contingency=_Column.of(tgo_c, bp),
        top_rate_nominal_mps=top_n,
        top_rate_contingency_mps=top_c,
        unrolled=unrolled,
    )


def in_contingency(nav: NavState, spec: GuidanceSpec) -> Bool[Array, "*b"]:
    """LRF silent (or rejected) for too long below the altitude where it should work. A
    descent that starts below that altitude with no reading yet is in contingency at once."""
    return (nav.since_accept_s > spec.lrf_stale_after_s) & (
        nav.position_m[2] < spec.lrf_expected_altitude_m
    )


class Scheduled(eqx.Module):
    """The gain table read at one navigation state: the active envelope's rate and slope,
    the loop gain, the clipped time to go and the ZEM/ZEV gains, and the contingency flag."""

    rate_mps: Scalar
    slope_per_s: Scalar
    loop_gain_per_s: Scalar
    tgo_s: Scalar
    zem_gain: Scalar
    zev_gain: Scalar
    contingency: Bool[Array, "*b"]


def scheduled(schedule: Schedule, spec: GuidanceSpec, nav: NavState) -> Scheduled:
    """Every scheduled column at the conservative altitude ``h_est - k sigma_h``, with the
    contingency envelope when the LRF has been silent too long."""
    gains = schedule.gains
    h_sched = jnp.maximum(
        nav.position_m[2] - gains.altitude_margin_sigma * nav.altitude_sigma_m, 0.0
    )
    ramps, segment = schedule.locate(h_sched)
    columns = schedule.columns
    contingency = in_contingency(nav, spec)
    nominal = columns["descent_rate_mps"]
    fallback = columns["contingency_descent_rate_mps"]
    above = jnp.maximum(h_sched - gains.altitude_breakpoints_m[-1], 0.0)
    tgo = jnp.where(
        contingency,
        schedule.tgo_contingency.value(ramps) + above / schedule.top_rate_contingency_mps,
        schedule.tgo_nominal.value(ramps) + above / schedule.top_rate_nominal_mps,
    )
    return Scheduled(
        rate_mps=jnp.where(contingency, fallback.value(ramps), nominal.value(ramps)),
        slope_per_s=jnp.where(contingency, fallback.slope(segment), nominal.slope(segment)),
        loop_gain_per_s=columns["descent_rate_gain_per_s"].value(ramps),
        tgo_s=jnp.clip(tgo, gains.tgo_min_s, spec.tgo_max_s),
        zem_gain=columns["zem_gain"].value(ramps),
        zev_gain=columns["zev_gain"].value(ramps),
        contingency=contingency,
    )


def command_from(
    at: Scheduled, vehicle: Vehicle, nav: NavState, mass_kg: Scalar, gravity_mps2: float
) -> Vec3:
    """Commanded thrust vector (N) from the gains read at the navigation state ``nav``."""
    vz = nav.velocity_mps[2]
    # Feedforward rate * d(rate)/dh is the deceleration that follows the envelope exactly.
    accel_z = gravity_mps2 + at.rate_mps * at.slope_per_s + at.loop_gain_per_s * (-at.rate_mps - vz)
    tgo = at.tgo_s
    position_gain = at.zem_gain / tgo**2
    velocity_gain = at.zev_gain / tgo
    accel_h = []
    for r, v in zip(nav.position_m[:2], nav.velocity_mps[:2]):
        zem, zev = -(r + v * tgo), -v
        accel_h.append(position_gain * zem - velocity_gain * zev)

    # Vertical priority: bound the vertical thrust first, then give the horizontal what
    # remains within the magnitude and the tilt limit.
    max_tilt = jnp.deg2rad(vehicle.max_tilt_deg)
    thrust_z = jnp.clip(
        mass_kg * accel_z, vehicle.thrust_min_n * jnp.cos(max_tilt), vehicle.thrust_max_n
    )
    room = jnp.sqrt(jnp.maximum(vehicle.thrust_max_n**2 - thrust_z**2, 1e-6))
    thrust_x, thrust_y = clip_norm(
        (mass_kg * accel_h[0], mass_kg * accel_h[1]),
        jnp.minimum(room, thrust_z * jnp.tan(max_tilt)),
    )
    return thrust_x, thrust_y, thrust_z
