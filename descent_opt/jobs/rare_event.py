"""The rare_event job: the probability of a rare failure of a gain table, with far fewer
flights than plain Monte Carlo needs.

``+experiment=rare_event gains=PATH`` estimates ``P[failure]`` (the success rules broken)
or, with ``rare_event.event=touchdown_speed``, ``P[touchdown speed >= threshold_mps]``, on the
configured catalog and dispersion, by adaptive importance sampling over the scenario's
latent draws (:mod:`descent_opt.rare_event` on :class:`~descent_opt.latent_flights.
LatentFlights`): cross-entropy by default, subset simulation or plain Monte Carlo. It
reports the estimate with its coefficient of variation, effective sample size, 95 %
interval and the flights used, where the proposal moved the draws (the likeliest way to
fail), and the failures found by latent vector, each re-flown by its evaluation index.
With ``rare_event.by_fault=true`` it then estimates, by the same method and budget, the
probability given each fault class the catalog draws (``by_fault`` in metrics.json, one
block per class; without it the key is absent).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from descent_opt import rare_event
from descent_opt.config import RunConfig
from descent_opt.faults import FAULT_CLASSES, class_rate, given
from descent_opt.jobs import FLIGHT_GROUPS, Job, Progress, starting_gains, use_precision
from descent_opt.latent_flights import LatentFlights
from descent_opt.rundir import write_metrics
from descent_opt.scenarios import LATENT_NAMES


def run(config: RunConfig, *, progress: Progress | None = None) -> dict:
    """Estimate the probability (and, with ``rare_event.by_fault``, its value given each
    fault class) and gather the metrics."""
    start = time.perf_counter()
    gains, source = starting_gains(config, use_precision(config))
    spec = config.rare_event
    threshold = 1.0 if spec.event == "failure" else spec.threshold_mps
    flights = _flights(config, gains, config.faults, config.population_key(), threshold)
    est = _estimate(flights, spec, config.seed, progress, f"rare event ({spec.method})")
    metrics = {
        **_figures(est),
        "method": spec.method,
        "event": spec.event,
        "threshold": threshold,
        "levels": [float(v) for v in est.levels],
        "equivalent_monte_carlo_flights": est.equivalent_mc_runs,
        "proposal": _proposal(est),
        "failures": _refly(flights, spec.keep),
    }
    if spec.by_fault:
        metrics["by_fault"] = _by_fault(config, gains, threshold, progress)
    metrics.update(gains=source, seed=config.seed, job_time_s=time.perf_counter() - start)
    return metrics


def _flights(config: RunConfig, gains, catalog, key, threshold: float) -> LatentFlights:
    """The limit state: flights under ``catalog`` keyed by ``key``, keeping exceedances."""
    flights = LatentFlights(
        config.sim, gains, config.sampler(catalog), config.success, key=key,
        event=config.rare_event.event,
    )  # fmt: skip
    flights.threshold = threshold
    return flights


def _estimate(flights: LatentFlights, spec, seed, progress: Progress | None, phase: str):
    """``spec.method`` with ``spec``'s budget on ``flights`` (randomness from ``seed``: an
    int or a NumPy generator), each batch reported to ``progress`` under ``phase``."""
    g = flights
    budget = spec.n_per_level * spec.max_levels + spec.n_final  # at most
    if progress is not None:

        def g(x):
            out = flights(x)
            progress(phase, len(x), budget, "flight", {})
            return out

    common = {"key": seed, "keep": spec.keep}
    threshold = flights.threshold
    if spec.method == "cross_entropy":
        return rare_event.cross_entropy(
            g, flights.dim, threshold, n_per_level=spec.n_per_level, n_final=spec.n_final,
            max_levels=spec.max_levels, **common,
        )  # fmt: skip
    if spec.method == "subset_simulation":
        return rare_event.subset_simulation(
            g, flights.dim, threshold, n_per_level=spec.n_per_level,
            max_levels=spec.max_levels, **common,
        )  # fmt: skip
    return rare_event.monte_carlo(g, flights.dim, threshold, n=spec.n_final, **common)


def _figures(est) -> dict:
    """The estimate's headline figures."""
    return {
        "failure_probability": est.probability,
        "failure_probability_ci95": [float(v) for v in est.ci95],
        "cov": est.cov,
        "effective_sample_size": est.effective_sample_size,
        "n_simulations": est.n_simulations,
        "converged": est.converged,
    }


def _by_fault(config: RunConfig, gains, threshold: float, progress: Progress | None) -> dict:
    """The probability given each fault class the catalog draws (the others are left out),
    estimated like the overall one on the catalog conditioned on the class
    (:func:`~descent_opt.faults.given`): class ``i`` of :data:`FAULT_CLASSES` keys its
    flights with ``fold_in(population key, i + 1)`` and its method with the seed sequence
    ``(seed, i + 1)``. ``catalog_rate``: the class's probability under the catalog;
    ``contribution``: that times the conditional probability (classes overlap: the
    contributions need not add up to the overall probability)."""
    import jax

    spec, out = config.rare_event, {}
    for i, name in enumerate(FAULT_CLASSES):
        rate = class_rate(config.faults, name)
        if rate <= 0.0:
            continue
        key = jax.random.fold_in(config.population_key(), i + 1)
        flights = _flights(config, gains, given(config.faults, name), key, threshold)
        seed = np.random.default_rng([config.seed, i + 1])
        est = _estimate(flights, spec, seed, progress, f"rare event ({spec.method}) | {name}")
        p = est.probability
        out[name] = {**_figures(est), "catalog_rate": rate, "contribution": rate * p}
    return out


def _proposal(est) -> dict | None:
    """Where the importance-sampling proposal moved each draw (in sigmas), largest shift
    first: the likeliest way to fail."""
    if est.proposal_mean is None:
        return None
    order = np.argsort(-np.abs(est.proposal_mean))
    return {
        LATENT_NAMES[i]: {"mean": float(est.proposal_mean[i]), "std": float(est.proposal_std[i])}
        for i in order
    }


def _refly(flights: LatentFlights, keep: int) -> list[dict]:
    """The highest-scoring exceedances found (worst first), each flown again by its
    evaluation index (alone: a program of another batch shape, so its score agrees to
    float rounding): its latent vector and its touchdown."""
    found = sorted(flights.exceedances, key=lambda e: -e[2])[:keep]
    out = []
    for index, x, score in found:
        again = flights.fly(x[None, :], index)
        out.append({
            "evaluation": index,
            "score": score,
            "rescore": float(again["score"][0]),
            "touchdown_speed_mps": float(again["touchdown_speed_mps"][0]),
            "touchdown_vz_mps": float(again["touchdown_vz_mps"][0]),
            "touchdown_vh_mps": float(again["touchdown_vh_mps"][0]),
            "fuel_kg": float(again["fuel_kg"][0]),
            "success": bool(again["success"][0]),
            "latents": dict(zip(LATENT_NAMES, (float(v) for v in x))),
        })  # fmt: skip
    return out


def write_outputs(
    result: dict, config: RunConfig, directory: str | Path, wall_time_s: float
) -> list[Path]:
    """``metrics.json``."""
    return [write_metrics(Path(directory), dict(result, wall_time_s=wall_time_s))]


def summary(result: dict) -> str:
    """The estimate in a few lines."""
    low, high = result["failure_probability_ci95"]
    event = "failure" if result["event"] == "failure" else f"speed >= {result['threshold']:g}"
    lines = [
        f"P[{event}] = {result['failure_probability']:.3e}  (95 % interval {low:.3e} - "
        f"{high:.3e}; CoV {result['cov']:.3f})",
        f"{result['method']}: {result['n_simulations']:,} flights (plain Monte Carlo for the "
        f"same CoV: {result['equivalent_monte_carlo_flights']:,.0f}); effective sample size "
        f"{result['effective_sample_size']:,.0f}",
    ]
    if result["proposal"]:
        top = list(result["proposal"].items())[:4]
        lines.append("proposal moved: " + ", ".join(f"{k} {v['mean']:+.2f}" for k, v in top))
    if result["failures"]:
        worst = result["failures"][0]
        lines.append(
            f"worst failure found: evaluation {worst['evaluation']}, "
            f"{worst['touchdown_speed_mps']:.2f} m/s re-flown"
        )
    for name, c in result.get("by_fault", {}).items():
        lines.append(
            f"given {name} (rate {c['catalog_rate']:.3g}): P = {c['failure_probability']:.3e} "
            f"(CoV {c['cov']:.3f}, {c['n_simulations']:,} flights); contributes "
            f"{c['contribution']:.3e}" + ("" if c["converged"] else "; levels did not converge")
        )
    return "\n".join(lines)


JOB = Job(
    name="rare_event",
    groups=(*FLIGHT_GROUPS, "evaluation", "rare_event"),
    run=run,
    write_outputs=write_outputs,
    summary=summary,
)
