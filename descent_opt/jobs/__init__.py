"""The jobs the command line runs, one module each, found by name.

A job module exposes ``run(config, *, progress=None) -> result`` (``progress`` a
:class:`Progress`), ``write_outputs(result,
config, directory, wall_time_s)`` (``metrics.json`` last) and ``summary(result) -> str`` (the
table printed at the end), and may list ``BAD_INPUT``: exceptions of its own that mean the
configuration asks for something impossible (reported as one line, exit 2), and
``FAILURES``: exceptions that end a run without a result (one line, exit 1). Jobs are
imported only when run, so validating ``+experiment`` stays cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

JOBS = ("robust_gains", "monte_carlo", "thrust_schedule", "export")


def job(name: str) -> ModuleType:
    """The module of job ``name`` (one of :data:`JOBS`)."""
    if name not in JOBS:
        raise KeyError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    return importlib.import_module(f"descent_opt.jobs.{name}")


class Progress(Protocol):
    """Told of work done: ``advance`` more of ``total`` units (e.g. "step", "scenario") in
    ``phase``, with a few figures to show beside the bar."""

    def __call__(
        self, phase: str, advance: int, total: int, unit: str, info: dict[str, float]
    ) -> None: ...


def scenario_progress(progress: Progress, phase: str, total: int):
    """A population runner's ``progress(done, tally)`` reported as scenarios of ``phase``,
    with the success rate so far."""

    def report(done, tally):
        c = tally.counts
        progress(phase, done, total, "scenario", {"success": c["success"] / max(c["n"], 1)})

    return report


def starting_gains(config):
    """The gain table a job starts from (``gains=PATH``, else the built-in design) and
    where it came from; with ``precision=float64`` switches JAX to 64-bit first (global:
    arrays created from here on)."""
    import jax

    from descent_opt.export import load_gains
    from descent_opt.guidance import default_gains

    if config.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    if config.gains_path:
        from pathlib import Path

        return load_gains(config.gains_path), str(Path(config.gains_path).resolve())
    return default_gains(config.altitude_breakpoints_m), "built-in design (default_gains)"
