"""Summarise a Hydra sweep: ``python -m descent_opt.aggregate MULTIRUN_DIR``.

Every job directory under MULTIRUN_DIR (one holding ``.hydra/overrides.yaml``) becomes one
row: its overrides, its status (``finished`` when ``metrics.json`` exists, else
``unfinished``: failed, killed or still running), its headline metrics with their 95 %
intervals and its wall time. Writes ``summary.csv``, ``summary.md`` and ``summary.png``
(success rate and fuel against the swept key) into MULTIRUN_DIR.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

from descent_opt.rundir import save_figure_atomic

# Headline metrics per job, as (column, path into metrics.json).
HEADLINES = {
    "monte_carlo": (
        ("success_rate", ("success_rate",)),
        ("success_rate_ci95_low", ("success_rate_ci95", 0)),
        ("success_rate_ci95_high", ("success_rate_ci95", 1)),
        ("success_rate_lower95", ("success_rate_lower95",)),
        ("fuel_kg_mean", ("fuel_kg_mean",)),
        ("touchdown_vz_mps_p99", ("touchdown_vz_mps_p99",)),
        ("n_scenarios", ("n_scenarios",)),
    ),
    "robust_gains": (
        ("success_rate", ("optimized", "success_rate")),
        ("success_rate_ci95_low", ("optimized", "success_rate_ci95", 0)),
        ("success_rate_ci95_high", ("optimized", "success_rate_ci95", 1)),
        ("success_rate_lower95", ("optimized", "success_rate_lower95")),
        ("fuel_kg_mean", ("optimized", "fuel_kg_mean")),
        ("touchdown_vz_mps_p99", ("optimized", "touchdown_vz_mps_p99")),
        ("n_scenarios", ("optimized", "n_scenarios")),
        ("baseline_success_rate", ("baseline", "success_rate")),
        ("m2_replay_speed_mps", ("m2_replay", "optimized", "touchdown_speed_mps")),
        ("fuel_price_kg", ("fuel_price_kg", "nominal_sensors")),
    ),
    "thrust_schedule": (
        ("fuel_kg_mean", ("fuel_kg",)),
        ("time_of_flight_s", ("time_of_flight_s",)),
    ),
}


def _read_overrides(job: Path) -> list[str]:
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]


def _lookup(data, path):
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _experiment(overrides: list[str]) -> str | None:
    for o in overrides:
        key, _, value = o.lstrip("+").partition("=")
        if key == "experiment":
            return value
    return None


def collect(directory: str | Path) -> list[dict]:
    """One row per job directory of a sweep, in job order."""
    directory = Path(directory)
    jobs = sorted(
        (p.parent.parent for p in directory.glob("**/.hydra/overrides.yaml")),
        key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else math.inf, p.name),
    )
    rows = []
    for job in jobs:
        overrides = _read_overrides(job)
        row = {"job": str(job.relative_to(directory)), "overrides": " ".join(overrides)}
        for o in overrides:
            key, _, value = o.lstrip("+").partition("=")
            row[f"override:{key}"] = value
        metrics_path = job / "metrics.json"
        metrics = None
        if metrics_path.is_file():
            try:
                metrics = json.loads(metrics_path.read_text())
            except ValueError:
                metrics = None
        row["status"] = "finished" if metrics is not None else "unfinished"
        if metrics is not None:
            for column, path in HEADLINES.get(_experiment(overrides), ()):
                row[column] = _lookup(metrics, path)
            row["wall_time_s"] = metrics.get("wall_time_s")
        rows.append(row)
    return rows


def swept_keys(rows: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs."""
    keys = sorted({k for r in rows for k in r if k.startswith("override:")})
    return [k[len("override:") :] for k in keys if len({r.get(k) for r in rows}) > 1]


def _columns(rows: list[dict]) -> list[str]:
    columns = ["job", "status"]
    for r in rows:
        columns += [k for k in r if k not in columns and k != "overrides"]
    return columns + ["overrides"]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def summary_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k)) for k in writer.fieldnames})
    return out.getvalue()


def summary_md(rows: list[dict]) -> str:
    swept = swept_keys(rows)
    columns = ["job", "status"] + [f"override:{k}" for k in swept]
    columns += [
        c
        for c in (
            "success_rate",
            "success_rate_ci95_low",
            "success_rate_ci95_high",
            "fuel_kg_mean",
            "n_scenarios",
            "wall_time_s",
        )
        if any(c in r for r in rows)
    ]
    head = [c.removeprefix("override:") for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    unfinished = [r["job"] for r in rows if r["status"] != "finished"]
    if unfinished:
        lines += ["", f"Unfinished or failed jobs: {', '.join(unfinished)}"]
    return "\n".join(lines) + "\n"


def plot_summary(rows: list[dict], path: Path) -> None:
    """Success rate (with its interval) and fuel against the swept key: numeric values on a
    numeric axis, anything else as one labelled point per job."""
    from descent_opt.report import _pyplot

    plt = _pyplot()
    done = [r for r in rows if r["status"] == "finished" and r.get("success_rate") is not None]
    swept = swept_keys(rows)
    label = ", ".join(swept) if swept else "job"

    def x_of(r):
        values = [r.get(f"override:{k}") for k in swept]
        try:
            return float(values[0]) if len(values) == 1 else None
        except (TypeError, ValueError):
            return None

    numeric = done and all(x_of(r) is not None for r in done)
    if numeric:
        done = sorted(done, key=x_of)
        xs = [x_of(r) for r in done]
    else:
        xs = list(range(len(done)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    rate = [r["success_rate"] for r in done]
    low = [r.get("success_rate_ci95_low", rate[i]) for i, r in enumerate(done)]
    high = [r.get("success_rate_ci95_high", rate[i]) for i, r in enumerate(done)]
    top.errorbar(
        xs,
        rate,
        yerr=[[a - b for a, b in zip(rate, low)], [b - a for a, b in zip(rate, high)]],
        marker="o",
        capsize=3,
    )
    top.set_ylabel("success rate (95 % CI)")
    top.grid(alpha=0.3)
    bottom.plot(xs, [r.get("fuel_kg_mean") for r in done], marker="o", color="tab:orange")
    bottom.set_ylabel("fuel mean (kg)")
    bottom.set_xlabel(label)
    bottom.grid(alpha=0.3)
    if not numeric:
        bottom.set_xticks(xs)
        bottom.set_xticklabels(
            [" ".join(str(r.get(f"override:{k}")) for k in swept) or r["job"] for r in done],
            rotation=30,
            ha="right",
        )
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def aggregate(directory: str | Path) -> list[Path]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into a sweep directory."""
    from descent_opt.rundir import write_text_atomic

    directory = Path(directory)
    rows = collect(directory)
    if not rows:
        raise FileNotFoundError(f"{directory}: no Hydra job directories (.hydra/overrides.yaml)")
    written = [directory / "summary.csv", directory / "summary.md", directory / "summary.png"]
    write_text_atomic(written[0], summary_csv(rows))
    write_text_atomic(written[1], summary_md(rows))
    plot_summary(rows, written[2])
    return written


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m descent_opt.aggregate MULTIRUN_DIR", file=sys.stderr)
        sys.exit(2)
    directory = Path(argv[0])
    if not directory.is_dir():
        print(f"error: {directory}: not a directory", file=sys.stderr)
        sys.exit(2)
    try:
        written = aggregate(directory)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary_md(collect(directory)))
    print("Written: " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
