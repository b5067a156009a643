"""Sensor models: IMU accelerometer and laser range finder (LRF) altimeter.

Pure functions; randomness enters as standard draws (:mod:`descent_opt.noise`, from
explicit keys). Fault parameters (see :mod:`descent_opt.faults`) are arguments, so the
nominal sensor is the fault-free case.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from descent_opt import terrain as terrain_lib
from descent_opt.dynamics import Vec3, components
from descent_opt.noise import LrfDraws


class ImuSpec(eqx.Module):
    """Accelerometer: white noise per sample (1-sigma) on each axis."""

    noise_mps2: float = 1e-3


class LrfSpec(eqx.Module):
    """Laser range finder as designed: range noise (1-sigma), update rate, maximum range."""

    noise_m: float = 2.0
    rate_hz: float = 10.0
    max_range_m: float = 3000.0


def imu_measure(specific_force_mps2: Vec3, bias_mps2: Vec3, spec: ImuSpec, normals: Vec3) -> Vec3:
    """Accelerometer reading of the specific force (thrust acceleration) in the local frame;
    ``normals`` are three standard normal draws."""
    return tuple(
        f + b + spec.noise_mps2 * z
        for f, b, z in zip(components(specific_force_mps2), components(bias_mps2), normals)
    )


def beam_range_m(
    terrain: terrain_lib.Terrain,
    position_m: Vec3,
    beam_direction: Vec3,
    iterations: int = 4,
    *,
    initial_range_m: Float[Array, "*b"] | None = None,
    ground_height_m: Float[Array, "*b"] | None = None,
) -> Float[Array, "*b"]:
    """Distance along a downward unit ``beam_direction`` from ``position_m`` to the terrain,
    by ``iterations`` fixed-point passes ``d <- (z - h(xy + d b_xy)) / (-b_z)``, which
    converge while terrain slope times beam tilt stays below 1.

    The start is the range to the ground straight below (``ground_height_m``: the terrain
    height there, evaluated here when not given), or the smaller of that and
    ``initial_range_m``: the simulator passes the previous step's range, which is already
    close because the beam foot moves little per step; taking the smaller keeps a start
    that lagged behind a crater wall from holding on to a far root."""
    px, py, pz = components(position_m)
    bx, by, bz = components(beam_direction)
    down = jnp.maximum(-bz, 1e-3)
    if ground_height_m is None:
        ground_height_m = terrain_lib.height_m(terrain, (px, py))
    distance = jnp.maximum(pz - ground_height_m, 0.0) / down
    if initial_range_m is not None:
        distance = jnp.minimum(distance, initial_range_m)
    for _ in range(iterations):
        foot = (px + distance * bx, py + distance * by)
        distance = jnp.maximum(pz - terrain_lib.height_m(terrain, foot), 0.0) / down
    return distance


def student_t2(uniform: Float[Array, "*b"]) -> Float[Array, "*b"]:
    """Student-t with 2 degrees of freedom from a U(0, 1) draw, by its exact inverse CDF."""
    return (2.0 * uniform - 1.0) / jnp.sqrt(2.0 * uniform * (1.0 - uniform))


def lrf_measure(
    true_range_m: Float[Array, ""],
    spec: LrfSpec,
    *,
    acquisition_range_m: Float[Array, ""],
    bias_m: Float[Array, ""],
    scale_factor: Float[Array, ""],
    heavy_tail_scale_m: Float[Array, ""],
    dropout_prob: Float[Array, ""],
    absent: Bool[Array, ""],
    draws: LrfDraws,
) -> tuple[Float[Array, ""], Bool[Array, ""]]:
    """One LRF sample: (measured range, valid flag).

    Valid only inside the smaller of the design maximum range and this unit's acquisition
    range (a late-acquiring unit, HAKUTO-R Mission 2), when the unit is fitted and working
    (IM-1), and when the sample is not dropped. Noise is Gaussian plus, over dark terrain,
    a heavy-tailed Student-t term (IM-2); bias and scale factor are per unit. ``draws`` are
    the sample's standard random numbers (:func:`descent_opt.noise.sample_step_noise`)."""
    noise = spec.noise_m * draws.normal + heavy_tail_scale_m * student_t2(draws.tail_uniform)
    measured = scale_factor * true_range_m + bias_m + noise
    in_range = true_range_m < jnp.minimum(spec.max_range_m, acquisition_range_m)
    dropped = draws.drop_uniform < dropout_prob
    valid = in_range & ~dropped & ~absent & (measured > 0.0)
    return measured, valid
