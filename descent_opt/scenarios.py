"""Scenario populations: initial states, navigation knowledge errors, terrain and faults.

A :class:`Scenario` holds everything random about one descent; a population is the same
Module with a leading batch axis on every leaf. Scenario ``i`` of the population of key
``key`` is drawn from ``jax.random.fold_in(key, i)`` alone: the same member whatever the
population size, the chunk it is flown in, the device or the process (indices below 2^32).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from descent_opt import terrain as terrain_lib
from descent_opt.faults import FaultCatalog, Faults, sample_fault

TERRAIN_KINDS = ("flat", "slope", "crater", "crater_field")


class TerrainSpec(eqx.Module):
    """Which terrain the population flies over, and its parameters."""

    kind: str = eqx.field(static=True, default="crater_field")
    slope_deg: float = 0.0
    slope_azimuth_deg: float = 0.0
    crater_center_m: tuple[float, float] = (-600.0, 0.0)
    crater_radius_m: float = 200.0
    crater_depth_m: float = 40.0
    crater_rim_m: float = 8.0
    field_n_craters: int = eqx.field(static=True, default=6)
    field_extent_m: float = 3000.0
    field_radius_m: tuple[float, float] = (20.0, 300.0)
    field_depth_to_diameter: float = 0.12
    field_keep_out_m: float = 60.0


class ScenarioSpec(eqx.Module):
    """Nominal initial state, its dispersion, and how well navigation knows it at start."""

    r0_m: tuple[float, float, float] = (-300.0, 0.0, 5000.0)
    v0_mps: tuple[float, float, float] = (3.0, 0.0, -70.0)
    position_sigma_m: tuple[float, float, float] = (100.0, 100.0, 100.0)
    velocity_sigma_mps: tuple[float, float, float] = (1.0, 1.0, 3.0)
    mass_sigma_kg: float = 2.0
    # Initial knowledge error (orbit determination plus map), 1-sigma.
    nav_altitude_sigma_m: float = 300.0
    nav_horizontal_sigma_m: float = 20.0
    nav_velocity_sigma_mps: float = 0.1
    imu_bias_sigma_mps2: float = 1e-3


class Scenario(eqx.Module):
    position0_m: Float[Array, "*batch 3"]
    velocity0_mps: Float[Array, "*batch 3"]
    mass0_kg: Float[Array, "*batch"]
    nav_position_error_m: Float[Array, "*batch 3"]
    nav_velocity_error_mps: Float[Array, "*batch 3"]
    imu_bias_mps2: Float[Array, "*batch 3"]
    faults: Faults
    terrain: terrain_lib.Terrain
    key: Array  # sensor-noise key of each scenario

    @property
    def size(self) -> int:
        return self.mass0_kg.shape[0]


def base_terrain(spec: TerrainSpec, *, key: PRNGKeyArray) -> terrain_lib.Terrain:
    """One terrain of the spec's kind; slot 0 is left free for the rim-step fault."""
    if spec.kind == "flat":
        return terrain_lib.flat(2)
    if spec.kind == "slope":
        return terrain_lib.slope(spec.slope_deg, spec.slope_azimuth_deg, 2)
    if spec.kind == "crater":
        return terrain_lib.crater(
            spec.crater_center_m, spec.crater_radius_m, spec.crater_depth_m, spec.crater_rim_m, 2
        )
    if spec.kind == "crater_field":
        return terrain_lib.crater_field(
            spec.field_n_craters,
            spec.field_extent_m,
            spec.field_radius_m,
            spec.field_depth_to_diameter,
            spec.field_keep_out_m,
            key=key,
        )
    raise ValueError(f"terrain.kind: {spec.kind!r} is not one of {TERRAIN_KINDS}")


def sample_scenario(
    spec: ScenarioSpec,
    terrain_spec: TerrainSpec,
    catalog: FaultCatalog,
    mass_initial_kg: float,
    *,
    key: PRNGKeyArray,
) -> Scenario:
    """Draw one scenario (no batch axis) from its own key."""
    k_r, k_v, k_m, k_np, k_nv, k_b, k_f, k_t, k_s = jax.random.split(key, 9)
    normal = lambda k, sigma: jax.random.normal(k, (3,)) * jnp.asarray(sigma)  # noqa: E731
    nav_pos_sigma = (
        spec.nav_horizontal_sigma_m,
        spec.nav_horizontal_sigma_m,
        spec.nav_altitude_sigma_m,
    )
    faults = sample_fault(catalog, key=k_f)
    terrain = terrain_lib.with_rim_step(
        base_terrain(terrain_spec, key=k_t), faults.rim_step_height_m, faults.rim_radius_m
    )
    return Scenario(
        position0_m=jnp.asarray(spec.r0_m) + normal(k_r, spec.position_sigma_m),
        velocity0_mps=jnp.asarray(spec.v0_mps) + normal(k_v, spec.velocity_sigma_mps),
        mass0_kg=mass_initial_kg + spec.mass_sigma_kg * jax.random.normal(k_m),
        nav_position_error_m=normal(k_np, nav_pos_sigma),
        nav_velocity_error_mps=normal(k_nv, spec.nav_velocity_sigma_mps),
        imu_bias_mps2=normal(k_b, spec.imu_bias_sigma_mps2),
        faults=faults,
        terrain=terrain,
        key=k_s,
    )


def sample_scenarios(
    spec: ScenarioSpec,
    terrain_spec: TerrainSpec,
    catalog: FaultCatalog,
    mass_initial_kg: float,
    n: int | None = None,
    *,
    key: PRNGKeyArray,
    indices: Int[Array, " n"] | None = None,
    nominal_first: bool = False,
) -> Scenario:
    """Members ``indices`` (default ``0 .. n-1``) of the population of ``key``: member ``i``
    from ``fold_in(key, i)``. With ``nominal_first`` the first member drawn has no
    dispersion and no knowledge error (its faults and terrain are still drawn)."""
    if indices is None:
        if n is None:
            raise TypeError("sample_scenarios: give n or indices")
        indices = jnp.arange(n, dtype=jnp.uint32)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices, jnp.uint32))
    population = jax.vmap(
        lambda k: sample_scenario(spec, terrain_spec, catalog, mass_initial_kg, key=k)
    )(keys)
    if nominal_first:
        zero = jnp.zeros(3)
        population = replace_member(
            population,
            0,
            position0_m=jnp.asarray(spec.r0_m),
            velocity0_mps=jnp.asarray(spec.v0_mps),
            mass0_kg=mass_initial_kg,
            nav_position_error_m=zero,
            nav_velocity_error_mps=zero,
        )
    return population


class ScenarioSampler(eqx.Module):
    """``sampler(key, n)`` draws members ``0 .. n-1`` of the population of ``key``,
    ``sampler.members(key, indices)`` any members of it. The fault catalog is held as arrays,
    so samplers that differ only in fault rates and ranges trace to the same program."""

    spec: ScenarioSpec
    terrain: TerrainSpec
    catalog: FaultCatalog
    mass_initial_kg: Float[Array, ""]

    def __init__(
        self,
        spec: ScenarioSpec,
        terrain: TerrainSpec,
        catalog: FaultCatalog,
        mass_initial_kg: float,
    ):
        as_arrays = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, dtype=float), tree)  # noqa: E731
        self.spec = as_arrays(spec)
        self.terrain = as_arrays(terrain)
        self.catalog = as_arrays(catalog)
        self.mass_initial_kg = as_arrays(mass_initial_kg)

    def __call__(self, key: PRNGKeyArray, n: int) -> Scenario:
        return self.members(key, jnp.arange(n, dtype=jnp.uint32))

    def members(self, key: PRNGKeyArray, indices: Int[Array, " n"]) -> Scenario:
        return sample_scenarios(
            self.spec, self.terrain, self.catalog, self.mass_initial_kg, key=key, indices=indices
        )


def replace_member(population: Scenario, index: int, **changes) -> Scenario:
    """Population with some fields of one member replaced, e.g. for a mission replay."""
    out = population
    for path, value in changes.items():
        parts = path.split(".")

        def get(s, parts=parts):
            for p in parts:
                s = getattr(s, p)
            return s

        out = eqx.tree_at(get, out, get(out).at[index].set(value))
    return out
