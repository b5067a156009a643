"""The envelope job: where each gain table stops landing as one fault grows.

``+experiment=envelope gains=PATH`` (or ``gains=[A,B,...]``; none: the built-in design)
flies, for each axis of ``envelope.axis`` and each value of its grid
(:func:`descent_opt.envelope.grid`), ``envelope.n_scenarios`` members of the held-out
population with that fault fixed in every member (:mod:`descent_opt.envelope`), and
reports per point the success rate with its 95 % intervals, and per axis and table the
edge: the worst value, walking out from the benign end, whose one-sided 95 % lower bound
still meets ``envelope.required_success``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path

from descent_opt import envelope, report
from descent_opt.config import RunConfig
from descent_opt.guidance import Gains
from descent_opt.jobs import (
    FLIGHT_GROUPS,
    Job,
    Progress,
    scenario_progress,
    starting_gains,
    use_precision,
)
from descent_opt.rundir import write_metrics, write_text_atomic

CSV_COLUMNS = (
    "axis", "value", "table", "n_scenarios", "success_rate", "success_rate_ci95_low",
    "success_rate_ci95_high", "success_rate_lower95", "fuel_kg_mean",
)  # fmt: skip


@dataclasses.dataclass
class EnvelopeResult:
    rows: list[dict]  # one per axis, table and value (benign to harsh)
    metrics: dict


def table_names(paths: list[str]) -> list[str]:
    """A short unique name for each gain table: its file's stem, with as many of its
    parent directories as it takes to tell the tables apart (then the suffix too)."""
    parts = [Path(p).parts for p in paths]
    stems = [(*q[:-1], Path(q[-1]).stem) for q in parts]
    for named in (stems, parts):
        for depth in range(1, max(len(q) for q in named) + 1):
            names = ["/".join(q[-depth:]) for q in named]
            if len(set(names)) == len(names):
                return names
    return list(paths)


def load_tables(config: RunConfig, dtype) -> tuple[dict[str, Gains], dict[str, str]]:
    """The gain tables flown, by name, and where each came from (``gains=PATH`` or
    ``gains=[A,B,...]``; none: the built-in design, named ``default``)."""
    if not config.gains_paths:
        gains, source = starting_gains(config, dtype)
        return {"default": gains}, {"default": source}
    tables, sources = {}, {}
    for name, path in zip(table_names(list(config.gains_paths)), config.gains_paths):
        tables[name], sources[name] = starting_gains(
            dataclasses.replace(config, gains_path=path), dtype
        )
    return tables, sources


def run(config: RunConfig, *, progress: Progress | None = None) -> EnvelopeResult:
    """Fly every point of every axis for every table, and find the edges."""
    start = time.perf_counter()
    tables, sources = load_tables(config, use_precision(config))
    spec = config.envelope
    n = spec.n_scenarios
    rows, edges, grids, ranges = [], {}, {}, {}
    for axis in spec.axis:
        values = envelope.grid(spec, axis, config.faults, config.scenario)
        report_to = None
        if progress is not None:
            total = n * len(values) * len(tables)
            report_to = scenario_progress(progress, f"envelope {axis}", total)
        flown = envelope.fly_axis(
            config.sim,
            tables,
            config.sampler(),
            config.success,
            axis,
            values,
            n,
            key=config.population_key(),
            chunk_size=config.evaluation.chunk_size,
            keep_failures=config.evaluation.keep_failures,
            unlandable=config.unlandable,
            progress=report_to,
        )
        rows += flown
        grids[axis] = [float(v) for v in values]
        ranges[axis] = list(envelope.catalog_range(axis, config.faults, config.scenario))
        edges[axis] = {
            name: envelope.edge([r for r in flown if r["table"] == name], spec.required_success)
            for name in tables
        }
    metrics = {
        "required_success": spec.required_success,
        "n_scenarios": n,
        "tables": sources,
        "edges": edges,
        "grids": grids,
        "harsher": {a: "lower" if envelope.harsher_lower(a) else "higher" for a in spec.axis},
        "catalog_ranges": ranges,
        "seed": config.seed,
        "seed_offset": config.evaluation.seed_offset,
        "job_time_s": time.perf_counter() - start,
    }
    return EnvelopeResult(rows, metrics)


def envelope_csv(rows: list[dict]) -> str:
    """The points as CSV (:data:`CSV_COLUMNS`), one row per axis, table and value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        low, high = r["success_rate_ci95"]
        fuel = r["fuel_kg_mean"]
        writer.writerow(
            [r["axis"], r["value"], r["table"], r["n_scenarios"], r["success_rate"], low, high,
             r["success_rate_lower95"], "" if fuel is None else fuel]
        )  # fmt: skip
    return out.getvalue()


def write_outputs(
    result: EnvelopeResult, config: RunConfig, directory: str | Path, wall_time_s: float
) -> list[Path]:
    """``envelope.csv``, one ``envelope_<axis>.png`` per axis, ``metrics.json`` last."""
    directory = Path(directory)
    path = directory / "envelope.csv"
    write_text_atomic(path, envelope_csv(result.rows))
    written = [path]
    m = result.metrics
    for axis, edges in m["edges"].items():
        curves = {
            name: [r for r in result.rows if r["axis"] == axis and r["table"] == name]
            for name in edges
        }
        path = directory / f"envelope_{axis}.png"
        report.plot_envelope(
            axis,
            curves,
            m["catalog_ranges"][axis],
            {name: e["edge"] for name, e in edges.items()},
            m["required_success"],
            path,
        )
        written.append(path)
    written.append(write_metrics(directory, dict(m, wall_time_s=wall_time_s)))
    return written


def _shown(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def summary(result: EnvelopeResult) -> str:
    """The edge of each table along each axis, with its interval."""
    m = result.metrics
    lines = [
        f"Fault envelopes: {m['n_scenarios']:,} scenarios per point; edge: the worst value "
        f"whose one-sided 95 % lower bound of success is >= {m['required_success']:.2%}",
        "",
        f"{'axis':28s}{'table':24s}{'edge':>10s}  {'success (95 % CI)':34s}{'first failing':>14s}",
    ]
    for axis, edges in m["edges"].items():
        for name, e in edges.items():
            shown = _shown(e["edge"]) + ("+" if e["beyond_grid"] else "")
            rate = "-"
            if e["edge"] is not None:
                low, high = e["success_rate_ci95"]
                rate = f"{e['success_rate']:.3%} ({low:.3%} - {high:.3%})"
            lines.append(
                f"{axis:28s}{name:24s}{shown:>10s}  {rate:34s}{_shown(e['first_failing']):>14s}"
            )
    lines += ["", "+: no point of the grid fails; the edge lies beyond it (envelope.values=[...])"]
    return "\n".join(lines)


JOB = Job(
    name="envelope",
    groups=(*FLIGHT_GROUPS, "evaluation", "envelope"),
    run=run,
    write_outputs=write_outputs,
    summary=summary,
)
