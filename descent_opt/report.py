"""Report: PNG plots and the end-of-run summary table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from descent_opt.objectives import LandingMetrics
from descent_opt.simulate import Trace

COLORS = {"baseline": "tab:red", "optimized": "tab:blue", "candidate": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_touchdown_speeds(
    baseline: LandingMetrics, optimized: LandingMetrics, limit_mps: float, path: Path
) -> None:
    """Distributions of touchdown vertical speed, baseline vs optimized."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    b = np.asarray(baseline.vertical_speed_mps)
    o = np.asarray(optimized.vertical_speed_mps)
    top = max(float(np.max(b)), float(np.max(o)), limit_mps * 2)
    bins = np.linspace(0.0, top, 60)
    ax.hist(
        b,
        bins=bins,
        alpha=0.6,
        color=COLORS["baseline"],
        label=f"baseline (success {np.mean(baseline.success):.1%})",
    )
    ax.hist(
        o,
        bins=bins,
        alpha=0.6,
        color=COLORS["optimized"],
        label=f"optimized (success {np.mean(optimized.success):.1%})",
    )
    ax.axvline(limit_mps, color="k", ls="--", lw=1, label=f"limit {limit_mps:g} m/s")
    ax.set_yscale("log")
    ax.set_xlabel("touchdown vertical speed (m/s)")
    ax.set_ylabel("scenarios")
    ax.set_title("Held-out population with altimeter faults")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def success_by_bin(values, success, edges) -> tuple[np.ndarray, np.ndarray]:
    """Success rate and count per bin of ``values``."""
    idx = np.clip(np.digitize(values, edges) - 1, 0, len(edges) - 2)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    hits = np.bincount(idx, weights=success.astype(float), minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts, counts


def plot_success_vs_acquisition(
    acquisition_m, baseline: LandingMetrics, optimized: LandingMetrics, path: Path
) -> None:
    """Success rate versus the altitude at which the LRF first gives a valid range."""
    plt = _pyplot()
    acquisition_m = np.asarray(acquisition_m)
    finite = acquisition_m < 1e8
    lo, hi = (
        (float(acquisition_m[finite].min()), float(acquisition_m[finite].max()))
        if finite.any()
        else (0.0, 1.0)
    )
    edges = np.linspace(lo, hi + 1e-6, 9)
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, m in (("baseline", baseline), ("optimized", optimized)):
        rate, _ = success_by_bin(acquisition_m[finite], np.asarray(m.success)[finite], edges)
        ax.plot(centres, rate, marker="o", color=COLORS[name], label=name)
    ax.set_xlabel("LRF first valid range (m)")
    ax.set_ylabel("success rate")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Success versus LRF acquisition altitude")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_replay(traces: dict[str, Trace], title: str, path: Path) -> None:
    """Altitude versus vertical speed, true and estimated, for each set of gains."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, tr in traces.items():
        color = COLORS.get(name, "k")
        h = np.asarray(tr.height_m)
        n = int(np.argmax(h <= 0.0)) + 1 if np.any(h <= 0.0) else len(h)
        ax.plot(
            -np.asarray(tr.vertical_speed_mps)[:n],
            np.asarray(tr.altitude_m)[:n],
            color=color,
            label=f"{name}: true",
        )
        ax.plot(
            -np.asarray(tr.vertical_speed_estimate_mps)[:n],
            np.asarray(tr.altitude_estimate_m)[:n],
            color=color,
            ls="--",
            label=f"{name}: estimated",
        )
        accepted = np.asarray(tr.lrf_accepted)[:n]
        if accepted.any():
            first = int(np.argmax(accepted))
            ax.plot(-tr.vertical_speed_mps[first], tr.altitude_m[first], "o", color=color, ms=6)
    ax.set_xlabel("descent rate (m/s)")
    ax.set_ylabel("altitude (m)")
    ax.set_title(title + " (dot: first accepted LRF range)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(metrics: dict) -> str:
    """Plain-text table of the headline numbers of a robust_gains run."""
    rows = [
        ("success rate", "success_rate", "{:.2%}"),
        ("fuel mean (kg)", "fuel_kg_mean", "{:.2f}"),
        ("touchdown vz p99 (m/s)", "touchdown_vz_mps_p99", "{:.2f}"),
        ("touchdown vh p99 (m/s)", "touchdown_vh_mps_p99", "{:.2f}"),
        ("crash rate", "crash_rate", "{:.2%}"),
    ]
    b, o = metrics["baseline"], metrics["optimized"]
    lines = [f"Held-out population: {b['n_scenarios']} scenarios with altimeter faults", ""]
    lines.append(f"{'':26s}{'baseline':>12s}{'optimized':>12s}")
    for label, key, fmt in rows:
        lines.append(f"{label:26s}{fmt.format(b[key]):>12s}{fmt.format(o[key]):>12s}")
    if "nominal" in metrics:
        nb, no = metrics["nominal"]["baseline"], metrics["nominal"]["optimized"]
        label = "fuel, nominal sensors (kg)"
        lines.append(f"{label:26s}{nb['fuel_kg_mean']:>12.2f}{no['fuel_kg_mean']:>12.2f}")
    m2 = metrics["m2_replay"]
    lines.append(
        f"{'M2 replay speed (m/s)':26s}{m2['baseline']['touchdown_speed_mps']:>12.2f}"
        f"{m2['optimized']['touchdown_speed_mps']:>12.2f}"
    )
    safe = [str(m2[k]["success"]) for k in ("baseline", "optimized")]
    lines.append(f"{'M2 replay landed safely':26s}{safe[0]:>12s}{safe[1]:>12s}")
    price = metrics.get("fuel_price_kg")
    if price is not None:
        lines += [
            "",
            f"Fuel price of robustness: {price['nominal_sensors']:+.2f} kg with nominal sensors, "
            f"{price['with_faults']:+.2f} kg with faults",
        ]
    return "\n".join(lines)
