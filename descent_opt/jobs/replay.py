"""The replay job: fly one reported descent with a gain table.

``+experiment=replay_m1`` (``replay_m2``, ``replay_im1``, ``replay_im2``) flies the option
of ``conf/replay/`` of that name, the reported facts beside each parameter, with the main
job's baseline (tuned from ``seed`` on nominal sensors exactly as the main job tunes it) or,
with ``gains=PATH``, with any table. ``metrics.json`` holds one block (``baseline``, or
``gains`` for a table given) read off the flight by :func:`descent_opt.replays.flight_record`;
``replay.png`` shows the flight.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from descent_opt import report
from descent_opt.config import RunConfig
from descent_opt.jobs import FLIGHT_GROUPS, Job, Progress, starting_gains, use_precision
from descent_opt.optimize.gains import NonFiniteTraining
from descent_opt.rundir import write_metrics
from descent_opt.simulate import Trace
from descent_opt.stages import replay, tune, tunings


@dataclasses.dataclass
class ReplayResult:
    metrics: dict
    name: str  # the block: "baseline" (tuned here) or "gains" (a table given)
    trace: Trace  # NumPy, time first, cut after touchdown


def run(config: RunConfig, *, progress: Progress | None = None) -> ReplayResult:
    """Tune the main job's baseline (unless ``gains=PATH``) and fly the replay with it."""
    start = time.perf_counter()
    dtype = use_precision(config)
    gains, source = starting_gains(config, dtype)
    name = "gains"
    if not config.gains_path:
        catalog, key = tunings(config)["baseline"]
        gains, _ = tune(config, gains, catalog, key=key, phase="baseline", progress=progress)
        name, source = "baseline", "the main job's baseline: tuned from seed on nominal sensors"
    blocks, traces = replay(config, {name: gains}, dtype)
    metrics = {
        name: blocks[name],
        "mission": config.replay.mission,
        "replay": dataclasses.asdict(config.replay),
        "table": source,
        "seed": config.seed,
        "success_limits": dataclasses.asdict(config.success),
        "job_time_s": time.perf_counter() - start,
    }
    return ReplayResult(metrics, name, traces[name])


def write_outputs(
    result: ReplayResult, config: RunConfig, directory: str | Path, wall_time_s: float
) -> list[Path]:
    """``replay.png``, then ``metrics.json``."""
    directory = Path(directory)
    block = result.metrics[result.name]
    outcome = "success" if block["success"] else block["failure"]
    title = (
        f"{config.replay.mission} replay, {result.name} table: "
        f"{block['touchdown_speed_mps']:.1f} m/s at touchdown ({outcome})"
    )
    path = directory / "replay.png"
    report.plot_replay_flight(result.trace, title, config.vehicle.mass_dry_kg, path)
    return [path, write_metrics(directory, dict(result.metrics, wall_time_s=wall_time_s))]


def _value(x) -> str:
    return "-" if x is None else f"{x:,.1f}" if isinstance(x, float) else str(x)


def summary(result: ReplayResult) -> str:
    """The flight's figures, one per line."""
    block = result.metrics[result.name]
    lines = [f"{result.metrics['mission']} replay, {result.name} table ({result.metrics['table']})"]
    for key, value in block.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_value(v)}" for k, v in value.items())
        lines.append(f"  {key:28s}{_value(value) if not isinstance(value, str) else value}")
    return "\n".join(lines)


JOB = Job(
    name="replay",
    groups=(*FLIGHT_GROUPS, "objective", "optimizer", "replay"),
    run=run,
    write_outputs=write_outputs,
    summary=summary,
    failures=(NonFiniteTraining,),
)
