"""Scenario populations: initial states, navigation knowledge errors, terrain and faults.

A :class:`Scenario` holds everything random about one descent; a population is the same
Module with a leading batch axis on every leaf, drawn from one PRNG key.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from descent_opt import terrain as terrain_lib
from descent_opt.faults import FaultCatalog, Faults, sample_faults

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


def sample_scenarios(
    spec: ScenarioSpec,
    terrain_spec: TerrainSpec,
    catalog: FaultCatalog,
    mass_initial_kg: float,
    n: int,
    *,
    key: PRNGKeyArray,
    nominal_first: bool = False,
) -> Scenario:
    """Draw ``n`` scenarios. With ``nominal_first`` member 0 has no dispersion and no
    knowledge error (its faults and terrain are still drawn)."""
    k_r, k_v, k_m, k_np, k_nv, k_b, k_f, k_t, k_s = jax.random.split(key, 9)
    normal = lambda k, sigma: jax.random.normal(k, (n, 3)) * jnp.asarray(sigma)  # noqa: E731
    position = jnp.asarray(spec.r0_m) + normal(k_r, spec.position_sigma_m)
    velocity = jnp.asarray(spec.v0_mps) + normal(k_v, spec.velocity_sigma_mps)
    mass = mass_initial_kg + spec.mass_sigma_kg * jax.random.normal(k_m, (n,))
    nav_pos_sigma = (
        spec.nav_horizontal_sigma_m,
        spec.nav_horizontal_sigma_m,
        spec.nav_altitude_sigma_m,
    )
    nav_position_error = normal(k_np, nav_pos_sigma)
    nav_velocity_error = normal(k_nv, spec.nav_velocity_sigma_mps)
    if nominal_first:
        position = position.at[0].set(jnp.asarray(spec.r0_m))
        velocity = velocity.at[0].set(jnp.asarray(spec.v0_mps))
        mass = mass.at[0].set(mass_initial_kg)
        nav_position_error = nav_position_error.at[0].set(0.0)
        nav_velocity_error = nav_velocity_error.at[0].set(0.0)
    faults = sample_faults(catalog, n, key=k_f)
    terrains = jax.vmap(lambda k: base_terrain(terrain_spec, key=k))(jax.random.split(k_t, n))
    terrains = jax.vmap(terrain_lib.with_rim_step)(
        terrains, faults.rim_step_height_m, faults.rim_radius_m
    )
    return Scenario(
        position0_m=position,
        velocity0_mps=velocity,
        mass0_kg=mass,
        nav_position_error_m=nav_position_error,
        nav_velocity_error_mps=nav_velocity_error,
        imu_bias_mps2=normal(k_b, spec.imu_bias_sigma_mps2),
        faults=faults,
        terrain=terrains,
        key=jax.random.split(k_s, n),
    )


class ScenarioSampler(eqx.Module):
    """``sampler(key, n)`` draws a population. The fault catalog is held as arrays, so
    samplers that differ only in fault rates and ranges trace to the same program."""

    spec: ScenarioSpec
    terrain: TerrainSpec
    catalog: FaultCatalog
    mass_initial_kg: float

    def __init__(
        self,
        spec: ScenarioSpec,
        terrain: TerrainSpec,
        catalog: FaultCatalog,
        mass_initial_kg: float,
    ):
        self.spec = spec
        self.terrain = terrain
        self.catalog = jax.tree.map(lambda x: jnp.asarray(x, dtype=float), catalog)
        self.mass_initial_kg = mass_initial_kg

    def __call__(self, key: PRNGKeyArray, n: int) -> Scenario:
        return sample_scenarios(
            self.spec, self.terrain, self.catalog, self.mass_initial_kg, n, key=key
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
