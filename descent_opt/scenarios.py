"""Scenario populations: initial states, navigation knowledge errors, terrain and faults.

A :class:`Scenario` holds everything random about one descent; a population is the same
Module with a leading batch axis on every leaf. Scenario ``i`` of the population of key
``key`` is drawn from ``jax.random.fold_in(key, i)`` alone: the same member whatever the
population size, the chunk it is flown in, the device or the process (indices below 2^32).

Every dispersed quantity and fault parameter comes from a fixed set of draws
(:class:`Latents`: standard normals and uniforms) through the spec's and the catalog's
transforms (:func:`from_latents`); :func:`to_normal` and :func:`with_normal` give them as
one standard-normal vector, so that a method may move, reweight or reuse scenarios while
plain sampling keeps scenario identity by index.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri
from jaxtyping import Array, Float, Int, PRNGKeyArray

from descent_opt import terrain as terrain_lib
from descent_opt.faults import (
    LATENT_FIELDS,
    NORMAL_LATENTS,
    FaultCatalog,
    FaultLatents,
    Faults,
    fault_latents,
    faults_from_latents,
)

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


class Latents(eqx.Module):
    """The random draws behind one scenario (a population when leaves carry a batch axis),
    before a spec and a catalog turn them into values: standard normals for the start's
    dispersion and navigation's knowledge errors, the fault draws
    (:class:`~descent_opt.faults.FaultLatents`), and the keys of what stays keyed (the
    crater field's layout and the sensor noise)."""

    position: Float[Array, "*batch 3"]
    velocity: Float[Array, "*batch 3"]
    mass: Float[Array, "*batch"]
    nav_position: Float[Array, "*batch 3"]
    nav_velocity: Float[Array, "*batch 3"]
    imu_bias: Float[Array, "*batch 3"]
    faults: FaultLatents
    terrain_key: Array
    noise_key: Array


# The coordinates of :func:`to_normal`, in order.
LATENT_NAMES = (
    *(f"{name}_{axis}" for name in ("position", "velocity") for axis in "xyz"),
    "mass",
    *(f"{name}_{axis}" for name in ("nav_position", "nav_velocity", "imu_bias") for axis in "xyz"),
    *LATENT_FIELDS,
)
_EDGE = 1e-7  # uniforms kept this far inside (0, 1) when mapped to normals


def latents(*, key: PRNGKeyArray) -> Latents:
    """The draws of one scenario from its own key (member ``i`` of a population: the key
    folded with ``i``)."""
    k_r, k_v, k_m, k_np, k_nv, k_b, k_f, k_t, k_s = jax.random.split(key, 9)
    three = lambda k: jax.random.normal(k, (3,))  # noqa: E731
    return Latents(
        position=three(k_r),
        velocity=three(k_v),
        mass=jax.random.normal(k_m),
        nav_position=three(k_np),
        nav_velocity=three(k_nv),
        imu_bias=three(k_b),
        faults=fault_latents(key=k_f),
        terrain_key=k_t,
        noise_key=k_s,
    )


def from_latents(
    spec: ScenarioSpec,
    terrain_spec: TerrainSpec,
    catalog: FaultCatalog,
    mass_initial_kg: float,
    z: Latents,
) -> Scenario:
    """The scenario the draws ``z`` give (no batch axis): each normal times its sigma about
    the nominal, the faults of ``catalog``, the terrain of ``terrain_spec``. Differentiable
    in the normals, the fault values' uniforms and every spec and catalog number (fault
    occurrence is a threshold)."""
    nav_pos_sigma = (
        spec.nav_horizontal_sigma_m,
        spec.nav_horizontal_sigma_m,
        spec.nav_altitude_sigma_m,
    )
    faults = faults_from_latents(catalog, z.faults)
    terrain = terrain_lib.with_rim_step(
        base_terrain(terrain_spec, key=z.terrain_key),
        faults.rim_step_height_m,
        faults.rim_radius_m,
    )
    return Scenario(
        position0_m=jnp.asarray(spec.r0_m) + z.position * jnp.asarray(spec.position_sigma_m),
        velocity0_mps=jnp.asarray(spec.v0_mps) + z.velocity * jnp.asarray(spec.velocity_sigma_mps),
        mass0_kg=mass_initial_kg + spec.mass_sigma_kg * z.mass,
        nav_position_error_m=z.nav_position * jnp.asarray(nav_pos_sigma),
        nav_velocity_error_mps=z.nav_velocity * jnp.asarray(spec.nav_velocity_sigma_mps),
        imu_bias_mps2=z.imu_bias * jnp.asarray(spec.imu_bias_sigma_mps2),
        faults=faults,
        terrain=terrain,
        key=z.noise_key,
    )


def to_normal(z: Latents) -> Float[Array, "*batch d"]:
    """The draws as one standard-normal vector per scenario (:data:`LATENT_NAMES`): the
    normals as they are, each uniform ``u`` as ``Phi^-1(u)``. Methods that move, reweight
    or reuse scenarios (importance sampling, worst-case search) work on this vector."""

    def normal(name):
        u = getattr(z.faults, name)
        return u if name in NORMAL_LATENTS else ndtri(jnp.clip(u, _EDGE, 1.0 - _EDGE))

    faults = jnp.stack([normal(name) for name in LATENT_FIELDS], axis=-1)
    parts = (
        z.position, z.velocity, z.mass[..., None], z.nav_position, z.nav_velocity, z.imu_bias,
        faults,
    )  # fmt: skip
    return jnp.concatenate(parts, axis=-1)


def with_normal(z: Latents, x: Float[Array, "*batch d"]) -> Latents:
    """``z`` with its draws replaced by those of the standard-normal vector ``x`` (the
    inverse of :func:`to_normal`; uniforms as ``Phi(x)``); the keys are kept."""
    r, v, m, npos, nvel, bias, f = jnp.split(x, np.cumsum([3, 3, 1, 3, 3, 3]), axis=-1)
    faults = FaultLatents(**{
        name: f[..., i] if name in NORMAL_LATENTS else ndtr(f[..., i])
        for i, name in enumerate(LATENT_FIELDS)
    })  # fmt: skip
    return eqx.tree_at(
        lambda t: (t.position, t.velocity, t.mass, t.nav_position, t.nav_velocity,
                   t.imu_bias, t.faults),
        z,
        (r, v, m[..., 0], npos, nvel, bias, faults),
    )  # fmt: skip


def sample_scenario(
    spec: ScenarioSpec,
    terrain_spec: TerrainSpec,
    catalog: FaultCatalog,
    mass_initial_kg: float,
    *,
    key: PRNGKeyArray,
) -> Scenario:
    """Draw one scenario (no batch axis) from its own key: :func:`from_latents` of
    :func:`latents`."""
    return from_latents(spec, terrain_spec, catalog, mass_initial_kg, latents(key=key))


def population_latents(key: PRNGKeyArray, indices: Int[Array, " n"]) -> Latents:
    """The draws of members ``indices`` of the population of ``key`` (member ``i`` from
    ``fold_in(key, i)``): what :func:`sample_scenarios` turns into those members."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices, jnp.uint32))
    return jax.vmap(lambda k: latents(key=k))(keys)


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
    population = jax.vmap(lambda z: from_latents(spec, terrain_spec, catalog, mass_initial_kg, z))(
        population_latents(key, indices)
    )
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

    def from_latents(self, z: Latents) -> Scenario:
        """The scenarios the draws ``z`` (a population) give under this sampler."""
        return jax.vmap(
            lambda one: from_latents(
                self.spec, self.terrain, self.catalog, self.mass_initial_kg, one
            )
        )(z)


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
