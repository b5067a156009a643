"""The main job: gains that stay safe when the altimeter misbehaves, and what that costs.

1. Baseline gains: tuned from the hand-made design on nominal sensors only (no faults).
2. Optimized gains: tuned from the same design, same objective and budget, on the fault
   catalog.
3. Both evaluated on one held-out population (another seed) with the faults, and on a
   held-out population with nominal sensors (the fuel price of robustness when nothing fails).
4. HAKUTO-R Mission 2 replay: the replay group's default option (``conf/replay/m2.yaml``,
   the definition ``+experiment=replay_m2`` flies), LRF first valid near 900 m with the
   altitude estimate too high at the start.

Each step is a stage of :mod:`descent_opt.stages` (tune, evaluate, replay) that other jobs
reuse.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from descent_opt import export, report
from descent_opt.checkpoint import Checkpoints
from descent_opt.config import RunConfig
from descent_opt.export import gains_to_dict, write_gain_table
from descent_opt.guidance import Gains
from descent_opt.jobs import FLIGHT_GROUPS, Job, Progress, starting_gains, use_precision
from descent_opt.optimize.gains import NonFiniteTraining
from descent_opt.rundir import write_metrics, write_text_atomic
from descent_opt.simulate import Trace
from descent_opt.stages import evaluate, replay, tune_side_by_side, tunings

__all__ = [
    "JOB", "RobustGainsResult", "run", "run_robust_gains", "summary",
    "write_outputs",
]  # fmt: skip


@dataclasses.dataclass
class RobustGainsResult:
    baseline: Gains
    optimized: Gains
    metrics: dict
    history: dict[str, dict[str, np.ndarray]]
    heldout: dict[str, dict[str, np.ndarray]]  # per-scenario records of each gain table
    m2_traces: dict[str, Trace]


def run(
    config: RunConfig,
    *,
    progress: Progress | None = None,
    initial: Gains | None = None,
    checkpoints: Checkpoints | None = None,
) -> RobustGainsResult:
    """Tune baseline and robust gains, evaluate both, replay Mission 2.

    ``progress`` (:class:`~descent_opt.jobs.Progress`) is told of every optimisation step
    and evaluated scenario; ``checkpoints`` (:class:`~descent_opt.checkpoint.Checkpoints`)
    saves both tunings as they go and holds the state a resumed run continues from."""
    start = time.perf_counter()
    dtype = use_precision(config)
    design, _ = starting_gains(config, dtype)
    initial = design if initial is None else initial
    # Same design, objective, budget and optimiser for both; only the sensors differ.
    tuned = tune_side_by_side(
        config, initial, tunings(config), progress=progress, checkpoints=checkpoints
    )
    gains = {name: g for name, (g, _) in tuned.items()}
    history = {name: h for name, (_, h) in tuned.items()}

    def evaluated(nominal_sensors: bool) -> dict[str, dict]:
        suffix = " (nominal sensors)" if nominal_sensors else ""
        return {
            name: evaluate(
                config,
                g,
                nominal_sensors=nominal_sensors,
                progress=progress,
                phase=f"evaluating {name} gains{suffix}",
            )
            for name, g in gains.items()
        }

    held, held_clean = evaluated(False), evaluated(True)
    m2, traces = replay(config, gains, dtype)

    summary = {name: r.tally.summary() for name, r in held.items()}
    summary_clean = {name: r.tally.summary() for name, r in held_clean.items()}
    metrics = {
        "baseline": summary["baseline"],
        "optimized": summary["optimized"],
        "m2_replay": {
            **m2,
            "mission": config.replay.mission,
            "lrf_acquisition_m": config.replay.lrf_acquisition_m,
            "altitude_error_m": config.replay.altitude_error_m,
        },
        "nominal": summary_clean,
        "fuel_price_kg": {
            "with_faults": summary["optimized"]["fuel_kg_mean"]
            - summary["baseline"]["fuel_kg_mean"],
            "nominal_sensors": summary_clean["optimized"]["fuel_kg_mean"]
            - summary_clean["baseline"]["fuel_kg_mean"],
        },
        "by_fault": _by_fault(summary),
        "certification": {name: block["certification"] for name, block in summary.items()},
        "training": {
            name: {k: float(v[-1]) for k, v in h.items()}
            | {"nonfinite_grad_total": int(np.sum(h["nonfinite_grad"]))}
            for name, h in history.items()
        },
        "job_time_s": time.perf_counter() - start,
    }
    return RobustGainsResult(
        baseline=gains["baseline"],
        optimized=gains["optimized"],
        metrics=metrics,
        history=history,
        heldout={name: r.records for name, r in held.items()},
        m2_traces=traces,
    )


run_robust_gains = run


def summary(result: RobustGainsResult) -> str:
    """The table printed at the end of the job."""
    return report.summary_table(result.metrics)


def _by_fault(summary: dict[str, dict]) -> dict:
    """Success rate (and its 95 % interval) of each gain table within each fault class."""
    names = list(summary)
    out = {}
    for fault, entry in summary[names[0]]["by_fault"].items():
        out[fault] = {"n_scenarios": entry["n_scenarios"]}
        for name in names:
            block = summary[name]["by_fault"][fault]
            out[fault][name] = block["success_rate"]
            out[fault][f"{name}_ci95"] = block["success_rate_ci95"]
    return out


def write_outputs(
    result: RobustGainsResult, config: RunConfig, directory: str | Path, wall_time_s: float
) -> list[Path]:
    """Gain tables, plots and ``metrics.json`` (written last, so its presence means the run
    finished)."""
    directory = Path(directory)
    headline = ("success_rate", "success_rate_ci95", "success_rate_lower95", "fuel_kg_mean")
    provenance = export.provenance(
        config,
        job="robust_gains",
        vehicle=dataclasses.asdict(config.vehicle),
        training_steps=config.optimizer.steps,
        heldout={
            name: {k: result.metrics[name][k] for k in headline}
            for name in ("baseline", "optimized")
        },
    )
    written = write_gain_table(result.optimized, directory, provenance)
    base_path = directory / "baseline_gains.json"
    write_text_atomic(
        base_path,
        json.dumps(
            gains_to_dict(result.baseline, dict(provenance, tuned_on="nominal sensors")), indent=2
        )
        + "\n",
    )
    written.append(base_path)
    plots = {
        "touchdown_speed.png": lambda p: report.plot_touchdown_speeds(
            result.heldout, config.success.vertical_speed_max_mps, p
        ),
        "success_vs_acquisition.png": lambda p: report.plot_success_vs_acquisition(
            result.heldout, p
        ),
        "m2_replay.png": lambda p: report.plot_replay(
            result.m2_traces,
            f"{config.replay.mission} replay",
            p,
        ),
    }
    for name, draw in plots.items():
        draw(directory / name)
        written.append(directory / name)
    written.append(write_metrics(directory, dict(result.metrics, wall_time_s=wall_time_s)))
    return written


GROUPS = (
    *FLIGHT_GROUPS, "objective", "optimizer", "checkpoint", "evaluation", "certification",
    "replay",
)  # fmt: skip
JOB = Job(
    name="robust_gains",
    groups=GROUPS,
    run=run,
    write_outputs=write_outputs,
    summary=summary,
    checkpointed=True,
    failures=(NonFiniteTraining,),
)
