"""Navigation: IMU dead reckoning fused with LRF altitude in a Kalman filter.

The vertical channel is a 3-state Kalman filter (altitude, vertical velocity, vertical
accelerometer bias) driven by the IMU and corrected by LRF altitude. The horizontal channel
is IMU dead reckoning from the initial knowledge. The filter maps LRF range to altitude over
an assumed flat site (height 0): unmapped terrain shows up as innovation, which is what the
chi-square gate is for.

Heavy-tailed ranges: a reading inside the gate is weighted down by its innovation as a
Student-t measurement would be (``heavy_tail_weight``), so an outlier that passes the gate
moves the estimate less than a Gaussian filter would let it.

Dark terrain (IM-2): ranges scattered by a Student-t tail of up to 20 m. A filter that
keeps assuming the nominal noise collapses its altitude sigma to 1-2 m on the first wild
readings and stays there on a 10-20 m error; its gate and down-weighting, centred on the
wrong estimate, turn away the readings that would correct it, and guidance, trusting the
estimate, reaches the ground still on the fast part of the envelope. Four gains (all 0 in
tables written before them: the fixed-noise filter) keep it honest:

- ``noise_adapt_rate``: the noise level is learnt from the innovations (covariance matching:
  the mean absolute innovation with the state's share taken out, scaled by
  ``sqrt(R / (P + R))``, as a Gaussian-equivalent 1-sigma) and the filter uses the larger of
  that and ``lrf_noise_m``. Every usable reading counts, accepted or not (a gate that chose
  its own evidence would only confirm itself), each clipped at the gate so that one wild
  range moves the level by a bounded step.
- ``lrf_noise_start_m``: the level before any reading; a conservative start keeps the first
  readings, possibly wild, from collapsing the sigma of a 300 m prior in one step.
- ``sigma_floor_ratio``: the altitude sigma never falls below this fraction of the level.
  The LRF's errors that do not average out (scale factor, latency, relief under the beam)
  make ``sqrt(R / N)`` too optimistic over a noisy altimeter and the filter too slow to
  follow them.
- ``terminal_noise_ratio``: once converged (sigma under the level), below this many levels
  of estimated altitude the ranges are held off and the filter flies on the IMU. Near the
  ground a noisy LRF's readings are censored (no range below zero comes back), so those that
  do are biased high by a good part of the noise: fused, they lift the estimate by tens of
  metres in the last seconds. A clean altimeter's level is a few metres: it is held off only
  for the last few.

Rejection policy: the gate rejects a reading whose normalised innovation exceeds
``gate_sigma``. When valid readings have been rejected continuously for longer than
``reacquire_after_s`` the filter either re-acquires (resets altitude to the LRF reading and
its variance to the LRF's) or, with the ``latch`` policy, declares the LRF failed for the
rest of the flight, as HAKUTO-R Mission 1 did.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from descent_opt.dynamics import Scalar, Vec3, components

RejectPolicy = Literal["reacquire", "latch"]
REJECT_POLICIES = ("reacquire", "latch")


class NavParams(eqx.Module):
    """Tunable filter parameters (part of the gain table)."""

    accel_noise_mps2: Float[Array, ""]  # process noise per step, 1-sigma
    lrf_noise_m: Float[Array, ""]  # assumed LRF altitude noise, 1-sigma
    gate_sigma: Float[Array, ""]  # innovation gate in standard deviations
    reacquire_after_s: Float[Array, ""]  # continuous rejection before the policy acts
    # Heavy-tailed measurement model: a reading whose normalised innovation is d counts
    # 1 / (1 + w max(d^2 - 1, 0)); 0 is the plain Kalman update, 1 / (nu + 1) the weight of
    # a Student-t reading with nu degrees of freedom (IM-2's dark-terrain ranges).
    heavy_tail_weight: Float[Array, ""]
    # Adaptive measurement noise: weight of each usable reading in the running estimate of the
    # LRF's noise level (an exponential average); 0: the noise is ``lrf_noise_m`` throughout.
    noise_adapt_rate: Float[Array, ""] = 0.0
    # The noise level the estimate starts from, before any reading (0: ``lrf_noise_m``). A
    # conservative start keeps the first readings, possibly wild, from collapsing the
    # altitude uncertainty of a filter that does not yet know how noisy its altimeter is.
    lrf_noise_start_m: Float[Array, ""] = 0.0
    # Floor of the altitude sigma as a fraction of the noise level seen: the LRF's errors
    # that do not average out (scale factor, latency, relief under the beam) make a
    # Gaussian filter's sqrt(R / N) too optimistic over a noisy altimeter; 0: no floor.
    sigma_floor_ratio: Float[Array, ""] = 0.0
    # Terminal phase: below this many noise levels (seen) of estimated altitude the ranges
    # are no longer fused and the filter flies on the IMU. Near the ground a noisy LRF's
    # readings are censored (no range below zero comes back), so the ones that do come back
    # are biased high, by metres per reading over dark terrain; 0: ranges fused to the end.
    terminal_noise_ratio: Float[Array, ""] = 0.0


# A zero-mean Gaussian's standard deviation over its mean absolute value: sqrt(pi / 2).
ABS_TO_SIGMA = 1.2533141373155001


class NavState(eqx.Module):
    """Filter state. The covariance of (altitude, vertical velocity, bias) is held as its six
    distinct entries (``cov`` assembles the matrix) so that vmap keeps them population-long."""

    position_m: Vec3 = eqx.field(converter=components)
    velocity_mps: Vec3 = eqx.field(converter=components)
    accel_bias_mps2: Scalar  # vertical accelerometer bias estimate
    cov_hh: Scalar
    cov_hv: Scalar
    cov_hb: Scalar
    cov_vv: Scalar
    cov_vb: Scalar
    cov_bb: Scalar
    since_accept_s: Scalar  # time since the last accepted LRF reading
    rejecting_s: Scalar  # length of the current run of rejected valid readings
    noise_scale_m: Scalar  # LRF noise level learnt from the innovations, 1-sigma
    lrf_disabled: Bool[Array, "*batch"]

    @property
    def cov(self) -> Float[Array, "*batch 3 3"]:
        rows = (
            (self.cov_hh, self.cov_hv, self.cov_hb),
            (self.cov_hv, self.cov_vv, self.cov_vb),
            (self.cov_hb, self.cov_vb, self.cov_bb),
        )
        return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)

    @property
    def altitude_sigma_m(self) -> Scalar:
        return jnp.sqrt(jnp.maximum(self.cov_hh, 0.0))


def initial_nav(
    position_estimate_m: Vec3,
    velocity_estimate_mps: Vec3,
    altitude_sigma_m: float,
    vertical_velocity_sigma_mps: float,
    bias_sigma_mps2: float,
    lrf_noise_start_m: Scalar = 0.0,
) -> NavState:
    """Filter at the start of the descent, from orbit determination and the site map, with
    its estimate of the LRF's noise at ``lrf_noise_start_m``."""
    position = components(position_estimate_m)
    zero = jnp.zeros_like(position[2])
    return NavState(
        position_m=position,
        velocity_mps=components(velocity_estimate_mps),
        accel_bias_mps2=zero,
        cov_hh=zero + altitude_sigma_m**2,
        cov_hv=zero,
        cov_hb=zero,
        cov_vv=zero + vertical_velocity_sigma_mps**2,
        cov_vb=zero,
        cov_bb=zero + bias_sigma_mps2**2,
        since_accept_s=zero + 1e6,
        rejecting_s=zero,
        noise_scale_m=zero + lrf_noise_start_m,
        lrf_disabled=jnp.zeros(zero.shape, bool),
    )


def predict(
    nav: NavState,
    accel_measured_mps2: Vec3,
    gravity_mps2: float,
    params: NavParams,
    dt_s: float,
) -> NavState:
    """Propagate with one IMU sample: x <- F x + B a, P <- F P F^T + Q, with
    F = [[1, dt, -dt^2/2], [0, 1, -dt], [0, 0, 1]] on (altitude, vertical velocity, bias),
    process noise q^2 s s^T (s = (dt^2/2, dt, 0)) plus a slow random walk of the bias."""
    ax, ay, az = components(accel_measured_mps2)
    accel = (ax, ay, az - gravity_mps2 - nav.accel_bias_mps2)
    position = tuple(
        r + v * dt_s + 0.5 * a * dt_s**2 for r, v, a in zip(nav.position_m, nav.velocity_mps, accel)
    )
    velocity = tuple(v + a * dt_s for v, a in zip(nav.velocity_mps, accel))
    hh, hv, hb, vv, vb, bb = nav.cov_hh, nav.cov_hv, nav.cov_hb, nav.cov_vv, nav.cov_vb, nav.cov_bb
    a, c, e = dt_s, -0.5 * dt_s**2, -dt_s  # F[0, 1], F[0, 2], F[1, 2]
    # P F^T, column by column, then F (P F^T).
    p0 = (hh + a * hv + c * hb, hv + a * vv + c * vb, hb + a * vb + c * bb)
    p1 = (hv + e * hb, vv + e * vb, vb + e * bb)
    q2 = params.accel_noise_mps2**2
    s0, s1 = 0.5 * dt_s**2, dt_s
    return eqx.tree_at(
        lambda n: (
            n.position_m, n.velocity_mps, n.cov_hh, n.cov_hv, n.cov_hb, n.cov_vv, n.cov_vb,
            n.cov_bb, n.since_accept_s,
        ),
        nav,
        (
            position,
            velocity,
            p0[0] + a * p0[1] + c * p0[2] + q2 * s0 * s0,
            p1[0] + a * p1[1] + c * p1[2] + q2 * s0 * s1,
            hb + a * vb + c * bb,
            p1[1] + e * p1[2] + q2 * s1 * s1,
            vb + e * bb,
            bb + (1e-5) ** 2 * dt_s,
            nav.since_accept_s + dt_s,
        ),
    )  # fmt: skip


def measurement_noise_m(nav: NavState, params: NavParams) -> Scalar:
    """The LRF noise (1-sigma) the filter uses: ``lrf_noise_m``, or the noise it has seen in
    its innovations when that is larger."""
    return jnp.maximum(params.lrf_noise_m, nav.noise_scale_m)


def terminal(nav: NavState, params: NavParams) -> Bool[Array, "*batch"]:
    """Whether the filter is in its terminal phase (ranges no longer fused): below
    ``terminal_noise_ratio`` noise levels of estimated altitude, once converged."""
    # Only once the ranges have brought the altitude sigma under the noise level: a filter
    # still on its prior (a late or absent LRF) has not got an altitude to hold on to.
    converged = nav.altitude_sigma_m < nav.noise_scale_m
    return converged & (nav.position_m[2] < params.terminal_noise_ratio * nav.noise_scale_m)


def update(
    nav: NavState,
    altitude_measured_m: Scalar,
    valid: Bool[Array, "*batch"],
    params: NavParams,
    dt_s: float,
    policy: RejectPolicy = "reacquire",
    gate_softness: float = 0.0,
) -> tuple[NavState, Bool[Array, "*batch"]]:
    """Fuse one LRF altitude reading; returns the new state and whether it was accepted.

    With ``gate_softness > 0`` the correction is weighted by a sigmoid of the gate margin
    (in squared sigmas) so that gradients see the gate; the bookkeeping of the policy always
    uses the hard decision."""
    held_off = valid & terminal(nav, params)
    usable = valid & ~nav.lrf_disabled & ~held_off
    noise = measurement_noise_m(nav, params)
    variance = noise**2
    innovation = altitude_measured_m - nav.position_m[2]
    s = nav.cov_hh + variance
    d2 = innovation**2 / s
    # Noise seen in this reading: its innovation less the state's share (a Gaussian
    # innovation of variance s scaled by sqrt(R / s) has the noise's own spread), clipped at
    # the gate, as a 1-sigma.
    seen = ABS_TO_SIGMA * jnp.minimum(
        jnp.abs(innovation) * jnp.sqrt(variance / s), params.gate_sigma * noise
    )
    rate = params.noise_adapt_rate * usable
    noise_scale = nav.noise_scale_m + rate * (seen - nav.noise_scale_m)
    margin = params.gate_sigma**2 - d2
    accepted = usable & (margin > 0.0)
    if gate_softness > 0.0:
        weight = usable * jax.nn.sigmoid(margin / gate_softness)
    else:
        weight = accepted.astype(innovation.dtype)
    weight = weight / (1.0 + params.heavy_tail_weight * jnp.maximum(d2 - 1.0, 0.0))
    # Kalman gain K = P[:, 0] / s; P <- P - w K P[0, :].
    ws = weight / s
    hh, hv, hb = nav.cov_hh, nav.cov_hv, nav.cov_hb
    correction = (ws * hh * innovation, ws * hv * innovation, ws * hb * innovation)
    cov = (
        hh - ws * hh * hh,
        hv - ws * hh * hv,
        hb - ws * hh * hb,
        nav.cov_vv - ws * hv * hv,
        nav.cov_vb - ws * hv * hb,
        nav.cov_bb - ws * hb * hb,
    )

    floor = (params.sigma_floor_ratio * noise_scale) ** 2
    cov = (jnp.maximum(cov[0], floor),) + cov[1:]

    rejected = usable & ~accepted
    rejecting = jnp.where(
        rejected, nav.rejecting_s + dt_s, jnp.where(accepted, 0.0, nav.rejecting_s)
    )
    timed_out = rejected & (rejecting > params.reacquire_after_s)
    if policy == "reacquire":
        # Reset altitude to the reading; drop its correlations with the other states.
        reset = (variance, 0.0, 0.0)
        cov = tuple(jnp.where(timed_out, r, c) for r, c in zip(reset, cov[:3])) + cov[3:]
        altitude = jnp.where(timed_out, altitude_measured_m, nav.position_m[2] + correction[0])
        accepted = accepted | timed_out
        rejecting = jnp.where(timed_out, 0.0, rejecting)
        disabled = nav.lrf_disabled
    elif policy == "latch":
        altitude = nav.position_m[2] + correction[0]
        disabled = nav.lrf_disabled | timed_out
    else:
        raise ValueError(f"navigation.reject_policy: {policy!r} is not one of {REJECT_POLICIES}")
    px, py, _ = nav.position_m
    vx, vy, vz = nav.velocity_mps
    new = NavState(
        position_m=(px, py, altitude),
        velocity_mps=(vx, vy, vz + correction[1]),
        accel_bias_mps2=nav.accel_bias_mps2 + correction[2],
        cov_hh=cov[0],
        cov_hv=cov[1],
        cov_hb=cov[2],
        cov_vv=cov[3],
        cov_vb=cov[4],
        cov_bb=cov[5],
        # A range held off in the terminal phase shows the LRF alive: not a silent altimeter.
        since_accept_s=jnp.where(accepted | held_off, 0.0, nav.since_accept_s),
        rejecting_s=rejecting,
        noise_scale_m=noise_scale,
        lrf_disabled=disabled,
    )
    return new, accepted
