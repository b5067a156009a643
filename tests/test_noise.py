"""The closed loop's per-step random stream: Threefry-2x32 bit for bit, draws with the right
distributions, and a pure function of (scenario key, step)."""

from __future__ import annotations

import jax
import jax.extend.random as jax_random
import jax.numpy as jnp
import numpy as np

from descent_opt import noise
from descent_opt.sensors import student_t2

N = 200_000


def test_threefry_matches_jax_bit_for_bit():
    """The fused elementwise Threefry equals JAX's threefry2x32 primitive on the same key and
    counters (the primitive takes the two counter words as the halves of one array)."""
    for seed in (0, 1, 2**31 + 7):
        key = jax.random.key(seed)
        c0 = jnp.arange(1000, dtype=jnp.uint32) * jnp.uint32(2654435761)
        c1 = jnp.arange(1000, dtype=jnp.uint32) ^ jnp.uint32(0xDEADBEEF)
        ours = jnp.concatenate(noise.threefry2x32(noise.key_words(key), (c0, c1)))
        ref = jax_random.threefry_2x32(jax.random.key_data(key), jnp.concatenate([c0, c1]))
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def _draws(n=N, step=0):
    keys = jax.random.split(jax.random.key(3), n)
    words = noise.key_words(keys)
    return jax.jit(jax.vmap(noise.step_noise, in_axes=(0, None)))(words, jnp.uint32(step))


def test_draw_distributions():
    """Over 200,000 scenarios: each normal has mean 0 and variance 1 within 5 standard
    errors, and its tail fraction beyond 2 sigma is 2 (1 - Phi(2)) = 0.0455 within 5
    binomial sigmas; uniforms lie strictly inside (0, 1) with mean 1/2 and the dropout
    fraction below 0.3 is 0.3; the six draws are uncorrelated (|r| < 5 / sqrt(n))."""
    d = _draws()
    normals = [*d.imu, d.lrf.normal]
    uniforms = [d.lrf.tail_uniform, d.lrf.drop_uniform]
    for z in normals:
        z = np.asarray(z, np.float64)
        assert abs(z.mean()) < 5 / np.sqrt(N)
        assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / N)
        tail = np.mean(np.abs(z) > 2.0)
        assert abs(tail - 0.0455) < 5 * np.sqrt(0.0455 * 0.9545 / N)
    for u in uniforms:
        u = np.asarray(u, np.float64)
        assert u.min() > 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N)
        assert abs(np.mean(u < 0.3) - 0.3) < 5 * np.sqrt(0.21 / N)
    corr = np.corrcoef(np.stack([np.asarray(x, np.float64) for x in normals + uniforms]))
    assert np.max(np.abs(corr - np.eye(6))) < 5 / np.sqrt(N)


def test_student_t2_inverse_cdf():
    """t2 quantiles have the closed form t_p = (2p - 1) / sqrt(2 p (1 - p)): the map sends
    u = 0.5, 0.75, 0.975 to 0, sqrt(2/3) = 0.8165 and 4.3027; and, with the CDF
    1/2 + t / (2 sqrt(2 + t^2)), the draws' fraction with |t| < 1 is 1 / sqrt(3) within 5
    binomial sigmas."""
    u = jnp.array([0.5, 0.75, 0.975, 0.025])
    np.testing.assert_allclose(
        np.asarray(student_t2(u)), [0.0, 0.816497, 4.302653, -4.302653], rtol=1e-5, atol=1e-7
    )
    t = np.asarray(student_t2(_draws().lrf.tail_uniform), np.float64)
    p = 1 / np.sqrt(3.0)
    assert abs(np.mean(np.abs(t) < 1.0) - p) < 5 * np.sqrt(p * (1 - p) / N)
    assert np.all(np.isfinite(t))


def test_draws_depend_only_on_key_and_step():
    """Scenario i's draws at step t are the same whether it is flown alone or in a
    population; another step or another key gives other draws."""
    keys = jax.random.split(jax.random.key(9), 16)
    words = noise.key_words(keys)
    batch = jax.vmap(noise.step_noise, in_axes=(0, None))(words, jnp.uint32(41))
    alone = noise.step_noise(noise.key_words(keys[5]), jnp.uint32(41))
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(batch)):
        assert float(a) == float(b[5])
    later = jax.vmap(noise.step_noise, in_axes=(0, None))(words, jnp.uint32(42))
    assert not np.any(np.asarray(later.lrf.normal) == np.asarray(batch.lrf.normal))
    assert len(set(np.asarray(batch.lrf.normal).tolist())) == 16
