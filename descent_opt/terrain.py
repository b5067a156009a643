"""Terrain height under the lander: a plane plus craters with raised rims.

Every terrain kind (flat, slope, single crater, procedural crater field, and the crater-rim
step of the fault catalog) is one :class:`Terrain` with a fixed number of crater slots, so
populations of different terrains vmap together. Unused slots have zero depth and rim.
The landing target sits at the origin on height 0.

:func:`height_m` takes a terrain either with slot arrays or split per slot
(:meth:`Terrain.by_slot`: under vmap, one population-long array per slot and field).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from descent_opt.dynamics import components, hypot, safe_norm

RIM_STEP_SLOT = 0  # slot reserved for the fault catalog's crater-rim step
EJECTA_CLEARANCE_RADII = 2.0  # field craters keep this many radii (plus keep-out) from the target


class Terrain(eqx.Module):
    """Height field ``offset + slope . xy + sum_i crater_i(xy)``."""

    slope: Float[Array, "2"]
    offset_m: Float[Array, ""]
    crater_center_m: Float[Array, "n 2"]
    crater_radius_m: Float[Array, " n"]
    crater_depth_m: Float[Array, " n"]
    crater_rim_m: Float[Array, " n"]
    crater_floor_frac: Float[Array, " n"]

    @property
    def n_slots(self) -> int:
        radius = self.crater_radius_m
        return len(radius) if isinstance(radius, tuple) else radius.shape[-1]

    def by_slot(self) -> "Terrain":
        """The same terrain with the slot axis split into per-slot components (a tuple per
        field; leading batch axes kept), and the slope into its two components."""
        if isinstance(self.crater_radius_m, tuple):
            return self

        def split(a, axis):
            return tuple(jnp.moveaxis(a, axis, 0))

        centers = split(self.crater_center_m, -2)
        return Terrain(
            slope=components(self.slope, 2),
            offset_m=self.offset_m,
            crater_center_m=tuple(components(c, 2) for c in centers),
            crater_radius_m=split(self.crater_radius_m, -1),
            crater_depth_m=split(self.crater_depth_m, -1),
            crater_rim_m=split(self.crater_rim_m, -1),
            crater_floor_frac=split(self.crater_floor_frac, -1),
        )


def _smoothstep(t):
    t = jnp.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def crater_profile(
    distance_m: Float[Array, "..."], radius_m, depth_m, rim_m, floor_frac
) -> Float[Array, "..."]:
    """Height of one crater relative to the surrounding datum: flat floor at ``-depth``
    inside ``floor_frac * radius``, a smooth wall up to the rim crest ``rim`` at ``radius``,
    and ejecta decaying to the datum by about 1.6 radii. Continuous with a continuous slope."""
    x = distance_m / radius_m
    wall = -depth_m + (depth_m + rim_m) * _smoothstep((x - floor_frac) / (1.0 - floor_frac))
    outside = rim_m * jnp.exp(-(((x - 1.0) / 0.3) ** 2))
    return jnp.where(x < 1.0, wall, outside)


def height_m(terrain: Terrain, xy_m) -> Float[Array, "*batch"]:
    """Terrain height at horizontal position ``xy_m`` (a pair of components or a ``(2,)``
    array). A terrain split by slot is evaluated one slot at a time (unrolled scalar code);
    one with slot arrays (no batch axis) in one vector expression."""
    x, y = components(xy_m, 2)
    height = terrain.offset_m + terrain.slope[0] * x + terrain.slope[1] * y
    if not isinstance(terrain.crater_radius_m, tuple):
        center = terrain.crater_center_m
        return height + jnp.sum(
            crater_profile(
                hypot(x - center[:, 0], y - center[:, 1]),
                terrain.crater_radius_m,
                terrain.crater_depth_m,
                terrain.crater_rim_m,
                terrain.crater_floor_frac,
            )
        )
    for i in range(terrain.n_slots):
        center = terrain.crater_center_m[i]
        height = height + crater_profile(
            hypot(x - center[0], y - center[1]),
            terrain.crater_radius_m[i],
            terrain.crater_depth_m[i],
            terrain.crater_rim_m[i],
            terrain.crater_floor_frac[i],
        )
    return height


def _empty(n_craters: int) -> dict:
    return dict(
        crater_center_m=jnp.zeros((n_craters, 2)),
        crater_radius_m=jnp.ones(n_craters),
        crater_depth_m=jnp.zeros(n_craters),
        crater_rim_m=jnp.zeros(n_craters),
        crater_floor_frac=jnp.full(n_craters, 0.5),
    )


def flat(n_craters: int = 1) -> Terrain:
    return Terrain(slope=jnp.zeros(2), offset_m=jnp.asarray(0.0), **_empty(n_craters))


def slope(slope_deg: float, azimuth_deg: float = 0.0, n_craters: int = 1) -> Terrain:
    """A plane through the target rising ``slope_deg`` toward azimuth ``azimuth_deg``
    (measured from +x toward +y)."""
    grad = jnp.tan(jnp.deg2rad(slope_deg))
    az = jnp.deg2rad(azimuth_deg)
    return Terrain(
        slope=grad * jnp.array([jnp.cos(az), jnp.sin(az)]),
        offset_m=jnp.asarray(0.0),
        **_empty(n_craters),
    )


def with_crater(
    terrain: Terrain, slot: int, center_m, radius_m, depth_m, rim_m, floor_frac=0.3
) -> Terrain:
    """Return ``terrain`` with crater slot ``slot`` set."""
    return eqx.tree_at(
        lambda t: (
            t.crater_center_m,
            t.crater_radius_m,
            t.crater_depth_m,
            t.crater_rim_m,
            t.crater_floor_frac,
        ),
        terrain,
        (
            terrain.crater_center_m.at[slot].set(jnp.asarray(center_m, dtype=float)),
            terrain.crater_radius_m.at[slot].set(radius_m),
            terrain.crater_depth_m.at[slot].set(depth_m),
            terrain.crater_rim_m.at[slot].set(rim_m),
            terrain.crater_floor_frac.at[slot].set(floor_frac),
        ),
    )


def crater(center_m, radius_m, depth_m, rim_m, n_craters: int = 2) -> Terrain:
    """Flat ground with one bowl crater with a raised rim in slot 1."""
    return with_crater(flat(n_craters), 1, center_m, radius_m, depth_m, rim_m)


def crater_field(
    n_craters: int,
    extent_m: float,
    radius_range_m: tuple[float, float],
    depth_to_diameter: float,
    keep_out_m: float,
    *,
    key: PRNGKeyArray,
) -> Terrain:
    """Procedural field: crater sizes log-uniform in ``radius_range_m``, centres uniform in a
    square of half-width ``extent_m`` but at least ``keep_out_m`` plus two radii from the
    target, so neither a bowl nor its ejecta (which fades over about 1.6 radii) reaches the
    landing site: the target stays at height 0. Slot 0 stays empty."""
    k_pos, k_rad, k_rim = jax.random.split(key, 3)
    lo, hi = jnp.log(radius_range_m[0]), jnp.log(radius_range_m[1])
    radius = jnp.exp(jax.random.uniform(k_rad, (n_craters,), minval=lo, maxval=hi))
    center = jax.random.uniform(k_pos, (n_craters, 2), minval=-extent_m, maxval=extent_m)
    # Push centres that fall inside the keep-out disc radially outward.
    distance = safe_norm(center)
    need = keep_out_m + EJECTA_CLEARANCE_RADII * radius
    direction = center / jnp.maximum(distance, 1e-6)[:, None]
    center = jnp.where((distance < need)[:, None], direction * need[:, None], center)
    depth = 2.0 * radius * depth_to_diameter
    rim = depth * jax.random.uniform(k_rim, (n_craters,), minval=0.1, maxval=0.3)
    terrain = flat(n_craters + 1)
    used = jnp.arange(n_craters + 1) > 0
    pad = lambda a, fill: jnp.concatenate([jnp.full((1,) + a.shape[1:], fill), a])  # noqa: E731
    return eqx.tree_at(
        lambda t: (t.crater_center_m, t.crater_radius_m, t.crater_depth_m, t.crater_rim_m),
        terrain,
        (pad(center, 0.0), pad(radius, 1.0), pad(depth, 0.0) * used, pad(rim, 0.0) * used),
    )


def with_rim_step(terrain: Terrain, step_height_m, rim_radius_m) -> Terrain:
    """Put the landing site on the flat floor of a large crater whose rim stands
    ``step_height_m`` above the floor: a lander crossing the rim sees its range to the
    ground jump by about that much (HAKUTO-R Mission 1). Zero height leaves the terrain as is."""
    terrain = with_crater(
        terrain, RIM_STEP_SLOT, jnp.zeros(2), rim_radius_m, step_height_m, 0.1 * step_height_m, 0.6
    )
    return eqx.tree_at(lambda t: t.offset_m, terrain, terrain.offset_m + step_height_m)
