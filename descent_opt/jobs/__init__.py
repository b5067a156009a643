"""The jobs the command line runs: one module each, found by name through one registry.

Every job module ``descent_opt.jobs.<name>`` defines ``JOB``, a :class:`Job`: its name, the
configuration groups it reads, its stages composed as ``run``, ``write_outputs`` and
``summary``, and what the command line needs to know of it (whether it keeps tuning
checkpoints, which of its exceptions mean bad input and which a failed run). The registry
knows the names (:data:`JOBS`) without importing the modules: a job is imported only when
run, so validating ``+experiment`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from descent_opt.config import RunConfig
    from descent_opt.guidance import Gains

JOBS = (
    "robust_gains", "monte_carlo", "thrust_schedule", "export", "replay", "envelope",
    "rare_event", "worst_case", "sensitivity",
)  # fmt: skip
# The groups that make a flight: vehicle, start, terrain, sensors and faults, guidance and
# navigation, and what counts as a safe landing.
FLIGHT_GROUPS = (
    "vehicle", "moon", "scenario", "terrain", "faults", "sensors", "sim", "navigation",
    "guidance", "success",
)  # fmt: skip


class Progress(Protocol):
    """Told of work done: ``advance`` more of ``total`` units (e.g. "step", "scenario") in
    ``phase``, with a few figures to show beside the bar."""

    def __call__(
        self, phase: str, advance: int, total: int, unit: str, info: dict[str, float]
    ) -> None: ...


@dataclasses.dataclass(frozen=True)
class Job:
    """A job as the command line runs it.

    ``run(config, *, progress=None[, checkpoints=None])`` computes the result (``progress``
    a :class:`Progress`; ``checkpoints`` a :class:`~descent_opt.checkpoint.Checkpoints`,
    passed only when ``checkpointed``); ``write_outputs(result, config, directory,
    wall_time_s)`` writes its files, ``metrics.json`` last, and returns their paths;
    ``summary(result)`` is the table printed at the end. ``groups`` names the configuration
    groups it reads. ``bad_input``: its exceptions that mean the configuration asks for
    something impossible (one line, exit 2); ``failures``: those that end a run without a
    result (one line, exit 1).
    """

    name: str
    groups: tuple[str, ...]
    run: Callable[..., Any]
    write_outputs: Callable[[Any, RunConfig, Path, float], list[Path]]
    summary: Callable[[Any], str]
    checkpointed: bool = False
    bad_input: tuple[type[Exception], ...] = ()
    failures: tuple[type[Exception], ...] = ()


def check_experiment(name: str | None) -> None:
    """Raise :class:`~descent_opt.config.ConfigError` for an ``experiment`` that names no
    job; None or empty (no job chosen yet) passes."""
    if name not in ("", None) and name not in JOBS:
        from descent_opt.config import ConfigError

        raise ConfigError("experiment", "one of " + ", ".join(JOBS), name)


def job(name: str) -> Job:
    """The job ``name`` (one of :data:`JOBS`), its module imported now."""
    if name not in JOBS:
        raise KeyError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    found = importlib.import_module(f"descent_opt.jobs.{name}").JOB
    if not isinstance(found, Job) or found.name != name:
        raise TypeError(f"descent_opt.jobs.{name}.JOB is not the Job {name!r}")
    return found


def use_precision(config: RunConfig):
    """Switch JAX to the configuration's ``precision`` (64-bit arrays for ``float64``) and
    return its float dtype. A process-wide switch, made at the entry of a job before any
    array is built (the command line, or a job's ``run`` called from Python)."""
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", config.precision == "float64")
    return np.dtype(config.precision)


def scenario_progress(progress: Progress, phase: str, total: int):
    """A population runner's ``progress(done, tally)`` reported as scenarios of ``phase``,
    with the success rate so far."""

    def report(done, tally):
        c = tally.counts
        progress(phase, done, total, "scenario", {"success": c["success"] / max(c["n"], 1)})

    return report


def starting_gains(config: RunConfig, dtype=None) -> tuple[Gains, str]:
    """The gain table a job starts from (``gains=PATH``, else the built-in design) and
    where it came from; its float values in ``dtype`` when given (from
    :func:`use_precision`: a float32 table read from a file is widened in a float64 run)."""
    import jax
    import jax.numpy as jnp

    from descent_opt.export import load_gains
    from descent_opt.guidance import default_gains

    if config.gains_path:
        gains = load_gains(config.gains_path)
        source = str(Path(config.gains_path).resolve())
    else:
        gains = default_gains(config.altitude_breakpoints_m)
        source = "built-in design (default_gains)"
    if dtype is None:
        return gains, source

    def cast(x):
        other = jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype
        return x.astype(dtype) if other else x

    return jax.tree.map(cast, gains), source
