"""The worst_case job: the scenario within the catalog's reach that a gain table flies worst,
and how readily each search method finds a failure (ARCH-COMP falsification style).

``+experiment=worst_case gains=PATH`` runs :mod:`descent_opt.worst_case`'s searches (gradient
ascent through the smoothed loop from random restarts, random search, CMA-ES) ``seeds``
times each at one budget of flights, over the catalog's support with the fault classes
certified apart (``certification.unlandable``) left out unless
``worst_case.include_unlandable``. It reports per method the falsification rate (runs that
flew a failure within the budget), the median flights to the first failure and the worst
touchdown speed found, beside the worst of ``reference_samples`` plain catalog samples
(same catalog), and the worst case found with its parameters, flight record, trace
(CSV) and figure.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from descent_opt.config import RunConfig
from descent_opt.faults import landable
from descent_opt.jobs import FLIGHT_GROUPS, Job, Progress, starting_gains, use_precision
from descent_opt.optimize.gains import tuning_sim
from descent_opt.replays import flight_record
from descent_opt.rundir import write_columns_csv, write_metrics
from descent_opt.simulate import simulate_traces
from descent_opt.worst_case import (
    GRADIENT_COST,
    WorstCaseSearch,
    catalog_worst,
    describe,
)


def run(config: RunConfig, *, progress: Progress | None = None) -> dict:
    """Run every search and gather the metrics (and the worst case's trace)."""
    start = time.perf_counter()
    gains, source = starting_gains(config, use_precision(config))
    spec = config.worst_case
    excluded = () if spec.include_unlandable else tuple(config.unlandable)
    sampler = config.sampler(landable(config.faults, excluded))
    search = WorstCaseSearch(
        config.sim,
        tuning_sim(config.sim, config.optimizer.gate_softness),
        gains,
        sampler,
        config.success,
        config.objective,
        spec,
        key=config.population_key(),
        rng_seed=config.seed,
    )
    budget = search.budget()
    total = budget * spec.seeds * len(spec.methods) + spec.reference_samples
    tick = _ticker(progress, total)
    reference = None
    if spec.reference_samples:
        speed, member = catalog_worst(
            config.sim, gains, sampler, config.success, spec.reference_samples,
            key=config.population_key(),
        )  # fmt: skip
        tick("reference samples")(spec.reference_samples)
        reference = {
            "samples": spec.reference_samples,
            "worst_touchdown_speed_mps": speed,
            "member": member,
        }
    runs = {
        method: [search.run(method, seed, tick(f"{method} search")) for seed in range(spec.seeds)]
        for method in spec.methods
    }
    worst = max((r for rs in runs.values() for r in rs), key=lambda r: r.worst_speed_mps)
    flights = search.flights(worst.seed)
    scenario = flights.scenarios(search.rows(worst.worst_y[None, :]), worst.worst_member)
    outcome, trace = simulate_traces(config.sim, gains, scenario)
    trace = jax.tree.map(lambda x: np.asarray(x)[0], trace)  # the one flight
    bar = None if reference is None else reference["worst_touchdown_speed_mps"]
    metrics = {
        "reference": reference,
        "budget_flights": budget,
        "steps_per_flight": config.sim.n_steps,
        "gradient_cost_flights": GRADIENT_COST,
        "excluded_fault_classes": list(excluded),
        "sigma_bound": spec.sigma_bound,
        "arch": {method: _arch(rs, bar) for method, rs in runs.items()},
        "worst_case": {
            "method": worst.method,
            "seed": worst.seed,
            "member": worst.worst_member,
            "touchdown_speed_mps": worst.worst_speed_mps,
            "search_point": [float(v) for v in worst.worst_y],
            **describe(worst.worst_y, search.catalog, spec.sigma_bound),
            "flight": flight_record(outcome, trace, config.success, config.vehicle.mass_dry_kg),
        },
        "gains": source,
        "seed": config.seed,
        "job_time_s": time.perf_counter() - start,
    }
    return {
        "metrics": metrics,
        "trace": trace,
        "progress": {m: [r.progress for r in rs] for m, rs in runs.items()},
    }


def _ticker(progress: Progress | None, total: int):
    def tick(phase: str):
        def advance(n: int) -> None:
            if progress is not None:
                progress(phase, n, total, "flight", {})

        return advance

    return tick


def _arch(runs, bar: float | None) -> dict:
    """The ARCH-COMP summary of one method's runs: falsification rate, median flights to
    the first failure (over the runs that found one), and the worst speeds found."""
    firsts = [r.first_failure_flights for r in runs if r.first_failure_flights is not None]
    speeds = [r.worst_speed_mps for r in runs]
    return {
        "runs": [
            {
                "seed": r.seed,
                "flights": r.flights,
                "first_failure_flights": r.first_failure_flights,
                "worst_touchdown_speed_mps": r.worst_speed_mps,
                **({"smoothed_target": r.smoothed_target} if r.smoothed_target else {}),
            }
            for r in runs
        ],
        "falsified": len(firsts),
        "falsification_rate": len(firsts) / len(runs),
        "median_flights_to_first_failure": float(np.median(firsts)) if firsts else None,
        "median_worst_touchdown_speed_mps": float(np.median(speeds)),
        "min_worst_touchdown_speed_mps": float(np.min(speeds)),
        "at_least_reference": None if bar is None else int(sum(s >= bar for s in speeds)),
    }


def write_outputs(
    result: dict, config: RunConfig, directory: str | Path, wall_time_s: float
) -> list[Path]:
    """``metrics.json``, the worst case's trace (``worst_case_trace.csv``) and figure
    (``worst_case.png``), and each method's worst speed against flights spent
    (``search_progress.png``)."""
    from descent_opt.report import plot_replay_flight, plot_search_progress

    directory = Path(directory)
    metrics = result["metrics"]
    worst = metrics["worst_case"]
    trace = result["trace"]
    columns = {f.name: np.asarray(getattr(trace, f.name)) for f in dataclasses.fields(trace)}
    trace_path = write_columns_csv(directory / "worst_case_trace.csv", columns)
    title = (
        f"worst case found ({worst['method']}, seed {worst['seed']}): "
        f"{worst['touchdown_speed_mps']:.1f} m/s at touchdown"
    )
    figure = directory / "worst_case.png"
    plot_replay_flight(result["trace"], title, config.vehicle.mass_dry_kg, figure)
    reference = metrics["reference"]
    bar = None if reference is None else reference["worst_touchdown_speed_mps"]
    progress = directory / "search_progress.png"
    plot_search_progress(result["progress"], bar, progress)
    written = write_metrics(directory, dict(metrics, wall_time_s=wall_time_s))
    return [written, trace_path, figure, progress]


def summary(result: dict) -> str:
    """The ARCH table and the worst case in a few lines."""
    m = result["metrics"]
    lines = []
    if m["reference"]:
        r = m["reference"]
        lines.append(
            f"worst of {r['samples']:,} catalog samples: {r['worst_touchdown_speed_mps']:.2f} m/s"
        )
    lines.append(f"budget {m['budget_flights']:,} flights per run; falsification (ARCH):")
    for method, a in m["arch"].items():
        median = a["median_flights_to_first_failure"]
        lines.append(
            f"  {method:9s} {a['falsified']}/{len(a['runs'])} runs, median flights to first "
            f"failure {median if median is not None else '-'}, worst speed median "
            f"{a['median_worst_touchdown_speed_mps']:.2f} m/s"
            + ("" if a["at_least_reference"] is None
               else f", {a['at_least_reference']} runs at least the reference")
        )  # fmt: skip
    w = m["worst_case"]
    lines.append(
        f"worst case: {w['touchdown_speed_mps']:.2f} m/s ({w['method']}, seed {w['seed']}), "
        f"faults present: {', '.join(w['present']) or 'none'}"
    )
    return "\n".join(lines)


JOB = Job(
    name="worst_case",
    groups=(*FLIGHT_GROUPS, "evaluation", "worst_case", "optimizer", "objective", "certification"),
    run=run,
    write_outputs=write_outputs,
    summary=summary,
)
