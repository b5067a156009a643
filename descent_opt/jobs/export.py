"""The export job: ``+experiment=export gains=PATH`` re-writes a gain table (JSON, CSV or NPZ)
in every format (``gains.json``, ``gains.csv``, ``gains.npz``, ``gains.h``) into the run
directory, keeping its provenance and adding where it was exported from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from descent_opt.config import ConfigError, RunConfig
from descent_opt.export import load_gains, load_provenance, provenance, write_gain_table
from descent_opt.guidance import Gains
from descent_opt.jobs import Job, Progress
from descent_opt.rundir import write_metrics


@dataclasses.dataclass
class ExportResult:
    gains: Gains
    provenance: dict
    source: Path


def run(config: RunConfig, *, progress: Progress | None = None) -> ExportResult:
    """Read ``gains=PATH`` (required)."""
    if not config.gains_path:
        raise ConfigError("gains", "the path of a gain table to export (gains=PATH)")
    source = Path(config.gains_path).resolve()
    gains = load_gains(source)
    original = load_provenance(source)
    record = dict(original) if original else provenance(config)
    record["exported_from"] = str(source)
    return ExportResult(gains, record, source)


def write_outputs(
    result: ExportResult, config: RunConfig, directory: str | Path, wall_time_s: float
) -> list[Path]:
    """The four formats, then ``metrics.json`` (what was exported)."""
    written = write_gain_table(result.gains, directory, result.provenance)
    metrics = {
        "source": str(result.source),
        "files": [p.name for p in written],
        "rows": int(result.gains.altitude_breakpoints_m.shape[0]),
        "wall_time_s": wall_time_s,
    }
    return [*written, write_metrics(directory, metrics)]


def summary(result: ExportResult) -> str:
    """The line printed at the end."""
    rows = int(result.gains.altitude_breakpoints_m.shape[0])
    return f"Exported {result.source} ({rows} breakpoints) as gains.json, .csv, .npz and .h"


# Reads only the top-level key ``gains``.
JOB = Job(
    name="export",
    groups=(),
    run=run,
    write_outputs=write_outputs,
    summary=summary,
    bad_input=(ConfigError,),
)
