"""The latent view of a scenario: every dispersed quantity and fault parameter is a
transform of fixed standard-normal or uniform draws, exposed as one standard-normal vector
that methods may move, while plain sampling keeps scenario identity by index."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import descent_opt
from descent_opt.faults import (
    FAULT_CLASSES,
    FAULT_FIELDS,
    FaultCatalog,
    class_rate,
    given,
    sample_faults,
)
from descent_opt.scenarios import (
    LATENT_NAMES,
    from_latents,
    population_latents,
    to_normal,
    with_normal,
)

CONFIG = descent_opt.load_config(["terrain=flat"])  # the crater field adds nothing here
SAMPLER = CONFIG.sampler()
KEY = jax.random.key(11)


def _column(name: str) -> int:
    return LATENT_NAMES.index(name)


def _equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_members_are_their_latents_transformed_and_identity_holds_by_index():
    """Member i from its latents is member i of the population, whatever else is drawn."""
    some = jnp.array([3, 17, 4000], jnp.uint32)
    _equal(SAMPLER.from_latents(population_latents(KEY, some)), SAMPLER.members(KEY, some))
    whole = population_latents(KEY, jnp.arange(4001, dtype=jnp.uint32))
    _equal(jax.tree.map(lambda x: x[some], whole), population_latents(KEY, some))


def test_normal_view_is_standard_normal_and_round_trips():
    """Each coordinate of the normal view is N(0, 1) over a population (Kolmogorov-Smirnov
    at the 0.1 % level), and with_normal(z, to_normal(z)) flies the same scenarios."""
    z = population_latents(KEY, jnp.arange(20_000, dtype=jnp.uint32))
    x = np.asarray(to_normal(z), np.float64)
    assert x.shape == (20_000, len(LATENT_NAMES)) == (20_000, 30)
    for j, name in enumerate(LATENT_NAMES):
        assert stats.kstest(x[:, j], "norm").pvalue > 1e-3, name
    back = SAMPLER.from_latents(with_normal(z, to_normal(z)))
    ref = SAMPLER.from_latents(z)
    for a, b in zip(jax.tree.leaves(back.faults), jax.tree.leaves(ref.faults)):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=2e-4, atol=2e-3)
    np.testing.assert_allclose(back.position0_m, ref.position0_m, rtol=1e-6)


def test_each_coordinate_moves_its_own_quantity_by_its_sigma():
    """A unit step of a normal coordinate moves its quantity by the spec's sigma, and
    nothing else; a step of a range's coordinate moves the value within the range."""
    z = population_latents(KEY, jnp.arange(64, dtype=jnp.uint32))
    x = to_normal(z)
    base = SAMPLER.from_latents(with_normal(z, x))
    spec, catalog = CONFIG.scenario, CONFIG.faults
    moved = SAMPLER.from_latents(with_normal(z, x.at[:, _column("position_z")].add(1.0)))
    np.testing.assert_allclose(
        moved.position0_m[:, 2] - base.position0_m[:, 2], spec.position_sigma_m[2], rtol=1e-4
    )
    np.testing.assert_array_equal(moved.position0_m[:, :2], base.position0_m[:, :2])
    np.testing.assert_array_equal(moved.faults.bias_m, base.faults.bias_m)
    moved = SAMPLER.from_latents(with_normal(z, x.at[:, _column("bias")].add(1.0)))
    np.testing.assert_allclose(
        moved.faults.bias_m - base.faults.bias_m, catalog.bias_sigma_m, rtol=1e-4
    )
    moved = SAMPLER.from_latents(with_normal(z, x.at[:, _column("acquisition_range")].add(0.5)))
    late = np.asarray(base.faults.acquisition_range_m) < 1e8
    assert late.any()
    grew = np.asarray(moved.faults.acquisition_range_m - base.faults.acquisition_range_m)[late]
    assert (grew > 0).all() and (np.asarray(moved.faults.acquisition_range_m)[late] <= 3000).all()


def test_scenario_is_differentiable_in_the_normal_view():
    """d(acquisition range)/dx = (hi - lo) phi(x) and d(start altitude)/dx = sigma, against
    the closed forms and central differences."""
    z = jax.tree.map(lambda a: a[0], population_latents(KEY, jnp.array([2], jnp.uint32)))
    x = to_normal(z)
    one = lambda x: from_latents(  # noqa: E731
        SAMPLER.spec, SAMPLER.terrain, SAMPLER.catalog, SAMPLER.mass_initial_kg, with_normal(z, x)
    )
    j = _column("acquisition_range")
    grad = jax.grad(lambda x: one(x).faults.acquisition_range_m)(x)
    lo, hi = CONFIG.faults.acquisition_range_m
    assert float(grad[j]) == pytest.approx((hi - lo) * stats.norm.pdf(float(x[j])), rel=1e-3)
    h = 1e-2
    fd = (one(x.at[j].add(h)).faults.acquisition_range_m
          - one(x.at[j].add(-h)).faults.acquisition_range_m) / (2 * h)  # fmt: skip
    assert float(grad[j]) == pytest.approx(float(fd), rel=1e-2)
    grad = jax.grad(lambda x: one(x).position0_m[2])(x)
    assert float(grad[_column("position_z")]) == pytest.approx(CONFIG.scenario.position_sigma_m[2])
    assert float(jnp.sum(jnp.abs(grad))) == pytest.approx(CONFIG.scenario.position_sigma_m[2])


def test_catalog_given_a_class_draws_its_members_and_leaves_the_rest_alone():
    """Every member drawn under given(catalog, class) is in the class, and each fault
    parameter has the distribution of the plain catalog's members in that class
    (rejection-sampled; two-sample Kolmogorov-Smirnov at the 0.01 % level): the
    conditioning is exact. class_rate is the share of the plain catalog in the class;
    a class the catalog never draws is refused."""
    catalog, n = CONFIG.faults, 200_000
    sample = jax.jit(sample_faults, static_argnums=1)  # one program for every catalog
    plain = jax.tree.map(np.asarray, sample(catalog, n, key=KEY))
    for i, (name, member) in enumerate(FAULT_CLASSES.items()):
        inside = np.asarray(member(plain))
        assert inside.mean() == pytest.approx(class_rate(catalog, name), rel=0.2), name
        drawn = sample(given(catalog, name), n, key=jax.random.fold_in(KEY, i))
        drawn = jax.tree.map(np.asarray, drawn)
        assert np.asarray(member(drawn)).all(), name
        for field in FAULT_FIELDS:
            a, b = getattr(drawn, field).astype(float), getattr(plain, field)[inside].astype(float)
            assert stats.ks_2samp(a, b).pvalue > 1e-4, (name, field)
    assert class_rate(catalog, "acquisition_below_1200m") == pytest.approx(500 / 2300)
    assert class_rate(catalog, "lrf_absent") == catalog.absent_rate
    with pytest.raises(ValueError, match="latency"):
        given(FaultCatalog.nominal(), "latency")
    with pytest.raises(ValueError, match="acquisition_below_1200m"):
        given(FaultCatalog(acquisition_range_m=(1200.0, 3000.0)), "acquisition_below_1200m")
