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

    def by_slot(self) -> "SlotTerrain":
        """The same terrain prepared for scalar code: one entry per crater slot (leading
        batch axes kept) and the per-crater reciprocals computed once."""

        def split(a, axis=-1):
            return tuple(jnp.moveaxis(a, axis, 0))

        radius, floor = self.crater_radius_m, self.crater_floor_frac
        return SlotTerrain(
            slope=components(self.slope, 2),
            offset_m=self.offset_m,
            center_x_m=split(self.crater_center_m[..., 0]),
            center_y_m=split(self.crater_center_m[..., 1]),
            inverse_radius_per_m=split(1.0 / radius),
            depth_m=split(self.crater_depth_m),
            rim_m=split(self.crater_rim_m),
            floor_frac=split(floor),
            inverse_wall_width=split(1.0 / (1.0 - floor)),
        )


class SlotTerrain(eqx.Module):
    """A :class:`Terrain` split by crater slot, each field a tuple with one entry per slot,
    with ``1 / radius`` and ``1 / (1 - floor_frac)`` precomputed. Under vmap every entry is
    one population-long array, and the height is scalar code free of divisions (a division
    ends an XLA CPU fusion, so divisions per slot meant dozens of extra passes per step)."""

    slope: tuple
    offset_m: Float[Array, "*batch"]
    center_x_m: tuple
    center_y_m: tuple
    inverse_radius_per_m: tuple
    depth_m: tuple
    rim_m: tuple
    floor_frac: tuple
    inverse_wall_width: tuple


def _smoothstep(t):
    t = jnp.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _profile(x, depth_m, rim_m, floor_frac, inverse_wall_width):
    """:func:`crater_profile` at ``x`` = distance / radius."""
    wall = -depth_m + (depth_m + rim_m) * _smoothstep((x - floor_frac) * inverse_wall_width)
    outside = rim_m * jnp.exp(-(((x - 1.0) * (1.0 / 0.3)) ** 2))
    return jnp.where(x < 1.0, wall, outside)


def crater_profile(
    distance_m: Float[Array, "..."], radius_m, depth_m, rim_m, floor_frac
) -> Float[Array, "..."]:
    """Height of one crater relative to the surrounding datum: flat floor at ``-depth``
    inside ``floor_frac * radius``, a smooth wall up to the rim crest ``rim`` at ``radius``,
    and ejecta decaying to the datum by about 1.6 radii. Continuous with a continuous slope."""
    return _profile(distance_m / radius_m, depth_m, rim_m, floor_frac, 1.0 / (1.0 - floor_frac))


def height_m(terrain: Terrain | SlotTerrain, xy_m) -> Float[Array, "*batch"]:
    """Terrain height at horizontal position ``xy_m`` (a pair of components or a ``(2,)``
    array). A :class:`SlotTerrain` is evaluated one slot at a time (unrolled scalar code); a
    :class:`Terrain` (slot arrays, no batch axis) in one vector expression."""
    x, y = components(xy_m, 2)
    height = terrain.offset_m + terrain.slope[0] * x + terrain.slope[1] * y
    if isinstance(terrain, Terrain):
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
    for i in range(len(terrain.depth_m)):
        distance = hypot(x - terrain.center_x_m[i], y - terrain.center_y_m[i])
        height = height + _profile(
            distance * terrain.inverse_radius_per_m[i],
            terrain.depth_m[i],
            terrain.rim_m[i],
            terrain.floor_frac[i],
            terrain.inverse_wall_width[i],
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
