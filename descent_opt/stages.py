"""The stages jobs are made of: tune a gain table, evaluate one on the held-out population,
replay HAKUTO-R Mission 2 with one.

Each stage takes the validated :class:`~descent_opt.config.RunConfig` and explicit keys,
reports to an optional :class:`~descent_opt.jobs.Progress`, and returns plain results, so
that a job is a short composition of stages and other jobs reuse them.
"""

from __future__ import annotations

import contextlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from descent_opt.checkpoint import Checkpoints
from descent_opt.config import RunConfig
from descent_opt.execution import concurrently
from descent_opt.faults import FaultCatalog
from descent_opt.guidance import Gains
from descent_opt.jobs import Progress, scenario_progress
from descent_opt.objectives import landing_metrics
from descent_opt.optimize.gains import initial_state, tune_gains
from descent_opt.population import PopulationResult, fly_population
from descent_opt.scenarios import Scenario, TerrainSpec, replace_member, sample_scenarios
from descent_opt.simulate import Trace, simulate_traces

log = logging.getLogger("descent_opt")


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


def m2_replay_scenario(config: RunConfig, dtype=None) -> Scenario:
    """The nominal descent over flat mare with one fault: the LRF's first valid range at
    ``replay.lrf_acquisition_m``, and an altitude estimate that starts too high by
    ``replay.altitude_error_m`` (the sign that delays braking); the replaced entries in
    ``dtype`` (default: JAX's default float)."""
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
            "nav_position_error_m": jnp.array([0.0, 0.0, config.replay.altitude_error_m], dtype),
            "imu_bias_mps2": jnp.zeros(3, dtype),
        },
    )


def replay_m2(
    config: RunConfig, tables: dict[str, Gains], dtype=None
) -> tuple[dict[str, dict], dict[str, Trace]]:
    """Fly each gain table of ``tables`` through :func:`m2_replay_scenario`: per table, its
    touchdown (``touchdown_speed_mps``, ``touchdown_vz_mps``, ``touchdown_vh_mps``,
    ``fuel_kg``, ``success``, ``landed``) and its trace (NumPy, time first)."""
    scenario = m2_replay_scenario(config, dtype)
    blocks, traces = {}, {}
    for name, gains in tables.items():
        outcome, trace = simulate_traces(config.sim, gains, scenario)
        blocks[name] = _touchdown_block(config, outcome)
        traces[name] = jax.tree.map(lambda x: np.asarray(x)[0], trace)
    return blocks, traces


def _touchdown_block(config: RunConfig, outcome) -> dict:
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
