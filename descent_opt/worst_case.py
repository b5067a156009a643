"""Worst-case search: the scenario within a fault catalog's reach that a gain table flies
worst, found by gradient ascent through the smoothed closed loop, and the same question put
to random search and CMA-ES at equal budget (falsification reported as ARCH-COMP does).

The search space is the catalog's support, not its likelihood. A scenario is a point ``y``
of the unit cube, one coordinate per latent draw (:data:`~descent_opt.scenarios.
LATENT_NAMES`): each dispersion and calibration normal at ``sigma_bound (2 y - 1)`` sigmas,
each fault value at the ``y`` quantile of its catalog range, and each fault of nonzero rate
present where its ``y < 1/2`` (always at rate 1). What stays keyed (the crater field's
layout, the sensor noise) comes from the member of the search's population that a candidate
is flown as.

Cost is counted in flights of the planned horizon: a flight with the hard success rules is
one, a value-and-gradient pass through the smoothed loop :data:`GRADIENT_COST` (the forward
flight and its reverse sweep). The gradient search screens ``screen`` points as random
search draws them, then moves the ``restarts`` worst: Adam up the smoothed loop's impact
speed (:func:`impact_speed`; or the training loss) on the coordinates the loop is
differentiable in (the dispersion and calibration draws), a Gaussian step on the others
(fault values and occurrences act through thresholds and events, whose pathwise derivative
is zero), each proposal kept if its hard flight is at least as fast. Every number it
reports is a hard flight's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import ndtr, ndtri
from jaxtyping import Array, Float, Int, PRNGKeyArray

from descent_opt.faults import (
    FAULT_FIELDS,
    LATENT_FIELDS,
    NORMAL_LATENTS,
    FaultCatalog,
    FaultLatents,
    faults_from_latents,
)
from descent_opt.guidance import Gains
from descent_opt.latent_flights import LatentFlights
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria, landing_metrics, scenario_loss
from descent_opt.scenarios import (
    LATENT_NAMES,
    ScenarioSampler,
    population_latents,
    with_normal,
)
from descent_opt.simulate import Outcome, SimSpec, simulate, simulate_population

METHODS = ("gradient", "random", "cma_es")
TARGETS = ("impact_speed", "loss")
GRADIENT_COST = 3  # flights charged for one value-and-gradient pass of one scenario
# The occurrence draw of each fault: the catalog's rate it is compared with.
OCCURRENCE_RATES = {
    "late_acquisition_occurs": "late_acquisition_rate",
    "latency_occurs": "latency_rate",
    "dropout_occurs": "dropout_rate",
    "dark_terrain_occurs": "dark_terrain_rate",
    "absent_occurs": "absent_rate",
    "rim_step_occurs": "rim_step_rate",
}
_EDGE = 1e-6  # fault-value quantiles kept this far inside (0, 1)
_START_EDGE = 1e-3  # ascents start this far inside the cube (finite logits)
_FIRST_FAULT = LATENT_NAMES.index(LATENT_FIELDS[0])
# The coordinates the closed loop is not differentiable in: the fault values and occurrences
# (thresholds on draws, events in time).
_EVENT_COLUMNS = [LATENT_NAMES.index(n) for n in LATENT_FIELDS if n not in NORMAL_LATENTS]


@dataclasses.dataclass(frozen=True)
class WorstCaseSpec:
    """How far the search may go, how it searches, and the comparison it is judged in."""

    sigma_bound: float = 3.0  # dispersion and calibration draws within +- this many sigmas
    screen: int = 2048  # gradient: random points flown first, the restarts their worst
    restarts: int = 64  # gradient: points ascended at once; CMA-ES: its population
    steps: int = 22  # gradient ascent steps (each re-flown with the hard rules)
    learning_rate: float = 0.3  # Adam, in logit space of the unit cube
    mutation: float = 0.1  # gradient: Gaussian step of the fault coordinates, in the cube
    seeds: int = 10  # independent searches per method (the ARCH table's runs)
    budget: int | None = None  # flights per search; None: what the gradient search spends
    reference_samples: int = 100_000  # catalog samples whose worst is the bar; 0: none
    methods: tuple[str, ...] = METHODS
    include_unlandable: bool = False  # search the fault classes certified apart too
    target: str = "impact_speed"  # gradient: what is ascended (TARGETS)


def latent_rows(
    y: Float[Array, "n d"], catalog: FaultCatalog, sigma_bound: float
) -> Float[Array, "n d"]:
    """The standard-normal latent rows (:func:`~descent_opt.scenarios.to_normal`'s vector)
    of search points ``y`` in the unit cube."""
    fault = {}
    for i, name in enumerate(LATENT_FIELDS):
        u = y[..., _FIRST_FAULT + i]
        if name in NORMAL_LATENTS:
            fault[name] = sigma_bound * (2.0 * u - 1.0)
        elif name in OCCURRENCE_RATES:
            rate = jnp.asarray(getattr(catalog, OCCURRENCE_RATES[name]), y.dtype)
            present = ((u < 0.5) | (rate >= 1.0)) & (rate > 0.0)
            # a draw below the rate makes the fault occur: halfway below it, or above it
            fault[name] = ndtri(jnp.where(present, 0.5 * rate, 0.5 * (1.0 + rate)))
        else:
            fault[name] = ndtri(jnp.clip(u, _EDGE, 1.0 - _EDGE))
    dispersion = sigma_bound * (2.0 * y[..., :_FIRST_FAULT] - 1.0)
    faults = jnp.stack([fault[name] for name in LATENT_FIELDS], axis=-1)
    return jnp.concatenate([dispersion, faults], axis=-1)


def describe(y: np.ndarray, catalog: FaultCatalog, sigma_bound: float) -> dict:
    """A search point in words: each dispersion and calibration draw in sigmas, which
    faults are present, and the fault parameters it gives under ``catalog`` (absent faults
    at their placeholder values)."""
    x = np.asarray(latent_rows(jnp.asarray(y[None, :]), catalog, sigma_bound))[0]
    draws = {
        name: jnp.asarray(x[_FIRST_FAULT + i] if name in NORMAL_LATENTS
                          else ndtr(x[_FIRST_FAULT + i]))
        for i, name in enumerate(LATENT_FIELDS)
    }  # fmt: skip
    faults = faults_from_latents(catalog, FaultLatents(**draws))
    normals = (*LATENT_NAMES[:_FIRST_FAULT], *NORMAL_LATENTS)
    sigmas = {n: float(v) for n, v in zip(LATENT_NAMES, x) if n in normals}
    return {
        "sigmas": sigmas,
        "present": [n.removesuffix("_occurs") for n in OCCURRENCE_RATES
                    if draws[n] < getattr(catalog, OCCURRENCE_RATES[n])],
        "faults": {k: np.asarray(getattr(faults, k)).item() for k in FAULT_FIELDS},
    }  # fmt: skip


@dataclasses.dataclass
class SearchRun:
    """One search: the flights it spent, when it flew its first failure (the success rules
    broken), and the worst flight it found (as the member of its population it was flown
    as, so that it can be flown again)."""

    method: str
    seed: int
    flights: int = 0
    first_failure_flights: int | None = None
    worst_speed_mps: float = -np.inf
    worst_y: np.ndarray | None = None
    worst_member: int = -1
    progress: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    smoothed_target: list[float] = dataclasses.field(default_factory=list)  # gradient: per step

    def charge(self, flights: int) -> None:
        self.flights += flights

    def record(self, y: np.ndarray, members: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """Hard flights of points ``y`` flown as ``members``, charged one flight each in
        order."""
        failed = np.flatnonzero(~out["success"])
        if self.first_failure_flights is None and failed.size:
            self.first_failure_flights = self.flights + int(failed[0]) + 1
        self.flights += len(y)
        i = int(np.argmax(out["touchdown_speed_mps"]))
        if out["touchdown_speed_mps"][i] > self.worst_speed_mps:
            self.worst_speed_mps = float(out["touchdown_speed_mps"][i])
            self.worst_y, self.worst_member = np.array(y[i]), int(members[i])
        self.progress.append((self.flights, self.worst_speed_mps))


class WorstCaseSearch:
    """The searches of one gain table on one catalog. ``sim`` flies candidates with the hard
    rules; gradients are taken through ``smooth_sim`` (the tuning loop) on ``objective``'s
    per-flight loss. Search ``seed`` flies its candidates as members of the population of
    ``fold_in(key, seed)`` and draws its random points from ``(rng_seed, seed)``."""

    def __init__(
        self,
        sim: SimSpec,
        smooth_sim: SimSpec,
        gains: Gains,
        sampler: ScenarioSampler,
        success: SuccessCriteria,
        objective: ObjectiveSpec,
        spec: WorstCaseSpec,
        *,
        key: PRNGKeyArray,
        rng_seed: int = 0,
    ):
        self.sim, self.smooth_sim, self.gains, self.sampler = sim, smooth_sim, gains, sampler
        self.success, self.objective, self.spec = success, objective, spec
        self.key, self.rng_seed = key, rng_seed
        self.catalog = jax.tree.map(np.asarray, sampler.catalog)

    @property
    def dim(self) -> int:
        return len(LATENT_NAMES)

    def gradient_flights(self) -> int:
        """What one gradient search spends: its screening flights, then per step a
        gradient pass and a hard flight of each restart."""
        r = self.spec.restarts
        return max(self.spec.screen, r) + self.spec.steps * r * (GRADIENT_COST + 1)

    def budget(self) -> int:
        return self.spec.budget if self.spec.budget is not None else self.gradient_flights()

    def flights(self, seed: int) -> LatentFlights:
        key = jax.random.fold_in(self.key, seed)
        return LatentFlights(
            self.sim, self.gains, self.sampler, self.success, key=key, event="touchdown_speed"
        )

    def rows(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(latent_rows(jnp.asarray(y), self.catalog, self.spec.sigma_bound))

    def fly(self, flights: LatentFlights, y: np.ndarray, first) -> dict[str, np.ndarray]:
        """Hard flights of points ``y`` as members ``first, first + 1, ...`` (or members
        ``first``, an array)."""
        return flights.fly(self.rows(y), first)

    def _rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([self.rng_seed, seed])

    def run(self, method: str, seed: int, on_batch: Callable[[int], None] | None = None):
        """One search by ``method`` (:data:`METHODS`)."""
        if method not in METHODS:
            raise ValueError(f"method: {method!r} is not one of {METHODS}")
        search = {"gradient": self.gradient, "random": self.random, "cma_es": self.cma_es}
        return search[method](seed, on_batch or (lambda n: None))

    def random(self, seed: int, on_batch) -> SearchRun:
        """Uniform points of the cube, flown in batches until the budget is spent."""
        run, rng, flights, budget = (
            SearchRun("random", seed),
            self._rng(seed),
            self.flights(seed),
            self.budget(),
        )
        while run.flights < budget:
            y = rng.random((min(budget - run.flights, 4 * self.spec.restarts * 8), self.dim))
            members = np.arange(run.flights, run.flights + len(y))
            run.record(y, members, self.fly(flights, y, run.flights))
            on_batch(len(y))
        return run

    def gradient(self, seed: int, on_batch) -> SearchRun:
        """Random search's first ``screen`` points flown, then from the ``restarts`` worst
        of them a gradient-informed (1+1) evolution strategy: each step every restart
        proposes its Adam step up the smoothed target on the coordinates the loop is
        differentiable in, and a Gaussian step on the others (the fault values and which
        faults occur: thresholds and events, whose pathwise derivative is zero); the
        proposal is flown with the hard rules and kept if it flies at least as fast."""
        r = self.spec.restarts
        run, flights, rng = SearchRun("gradient", seed), self.flights(seed), self._rng(seed)
        screen = rng.random((max(self.spec.screen, r), self.dim))
        out = self.fly(flights, screen, 0)
        run.record(screen, np.arange(len(screen)), out)
        on_batch(len(screen))
        members = np.sort(np.argsort(-out["touchdown_speed_mps"], kind="stable")[:r])
        current, speed = screen[members], out["touchdown_speed_mps"][members]
        steps = min(self.spec.steps, (self.budget() - len(screen)) // (r * (GRADIENT_COST + 1)))

        def after_step(y, values):
            nonlocal current, speed
            run.charge(r * GRADIENT_COST)
            run.smoothed_target.append(float(np.mean(values)))  # of the iterates before the step
            y = y.copy()
            step = rng.normal(0.0, self.spec.mutation, (r, len(_EVENT_COLUMNS)))
            y[:, _EVENT_COLUMNS] = np.clip(y[:, _EVENT_COLUMNS] + step, 0.0, 1.0)
            flown = self.fly(flights, y, members)
            run.record(y, members, flown)
            on_batch(r * (GRADIENT_COST + 1))
            better = flown["touchdown_speed_mps"] >= speed
            current = np.where(better[:, None], y, current)
            speed = np.where(better, flown["touchdown_speed_mps"], speed)
            return current

        ascend(
            self.smooth_sim, self.gains, self.sampler, self.success, self.objective,
            current, key=flights.key, members=members, steps=steps,
            learning_rate=self.spec.learning_rate, sigma_bound=self.spec.sigma_bound,
            after_step=after_step, target=self.spec.target,
        )  # fmt: skip
        return run

    def cma_es(self, seed: int, on_batch) -> SearchRun:
        """CMA-ES (the ``cma`` package) in the cube, ``restarts`` points per generation,
        from its centre with step 0.3, each point flown as the next member."""
        import cma

        run, flights, budget = SearchRun("cma_es", seed), self.flights(seed), self.budget()
        options = {
            "bounds": [0.0, 1.0], "popsize": self.spec.restarts, "verbose": -9,
            "seed": int(self._rng(seed).integers(1, 2**31 - 1)),
        }  # fmt: skip
        es = cma.CMAEvolutionStrategy(np.full(self.dim, 0.5), 0.3, options)
        while run.flights + self.spec.restarts <= budget:
            y = np.clip(np.asarray(es.ask()), 0.0, 1.0)
            members = np.arange(run.flights, run.flights + len(y))
            out = self.fly(flights, y, run.flights)
            run.record(y, members, out)
            es.tell(list(y), list(-np.asarray(out["touchdown_speed_mps"], dtype=np.float64)))
            on_batch(len(y))
        return run


def ascend(
    smooth_sim: SimSpec,
    gains: Gains,
    sampler: ScenarioSampler,
    success: SuccessCriteria,
    objective: ObjectiveSpec,
    y: Float[np.ndarray, "n d"],
    *,
    key: PRNGKeyArray,
    members: Int[np.ndarray, " n"] | None = None,
    steps: int,
    learning_rate: float,
    sigma_bound: float,
    after_step: Callable[[np.ndarray, np.ndarray], None] | None = None,
    target: str = "loss",
) -> Float[np.ndarray, "n d"]:
    """Points ``y`` of the search cube moved ``steps`` Adam steps (in logit space) up the
    smoothed closed loop's
    ``target`` (:data:`TARGETS`: the per-flight training loss, or :func:`impact_speed`) of
    each, flown as members ``members`` (default ``0 .. n-1``) of the population of ``key``;
    ``after_step(y, values)`` is told each new iterate and the target's values at the one
    before it, and may return the points to go on from instead."""
    y = np.clip(np.asarray(y, dtype=np.float64), _START_EDGE, 1.0 - _START_EDGE)
    u = jnp.asarray(np.log(y) - np.log1p(-y), dtype=jnp.result_type(float))
    opt_state = optax.adam(learning_rate).init(u)
    members = jnp.asarray(np.arange(len(y)) if members is None else members, dtype=jnp.uint32)
    for _ in range(steps):
        u, opt_state, losses = _ascent_step(
            smooth_sim, gains, sampler, success, objective, key, members, u, opt_state,
            sigma_bound, learning_rate, target,
        )  # fmt: skip
        y = np.asarray(jax.nn.sigmoid(u), dtype=np.float64)
        if after_step is not None:
            replaced = after_step(y, np.asarray(losses))
            if replaced is not None:
                y = np.clip(replaced, _START_EDGE, 1.0 - _START_EDGE)
                u = jnp.asarray(np.log(y) - np.log1p(-y), dtype=u.dtype)
    return y


def impact_speed(outcome: Outcome, gravity_mps2: float) -> Float[Array, " n"]:
    """The speed each flight meets the ground with: its touchdown speed if it landed; for
    one that ran out of propellant above the ground, from its final speed and height by
    energy (it falls); for one still flying at the planned horizon, its speed then."""
    v2 = jnp.sum(outcome.touchdown_velocity_mps**2, axis=-1)
    falling = outcome.exhausted & ~outcome.landed
    height = jnp.where(falling, jnp.maximum(outcome.final_height_m, 0.0), 0.0)
    return jnp.sqrt(v2 + 2.0 * gravity_mps2 * height + 1e-6)


@eqx.filter_jit
def _ascent_step(
    sim, gains, sampler, success, objective, key, members, u, opt_state, sigma_bound, lr, target
):
    def loss(u):
        x = latent_rows(jax.nn.sigmoid(u), sampler.catalog, sigma_bound)
        z = with_normal(population_latents(key, members), x)
        outcome = simulate(sim, gains, sampler.from_latents(z))
        if target == "impact_speed":
            losses = impact_speed(outcome, sim.gravity_mps2)
        else:
            losses = scenario_loss(outcome, success, objective)
        return -jnp.sum(losses), losses

    (_, losses), grad = jax.value_and_grad(loss, has_aux=True)(u)
    grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
    updates, opt_state = optax.adam(lr).update(grad, opt_state)
    return optax.apply_updates(u, updates), opt_state, losses


_members = eqx.filter_jit(lambda sampler, key, indices: sampler.members(key, indices))


def catalog_worst(
    sim: SimSpec,
    gains: Gains,
    sampler: ScenarioSampler,
    success: SuccessCriteria,
    n: int,
    *,
    key: PRNGKeyArray,
    chunk: int = 16_384,
) -> tuple[float, int]:
    """The largest touchdown speed among members ``0 .. n-1`` of the population of ``key``
    drawn from the catalog (plain Monte Carlo), and the member that flew it."""
    worst, member = -np.inf, -1
    for lo in range(0, n, chunk):
        indices = jnp.arange(lo, min(n, lo + chunk), dtype=jnp.uint32)
        outcome = simulate_population(sim, gains, _members(sampler, key, indices))
        speed = np.asarray(landing_metrics(outcome, success).speed_mps)
        i = int(np.argmax(speed))
        if speed[i] > worst:
            worst, member = float(speed[i]), lo + i
    return worst, member
