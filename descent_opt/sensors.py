"""Sensor models: IMU accelerometer and laser range finder (LRF) altimeter.

Pure functions; all randomness enters through an explicit ``key``. Fault parameters (see
:mod:`descent_opt.faults`) are arguments, so the nominal sensor is the fault-free case.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from descent_opt import terrain as terrain_lib


class ImuSpec(eqx.Module):
    """Accelerometer: white noise per sample (1-sigma) on each axis."""

    noise_mps2: float = 1e-3


class LrfSpec(eqx.Module):
    """Laser range finder as designed: range noise (1-sigma), update rate, maximum range."""

    noise_m: float = 2.0
    rate_hz: float = 10.0
    max_range_m: float = 3000.0


def imu_measure(
    specific_force_mps2: Float[Array, "3"],
    bias_mps2: Float[Array, "3"],
    spec: ImuSpec,
    *,
    key: PRNGKeyArray,
) -> Float[Array, "3"]:
    """Accelerometer reading of the specific force (thrust acceleration) in the local frame."""
    return specific_force_mps2 + bias_mps2 + spec.noise_mps2 * jax.random.normal(key, (3,))


def beam_range_m(
    terrain: terrain_lib.Terrain,
    position_m: Float[Array, "3"],
    beam_direction: Float[Array, "3"],
    iterations: int = 4,
) -> Float[Array, ""]:
    """Distance along a downward unit ``beam_direction`` from ``position_m`` to the terrain,
    by fixed-point iteration (converges while terrain slope times beam tilt stays below 1)."""
    down = jnp.maximum(-beam_direction[2], 1e-3)
    distance = (
        jnp.maximum(position_m[2] - terrain_lib.height_m(terrain, position_m[:2]), 0.0) / down
    )
    for _ in range(iterations):
        foot = position_m[:2] + distance * beam_direction[:2]
        distance = jnp.maximum(position_m[2] - terrain_lib.height_m(terrain, foot), 0.0) / down
    return distance


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
    key: PRNGKeyArray,
) -> tuple[Float[Array, ""], Bool[Array, ""]]:
    """One LRF sample: (measured range, valid flag).

    Valid only inside the smaller of the design maximum range and this unit's acquisition
    range (a late-acquiring unit, HAKUTO-R Mission 2), when the unit is fitted and working
    (IM-1), and when the sample is not dropped. Noise is Gaussian plus, over dark terrain,
    a heavy-tailed Student-t term (IM-2); bias and scale factor are per unit."""
    k_gauss, k_tail, k_drop = jax.random.split(key, 3)
    noise = spec.noise_m * jax.random.normal(k_gauss) + heavy_tail_scale_m * jax.random.t(
        k_tail, 2.0
    )
    measured = scale_factor * true_range_m + bias_m + noise
    in_range = true_range_m < jnp.minimum(spec.max_range_m, acquisition_range_m)
    dropped = jax.random.bernoulli(k_drop, dropout_prob)
    valid = in_range & ~dropped & ~absent & (measured > 0.0)
    return measured, valid
