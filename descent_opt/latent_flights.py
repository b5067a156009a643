"""Flights as functions of their latent draws: the limit states that rare-event,
worst-case and sensitivity methods work on.

:class:`LatentFlights` flies the scenarios whose draws are given as standard-normal rows
(:func:`~descent_opt.scenarios.to_normal`'s vector) and scores each flight: a failure
margin (``> 1``: the success rules are broken) or the touchdown speed. Everything not in the
latent vector (the crater field's layout, the sensor noise) is keyed per evaluation by a
counter, so that every flight is an independent draw of it and any evaluation can be flown
again by its index (with ``threshold`` set, the evaluations scoring at least it are kept with
their index).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int, PRNGKeyArray

from descent_opt.guidance import Gains
from descent_opt.objectives import SuccessCriteria, landing_metrics
from descent_opt.scenarios import (
    LATENT_NAMES,
    Scenario,
    ScenarioSampler,
    population_latents,
    with_normal,
)
from descent_opt.simulate import SimSpec, simulate_population

EVENTS = ("failure", "touchdown_speed")
NOT_DOWN_MARGIN = 100.0  # the margin of a flight that ran dry or never touched down


def failure_margin(metrics, criteria: SuccessCriteria):
    """The largest ratio of a touchdown figure to its limit (vertical and horizontal speed,
    tilt): above 1 the landing fails; :data:`NOT_DOWN_MARGIN` for a flight that ran out of
    propellant or is still airborne."""
    ratio = jnp.maximum(
        metrics.vertical_speed_mps / criteria.vertical_speed_max_mps,
        jnp.maximum(
            metrics.horizontal_speed_mps / criteria.horizontal_speed_max_mps,
            metrics.tilt_deg / criteria.tilt_max_deg,
        ),
    )
    down = metrics.landed & ~metrics.exhausted
    return jnp.where(down, ratio, NOT_DOWN_MARGIN)


class LatentFlights:
    """``g(x)``: the scores of the flights whose draws are the rows of ``x`` (``(n, d)``,
    ``d = len(LATENT_NAMES)``), flown with ``gains``. Evaluation ``j`` (counted over every
    call) takes its keyed parts from member ``j`` of the population of ``key``. ``event``:
    ``failure`` scores the failure margin, ``touchdown_speed`` the speed (m/s)."""

    def __init__(
        self,
        sim: SimSpec,
        gains: Gains,
        sampler: ScenarioSampler,
        success: SuccessCriteria,
        *,
        key: PRNGKeyArray,
        event: str = "failure",
    ):
        if event not in EVENTS:
            raise ValueError(f"event: {event!r} is not one of {EVENTS}")
        self.sim, self.gains, self.sampler, self.success = sim, gains, sampler, success
        self.key, self.event = key, event
        self.evaluations = 0
        self.threshold = None  # when set, evaluations scoring at least this are kept
        self.exceedances: list[tuple[int, np.ndarray, float]] = []  # (index, row, score)

    @property
    def dim(self) -> int:
        return len(LATENT_NAMES)

    def scenarios(
        self, x: Float[np.ndarray, "n d"], first: int | Int[np.ndarray, " n"]
    ) -> Scenario:
        """The scenarios of rows ``x`` flown as evaluations ``first, first + 1, ...`` (or,
        ``first`` an array, as evaluations ``first[i]``)."""
        if np.ndim(first):
            indices = jnp.asarray(first, dtype=jnp.uint32)
        else:
            indices = jnp.arange(first, first + len(x), dtype=jnp.uint32)
        z = population_latents(self.key, indices)
        dtype = z.position.dtype
        return self.sampler.from_latents(with_normal(z, jnp.asarray(x, dtype)))

    def fly(
        self, x: Float[np.ndarray, "n d"], first: int | Int[np.ndarray, " n"]
    ) -> dict[str, np.ndarray]:
        """Fly rows ``x`` as evaluations from ``first`` (or evaluations ``first``, an
        array): per flight its score, touchdown speeds, fuel and success (NumPy)."""
        outcome = simulate_population(self.sim, self.gains, self.scenarios(x, first))
        m = landing_metrics(outcome, self.success)
        score = m.speed_mps if self.event == "touchdown_speed" else failure_margin(m, self.success)
        out = {
            "score": score,
            "touchdown_speed_mps": m.speed_mps,
            "touchdown_vz_mps": m.vertical_speed_mps,
            "touchdown_vh_mps": m.horizontal_speed_mps,
            "fuel_kg": m.fuel_kg,
            "success": m.success,
        }
        return jax.tree.map(np.asarray, out)

    def __call__(self, x: Float[np.ndarray, "n d"]) -> Float[np.ndarray, " n"]:
        first = self.evaluations
        self.evaluations += len(x)
        score = self.fly(np.asarray(x), first)["score"].astype(np.float64)
        if self.threshold is not None:
            for i in np.flatnonzero(score >= self.threshold):
                self.exceedances.append((first + int(i), np.asarray(x[i]), float(score[i])))
        return score
