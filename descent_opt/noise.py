"""Per-step random draws of the closed loop: a counter-based stream per scenario.

Step ``t`` of a scenario draws its numbers from Threefry-2x32 (20 rounds, the generator
behind ``jax.random``'s default keys) keyed by the scenario's key, at counters ``(t, 0)``,
``(t, 1)`` and ``(t, 2)``: six 32-bit words, a pure function of (scenario key, step). No key
is split inside the time loop.

Threefry is written here with elementwise integer operations on scalars, which vmap turns
into population-long arrays that XLA fuses into the step (the ``threefry2x32`` primitive does
not fuse on CPU and costs about 7x more per word there); ``tests/test_noise.py`` checks it
bit for bit against ``jax.extend.random.threefry_2x32``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, UInt32

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(
    key: tuple[UInt32[Array, "*b"], UInt32[Array, "*b"]],
    counter: tuple[UInt32[Array, "*b"], UInt32[Array, "*b"]],
) -> tuple[UInt32[Array, "*b"], UInt32[Array, "*b"]]:
    """Threefry-2x32 with 20 rounds: two 32-bit words from a two-word key and counter."""
    k0, k1 = (jnp.asarray(k, jnp.uint32) for k in key)
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = jnp.asarray(counter[0], jnp.uint32) + ks[0]
    x1 = jnp.asarray(counter[1], jnp.uint32) + ks[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(block + 1) % 3]
        x1 = x1 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def open_uniform(bits: UInt32[Array, "*b"]) -> Float[Array, "*b"]:
    """Uniform on the open interval (0, 1) from the top 23 bits: never 0 or 1, so inverse
    CDFs stay finite."""
    dtype = jnp.result_type(float)
    return ((bits >> np.uint32(9)).astype(dtype) + 0.5) * (1.0 / 2**23)


def standard_normal(bits: UInt32[Array, "*b"]) -> Float[Array, "*b"]:
    """Standard normal by the inverse CDF (as ``jax.random.normal`` does)."""
    return np.sqrt(2.0) * jax.lax.erf_inv(2.0 * open_uniform(bits) - 1.0)


class LrfDraws(eqx.Module):
    """Standard draws of one LRF sample."""

    normal: Float[Array, "*b"]  # N(0, 1): Gaussian range noise
    tail_uniform: Float[Array, "*b"]  # U(0, 1): heavy-tailed term, by inverse CDF
    drop_uniform: Float[Array, "*b"]  # U(0, 1): dropout


class StepNoise(eqx.Module):
    """The standard draws one closed-loop step consumes."""

    imu: tuple[Float[Array, "*b"], Float[Array, "*b"], Float[Array, "*b"]]  # N(0, 1) per axis
    lrf: LrfDraws


def key_words(key) -> tuple[UInt32[Array, "*b"], UInt32[Array, "*b"]]:
    """The two 32-bit words of a threefry ``jax.random`` key (or of a batch of keys)."""
    data = jax.random.key_data(key)
    return data[..., 0], data[..., 1]


def step_noise(
    words: tuple[UInt32[Array, "*b"], UInt32[Array, "*b"]], step: UInt32[Array, "*b"]
) -> StepNoise:
    """Draws of step ``step`` for the scenario whose key words are ``words``."""
    step = jnp.asarray(step, jnp.uint32)
    a0, a1 = threefry2x32(words, (step, jnp.zeros_like(step)))
    b0, b1 = threefry2x32(words, (step, jnp.ones_like(step)))
    c0, c1 = threefry2x32(words, (step, jnp.full_like(step, 2)))
    return StepNoise(
        imu=(standard_normal(a0), standard_normal(a1), standard_normal(b0)),
        lrf=LrfDraws(standard_normal(b1), open_uniform(c0), open_uniform(c1)),
    )


def sample_step_noise(*, key) -> StepNoise:
    """Draws of one step from a ``jax.random`` key (step 0 of the key's stream)."""
    return step_noise(key_words(key), jnp.zeros((), jnp.uint32))
