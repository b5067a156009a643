"""3-DOF variable-mass lander dynamics with actuator response and propellant exhaustion.

Frame: local East-North-Up at the landing site, z up. Gravity is uniform (flat moon). Within a
step the thrust magnitude and direction are held; mass falls linearly while the engine burns,
the velocity change along the thrust axis is the exact rocket-equation increment
``ve * ln(m0 / m1)``, and position is advanced with the trapezoid rule (exact for constant
acceleration).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

G0_MPS2 = 9.80665


class Vehicle(eqx.Module):
    """Lander propulsion and actuator limits."""

    mass_initial_kg: float
    mass_dry_kg: float
    thrust_max_n: float
    thrust_min_n: float
    isp_s: float
    max_tilt_deg: float
    thrust_time_constant_s: float = 0.2
    tilt_rate_max_deg_s: float = 10.0

    @property
    def exhaust_velocity_mps(self) -> float:
        return self.isp_s * G0_MPS2


class LanderState(eqx.Module):
    """True state of the lander. ``tilt_rad`` is the thrust axis tilt from vertical as a
    2-vector (its norm is the tilt angle, its direction the azimuth of the lean)."""

    position_m: Float[Array, "3"]
    velocity_mps: Float[Array, "3"]
    mass_kg: Float[Array, ""]
    thrust_n: Float[Array, ""]
    tilt_rad: Float[Array, "2"]


def safe_norm(x: Float[Array, "... n"], eps: float = 1e-12) -> Float[Array, "..."]:
    """Euclidean norm whose gradient is finite (zero) at the origin."""
    sq = jnp.sum(x * x, axis=-1)
    positive = sq > eps
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def axis_from_tilt(tilt_rad: Float[Array, "2"]) -> Float[Array, "3"]:
    """Unit thrust axis for a tilt vector: angle |tilt| from +z, leaning along tilt."""
    angle = safe_norm(tilt_rad)
    small = angle < 1e-4
    safe = jnp.where(small, 1.0, angle)
    sinc = jnp.where(small, 1.0 - angle**2 / 6.0, jnp.sin(safe) / safe)
    cos = jnp.where(small, 1.0 - angle**2 / 2.0, jnp.cos(safe))
    return jnp.concatenate([tilt_rad * sinc, cos[None]])


def tilt_from_vector(v: Float[Array, "3"]) -> Float[Array, "2"]:
    """Tilt vector of the direction of ``v`` (inverse of :func:`axis_from_tilt`)."""
    horizontal = safe_norm(v[:2])
    angle = jnp.arctan2(horizontal, v[2])
    scale = jnp.where(
        horizontal > 1e-9,
        angle / jnp.where(horizontal > 1e-9, horizontal, 1.0),
        1.0 / jnp.maximum(v[2], 1e-9),
    )
    return v[:2] * scale


def clip_norm(x: Float[Array, " n"], limit: Float[Array, ""]) -> Float[Array, " n"]:
    """Scale ``x`` down so its norm is at most ``limit``."""
    n = safe_norm(x)
    return x * jnp.minimum(1.0, limit / jnp.maximum(n, 1e-12))


def initial_state(vehicle: Vehicle, position_m, velocity_mps, mass_kg=None) -> LanderState:
    """Lander at the start of the descent: engine at minimum thrust, axis vertical."""
    mass = vehicle.mass_initial_kg if mass_kg is None else mass_kg
    return LanderState(
        position_m=jnp.asarray(position_m, dtype=float),
        velocity_mps=jnp.asarray(velocity_mps, dtype=float),
        mass_kg=jnp.asarray(mass, dtype=float),
        thrust_n=jnp.asarray(vehicle.thrust_min_n, dtype=float),
        tilt_rad=jnp.zeros(2),
    )


def actuate(
    vehicle: Vehicle, state: LanderState, thrust_cmd_n: Float[Array, "3"], dt_s: float
) -> tuple[Float[Array, ""], Float[Array, "2"]]:
    """Engine response to a thrust command over one step: magnitude bounded and lagged
    (first order, exact discretisation), axis tilt bounded and rate limited."""
    magnitude_cmd = jnp.clip(safe_norm(thrust_cmd_n), vehicle.thrust_min_n, vehicle.thrust_max_n)
    alpha = 1.0 - jnp.exp(-dt_s / vehicle.thrust_time_constant_s)
    thrust = state.thrust_n + alpha * (magnitude_cmd - state.thrust_n)
    max_tilt = jnp.deg2rad(vehicle.max_tilt_deg)
    tilt_cmd = clip_norm(tilt_from_vector(thrust_cmd_n), max_tilt)
    step = clip_norm(tilt_cmd - state.tilt_rad, jnp.deg2rad(vehicle.tilt_rate_max_deg_s) * dt_s)
    return thrust, clip_norm(state.tilt_rad + step, max_tilt)


def propagate(
    vehicle: Vehicle,
    state: LanderState,
    thrust_n: Float[Array, ""],
    tilt_rad: Float[Array, "2"],
    gravity_mps2: float,
    dt_s: float,
) -> tuple[LanderState, Float[Array, "3"]]:
    """Advance the true state one step with thrust held; returns the new state and the
    mean specific force over the step (what an ideal accelerometer integrates)."""
    ve = vehicle.exhaust_velocity_mps
    burn_kg = thrust_n / ve * dt_s
    available_kg = jnp.maximum(state.mass_kg - vehicle.mass_dry_kg, 0.0)
    # Fraction of the step the engine can burn before the tanks run dry.
    fraction = jnp.clip(available_kg / jnp.maximum(burn_kg, 1e-9), 0.0, 1.0)
    spent_kg = burn_kg * fraction
    mass_new = state.mass_kg - spent_kg
    delta_v_thrust = -ve * jnp.log1p(-spent_kg / state.mass_kg)
    axis = axis_from_tilt(tilt_rad)
    gravity = jnp.array([0.0, 0.0, -gravity_mps2])
    velocity_new = state.velocity_mps + axis * delta_v_thrust + gravity * dt_s
    position_new = state.position_m + 0.5 * (state.velocity_mps + velocity_new) * dt_s
    new = LanderState(position_new, velocity_new, mass_new, thrust_n * fraction, tilt_rad)
    return new, axis * delta_v_thrust / dt_s


def hold_thrust(
    position_m: Float[Array, "3"],
    velocity_mps: Float[Array, "3"],
    mass_kg: Float[Array, ""],
    thrust_n: Float[Array, "3"],
    gravity_mps2: float,
    exhaust_velocity_mps: float,
    duration_s: Float[Array, ""],
) -> tuple[Float[Array, "3"], Float[Array, "3"], Float[Array, ""]]:
    """Exact flight under a constant thrust vector (mass falls linearly): position, velocity
    and mass after ``duration_s``. Closed form of the rocket equation and its integral, with
    a series where the burn is too small for the logarithms to be accurate."""
    ve = exhaust_velocity_mps
    magnitude = safe_norm(thrust_n)
    burn = magnitude * duration_s / (ve * mass_kg)  # fraction of the mass burnt
    small = burn < 1e-4
    b = jnp.where(small, 0.5, burn)
    log_ratio = -jnp.log1p(-b)  # ln(m0 / m1)
    # Velocity gained per unit thrust acceleration T/m0, and the position integral of it.
    dv_factor = jnp.where(
        small, duration_s * (1.0 + burn / 2.0 + burn**2 / 3.0), log_ratio * duration_s / b
    )
    dr_factor = jnp.where(
        small,
        duration_s**2 * (0.5 + burn / 6.0 + burn**2 / 12.0),
        duration_s**2 * (b - (1.0 - b) * log_ratio) / b**2,
    )
    accel = thrust_n / mass_kg
    gravity = jnp.array([0.0, 0.0, -gravity_mps2])
    velocity = velocity_mps + accel * dv_factor + gravity * duration_s
    position = (
        position_m + velocity_mps * duration_s + accel * dr_factor + 0.5 * gravity * duration_s**2
    )
    return position, velocity, mass_kg - magnitude * duration_s / ve


def step(
    vehicle: Vehicle,
    state: LanderState,
    thrust_cmd_n: Float[Array, "3"],
    gravity_mps2: float,
    dt_s: float,
) -> tuple[LanderState, Float[Array, "3"]]:
    """Actuator response then propagation: one fixed step of the true dynamics."""
    thrust, tilt = actuate(vehicle, state, thrust_cmd_n, dt_s)
    return propagate(vehicle, state, thrust, tilt, gravity_mps2, dt_s)


def tilt_deg(state: LanderState) -> Float[Array, ""]:
    return jnp.rad2deg(safe_norm(state.tilt_rad))


def interpolate_touchdown(
    before: LanderState, after: LanderState, height_before_m, height_after_m
) -> tuple[LanderState, Float[Array, ""]]:
    """State where the height above terrain crosses zero inside the step, by linear
    interpolation; also returns the crossing fraction in [0, 1]."""
    denom = height_before_m - height_after_m
    fraction = jnp.clip(height_before_m / jnp.where(denom > 1e-9, denom, 1.0), 0.0, 1.0)
    state = jax.tree.map(lambda x, y: x + fraction * (y - x), before, after)
    return state, fraction
