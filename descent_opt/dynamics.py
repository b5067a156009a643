"""3-DOF variable-mass lander dynamics with actuator response and propellant exhaustion.

Frame: local East-North-Up at the landing site, z up. Gravity is uniform (flat moon). Within a
step the thrust magnitude and direction are held; mass falls linearly while the engine burns,
the velocity change along the thrust axis is the exact rocket-equation increment
``ve * ln(m0 / m1)``, and position is advanced with the trapezoid rule (exact for constant
acceleration).

Vectors are held as tuples of components (``Vec3``, ``Vec2``), and functions accept any
indexable of components (a tuple of arrays or a ``(3,)`` array). The simulator relies on
this: vmapped over a population, every component becomes one population-long array, which
XLA vectorises and fuses; ``(n, 3)`` arrays with a minor axis of 3 would defeat both.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

G0_MPS2 = 9.80665

Scalar = Float[Array, "*batch"]
Vec2 = tuple[Scalar, Scalar]
Vec3 = tuple[Scalar, Scalar, Scalar]


def components(v: Any, n: int = 3) -> tuple:
    """Components of a vector given as a tuple, a list or an array with a trailing axis."""
    if isinstance(v, tuple) and len(v) == n:
        return v
    if isinstance(v, (tuple, list)):
        return tuple(jnp.asarray(x, dtype=float) for x in v)
    v = jnp.asarray(v, dtype=float)
    return tuple(v[..., i] for i in range(n))


def stack(v: tuple) -> Float[Array, "*batch n"]:
    """Components back to one array with a trailing vector axis."""
    return jnp.stack([jnp.asarray(x) for x in v], axis=-1)


def hypot(*xs: Scalar, eps: float = 1e-12) -> Scalar:
    """Euclidean norm of components whose gradient is finite (zero) at the origin."""
    sq = sum(x * x for x in xs)
    positive = sq > eps
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def safe_norm(x: Float[Array, "... n"], eps: float = 1e-12) -> Float[Array, "..."]:
    """Euclidean norm over the last axis, with a finite (zero) gradient at the origin."""
    sq = jnp.sum(x * x, axis=-1)
    positive = sq > eps
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


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


def _vec2(v: Any) -> Vec2:
    return components(v, 2)


class LanderState(eqx.Module):
    """True state of the lander. ``tilt_rad`` is the thrust axis tilt from vertical as a
    2-vector (its norm is the tilt angle, its direction the azimuth of the lean). Vectors are
    stored as component tuples; arrays given to the constructor are split."""

    position_m: Vec3 = eqx.field(converter=components)
    velocity_mps: Vec3 = eqx.field(converter=components)
    mass_kg: Scalar
    thrust_n: Scalar
    tilt_rad: Vec2 = eqx.field(converter=_vec2)


def axis_from_tilt(tilt_rad: Vec2) -> Vec3:
    """Unit thrust axis for a tilt vector: angle |tilt| from +z, leaning along tilt."""
    tx, ty = _vec2(tilt_rad)
    angle = hypot(tx, ty)
    small = angle < 1e-4
    safe = jnp.where(small, 1.0, angle)
    sinc = jnp.where(small, 1.0 - angle**2 / 6.0, jnp.sin(safe) / safe)
    cos = jnp.where(small, 1.0 - angle**2 / 2.0, jnp.cos(safe))
    return tx * sinc, ty * sinc, cos


def tilt_from_vector(v: Vec3) -> Vec2:
    """Tilt vector of the direction of ``v`` (inverse of :func:`axis_from_tilt`)."""
    vx, vy, vz = components(v)
    horizontal = hypot(vx, vy)
    angle = jnp.arctan2(horizontal, vz)
    scale = jnp.where(
        horizontal > 1e-9,
        angle / jnp.where(horizontal > 1e-9, horizontal, 1.0),
        1.0 / jnp.maximum(vz, 1e-9),
    )
    return vx * scale, vy * scale


def clip_norm(v: tuple, limit: Scalar) -> tuple:
    """Scale the components ``v`` down so that their norm is at most ``limit``."""
    factor = jnp.minimum(1.0, limit / jnp.maximum(hypot(*v), 1e-12))
    return tuple(x * factor for x in v)


def initial_state(vehicle: Vehicle, position_m, velocity_mps, mass_kg=None) -> LanderState:
    """Lander at the start of the descent: engine at minimum thrust, axis vertical."""
    mass = vehicle.mass_initial_kg if mass_kg is None else mass_kg
    mass = jnp.asarray(mass, dtype=float)
    zero = jnp.zeros_like(mass)
    return LanderState(
        position_m=components(position_m),
        velocity_mps=components(velocity_mps),
        mass_kg=mass,
        thrust_n=jnp.full_like(mass, vehicle.thrust_min_n),
        tilt_rad=(zero, zero),
    )


def actuate(
    vehicle: Vehicle, state: LanderState, thrust_cmd_n: Vec3, dt_s: float
) -> tuple[Scalar, Vec2]:
    """Engine response to a thrust command over one step: magnitude bounded and lagged
    (first order, exact discretisation), axis tilt bounded and rate limited."""
    command = components(thrust_cmd_n)
    magnitude_cmd = jnp.clip(hypot(*command), vehicle.thrust_min_n, vehicle.thrust_max_n)
    alpha = 1.0 - jnp.exp(-dt_s / vehicle.thrust_time_constant_s)
    thrust = state.thrust_n + alpha * (magnitude_cmd - state.thrust_n)
    max_tilt = jnp.deg2rad(vehicle.max_tilt_deg)
    tilt_cmd = clip_norm(tilt_from_vector(command), max_tilt)
    tx, ty = state.tilt_rad
    dx, dy = clip_norm(
        (tilt_cmd[0] - tx, tilt_cmd[1] - ty), jnp.deg2rad(vehicle.tilt_rate_max_deg_s) * dt_s
    )
    return thrust, clip_norm((tx + dx, ty + dy), max_tilt)


def propagate(
    vehicle: Vehicle,
    state: LanderState,
    thrust_n: Scalar,
    tilt_rad: Vec2,
    gravity_mps2: float,
    dt_s: float,
) -> tuple[LanderState, Vec3]:
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
    gravity = (0.0, 0.0, -gravity_mps2)
    velocity = tuple(
        v + a * delta_v_thrust + g * dt_s for v, a, g in zip(state.velocity_mps, axis, gravity)
    )
    position = tuple(
        r + 0.5 * (v0 + v1) * dt_s
        for r, v0, v1 in zip(state.position_m, state.velocity_mps, velocity)
    )
    new = LanderState(position, velocity, mass_new, thrust_n * fraction, tilt_rad)
    return new, tuple(a * delta_v_thrust / dt_s for a in axis)


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
    thrust_cmd_n: Vec3,
    gravity_mps2: float,
    dt_s: float,
) -> tuple[LanderState, Vec3]:
    """Actuator response then propagation: one fixed step of the true dynamics."""
    thrust, tilt = actuate(vehicle, state, thrust_cmd_n, dt_s)
    return propagate(vehicle, state, thrust, tilt, gravity_mps2, dt_s)


def tilt_deg(state: LanderState) -> Scalar:
    return jnp.rad2deg(hypot(*state.tilt_rad))


def interpolate_touchdown(
    before: LanderState, after: LanderState, height_before_m, height_after_m
) -> tuple[LanderState, Scalar]:
    """State where the height above terrain crosses zero inside the step, by linear
    interpolation; also returns the crossing fraction in [0, 1]."""
    denom = height_before_m - height_after_m
    fraction = jnp.clip(height_before_m / jnp.where(denom > 1e-9, denom, 1.0), 0.0, 1.0)
    state = jax.tree.map(lambda x, y: x + fraction * (y - x), before, after)
    return state, fraction
