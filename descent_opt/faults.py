"""Altimeter fault catalog: rates and ranges, and per-scenario samples.

Each fault is drawn independently per scenario. ``FaultCatalog.nominal()`` draws none, which
is how baseline gains are tuned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class FaultCatalog(eqx.Module):
    """How often each fault occurs (probability per scenario) and the range it takes."""

    # Delayed acquisition (HAKUTO-R Mission 2): first valid range below this, uniform.
    late_acquisition_rate: float = 1.0
    acquisition_range_m: tuple[float, float] = (700.0, 3000.0)
    # Stale readings: latency uniform in range.
    latency_rate: float = 0.3
    latency_s: tuple[float, float] = (0.05, 0.3)
    # Dropouts: per-sample drop probability uniform in range.
    dropout_rate: float = 0.2
    dropout_prob: tuple[float, float] = (0.1, 0.6)
    # Bias (m, 1-sigma) and scale-factor error (1-sigma) of every unit.
    bias_sigma_m: float = 3.0
    scale_factor_sigma: float = 0.005
    # Heavy-tailed noise over dark terrain (IM-2): Student-t scale uniform in range.
    dark_terrain_rate: float = 0.1
    heavy_tail_scale_m: tuple[float, float] = (3.0, 20.0)
    # No LRF at all (IM-1).
    absent_rate: float = 0.002
    # Terrain step at a crater rim under the approach (HAKUTO-R Mission 1).
    rim_step_rate: float = 0.1
    rim_step_height_m: tuple[float, float] = (100.0, 800.0)
    rim_radius_m: tuple[float, float] = (150.0, 700.0)

    @classmethod
    def nominal(cls, max_range_m: float = 3000.0) -> "FaultCatalog":
        """No faults: acquisition at the design range, perfect calibration."""
        return cls(
            late_acquisition_rate=0.0,
            acquisition_range_m=(max_range_m, max_range_m),
            latency_rate=0.0,
            dropout_rate=0.0,
            bias_sigma_m=0.0,
            scale_factor_sigma=0.0,
            dark_terrain_rate=0.0,
            absent_rate=0.0,
            rim_step_rate=0.0,
        )


class Faults(eqx.Module):
    """Fault parameters of one scenario (a population when leaves carry a batch axis)."""

    acquisition_range_m: Float[Array, "*batch"]
    latency_s: Float[Array, "*batch"]
    dropout_prob: Float[Array, "*batch"]
    bias_m: Float[Array, "*batch"]
    scale_factor: Float[Array, "*batch"]
    heavy_tail_scale_m: Float[Array, "*batch"]
    absent: Array
    rim_step_height_m: Float[Array, "*batch"]
    rim_radius_m: Float[Array, "*batch"]


FAULT_FIELDS = tuple(f.name for f in dataclasses.fields(Faults))


def faults_of(records: Mapping[str, Array]) -> Faults:
    """The fault parameters held in per-scenario records (one column per field), so that
    the predicates below apply to them."""
    return Faults(**{k: records[k] for k in FAULT_FIELDS})


# Acquisition range of a unit without the late-acquisition fault: only the LRF's design
# maximum range limits it.
NEVER_LATE_M = 1e9

# The acquisition range below which a unit is in the acquisition_below_1200m class.
LATE_CLASS_M = 1200.0

# Fault classes reported in ``by_fault`` and certified apart: which scenarios belong to each
# (the predicates work on NumPy or JAX arrays of a population's faults).
FAULT_CLASSES: dict[str, Callable[["Faults"], Array]] = {
    "acquisition_below_1200m": lambda f: f.acquisition_range_m < LATE_CLASS_M,
    "latency": lambda f: f.latency_s > 0.0,
    "dropouts": lambda f: f.dropout_prob > 0.0,
    "dark_terrain": lambda f: f.heavy_tail_scale_m > 0.0,
    "lrf_absent": lambda f: f.absent,
    "rim_step": lambda f: f.rim_step_height_m > 0.0,
}


# Each fault class's rate in the catalog, and the range of the value that marks it (None:
# the class is the fault's occurrence alone).
_CLASS_FIELDS: dict[str, tuple[str, str | None]] = {
    "acquisition_below_1200m": ("late_acquisition_rate", "acquisition_range_m"),
    "latency": ("latency_rate", "latency_s"),
    "dropouts": ("dropout_rate", "dropout_prob"),
    "dark_terrain": ("dark_terrain_rate", "heavy_tail_scale_m"),
    "lrf_absent": ("absent_rate", None),
    "rim_step": ("rim_step_rate", "rim_step_height_m"),
}
# The float32 just below LATE_CLASS_M: the top of the conditioned acquisition range, so that
# no value rounds up onto the class's edge.
_BELOW_LATE_CLASS_M = LATE_CLASS_M - 2.0**-13


def class_rate(catalog: FaultCatalog, fault_class: str) -> float:
    """The probability that a scenario drawn from ``catalog`` is in ``fault_class`` (a
    :data:`FAULT_CLASSES` name): the fault's rate times the share of its value range that
    marks the class (below 1,200 m for the acquisition range, above 0 for the others)."""
    rate_field, range_field = _CLASS_FIELDS[fault_class]
    rate = float(getattr(catalog, rate_field))
    if range_field is None:
        return rate
    lo, hi = (float(b) for b in getattr(catalog, range_field))
    if fault_class != "acquisition_below_1200m":
        return rate if hi > 0.0 else 0.0
    if hi <= lo:
        return rate if lo < LATE_CLASS_M else 0.0
    return rate * min(max((LATE_CLASS_M - lo) / (hi - lo), 0.0), 1.0)


def given(catalog: FaultCatalog, fault_class: str) -> FaultCatalog:
    """``catalog`` conditioned on ``fault_class`` (a :data:`FAULT_CLASSES` name): every
    scenario it draws is in the class, and every other fault parameter keeps its
    distribution. Exact, since each fault occurs on its own uniform draw below its rate and
    takes a uniform value in its range: the class's rate becomes 1 (and, for
    ``acquisition_below_1200m``, the range is cut at 1,200 m). Estimates over it are
    probabilities given the class; times :func:`class_rate` they are its share of the
    catalog's. ValueError for a class the catalog never draws."""
    if fault_class not in FAULT_CLASSES:
        raise ValueError(f"fault class {fault_class!r} is not one of {tuple(FAULT_CLASSES)}")
    if class_rate(catalog, fault_class) <= 0.0:
        raise ValueError(f"fault class {fault_class!r} cannot occur under this catalog")
    rate_field, _ = _CLASS_FIELDS[fault_class]
    changes = {rate_field: 1.0}
    if fault_class == "acquisition_below_1200m":
        lo, hi = catalog.acquisition_range_m
        changes["acquisition_range_m"] = (lo, min(hi, _BELOW_LATE_CLASS_M))
    return dataclasses.replace(catalog, **changes)


def without(catalog: FaultCatalog, fault_class: str) -> FaultCatalog:
    """``catalog`` conditioned on ``fault_class`` being absent, exactly: the fault's rate
    becomes its share outside the class, ``(rate - p) / (1 - p)`` with ``p`` the class's
    :func:`class_rate` (0 for a class that is the fault's occurrence), and the acquisition
    range starts at 1,200 m for ``acquisition_below_1200m``. ValueError for a class that
    every scenario is in."""
    if fault_class not in FAULT_CLASSES:
        raise ValueError(f"fault class {fault_class!r} is not one of {tuple(FAULT_CLASSES)}")
    p = class_rate(catalog, fault_class)
    if p >= 1.0:
        raise ValueError(f"fault class {fault_class!r} occurs in every scenario of this catalog")
    rate_field, _ = _CLASS_FIELDS[fault_class]
    rate = float(getattr(catalog, rate_field))
    changes = {rate_field: max(0.0, (rate - p) / (1.0 - p))}
    if fault_class == "acquisition_below_1200m":
        lo, hi = catalog.acquisition_range_m
        changes["acquisition_range_m"] = (max(lo, LATE_CLASS_M), max(hi, LATE_CLASS_M))
    return dataclasses.replace(catalog, **changes)


def landable(catalog: FaultCatalog, unlandable: tuple[str, ...]) -> FaultCatalog:
    """``catalog`` without the fault classes ``unlandable`` (those certified apart): the
    support that worst-case searches explore."""
    for name in unlandable:
        catalog = without(catalog, name)
    return catalog


def late_acquisition(f: "Faults") -> Array:
    """Units whose LRF gives its first valid range late (below a finite acquisition range)."""
    return f.acquisition_range_m < NEVER_LATE_M


def every_unit(f: "Faults") -> Array:
    """Every unit (bias and scale-factor errors are drawn for all)."""
    return f.bias_m == f.bias_m


# Each fault parameter: the range its values are binned over in the success-per-bin
# statistics (from the catalog), and which scenarios carry it (the others hold a placeholder
# value: 0, or NEVER_LATE_M for the acquisition range).
FAULT_PARAMETERS: dict[str, tuple[Callable[[FaultCatalog], tuple], Callable]] = {
    "acquisition_range_m": (lambda c: c.acquisition_range_m, late_acquisition),
    "latency_s": (lambda c: c.latency_s, FAULT_CLASSES["latency"]),
    "dropout_prob": (lambda c: c.dropout_prob, FAULT_CLASSES["dropouts"]),
    "heavy_tail_scale_m": (lambda c: c.heavy_tail_scale_m, FAULT_CLASSES["dark_terrain"]),
    "rim_step_height_m": (lambda c: c.rim_step_height_m, FAULT_CLASSES["rim_step"]),
    "rim_radius_m": (lambda c: c.rim_radius_m, FAULT_CLASSES["rim_step"]),
    "bias_m": (lambda c: (-3.0 * c.bias_sigma_m, 3.0 * c.bias_sigma_m), every_unit),
    "scale_factor": (
        lambda c: (1.0 - 3.0 * c.scale_factor_sigma, 1.0 + 3.0 * c.scale_factor_sigma),
        every_unit,
    ),
}


class FaultLatents(eqx.Module):
    """The random draws behind one scenario's faults (a population with a batch axis):
    uniforms on [0, 1) for each fault's occurrence (``*_occurs``, compared with the
    catalog's rate) and its value within the catalog's range, standard normals for the
    calibration errors. :func:`faults_from_latents` turns them into :class:`Faults` for any
    catalog. Each draw is its own field, drawn and transformed as a scalar, so that the
    programs that sample populations stay the same as before the draws had names."""

    late_acquisition_occurs: Float[Array, "*batch"]
    acquisition_range: Float[Array, "*batch"]
    latency_occurs: Float[Array, "*batch"]
    latency: Float[Array, "*batch"]
    dropout_occurs: Float[Array, "*batch"]
    dropout_prob: Float[Array, "*batch"]
    bias: Float[Array, "*batch"]  # standard normal
    scale_factor: Float[Array, "*batch"]  # standard normal
    dark_terrain_occurs: Float[Array, "*batch"]
    heavy_tail_scale: Float[Array, "*batch"]
    absent_occurs: Float[Array, "*batch"]
    rim_step_occurs: Float[Array, "*batch"]
    rim_step_height: Float[Array, "*batch"]
    rim_radius: Float[Array, "*batch"]


# The draws in the order of the 16 keys split from a scenario's fault key (the last two
# keys are unused), and which of them are standard normals (the others are uniforms).
LATENT_FIELDS = tuple(f.name for f in dataclasses.fields(FaultLatents))
NORMAL_LATENTS = ("bias", "scale_factor")


@jax.jit
def _within(u, lo, hi):
    # jax.random.uniform's own transform, compiled as it is (a jitted function of its own,
    # so that the multiply-add fuses alike), so that draws equal its samples bit for bit
    return jnp.maximum(lo, u * (hi - lo) + lo)


def fault_latents(*, key: PRNGKeyArray) -> FaultLatents:
    """The fault draws of one scenario from its key."""
    keys = jax.random.split(key, 16)
    draw = {
        name: (jax.random.normal if name in NORMAL_LATENTS else jax.random.uniform)(k)
        for name, k in zip(LATENT_FIELDS, keys)
    }
    return FaultLatents(**draw)


def faults_from_latents(
    catalog: FaultCatalog, latents: FaultLatents, no_acquisition_m: float = NEVER_LATE_M
) -> Faults:
    """The fault parameters the draws ``latents`` give under ``catalog`` (no batch axis):
    a fault occurs when its uniform is below the catalog's rate, its value is the uniform's
    point of the catalog's range; bias and scale factor are the normals times the
    catalog's sigmas. Units without the late-acquisition fault acquire at
    ``no_acquisition_m`` (only the design maximum range limits them)."""
    z = latents

    def occurs(name, rate):
        return getattr(z, f"{name}_occurs") < rate

    def within(name, bounds):
        u = getattr(z, name)
        lo, hi = (jnp.asarray(b, u.dtype) for b in bounds)
        return _within(u, lo, hi)

    acquisition = jnp.where(
        occurs("late_acquisition", catalog.late_acquisition_rate),
        within("acquisition_range", catalog.acquisition_range_m),
        no_acquisition_m,
    )
    latency = jnp.where(
        occurs("latency", catalog.latency_rate), within("latency", catalog.latency_s), 0.0
    )
    dropout = jnp.where(
        occurs("dropout", catalog.dropout_rate), within("dropout_prob", catalog.dropout_prob), 0.0
    )
    tail = jnp.where(
        occurs("dark_terrain", catalog.dark_terrain_rate),
        within("heavy_tail_scale", catalog.heavy_tail_scale_m),
        0.0,
    )
    rim = occurs("rim_step", catalog.rim_step_rate)
    return Faults(
        acquisition_range_m=acquisition,
        latency_s=latency,
        dropout_prob=dropout,
        bias_m=catalog.bias_sigma_m * z.bias,
        scale_factor=1.0 + catalog.scale_factor_sigma * z.scale_factor,
        heavy_tail_scale_m=tail,
        absent=occurs("absent", catalog.absent_rate),
        rim_step_height_m=jnp.where(rim, within("rim_step_height", catalog.rim_step_height_m), 0.0),
        rim_radius_m=within("rim_radius", catalog.rim_radius_m),
    )


def sample_fault(
    catalog: FaultCatalog, *, key: PRNGKeyArray, no_acquisition_m: float = NEVER_LATE_M
) -> Faults:
    """Draw the fault parameters of one scenario (:func:`fault_latents` of ``key`` under
    ``catalog``)."""
    return faults_from_latents(catalog, fault_latents(key=key), no_acquisition_m)


def sample_faults(catalog: FaultCatalog, n: int, *, key: PRNGKeyArray) -> Faults:
    """Fault parameters of ``n`` scenarios, one key each split from ``key``."""
    return jax.vmap(lambda k: sample_fault(catalog, key=k))(jax.random.split(key, n))
