"""The stages jobs are made of: tune a gain table, evaluate one on the held-out population,
fly one through a mission replay.

Each stage takes the validated :class:`~descent_opt.config.RunConfig` and explicit keys,
reports to an optional :class:`~descent_opt.jobs.Progress`, and returns plain results, so
that a job is a short composition of stages and other jobs reuse them.
"""

from __future__ import annotations

import contextlib
import logging

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from descent_opt.checkpoint import Checkpoints
from descent_opt.config import RunConfig
from descent_opt.execution import concurrently
from descent_opt.faults import FaultCatalog, landable
from descent_opt.guidance import Gains
from descent_opt.jobs import Progress, scenario_progress
from descent_opt.optimize.gains import initial_state, tune_gains
from descent_opt.population import PopulationResult, fly_population
from descent_opt.replays import at_height, flight_record, replay_scenario, replay_sim
from descent_opt.scenarios import Scenario
from descent_opt.simulate import Trace, simulate_traces

log = logging.getLogger("descent_opt")


def tunings(config: RunConfig) -> dict[str, tuple[FaultCatalog, PRNGKeyArray]]:
    """The main job's two tunings, each a catalog and its key from ``seed``: ``baseline``
    on nominal sensors, ``optimized`` on the configured fault catalog. Other jobs that need
    the main job's tables tune them from here and get the same gains."""
    k_base, k_robust = jax.random.split(jax.random.key(config.seed))
    return {
        "baseline": (FaultCatalog.nominal(config.sim.lrf.max_range_m), k_base),
        "optimized": (config.faults, k_robust),
    }


def tune(
    config: RunConfig,
    initial: Gains,
    catalog: FaultCatalog,
    *,
    key: PRNGKeyArray,
    phase: str,
    progress: Progress | None = None,
    checkpoints: Checkpoints | None = None,
) -> tuple[Gains, dict[str, np.ndarray]]:
    """Tune ``initial`` on the configured population flown with the faults of ``catalog``
    (``optimizer.*``, ``objective.*``): the tuned gains and the per-step history.
    ``phase`` names the tuning on the progress bar and in ``checkpoints``, which saves it
    as it goes and holds the state a resumed run continues from."""
    steps = config.optimizer.steps
    callback = None
    if progress is not None:

        def callback(i, parts):
            info = {"objective": parts["objective"], "fuel": parts["fuel_fraction"]}
            progress(f"tuning {phase} gains", 1, steps, "step", info)

    start = on_step = None
    within = contextlib.nullcontext()
    if checkpoints is not None:
        start = checkpoints.state(phase, initial_state(initial, config.optimizer, key=key))
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
            key=key,
            progress=callback,
            start=start,
            on_step=on_step,
            adversary_sampler=config.sampler(landable(catalog, config.unlandable)),
        )


def tune_side_by_side(
    config: RunConfig,
    initial: Gains,
    catalogs: dict[str, tuple[FaultCatalog, PRNGKeyArray]],
    *,
    progress: Progress | None = None,
    checkpoints: Checkpoints | None = None,
) -> dict[str, tuple[Gains, dict[str, np.ndarray]]]:
    """:func:`tune` from ``initial`` once per entry of ``catalogs`` (phase name: its
    catalog and key), each giving the gains it gives alone.

    On one device the tunings run side by side: a step's small kernels keep one CPU core
    busy, so two fill two cores. Over several devices each step is one program on all of
    them, and two such programs dispatched at once may queue in different orders on
    different devices and wait on each other's collectives: there they run one after the
    other."""
    workers = len(catalogs) if len(jax.local_devices()) == 1 else 1

    def tune_one(phase: str):
        catalog, key = catalogs[phase]
        return tune(
            config,
            initial,
            catalog,
            key=key,
            phase=phase,
            progress=progress,
            checkpoints=checkpoints,
        )

    return dict(zip(catalogs, concurrently(tune_one, catalogs, workers)))


def evaluate(
    config: RunConfig,
    gains: Gains,
    *,
    nominal_sensors: bool = False,
    keep_records: bool = True,
    progress: Progress | None = None,
    phase: str = "evaluating",
) -> PopulationResult:
    """Fly ``gains`` over the held-out population (``evaluation.n_scenarios`` members of
    :meth:`RunConfig.population_key` with the configured faults; with ``nominal_sensors``,
    ``evaluation.n_nominal_scenarios`` of its twin with nominal sensors) in chunks with
    streaming statistics; ``keep_records`` keeps every member's outcome (for plots or
    ``scenarios.npz``). ``phase`` names it on the progress bar."""
    faults = FaultCatalog.nominal(config.sim.lrf.max_range_m) if nominal_sensors else None
    ev = config.evaluation
    n = ev.n_nominal_scenarios if nominal_sensors else ev.n_scenarios
    return fly_population(
        config.sim,
        gains,
        config.sampler(faults),
        config.success,
        n,
        key=config.population_key(nominal_sensors),
        chunk_size=ev.chunk_size,
        keep_failures=ev.keep_failures,
        keep_records=keep_records,
        unlandable=config.unlandable,
        progress=None if progress is None else scenario_progress(progress, phase, n),
    )


def replay_scenario_of(config: RunConfig, dtype=None, *, planned: bool = False) -> Scenario:
    """The configured replay (``replay.*``) as a scenario of one, with the sensor noise of
    ``seed``; with ``planned``, the same descent with nothing wrong."""
    spec = config.replay.nominal() if planned else config.replay
    return replay_scenario(
        spec,
        config.scenario,
        config.vehicle.mass_initial_kg,
        config.sim.lrf.max_range_m,
        key=jax.random.key(config.seed),
        dtype=dtype,
    )


def replay(
    config: RunConfig, tables: dict[str, Gains], dtype=None
) -> tuple[dict[str, dict], dict[str, Trace]]:
    """Fly each gain table of ``tables`` through the configured replay (``replay.*``): per
    table, its :func:`~descent_opt.replays.flight_record`, its touchdown time had nothing
    gone wrong (``planned_touchdown_time_s``) and how much earlier it came down
    (``early_by_s``), the flight at ``replay.report_height_m``, and its trace (NumPy, cut
    after touchdown)."""
    spec = config.replay
    scenario = replay_scenario_of(config, dtype)
    planned = replay_scenario_of(config, dtype, planned=True)
    start = np.asarray(scenario.position0_m)[0, 2]
    climb = np.asarray(scenario.velocity0_mps)[0, 2]
    sim = replay_sim(config.sim, spec, float(start), float(climb))
    blocks, traces = {}, {}
    for name, gains in tables.items():
        outcome, trace = simulate_traces(sim, gains, scenario)
        trace = jax.tree.map(lambda x: np.asarray(x)[0], trace)
        block = flight_record(outcome, trace, config.success, config.vehicle.mass_dry_kg)
        on_time = float(np.asarray(simulate_traces(sim, gains, planned)[0].touchdown_time_s)[0])
        block["planned_touchdown_time_s"] = on_time
        block["early_by_s"] = on_time - block["touchdown_time_s"]
        if spec.report_height_m is not None:
            block["at_report_height"] = at_height(trace, spec.report_height_m)
        blocks[name] = block
        traces[name] = trace
    return blocks, traces
