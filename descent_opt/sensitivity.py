"""Sensitivities: which numbers of the population, the fault catalog, the vehicle and the
success rules a gain table's risk depends on most.

On one fixed population of draws (:func:`~descent_opt.scenarios.population_latents`),
every parameter of :data:`PARAMETERS` gets the derivative of three figures: the smoothed
risk (the training loss per flight, averaged) and the mean touchdown speed, both in the
smoothed loop tuning differentiates (:func:`~descent_opt.optimize.gains.tuning_sim`), and
the hard success rate in the evaluation loop. Each is scaled by the parameter's unit
(:func:`units`): the change a one-unit move brings, to first order.

The closed loop jumps: gate decisions, re-acquisition resets, contingency switches and
the step a threshold is crossed in turn some landings into crashes as a parameter moves.
The derivative along the members' paths (reverse mode, :func:`pathwise`) misses every
jump: on the main job's table it gives 0.005 for ``scenario.nav_altitude_sigma_m`` where
the expectation's derivative is 0.016 to 0.020 (32,768 members; in a fine scan nearly 90 %
of the slope came from a few O(1) jumps), and 0 for every fault rate, acquisition range
and dropout probability. So each kind gets an estimator that holds with jumps, every
figure a paired difference of flights of the same members:

- ``dispersion`` (a sigma times standard normals): the measure-valued derivative
  ``sigma d/dsigma E f(mu + sigma z) = E f(mu + sigma M) - E f(mu + sigma z)``, ``M``
  double-sided Maxwell (density ``t^2 phi(t)``), exact for any ``f``; each member's ``z``
  mapped to ``M`` by quantile (:func:`maxwell_partner`), one flight per normal the sigma
  scales. Its standard error was 3 to 50 times below the likelihood-ratio estimator
  ``E f (z^2 - 1)``'s on the same members (whose variance the rare crashes dominate).
- ``location`` (``vehicle.mass_initial_kg``, the mean of the dispersed mass):
  ``d/dmu E f = E[f(mu + sigma R) - f(mu - sigma R)] / (sigma sqrt(2 pi))``, ``R``
  Rayleigh (:func:`rayleigh_partner`); with no mass dispersion, as ``vehicle``.
- ``rate``: a fault occurs on its own uniform below its rate, so ``E f`` is linear in it
  and ``d/drate E f = E[f | present] - E[f | absent]`` exactly, flown both ways for every
  member. Scaled by the rate: the risk the fault contributes.
- ``range`` (an end of a fault's uniform range): ``d/dhi E[f | present] = (E f(hi) -
  E f(X)) / (hi - lo)`` (``lo``: ``(E f(X) - E f(lo)) / (hi - lo)``), exact; flown with
  the fault present in every member, at its own value and at the end.
- ``vehicle`` (thrust bounds, Isp: nothing dispersed to differentiate through): central
  differences of ``fd_step`` units.
- ``limit`` (success limits move no flight): the loss's exact derivative on the flown
  outcomes; the success rate from central differences of the verdicts.

A parameter whose unit is 0 (a zero sigma or rate, an empty range) gets no flights and
zero scaled derivatives. :mod:`descent_opt.sobol` gives variance-based indices over the
same parameters.

Over 400 lines because the parameter table, the model that holds the parameters and the
estimator of each kind are one piece: every estimator reads the table's kinds and moves
the model's parameters or its draws.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray
from scipy.stats import chi2

from descent_opt.faults import FaultCatalog
from descent_opt.guidance import Gains
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria, landing_metrics, scenario_loss
from descent_opt.scenarios import (
    Latents,
    ScenarioSpec,
    TerrainSpec,
    from_latents,
    population_latents,
)
from descent_opt.simulate import Outcome, SimSpec, simulate, simulate_population


class Parameter(NamedTuple):
    group: str  # scenario, faults, vehicle or success
    field: str
    index: int | None  # the component of a vector or a range
    kind: str  # dispersion, location, rate, range, vehicle or limit


# The normals each dispersion sigma scales: (field of Latents, component).
_NORMALS: dict[str, tuple[tuple[str, int | None], ...]] = {
    **{f"scenario.{f}[{a}]": ((f.split("_")[0], i),) for f in ("position_sigma_m",
       "velocity_sigma_mps") for i, a in enumerate("xyz")},
    "scenario.mass_sigma_kg": (("mass", None),),
    "scenario.nav_altitude_sigma_m": (("nav_position", 2),),
    "scenario.nav_horizontal_sigma_m": (("nav_position", 0), ("nav_position", 1)),
    "scenario.nav_velocity_sigma_mps": tuple(("nav_velocity", i) for i in range(3)),
    "scenario.imu_bias_sigma_mps2": tuple(("imu_bias", i) for i in range(3)),
    "faults.bias_sigma_m": (("faults.bias", None),),
    "faults.scale_factor_sigma": (("faults.scale_factor", None),),
}  # fmt: skip
# Each fault range and the rate of the fault that carries it.
RANGE_RATES = {
    "acquisition_range_m": "late_acquisition_rate", "latency_s": "latency_rate",
    "dropout_prob": "dropout_rate", "heavy_tail_scale_m": "dark_terrain_rate",
    "rim_step_height_m": "rim_step_rate", "rim_radius_m": "rim_step_rate",
}  # fmt: skip
_RATES = ("late_acquisition_rate", "latency_rate", "dropout_rate", "dark_terrain_rate",
          "absent_rate", "rim_step_rate")  # fmt: skip


def _parameter(name: str) -> Parameter:
    group, rest = name.split(".", 1)
    field, _, end = rest.partition("[")
    end = end.rstrip("]")
    index = {"": None, "x": 0, "y": 1, "z": 2, "low": 0, "high": 1}[end]
    if name in _NORMALS:
        kind = "dispersion"
    elif group in ("vehicle", "success"):
        kind = {"vehicle": "vehicle", "success": "limit"}[group]
        kind = "location" if field == "mass_initial_kg" else kind
    else:
        kind = "range" if field in RANGE_RATES else "rate"
    return Parameter(group, field, index, kind)


PARAMETERS: dict[str, Parameter] = {
    n: _parameter(n)
    for n in (
        *_NORMALS,
        *(f"faults.{f}[{end}]" for f in RANGE_RATES for end in ("low", "high")),
        *(f"faults.{r}" for r in _RATES),
        *(f"vehicle.{f}" for f in ("thrust_max_n", "thrust_min_n", "isp_s", "mass_initial_kg")),
        *(f"success.{f}" for f in ("vertical_speed_max_mps", "horizontal_speed_max_mps",
                                   "tilt_max_deg")),
    )
}  # fmt: skip


def select(entries: tuple[str, ...] | None) -> tuple[str, ...]:
    """The parameters named by ``entries`` (names, or prefixes of names ending at a dot or
    a bracket: ``faults``, ``faults.latency_s``), in :data:`PARAMETERS` order; None: all.
    ValueError naming an entry that selects none."""
    if entries is None:
        return tuple(PARAMETERS)
    chosen = set()
    for e in entries:
        found = {n for n in PARAMETERS if n == e or n.startswith((e + ".", e + "["))}
        if not found:
            raise ValueError(f"no sensitivity parameter is named {e!r}")
        chosen |= found
    return tuple(n for n in PARAMETERS if n in chosen)


@dataclasses.dataclass(frozen=True)
class SensitivitySpec:
    """What the sensitivity job computes: for which parameters, on how many members."""

    parameters: tuple[str, ...] | None = None  # names or prefixes; None: every parameter
    n_scenarios: int = 4096  # members of the held-out population flown for every figure
    fd_step: float = 0.25  # central differences (vehicle, limits): this many units each way
    pathwise: bool = True  # also the reverse-mode derivative along the members' paths
    sobol: bool = False  # also Sobol indices (SALib) over the same parameters
    sobol_n: int = 64  # Sobol base samples (a power of 2): n (d + 2) populations flown
    sobol_scenarios: int = 128  # members of the population flown per Sobol sample


class Model(eqx.Module):
    """What turns draws into flights and flights into figures: the smoothed loop
    (``sim``), the evaluation loop (``hard``) and every parameter of :data:`PARAMETERS`,
    held as arrays (so that moving one compiles nothing new)."""

    scenario: ScenarioSpec
    terrain: TerrainSpec
    faults: FaultCatalog
    sim: SimSpec
    hard: SimSpec | None  # None: no success figures
    success: SuccessCriteria

    @classmethod
    def of(cls, scenario, terrain, faults, sim, hard, success) -> Model:
        arrays = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, dtype=float), tree)  # noqa: E731
        model = cls(arrays(scenario), arrays(terrain), arrays(faults), sim, hard, arrays(success))
        vehicle = {n: v for n, v in values(model, tuple(PARAMETERS)).items() if "vehicle." in n}
        return with_values(model, vehicle)


def _where(p: Parameter):
    if p.group == "vehicle":  # in both loops
        return lambda m: tuple(getattr(s.vehicle, p.field) for s in (m.sim, m.hard) if s)
    return lambda m: getattr(getattr(m, p.group), p.field)


def values(model: Model, names: tuple[str, ...]) -> dict[str, float]:
    """The model's value of each named parameter."""
    out = {}
    for n in names:
        p = PARAMETERS[n]
        v = _where(p)(model)
        v = v[0] if p.group == "vehicle" else v
        out[n] = float(v if p.index is None else v[p.index])
    return out


def with_values(model: Model, new: dict[str, Float[Array, ""] | float]) -> Model:
    """``model`` with the named parameters set (values may be traced)."""
    for name, value in new.items():
        p = PARAMETERS[name]
        value = jnp.asarray(value, dtype=float)
        where = _where(p)
        if p.group == "vehicle":
            model = eqx.tree_at(where, model, (value,) * len(where(model)))
            continue
        if p.index is not None:
            old = where(model)
            value = tuple(value if i == p.index else x for i, x in enumerate(old))
        model = eqx.tree_at(where, model, value)
    return model


def units(model: Model, names: tuple[str, ...]) -> dict[str, float]:
    """Each parameter's unit: a sigma or a rate by itself, a range end by the range's
    width, a vehicle figure by 5 % of it, a success limit by 10 % of it."""
    at = values(model, names)
    out = {}
    for n in names:
        p = PARAMETERS[n]
        if p.kind == "range":
            low, high = (float(b) for b in getattr(model.faults, p.field))
            out[n] = high - low
        else:
            share = {"vehicle": 0.05, "location": 0.05, "limit": 0.1}.get(p.kind, 1.0)
            out[n] = share * abs(at[n])
    return out


def maxwell_partner(z: Float[np.ndarray, "..."]) -> Float[np.ndarray, "..."]:
    """Each standard normal's double-sided Maxwell partner: the same sign, the magnitude at
    the same quantile (``|M|^2`` chi-square with 3 degrees of freedom)."""
    z = np.asarray(z, dtype=np.float64)
    return np.sign(z) * np.sqrt(chi2.isf(chi2.sf(z * z, 1), 3))


def rayleigh_partner(z: Float[np.ndarray, "..."]) -> Float[np.ndarray, "..."]:
    """Each standard normal's Rayleigh partner: the magnitude at the quantile of ``|z|``."""
    z = np.asarray(z, dtype=np.float64)
    return np.sqrt(-2.0 * np.log(np.maximum(chi2.sf(z * z, 1), 1e-300)))


def _normal(z: Latents, path: str):
    return lambda t: getattr(t.faults, path[7:]) if path.startswith("faults.") else getattr(t, path)


def with_normal(z: Latents, path: str, index: int | None, new: Callable) -> Latents:
    """The draws ``z`` with one normal (``path`` of :class:`Latents`, component ``index``)
    replaced by ``new`` of it, member by member (on the host)."""
    get = _normal(z, path)
    old = np.asarray(get(z), dtype=np.float64)
    out = old.copy()
    if index is None:
        out = new(old)
    else:
        out[:, index] = new(old[:, index])
    return eqx.tree_at(get, z, jnp.asarray(out, dtype=get(z).dtype))


@eqx.filter_jit
def scenarios(model: Model, z: Latents):
    """The scenarios the draws ``z`` (a population) give under ``model``."""
    mass = model.sim.vehicle.mass_initial_kg
    return jax.vmap(lambda one: from_latents(model.scenario, model.terrain, model.faults,
                                             mass, one))(z)  # fmt: skip


@eqx.filter_jit
def _figures(soft: Outcome, hard: Outcome | None, success: SuccessCriteria, objective):
    m = landing_metrics(soft, success)
    ok = (
        jnp.full_like(m.speed_mps, jnp.nan)
        if hard is None
        else landing_metrics(hard, success).success
    )
    return jnp.stack([scenario_loss(soft, success, objective), m.speed_mps, ok.astype(float)], -1)


def fly(model: Model, gains: Gains, z: Latents, objective: ObjectiveSpec):
    """The members ``z`` under ``model``: per member (smoothed loss and touchdown speed in
    the smoothed loop, success in the evaluation loop: NaN without one) as an ``(n, 3)``
    float64 array, and the two loops' outcomes."""
    flown = scenarios(model, z)
    soft = simulate_population(model.sim, gains, flown)
    hard = None if model.hard is None else simulate_population(model.hard, gains, flown)
    return np.asarray(_figures(soft, hard, model.success, objective), np.float64), (soft, hard)


FIGURES = ("risk", "touchdown_speed_mps", "success_rate")
# How each kind of parameter's figures are estimated (the module's notes say why).
ESTIMATORS = {
    "dispersion": "measure-valued derivative (Maxwell partner of each normal it scales)",
    "location": "measure-valued derivative (Rayleigh partners of the mass normal)",
    "rate": "exact: present minus absent, every member flown both ways",
    "range": "exact: the fault present at the range's end minus at its own value",
    "vehicle": "central differences on the same members",
    "limit": "risk: exact derivative on the flown outcomes; success: central differences",
}


class _Population:
    """One population's flights: its base flight, and the same members flown again under
    moved parameters or moved draws (every figure a paired difference with the base)."""

    def __init__(self, model, gains, z, objective):
        self.model, self.gains, self.z, self.objective = model, gains, z, objective
        self.base, (self.soft, self.hard) = fly(model, gains, z, objective)
        self.flights, self._present = 1, {}

    def fly(self, model: Model | None = None, z: Latents | None = None) -> np.ndarray:
        self.flights += 1
        z = self.z if z is None else z
        return fly(self.model if model is None else model, self.gains, z, self.objective)[0]

    def present(self, rate: str) -> np.ndarray:
        """Every member with the fault of ``rate`` present (the base where it always is)."""
        if float(getattr(self.model.faults, rate)) == 1.0:
            return self.base
        if rate not in self._present:
            self._present[rate] = self.fly(with_values(self.model, {f"faults.{rate}": 1.0}))
        return self._present[rate]

    def moved(self, name: str, value: float) -> np.ndarray:
        return self.fly(with_values(self.model, {name: value}))


def _dispersion(pop: _Population, name, value, unit, step):
    out = 0.0  # sigma d/dsigma E f = sum over its normals of E f(M) - E f(z)
    for path, i in _NORMALS[name]:
        out = out + pop.fly(z=with_normal(pop.z, path, i, maxwell_partner)) - pop.base
    return out


def _location(pop: _Population, name, value, unit, step):
    sigma = float(pop.model.scenario.mass_sigma_kg)
    if sigma == 0.0:
        return _central(pop, name, value, unit, step)
    up = pop.fly(z=with_normal(pop.z, "mass", None, rayleigh_partner))
    down = pop.fly(z=with_normal(pop.z, "mass", None, lambda x: -rayleigh_partner(x)))
    return (up - down) * unit / (sigma * math.sqrt(2.0 * math.pi))


def _central(pop: _Population, name, value, unit, step):
    up, down = pop.moved(name, value + step * unit), pop.moved(name, value - step * unit)
    return (up - down) / (2.0 * step)


def _rate(pop: _Population, name, value, unit, step):
    absent = pop.base if value == 0.0 else pop.moved(name, 0.0)
    return (pop.present(PARAMETERS[name].field) - absent) * value


def _range(pop: _Population, name, value, unit, step):
    p = PARAMETERS[name]
    rate = RANGE_RATES[p.field]
    present = with_values(pop.model, {f"faults.{rate}": 1.0})
    ends = {f"faults.{p.field}[low]": value, f"faults.{p.field}[high]": value}
    at_end = pop.fly(with_values(present, ends))
    share = float(getattr(pop.model.faults, rate))
    return (at_end - pop.present(rate)) * (share if p.index == 1 else -share)


def _limit(pop: _Population, name, value, unit, step):
    def loss(v):
        return scenario_loss(pop.soft, with_values(pop.model, {name: v}).success, pop.objective)

    risk = jax.jvp(loss, (jnp.asarray(value, float),), (jnp.asarray(unit, float),))[1]
    success = np.full(risk.shape, np.nan)
    if pop.hard is not None:
        ok = [
            np.asarray(landing_metrics(pop.hard, with_values(pop.model, {name: v}).success).success)
            for v in (value + step * unit, value - step * unit)
        ]
        success = (ok[0].astype(float) - ok[1].astype(float)) / (2.0 * step)
    return np.stack([np.asarray(risk, np.float64), np.zeros_like(success), success], -1)


_ESTIMATE = {"dispersion": _dispersion, "location": _location, "rate": _rate, "range": _range,
             "vehicle": _central, "limit": _limit}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sensitivities:
    """Per parameter (:attr:`names` order): value, unit, the scaled derivatives of
    :data:`FIGURES` (``scaled``, ``(p, 3)``) with their standard errors, the pathwise
    reverse-mode derivatives of the first two (scaled; NaN when not computed), and the
    flights flown (in both loops; the reverse passes not counted)."""

    names: tuple[str, ...]
    value: np.ndarray
    unit: np.ndarray
    scaled: np.ndarray
    se: np.ndarray
    pathwise: np.ndarray
    flights: int

    def ranked(self) -> list[dict]:
        """Rows, largest scaled risk derivative (in size) first."""
        rows = []
        for i in np.argsort(-np.abs(self.scaled[:, 0]), kind="stable"):
            kind = PARAMETERS[self.names[i]].kind
            row = {"parameter": self.names[i], "kind": kind, "estimator": ESTIMATORS[kind],
                   "value": float(self.value[i]), "unit": float(self.unit[i])}  # fmt: skip
            for j, fig in enumerate(FIGURES):
                row[fig], row[fig + "_se"] = float(self.scaled[i, j]), float(self.se[i, j])
            row["pathwise_risk"] = float(self.pathwise[i, 0])
            row["pathwise_touchdown_speed_mps"] = float(self.pathwise[i, 1])
            rows.append(row)
        return rows


def sensitivities(
    model: Model,
    gains: Gains,
    objective: ObjectiveSpec,
    names: tuple[str, ...],
    n: int,
    *,
    key: PRNGKeyArray,
    fd_step: float = 0.25,
    pathwise_chunk: int | None = 1024,
    progress: Callable[[int], None] | None = None,
) -> Sensitivities:
    """The scaled derivatives of the smoothed risk, the mean touchdown speed and the hard
    success rate for each named parameter on members ``0 .. n-1`` of the population of
    ``key`` (each kind by its :data:`ESTIMATORS` entry; ``fd_step`` units each way for
    central differences), and, with ``pathwise_chunk`` (members per reverse pass), the
    pathwise derivatives beside them. ``progress(1)`` after each parameter."""
    z = population_latents(key, jnp.arange(n, dtype=jnp.uint32))
    at, unit = values(model, names), units(model, names)
    pop = _Population(model, gains, z, objective)
    per_member = []
    for name in names:
        p = PARAMETERS[name]
        carried = p.kind != "range" or float(getattr(model.faults, RANGE_RATES[p.field])) > 0
        estimate = _ESTIMATE[p.kind]
        per_member.append(
            estimate(pop, name, at[name], unit[name], fd_step)
            if unit[name] > 0.0 and carried
            else np.zeros_like(pop.base)
        )
        if progress is not None:
            progress(1)
    d = np.stack(per_member)  # (p, n, 3): each member's scaled paired difference
    paths = np.full((len(names), 2), np.nan)
    if pathwise_chunk:
        scale = np.asarray([unit[k] for k in names])[:, None]
        paths = pathwise(model, gains, z, objective, names, pathwise_chunk) * scale
    return Sensitivities(
        names=names,
        value=np.asarray([at[k] for k in names]),
        unit=np.asarray([unit[k] for k in names]),
        scaled=d.mean(axis=1),
        se=d.std(axis=1, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(d.shape[::2]),
        pathwise=paths,
        flights=pop.flights * n * (1 if model.hard is None else 2),
    )


def pathwise(
    model: Model,
    gains: Gains,
    z: Latents,
    objective: ObjectiveSpec,
    names: tuple[str, ...],
    chunk: int = 1024,
) -> Float[np.ndarray, "p 2"]:
    """Reverse-mode derivatives (unscaled) of (smoothed risk, mean touchdown speed) along
    the members' paths in the smoothed loop: blind to the loop's jumps (see the module's
    notes). Members in chunks of ``chunk`` (one compiled program; the last one padded with
    members of weight 0)."""
    p0 = {k: jnp.asarray(v, dtype=float) for k, v in values(model, names).items()}
    n = z.mass.shape[0]
    chunk = min(chunk, n)
    total = np.zeros((len(names), 2))
    for first in range(0, n, chunk):
        take = np.arange(first, first + chunk)
        weight = jnp.asarray(take < n, dtype=float) / n
        part = jax.tree.map(lambda x: x[take % n], z)
        jac = _pathwise_chunk(model, gains, part, weight, objective, p0)
        total += np.stack([np.asarray(jac[k]) for k in names])
    return total


@eqx.filter_jit
def _pathwise_chunk(model, gains, z, weight, objective, p0):
    return jax.jacrev(lambda p: weight @ smoothed(with_values(model, p), gains, z, objective))(p0)


def smoothed(
    model: Model, gains: Gains, z: Latents, objective: ObjectiveSpec
) -> Float[Array, "n 2"]:
    """Per member of ``z``, the smoothed loss and the touchdown speed in the smoothed loop
    (traceable: for reverse mode, and for samples of parameters flown side by side)."""
    outcome = simulate(model.sim, gains, scenarios(model, z))
    speed = landing_metrics(outcome, model.success).speed_mps
    return jnp.stack([scenario_loss(outcome, model.success, objective), speed], -1)
