"""Reproducibility: every random draw comes from explicit keys, so the same seed gives
bit-identical populations and outcomes, a different seed gives different ones, and the
members of a population do not influence each other."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_models import VEHICLE

from descent_opt.faults import FaultCatalog
from descent_opt.guidance import default_gains
from descent_opt.scenarios import ScenarioSpec, TerrainSpec, replace_member, sample_scenarios
from descent_opt.simulate import SimSpec, simulate, simulate_population

pytestmark = pytest.mark.slow  # end to end: see pyproject.toml

SPEC = SimSpec(vehicle=VEHICLE, dt_s=0.25, duration_s=60.0)
# Realistic faults and a crater field, so every random component is exercised.
SCENARIO_SPEC = ScenarioSpec(
    r0_m=(0.0, 0.0, 300.0), v0_mps=(0.0, 0.0, -20.0), nav_altitude_sigma_m=20.0
)
N = 8


def _sample(seed: int):
    return sample_scenarios(
        SCENARIO_SPEC, TerrainSpec(), FaultCatalog(), 480.0, N, key=jax.random.key(seed)
    )


def _leaves(tree):
    """Leaves as NumPy arrays; PRNG key arrays as their raw key data."""
    out = []
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append(np.asarray(leaf))
    return out


def _identical(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y) for x, y in zip(la, lb)
    )


@pytest.fixture(scope="module")
def outcomes():
    gains = default_gains()
    first = jax.block_until_ready(simulate(SPEC, gains, _sample(0)))
    again = jax.block_until_ready(simulate(SPEC, gains, _sample(0)))  # re-sampled population
    other = jax.block_until_ready(simulate(SPEC, gains, _sample(1)))
    return first, again, other


def test_same_seed_same_population():
    assert _identical(_sample(0), _sample(0))


def test_different_seed_different_population():
    a, b = _sample(0), _sample(1)
    assert not np.array_equal(np.asarray(a.position0_m), np.asarray(b.position0_m))
    assert not np.array_equal(np.asarray(a.faults.bias_m), np.asarray(b.faults.bias_m))
    assert not np.array_equal(
        np.asarray(jax.random.key_data(a.key)), np.asarray(jax.random.key_data(b.key))
    )
    assert not np.array_equal(
        np.asarray(a.terrain.crater_center_m), np.asarray(b.terrain.crater_center_m)
    )


def test_same_seed_bitwise_identical_outcomes(outcomes):
    first, again, _ = outcomes
    assert _identical(first, again)
    assert np.all(np.isfinite(np.asarray(first.touchdown_time_s)))


def test_different_seed_different_outcomes(outcomes):
    first, _, other = outcomes
    assert not np.array_equal(
        np.asarray(first.touchdown_time_s), np.asarray(other.touchdown_time_s)
    )
    assert not np.array_equal(
        np.asarray(first.touchdown_position_m), np.asarray(other.touchdown_position_m)
    )


def test_members_do_not_interact(outcomes):
    """Replacing one member (start, sensor-noise key, faults) leaves every other member's
    outcome bit-identical: no state or randomness leaks across the population."""
    first, _, _ = outcomes
    pop = _sample(0)
    changed = replace_member(
        pop,
        3,
        position0_m=jnp.array([50.0, -20.0, 260.0]),
        key=jax.random.key(99),
        **{"faults.dropout_prob": 0.5, "faults.bias_m": 4.0},
    )
    out = jax.block_until_ready(simulate(SPEC, default_gains(), changed))
    others = np.arange(N) != 3
    for a, b in zip(_leaves(first), _leaves(out)):
        np.testing.assert_array_equal(a[others], b[others])
    assert not np.array_equal(
        np.asarray(first.touchdown_position_m[3]), np.asarray(out.touchdown_position_m[3])
    )


def test_outcomes_do_not_depend_on_chunking(outcomes):
    """The population flown in chunks of 3 (two full chunks and one padded with copies of
    member 0) gives bit-identical outcomes to the whole population at once. A member flown
    alone runs another compiled program (its arrays are 1 long, not 8): equal to float32
    rounding (observed 1.4e-6 relative)."""
    first, _, _ = outcomes
    pop = _sample(0)
    chunked_spec = eqx.tree_at(
        lambda s: s.numerics.chunk_size, SPEC, 3, is_leaf=lambda x: x is None
    )
    chunked = simulate(chunked_spec, default_gains(), pop)
    assert _identical(first, chunked)
    alone = simulate(SPEC, default_gains(), jax.tree.map(lambda x: x[5:6], pop))
    for a, b in zip(_leaves(first), _leaves(alone)):
        np.testing.assert_allclose(a[5:6], b, rtol=1e-5, atol=1e-5)


def test_outcomes_do_not_depend_on_worker_threads():
    """1,200 scenarios flown by one thread, and in three concurrent shares of 400: the same
    outcomes, bit for bit, as the one jitted program."""
    pop = sample_scenarios(
        SCENARIO_SPEC, TerrainSpec(), FaultCatalog(), 480.0, 1200, key=jax.random.key(2)
    )
    one = simulate_population(SPEC, default_gains(), pop, workers=1)
    three = simulate_population(SPEC, default_gains(), pop, workers=3)
    assert _identical(one, three)
    assert _identical(one, simulate(SPEC, default_gains(), pop))
