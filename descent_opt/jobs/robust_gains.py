"""The main job: gains that stay safe when the altimeter misbehaves, and what that costs.

1. Baseline gains: tuned from the hand-made design on nominal sensors only (no faults).
2. Optimized gains: tuned from the same design, same objective and budget, on the fault
   catalog.
3. Both evaluated on one held-out population (another seed) with the faults, and on a
   held-out population with nominal sensors (the fuel price of robustness when nothing fails).
4. HAKUTO-R Mission 2 replay: LRF first valid at ``replay.lrf_acquisition_m`` with the
   altitude estimate ``replay.altitude_error_m`` too high at the start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from descent_opt import export, report
from descent_opt.checkpoint import Checkpoints
from descent_opt.config import RunConfig
from descent_opt.export import gains_to_dict, write_gain_table
from descent_opt.faults import FaultCatalog
from descent_opt.guidance import Gains
from descent_opt.jobs import Progress, scenario_progress, starting_gains
from descent_opt.objectives import landing_metrics
from descent_opt.optimize.gains import NonFiniteTraining, initial_state, tune_gains
from descent_opt.population import PopulationResult, fly_population
from descent_opt.rundir import write_metrics, write_text_atomic
from descent_opt.scenarios import (
    Scenario,
    TerrainSpec,
    replace_member,
    sample_scenarios,
)
from descent_opt.simulate import Trace, simulate_traces

log = logging.getLogger("descent_opt")
FAILURES = (NonFiniteTraining,)
CHECKPOINTED = True  # run() takes checkpoints=


@dataclasses.dataclass
class RobustGainsResult:
    baseline: Gains
    optimized: Gains
    metrics: dict
    history: dict[str, dict[str, np.ndarray]]
    heldout: dict[str, dict[str, np.ndarray]]  # per-scenario records of each gain table
    m2_traces: dict[str, Trace]


def evaluate(
    config: RunConfig,
    gains: Gains,
    *,
    nominal_sensors: bool = False,
    progress: Progress | None = None,
    name: str = "",
) -> PopulationResult:
    """Fly ``gains`` over the held-out population (``evaluation.n_scenarios`` members of
    :meth:`RunConfig.population_key`, ``evaluation.n_nominal_scenarios`` of its twin with
    nominal sensors), with the configured faults or nominal sensors,
    through the same chunked runner as ``monte_carlo``; per-scenario records are kept for
    the plots. ``name`` names the gain table on the progress bar."""
    faults = FaultCatalog.nominal(config.sim.lrf.max_range_m) if nominal_sensors else None
    ev = config.evaluation
    n = ev.n_nominal_scenarios if nominal_sensors else ev.n_scenarios
    phase = "evaluating" + (f" {name} gains" if name else "")
    phase += " (nominal sensors)" if nominal_sensors else ""
    return fly_population(
        config.sim,
        gains,
        config.sampler(faults),
        config.success,
        n,
        key=config.population_key(nominal_sensors),
        chunk_size=ev.chunk_size,
        keep_failures=ev.keep_failures,
        keep_records=True,
        unlandable=config.unlandable,
        progress=None if progress is None else scenario_progress(progress, phase, n),
    )


def m2_replay_scenario(config: RunConfig) -> Scenario:
    """The nominal descent over flat mare with one fault: the LRF's first valid range at
    ``replay.lrf_acquisition_m``, and an altitude estimate that starts too high by
    ``replay.altitude_error_m`` (the sign that delays braking)."""
    nominal = FaultCatalog.nominal(config.sim.lrf.max_range_m)
    one = sample_scenarios(
        config.scenario,
        TerrainSpec(kind="flat"),
        nominal,
        config.vehicle.mass_initial_kg,
        1,
        key=jax.random.key(config.seed),
        nominal_first=True,
    )
    return replace_member(
        one,
        0,
        **{
            "faults.acquisition_range_m": config.replay.lrf_acquisition_m,
            "nav_position_error_m": jnp.array([0.0, 0.0, config.replay.altitude_error_m]),
            "imu_bias_mps2": jnp.zeros(3),
        },
    )


def _replay_block(config: RunConfig, outcome) -> dict:
    m = jax.tree.map(lambda x: np.asarray(x)[0], landing_metrics(outcome, config.success))
    speed = float(np.linalg.norm(np.asarray(outcome.touchdown_velocity_mps)[0]))
    return {
        "touchdown_speed_mps": speed,
        "touchdown_vz_mps": float(m.vertical_speed_mps),
        "touchdown_vh_mps": float(m.horizontal_speed_mps),
        "fuel_kg": float(m.fuel_kg),
        "success": bool(m.success),
        "landed": bool(m.landed),
    }


def run(
    config: RunConfig,
    *,
    progress: Progress | None = None,
    initial: Gains | None = None,
    checkpoints: Checkpoints | None = None,
) -> RobustGainsResult:
    """Tune baseline and robust gains, evaluate both, replay Mission 2.

    ``progress`` (:class:`~descent_opt.jobs.Progress`) is told of every optimisation step;
    ``checkpoints`` (:class:`~descent_opt.checkpoint.Checkpoints`) saves both tunings as
    they go and holds the state a resumed run continues from."""
    start = time.perf_counter()
    design, _ = starting_gains(config)
    initial = design if initial is None else initial
    key = jax.random.key(config.seed)
    k_base, k_robust = jax.random.split(key)
    nominal = FaultCatalog.nominal(config.sim.lrf.max_range_m)

    def tune(phase, catalog, k):
        steps = config.optimizer.steps
        callback = None
        if progress is not None:
            callback = lambda i, parts: progress(  # noqa: E731
                f"tuning {phase} gains",
                1,
                steps,
                "step",
                {"objective": parts["objective"], "fuel": parts["fuel_fraction"]},
            )
        start = on_step = None
        within = contextlib.nullcontext()
        if checkpoints is not None:
            start = checkpoints.state(phase, initial_state(initial, config.optimizer, key=k))
            if start is not None:
                log.info("resuming %s tuning after step %d of %d", phase, start.step, steps)
            on_step = checkpoints.saver(phase, steps)
            within = checkpoints.tuning_phase()
        with within:
            return tune_gains(
                config.sim,
                initial,
                config.sampler(catalog),
                config.success,
                config.objective,
                config.optimizer,
                key=k,
                progress=callback,
                start=start,
                on_step=on_step,
            )

    # Same design, objective, budget and optimiser for both; only the sensors differ. On one
    # device the two tunings run side by side: a step's small kernels keep one CPU core
    # busy, so two fill two cores (1.5x on the development machine); each gives the gains
    # it gives alone. Over several devices each step is one program on all of them, and two
    # such programs dispatched at once may queue in different orders on different devices
    # and wait on each other's collectives: there they run one after the other.
    with ThreadPoolExecutor(2 if len(jax.local_devices()) == 1 else 1) as pool:
        base_run = pool.submit(tune, "baseline", nominal, k_base)
        robust_run = pool.submit(tune, "optimized", config.faults, k_robust)
        baseline, history_base = base_run.result()
        optimized, history_opt = robust_run.result()

    gains = {"baseline": baseline, "optimized": optimized}
    held = {name: evaluate(config, g, progress=progress, name=name) for name, g in gains.items()}
    held_clean = {
        name: evaluate(config, g, nominal_sensors=True, progress=progress, name=name)
        for name, g in gains.items()
    }

    replay = m2_replay_scenario(config)
    m2 = {}
    traces = {}
    for name, g in (("baseline", baseline), ("optimized", optimized)):
        outcome, trace = simulate_traces(config.sim, g, replay)
        m2[name] = _replay_block(config, outcome)
        traces[name] = jax.tree.map(lambda x: np.asarray(x)[0], trace)

    summary = {name: r.tally.summary() for name, r in held.items()}
    summary_clean = {name: r.tally.summary() for name, r in held_clean.items()}
    metrics = {
        "baseline": summary["baseline"],
        "optimized": summary["optimized"],
        "m2_replay": {
            **m2,
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
            for name, h in (("baseline", history_base), ("optimized", history_opt))
        },
        "job_time_s": time.perf_counter() - start,
    }
    return RobustGainsResult(
        baseline=baseline,
        optimized=optimized,
        metrics=metrics,
        history={"baseline": history_base, "optimized": history_opt},
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
            f"Mission 2 replay: LRF first valid at {config.replay.lrf_acquisition_m:g} m",
            p,
        ),
    }
    for name, draw in plots.items():
        draw(directory / name)
        written.append(directory / name)
    written.append(write_metrics(directory, dict(result.metrics, wall_time_s=wall_time_s)))
    return written
