"""The monte_carlo job: fly a gain table over a dispersed population of any size.

``+experiment=monte_carlo [gains=PATH]`` flies ``evaluation.n_scenarios`` members of the
held-out population (the same members the main job evaluates) with the configured faults,
terrain, vehicle and scenario dispersion, in chunks with streaming statistics
(:mod:`descent_opt.population`): success rate with its exact binomial confidence bounds,
outcome rates, percentiles, success per fault class and per fault-parameter bin, and the
worst failures with their index. ``evaluation.indices=[i, ...]`` re-flies exactly those
members instead and writes their traces.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax
import numpy as np

from descent_opt import certification, report
from descent_opt.config import RunConfig
from descent_opt.guidance import Gains
from descent_opt.jobs import FLIGHT_GROUPS, Job, Progress, starting_gains, use_precision
from descent_opt.population import SPEED_EDGES_MPS, PopulationResult, fly_members
from descent_opt.rundir import save_npz_atomic, write_metrics
from descent_opt.simulate import Trace
from descent_opt.stages import evaluate

log = logging.getLogger("descent_opt")


@dataclasses.dataclass
class MonteCarloResult:
    metrics: dict
    population: PopulationResult | None  # the population run (None when re-flying)
    members: dict[str, np.ndarray] | None  # re-flown members' records
    traces: Trace | None  # re-flown members' traces, scenario first


def _member_block(records: dict[str, np.ndarray], i: int) -> dict:
    return {
        "index": int(records["index"][i]),
        "touchdown_speed_mps": float(records["touchdown_speed_mps"][i]),
        "touchdown_vz_mps": float(records["touchdown_vz_mps"][i]),
        "touchdown_vh_mps": float(records["touchdown_vh_mps"][i]),
        "tilt_deg": float(records["tilt_deg"][i]),
        "touchdown_time_s": float(records["touchdown_time_s"][i]),
        "fuel_kg": float(records["fuel_kg"][i]),
        "landed": bool(records["landed"][i]),
        "exhausted": bool(records["exhausted"][i]),
        "success": bool(records["success"][i]),
    }


def _where_diverged(config: RunConfig, gains: Gains, key, indices: list[int]) -> list[dict]:
    """Re-fly diverged members to find the first step whose state is not finite."""
    if not indices:
        return []
    _, traces = fly_members(config.sim, gains, config.sampler(), config.success, indices, key=key)
    out = []
    for i, index in enumerate(indices):
        state = np.stack(
            [
                traces.altitude_m[i],
                traces.vertical_speed_mps[i],
                traces.altitude_estimate_m[i],
                traces.mass_kg[i],
            ]
        )
        bad = ~np.isfinite(state).all(axis=0)
        step = int(np.argmax(bad)) if bad.any() else None
        out.append(
            {
                "index": int(index),
                "first_nonfinite_step": step,
                "time_s": None if step is None else float(traces.time_s[i][step]),
            }
        )
        log.warning(
            "member %d: state not finite from step %s (re-fly it with evaluation.indices=[%d])",
            index,
            step,
            index,
        )
    return out


def run(config: RunConfig, *, progress: Progress | None = None) -> MonteCarloResult:
    """Fly the population (or re-fly ``evaluation.indices``) and gather the metrics."""
    start = time.perf_counter()
    gains, source = starting_gains(config, use_precision(config))
    ev = config.evaluation
    key = config.population_key()
    common = {"seed": config.seed, "seed_offset": ev.seed_offset, "gains": source}
    if ev.indices is not None:
        records, traces = fly_members(
            config.sim, gains, config.sampler(), config.success, list(ev.indices), key=key
        )
        metrics = {
            "scenarios": [_member_block(records, i) for i in range(len(ev.indices))],
            **common,
            "job_time_s": time.perf_counter() - start,
        }
        return MonteCarloResult(metrics, None, records, traces)

    population = evaluate(
        config, gains, keep_records=ev.save_scenarios, progress=progress, phase="monte carlo"
    )
    tally = population.tally
    metrics = {
        **tally.summary(),
        "nonfinite": _where_diverged(config, gains, key, tally.nonfinite_indices[:5]),
        "failures": tally.failure_list(),
        "scenarios_per_s": population.scenarios_per_s,
        **common,
        "job_time_s": time.perf_counter() - start,
    }
    return MonteCarloResult(metrics, population, None, None)


def write_outputs(
    result: MonteCarloResult, config: RunConfig, directory: str | Path, wall_time_s: float
) -> list[Path]:
    """Plots, ``scenarios.npz`` (``evaluation.save_scenarios``) or, when re-flying,
    ``traces.npz`` and one PNG per member; ``metrics.json`` last."""
    directory = Path(directory)
    written = []
    if result.population is not None:
        tally = result.population.tally
        path = directory / "touchdown_speed.png"
        report.plot_speed_exceedance(
            tally.speed_histograms,
            SPEED_EDGES_MPS,
            {
                "touchdown_vz_mps": config.success.vertical_speed_max_mps,
                "touchdown_vh_mps": config.success.horizontal_speed_max_mps,
            },
            config.success.crash_speed_mps,
            path,
        )
        written.append(path)
        if tally.by_parameter:
            path = directory / "success_vs_faults.png"
            report.plot_success_vs_faults(tally.by_parameter, path)
            written.append(path)
        if result.population.records is not None:
            written.append(save_npz_atomic(directory / "scenarios.npz", result.population.records))
    if result.members is not None:
        traces = {f"trace_{k}": v for k, v in dataclasses.asdict(result.traces).items()}
        written.append(save_npz_atomic(directory / "traces.npz", {**result.members, **traces}))
        for i, index in enumerate(result.members["index"]):
            one = jax.tree.map(lambda x: x[i], result.traces)
            block = result.metrics["scenarios"][i]
            title = (
                f"member {index}: touchdown {block['touchdown_speed_mps']:.2f} m/s, "
                f"{'success' if block['success'] else 'failure'}"
            )
            path = directory / f"scenario_{index}.png"
            report.plot_member(one, title, config.vehicle.mass_dry_kg, path)
            written.append(path)
    written.append(write_metrics(directory, dict(result.metrics, wall_time_s=wall_time_s)))
    return written


def summary(result: MonteCarloResult) -> str:
    """The short table printed at the end."""
    m = result.metrics
    if "scenarios" in m:
        lines = [f"{'index':>10s}{'speed m/s':>12s}{'vz m/s':>10s}{'fuel kg':>10s}  success"]
        for b in m["scenarios"]:
            lines.append(
                f"{b['index']:>10d}{b['touchdown_speed_mps']:>12.3f}{b['touchdown_vz_mps']:>10.3f}"
                f"{b['fuel_kg']:>10.2f}  {b['success']}"
            )
        return "\n".join(lines)
    low, high = m["success_rate_ci95"]
    times = m["touchdown_time_s"]
    lines = [
        f"Monte Carlo: {m['n_scenarios']:,} scenarios, {m['scenarios_per_s']:,.0f} scenarios/s",
        "",
        f"{'success rate':28s}{m['success_rate']:.4%}  (95 % CI {low:.4%} - {high:.4%}; "
        f"one-sided 95 % lower bound {m['success_rate_lower95']:.4%})",
        f"{'crash / exhausted / timeout':28s}{m['crash_rate']:.4%} / {m['exhausted_rate']:.4%} / "
        f"{m['timeout_rate']:.4%}",
        f"{'fuel mean / p99 (kg)':28s}{m['fuel_kg_mean']:.2f} / {m['fuel_kg_p99']:.2f}",
        f"{'touchdown vz p50/p99/max':28s}{m['touchdown_vz_mps_p50']:.2f} / "
        f"{m['touchdown_vz_mps_p99']:.2f} / {m['touchdown_vz_mps_max']:.2f} m/s",
        f"{'touchdown time p50/p99/max':28s}{times['p50']:.1f} / {times['p99']:.1f} / "
        f"{times['max']:.1f} s ({times['late_rate']:.3%} after the planned "
        f"{times['planned_s']:g} s)",
        f"{'LRF locked out at the end':28s}{m['lrf_locked_out_rate']:.4%}",
        "",
        *certification.lines(m["certification"]),
        "",
        f"{'fault class':28s}{'scenarios':>10s}{'success':>10s}",
    ]
    for name, b in m["by_fault"].items():
        rate = "-" if b["success_rate"] is None else f"{b['success_rate']:.2%}"
        lines.append(f"{name:28s}{b['n_scenarios']:>10,d}{rate:>10s}")
    if m["failures"]:
        worst = ", ".join(str(f["index"]) for f in m["failures"][:10])
        lines += ["", f"worst failures (index): {worst}"]
    return "\n".join(lines)


JOB = Job(
    name="monte_carlo",
    groups=(*FLIGHT_GROUPS, "evaluation", "certification"),
    run=run,
    write_outputs=write_outputs,
    summary=summary,
)
