"""Navigation: IMU dead reckoning fused with LRF altitude in a Kalman filter.

The vertical channel is a 3-state Kalman filter (altitude, vertical velocity, vertical
accelerometer bias) driven by the IMU and corrected by LRF altitude. The horizontal channel
is IMU dead reckoning from the initial knowledge. The filter maps LRF range to altitude over
an assumed flat site (height 0): unmapped terrain shows up as innovation, which is what the
chi-square gate is for.

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

RejectPolicy = Literal["reacquire", "latch"]
REJECT_POLICIES = ("reacquire", "latch")


class NavParams(eqx.Module):
    """Tunable filter parameters (part of the gain table)."""

    accel_noise_mps2: Float[Array, ""]  # process noise per step, 1-sigma
    lrf_noise_m: Float[Array, ""]  # assumed LRF altitude noise, 1-sigma
    gate_sigma: Float[Array, ""]  # innovation gate in standard deviations
    reacquire_after_s: Float[Array, ""]  # continuous rejection before the policy acts


class NavState(eqx.Module):
    position_m: Float[Array, "3"]
    velocity_mps: Float[Array, "3"]
    accel_bias_mps2: Float[Array, ""]  # vertical accelerometer bias estimate
    cov: Float[Array, "3 3"]  # covariance of (altitude, vertical velocity, bias)
    since_accept_s: Float[Array, ""]  # time since the last accepted LRF reading
    rejecting_s: Float[Array, ""]  # length of the current run of rejected valid readings
    lrf_disabled: Bool[Array, ""]

    @property
    def altitude_sigma_m(self) -> Float[Array, ""]:
        return jnp.sqrt(jnp.maximum(self.cov[0, 0], 0.0))


def initial_nav(
    position_estimate_m: Float[Array, "3"],
    velocity_estimate_mps: Float[Array, "3"],
    altitude_sigma_m: float,
    vertical_velocity_sigma_mps: float,
    bias_sigma_mps2: float,
) -> NavState:
    """Filter at the start of the descent, from orbit determination and the site map."""
    cov = jnp.diag(jnp.array([altitude_sigma_m, vertical_velocity_sigma_mps, bias_sigma_mps2]) ** 2)
    return NavState(
        position_m=position_estimate_m,
        velocity_mps=velocity_estimate_mps,
        accel_bias_mps2=jnp.asarray(0.0),
        cov=cov,
        since_accept_s=jnp.asarray(1e6),
        rejecting_s=jnp.asarray(0.0),
        lrf_disabled=jnp.asarray(False),
    )


def predict(
    nav: NavState,
    accel_measured_mps2: Float[Array, "3"],
    gravity_mps2: float,
    params: NavParams,
    dt_s: float,
) -> NavState:
    """Propagate with one IMU sample."""
    accel = accel_measured_mps2 + jnp.array([0.0, 0.0, -gravity_mps2 - nav.accel_bias_mps2])
    position = nav.position_m + nav.velocity_mps * dt_s + 0.5 * accel * dt_s**2
    velocity = nav.velocity_mps + accel * dt_s
    transition = jnp.array([[1.0, dt_s, -0.5 * dt_s**2], [0.0, 1.0, -dt_s], [0.0, 0.0, 1.0]])
    shaping = jnp.array([0.5 * dt_s**2, dt_s, 0.0])
    bias_walk = jnp.diag(jnp.array([0.0, 0.0, (1e-5) ** 2 * dt_s]))
    cov = (
        transition @ nav.cov @ transition.T
        + params.accel_noise_mps2**2 * jnp.outer(shaping, shaping)
        + bias_walk
    )
    return eqx.tree_at(
        lambda n: (n.position_m, n.velocity_mps, n.cov, n.since_accept_s),
        nav,
        (position, velocity, cov, nav.since_accept_s + dt_s),
    )


def update(
    nav: NavState,
    altitude_measured_m: Float[Array, ""],
    valid: Bool[Array, ""],
    params: NavParams,
    dt_s: float,
    policy: RejectPolicy = "reacquire",
    gate_softness: float = 0.0,
) -> tuple[NavState, Bool[Array, ""]]:
    """Fuse one LRF altitude reading; returns the new state and whether it was accepted.

    With ``gate_softness > 0`` the correction is weighted by a sigmoid of the gate margin
    (in squared sigmas) so that gradients see the gate; the bookkeeping of the policy always
    uses the hard decision."""
    usable = valid & ~nav.lrf_disabled
    variance = params.lrf_noise_m**2
    innovation = altitude_measured_m - (nav.position_m[2])
    s = nav.cov[0, 0] + variance
    d2 = innovation**2 / s
    margin = params.gate_sigma**2 - d2
    accepted = usable & (margin > 0.0)
    if gate_softness > 0.0:
        weight = usable * jax.nn.sigmoid(margin / gate_softness)
    else:
        weight = accepted.astype(innovation.dtype)
    gain = nav.cov[:, 0] / s
    correction = weight * gain * innovation
    cov = nav.cov - weight * jnp.outer(gain, nav.cov[0, :])

    rejected = usable & ~accepted
    rejecting = jnp.where(
        rejected, nav.rejecting_s + dt_s, jnp.where(accepted, 0.0, nav.rejecting_s)
    )
    timed_out = rejected & (rejecting > params.reacquire_after_s)
    if policy == "reacquire":
        # Reset altitude to the reading; drop its correlations with the other states.
        reset_cov = cov.at[0, :].set(0.0).at[:, 0].set(0.0).at[0, 0].set(variance)
        cov = jnp.where(timed_out, reset_cov, cov)
        altitude = jnp.where(timed_out, altitude_measured_m, nav.position_m[2] + correction[0])
        accepted = accepted | timed_out
        rejecting = jnp.where(timed_out, 0.0, rejecting)
        disabled = nav.lrf_disabled
    elif policy == "latch":
        altitude = nav.position_m[2] + correction[0]
        disabled = nav.lrf_disabled | timed_out
    else:
        raise ValueError(f"navigation.reject_policy: {policy!r} is not one of {REJECT_POLICIES}")
    position = nav.position_m.at[2].set(altitude)
    velocity = nav.velocity_mps.at[2].add(correction[1])
    new = NavState(
        position_m=position,
        velocity_mps=velocity,
        accel_bias_mps2=nav.accel_bias_mps2 + correction[2],
        cov=0.5 * (cov + cov.T),
        since_accept_s=jnp.where(accepted, 0.0, nav.since_accept_s),
        rejecting_s=rejecting,
        lrf_disabled=disabled,
    )
    return new, accepted
