"""Fault envelopes: how a gain table's success rate falls as one fault grows.

Each axis is one fault parameter held at a fixed value in every scenario of a population
(the rest dispersed as configured); the envelope is the success rate with its confidence
band along a grid of values over and beyond the catalog's range, and its edge the worst
value at which the one-sided 95 % lower bound still meets ``required_success``.

A point ``(axis, value)`` flies the members of the held-out population (the ones
``monte_carlo`` flies) with that parameter replaced in every member (:class:`FixedFault`):
member ``i`` is a pure function of the key, the axis, the value and ``i``, and every value
of every axis flies the same dispersions and noise draws (common random numbers), so the
curves differ by the fault alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from descent_opt import execution
from descent_opt.faults import FAULT_PARAMETERS, FaultCatalog
from descent_opt.guidance import Gains
from descent_opt.objectives import SuccessCriteria
from descent_opt.population import PopulationResult, fly_population
from descent_opt.scenarios import Scenario, ScenarioSampler, ScenarioSpec
from descent_opt.simulate import SimSpec
from descent_opt.tally import Tally

# The fault axes, each named by the parameter it fixes.
AXES = (
    "acquisition_range_m",
    "latency_s",
    "dropout_prob",
    "bias_m",
    "scale_factor",
    "heavy_tail_scale_m",
    "rim_step_height_m",
    "altitude_knowledge_error_m",
)
# Axes on which a lower value is the harsher fault (the LRF's first valid range); on every
# other axis a higher value is (a positive bias or scale-factor error reads long: the
# lander believes itself higher and brakes late; a positive knowledge error likewise).
LOWER_IS_HARSHER = ("acquisition_range_m",)
# The values an axis can take (inclusive; None: unbounded), as the fault catalog allows.
VALUE_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "acquisition_range_m": (1.0, None),
    "latency_s": (0.0, 5.0),
    "dropout_prob": (0.0, 1.0),
    "bias_m": (None, None),
    "scale_factor": (0.0, None),
    "heavy_tail_scale_m": (0.0, None),
    "rim_step_height_m": (0.0, None),
    "altitude_knowledge_error_m": (None, None),
}

# The default grid of each axis, (benign end, harsh end), from the fault catalog and the
# scenario's knowledge error: the fault absent (or the design acquisition range) out to
# well beyond the catalog's worst, so that a table tuned on the catalog shows its edge.
# With the default catalog: 3000 -> 200 m, 0 -> 0.9 s, 0 -> 0.95, 0 -> 30 m, 1 -> 1.10,
# 0 -> 60 m, 0 -> 2000 m, 0 -> 1500 m.
_GRID_ENDS: dict[str, Callable[[FaultCatalog, ScenarioSpec], tuple[float, float]]] = {
    "acquisition_range_m": lambda c, s: (c.acquisition_range_m[1], c.acquisition_range_m[0] / 3.5),
    "latency_s": lambda c, s: (0.0, 3.0 * c.latency_s[1]),
    # a probability: the surviving fraction of the catalog's worst cut eightfold
    "dropout_prob": lambda c, s: (0.0, 1.0 - (1.0 - c.dropout_prob[1]) / 8.0),
    "bias_m": lambda c, s: (0.0, 10.0 * c.bias_sigma_m),
    "scale_factor": lambda c, s: (1.0, 1.0 + 20.0 * c.scale_factor_sigma),
    "heavy_tail_scale_m": lambda c, s: (0.0, 3.0 * c.heavy_tail_scale_m[1]),
    "rim_step_height_m": lambda c, s: (0.0, 2.5 * c.rim_step_height_m[1]),
    "altitude_knowledge_error_m": lambda c, s: (0.0, 5.0 * s.nav_altitude_sigma_m),
}


@dataclasses.dataclass(frozen=True)
class EnvelopeSpec:
    """Which axes, which grid, how many scenarios per point and the success required."""

    axis: tuple[str, ...] = AXES
    values: tuple[float, ...] | None = None  # an explicit grid (one axis only); None: default
    points: int = 12  # values per axis on the default grid
    n_scenarios: int = 4096  # scenarios per point
    required_success: float = 0.99  # the edge: one-sided 95 % lower bound at least this


def harsher_lower(axis: str) -> bool:
    """Whether a lower value of ``axis`` is the harsher fault."""
    return axis in LOWER_IS_HARSHER


def catalog_range(axis: str, catalog: FaultCatalog, scenario: ScenarioSpec) -> tuple[float, float]:
    """The range the configured dispersion gives ``axis`` (low, high): the catalog's range
    of a fault parameter (bias and scale factor: +-3 sigma), the altitude knowledge error's
    +-3 sigma."""
    if axis == "altitude_knowledge_error_m":
        sigma = float(scenario.nav_altitude_sigma_m)
        return -3.0 * sigma, 3.0 * sigma
    span, _ = FAULT_PARAMETERS[axis]
    lo, hi = (float(x) for x in span(jax.tree.map(np.asarray, catalog)))
    return lo, hi


def default_grid(
    axis: str, catalog: FaultCatalog, scenario: ScenarioSpec, points: int
) -> Float[np.ndarray, " points"]:
    """``points`` values of ``axis`` from the benign end to beyond the catalog's worst
    (evenly spaced, 4 significant digits). A catalog that leaves the fault out (its range
    a single value, e.g. ``FaultCatalog.nominal()``) gets the library catalog's grid."""
    ends = _GRID_ENDS[axis]
    benign, harsh = (float(x) for x in ends(jax.tree.map(np.asarray, catalog), scenario))
    if benign == harsh:
        benign, harsh = ends(FaultCatalog(), scenario)
    return np.array([float(f"{v:.4g}") for v in np.linspace(benign, harsh, points)])


def grid(
    spec: EnvelopeSpec, axis: str, catalog: FaultCatalog, scenario: ScenarioSpec
) -> Float[np.ndarray, " points"]:
    """The values flown on ``axis``, benign first: ``spec.values`` (distinct, ordered from
    benign to harsh) or :func:`default_grid`."""
    if spec.values is None:
        return default_grid(axis, catalog, scenario, spec.points)
    values = np.unique(np.asarray(spec.values, float))
    return values[::-1] if harsher_lower(axis) else values


class FixedFault(eqx.Module):
    """A sampler (the interface of :class:`~descent_opt.scenarios.ScenarioSampler`) whose
    members are ``base``'s with ``axis`` set to ``value`` in every one: drawn as ``base``
    draws them, then the parameter replaced. A rim step reshapes the terrain, so for
    ``rim_step_height_m`` the step is drawn through the catalog instead (in every member,
    of exactly ``value``); its radius and every other draw are ``base``'s."""

    base: ScenarioSampler
    axis: str = eqx.field(static=True)
    value: Float[Array, ""]

    def __init__(self, base: ScenarioSampler, axis: str, value: float):
        if axis not in AXES:
            raise ValueError(f"axis {axis!r} is not one of {', '.join(AXES)}")
        self.base = base
        self.axis = axis
        self.value = jnp.asarray(value, dtype=base.mass_initial_kg.dtype)

    @property
    def catalog(self) -> FaultCatalog:
        """The base catalog: success per fault-parameter bin over the configured ranges."""
        return self.base.catalog

    def __call__(self, key: PRNGKeyArray, n: int) -> Scenario:
        return self.members(key, jnp.arange(n, dtype=jnp.uint32))

    def members(self, key: PRNGKeyArray, indices: Int[Array, " n"]) -> Scenario:
        base = self.base
        if self.axis == "rim_step_height_m":
            c = base.catalog
            base = eqx.tree_at(
                lambda s: (s.catalog.rim_step_rate, s.catalog.rim_step_height_m),
                base,
                (jnp.ones_like(c.rim_step_rate), (self.value, self.value)),
            )
        return fix_axis(base.members(key, indices), self.axis, self.value)


def fix_axis(population: Scenario, axis: str, value: Float[Array, ""]) -> Scenario:
    """``population`` with ``axis`` set to ``value`` in every member (the altitude
    knowledge error: the initial altitude estimate minus the truth)."""
    if axis == "altitude_knowledge_error_m":
        error = population.nav_position_error_m.at[..., 2].set(value)
        return eqx.tree_at(lambda s: s.nav_position_error_m, population, error)
    old = getattr(population.faults, axis)
    return eqx.tree_at(lambda s: getattr(s.faults, axis), population, jnp.full_like(old, value))


def fly_point(
    spec: SimSpec,
    gains: Gains,
    sampler: ScenarioSampler,
    criteria: SuccessCriteria,
    axis: str,
    value: float,
    n: int,
    *,
    key: PRNGKeyArray,
    chunk_size: int | None = None,
    keep_failures: int = 20,
    unlandable: tuple[str, ...] = (),
    keep_records: bool = False,
    progress: Callable[[int, Tally], None] | None = None,
    workers: int | None = None,
) -> PopulationResult:
    """Fly members ``0 .. n-1`` of ``sampler``'s population of ``key`` with ``axis`` fixed
    at ``value`` (:class:`FixedFault`), in chunks with streaming statistics
    (:func:`~descent_opt.population.fly_population`, whose compiled programs it shares
    with the ``monte_carlo`` runs of the same flight settings)."""
    return fly_population(
        spec,
        gains,
        FixedFault(sampler, axis, value),
        criteria,
        n,
        key=key,
        chunk_size=chunk_size,
        keep_failures=keep_failures,
        keep_records=keep_records,
        unlandable=unlandable,
        progress=progress,
        workers=workers,
    )


def point_row(axis: str, value: float, table: str, tally: Tally) -> dict:
    """One point of an envelope: its success rate, two-sided 95 % interval, one-sided
    95 % lower bound and mean propellant."""
    s = tally.summary()
    return {
        "axis": axis,
        "value": float(value),
        "table": table,
        "n_scenarios": s["n_scenarios"],
        "success_rate": s["success_rate"],
        "success_rate_ci95": s["success_rate_ci95"],
        "success_rate_lower95": s["success_rate_lower95"],
        "fuel_kg_mean": s["fuel_kg_mean"],
    }


def fly_axis(
    spec: SimSpec,
    tables: dict[str, Gains],
    sampler: ScenarioSampler,
    criteria: SuccessCriteria,
    axis: str,
    values: Sequence[float],
    n: int,
    *,
    key: PRNGKeyArray,
    chunk_size: int | None = None,
    keep_failures: int = 20,
    unlandable: tuple[str, ...] = (),
    progress: Callable[[int, Tally], None] | None = None,
) -> list[dict]:
    """Every point of ``axis`` at ``values`` for every table (:func:`point_row`, table by
    table, values in order). On a single CPU device the points fly side by side, one per
    core (a point of a few thousand members is one flight piece, which keeps one core
    busy); elsewhere one after another, each over every device."""
    points = [(name, float(v)) for name in tables for v in values]
    one_device = len(jax.local_devices()) == 1
    side_by_side = execution.default_workers() if one_device else 1

    def fly(point):
        name, value = point
        result = fly_point(
            spec,
            tables[name],
            sampler,
            criteria,
            axis,
            value,
            n,
            key=key,
            chunk_size=chunk_size,
            keep_failures=keep_failures,
            unlandable=unlandable,
            progress=progress,
            workers=1 if side_by_side > 1 else None,
        )
        return point_row(axis, value, name, result.tally)

    return execution.concurrently(fly, points, side_by_side)


def edge(rows: Sequence[dict], required_success: float) -> dict:
    """The edge of one table along one axis (``rows`` from benign to harsh): walking from
    the benign end, the last value before the first point whose one-sided 95 % lower bound
    is below ``required_success``. ``edge`` is None when even the first point fails; when
    none fails it is the harshest value, with ``beyond_grid`` true (the edge lies further
    out). With it, that point's success rate and intervals and the first failing value."""
    failing = [k for k, r in enumerate(rows) if r["success_rate_lower95"] < required_success]
    first = failing[0] if failing else None
    at = len(rows) - 1 if first is None else first - 1
    point = rows[at] if at >= 0 else None
    fail = rows[first] if first is not None else None
    return {
        "edge": None if point is None else point["value"],
        "beyond_grid": first is None,
        "success_rate": None if point is None else point["success_rate"],
        "success_rate_ci95": None if point is None else point["success_rate_ci95"],
        "success_rate_lower95": None if point is None else point["success_rate_lower95"],
        "first_failing": None if fail is None else fail["value"],
        "first_failing_success_rate": None if fail is None else fail["success_rate"],
        "first_failing_lower95": None if fail is None else fail["success_rate_lower95"],
    }
