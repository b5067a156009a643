"""Report: PNG plots and the end-of-run summary table.

Over 400 lines because every job's figures live here, one function each, sharing the
panels and colours that make them read alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from descent_opt import certification
from descent_opt.faults import faults_of, late_acquisition
from descent_opt.rundir import save_figure_atomic
from descent_opt.simulate import Trace

COLORS = {"baseline": "tab:red", "optimized": "tab:blue", "candidate": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_touchdown_speeds(
    records: dict[str, dict[str, np.ndarray]], limit_mps: float, path: Path
) -> None:
    """Distributions of touchdown vertical speed of each gain table over one population."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max([limit_mps * 2] + [float(np.max(r["touchdown_vz_mps"])) for r in records.values()])
    bins = np.linspace(0.0, top, 60)
    for name, r in records.items():
        ax.hist(
            r["touchdown_vz_mps"],
            bins=bins,
            alpha=0.6,
            color=COLORS.get(name, "k"),
            label=f"{name} (success {np.mean(r['success']):.1%})",
        )
    ax.axvline(limit_mps, color="k", ls="--", lw=1, label=f"limit {limit_mps:g} m/s")
    ax.set_yscale("log")
    ax.set_xlabel("touchdown vertical speed (m/s)")
    ax.set_ylabel("scenarios")
    ax.set_title("Held-out population with altimeter faults")
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def success_by_bin(values, success, edges) -> tuple[np.ndarray, np.ndarray]:
    """Success rate and count per bin of ``values``."""
    idx = np.clip(np.digitize(values, edges) - 1, 0, len(edges) - 2)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    hits = np.bincount(idx, weights=success.astype(float), minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts, counts


def plot_success_vs_acquisition(records: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Success rate of each gain table versus the altitude at which the LRF first gives a
    valid range."""
    plt = _pyplot()
    first = next(iter(records.values()))
    acquisition_m = first["acquisition_range_m"]
    late = np.asarray(late_acquisition(faults_of(first)))
    lo, hi = (
        (float(acquisition_m[late].min()), float(acquisition_m[late].max()))
        if late.any()
        else (0.0, 1.0)
    )
    edges = np.linspace(lo, hi + 1e-6, 9)
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in records.items():
        rate, _ = success_by_bin(acquisition_m[late], r["success"][late], edges)
        ax.plot(centres, rate, marker="o", color=COLORS.get(name, "k"), label=name)
    ax.set_xlabel("LRF first valid range (m)")
    ax.set_ylabel("success rate")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Success versus LRF acquisition altitude")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_speed_exceedance(
    histograms: dict[str, np.ndarray],
    edges_mps: np.ndarray,
    limits_mps: dict[str, float],
    crash_speed_mps: float,
    path: Path,
) -> None:
    """Probability that the touchdown speed exceeds v, on log axes, from the streamed
    histograms (bin ``k`` counts speeds in ``[edges[k-1], edges[k])``), with the limits."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histograms), figsize=(5.5 * len(histograms), 4))
    for ax, (name, counts) in zip(np.atleast_1d(axes), histograms.items()):
        total = counts.sum()
        # P(speed >= edges[k]) = share of counts in bins k+1 and above.
        above = counts[::-1].cumsum()[::-1][1:] / max(total, 1)
        keep = above > 0
        ax.step(edges_mps[keep], above[keep], where="post", color="tab:blue")
        ax.axvline(
            limits_mps[name], color="k", ls="--", lw=1, label=f"limit {limits_mps[name]:g} m/s"
        )
        if name == "touchdown_vz_mps":
            ax.axvline(
                crash_speed_mps,
                color="tab:red",
                ls=":",
                lw=1,
                label=f"crash {crash_speed_mps:g} m/s",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(("vertical" if "vz" in name else "horizontal") + " touchdown speed v (m/s)")
        ax.set_ylabel("P(speed >= v)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(f"Touchdown speeds over {int(next(iter(histograms.values())).sum()):,} scenarios")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_success_vs_faults(by_parameter: dict[str, dict], path: Path) -> None:
    """Success rate against each fault parameter, per bin, with the 95 % Clopper-Pearson
    band (only scenarios that carry the fault)."""
    from descent_opt.statistics import clopper_pearson

    plt = _pyplot()
    names = list(by_parameter)
    cols = 4
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        entry = by_parameter[name]
        edges, n, hits = entry["edges"], entry["n"], entry["success"]
        centres = 0.5 * (edges[1:] + edges[:-1])
        has = n > 0
        rate = np.where(has, hits / np.maximum(n, 1), np.nan)
        band = np.array([clopper_pearson(int(h), int(m)) for h, m in zip(hits, n)])
        ax.fill_between(centres[has], band[has, 0], band[has, 1], alpha=0.3, color="tab:blue")
        ax.plot(centres[has], rate[has], marker="o", ms=3, color="tab:blue")
        ax.set_xlabel(name)
        ax.set_ylim(min(0.9, float(np.nanmin(band[has, 0])) if has.any() else 0.9), 1.005)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("success rate (95 % band)")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def _flown(trace: Trace):
    """Times up to the step after touchdown, and a function cutting a trace field there."""
    h = np.asarray(trace.height_m)
    end = int(np.argmax(h <= 0.0)) + 1 if np.any(h <= 0.0) else len(h)
    return np.asarray(trace.time_s)[:end], lambda x: np.asarray(x)[:end]


def _altitude_panel(ax, trace: Trace) -> None:
    """True altitude and height, the estimate, and the LRF's accepted and rejected ranges
    against time."""
    t, cut = _flown(trace)
    ax.plot(t, cut(trace.altitude_m), color="k", label="altitude, true")
    ax.plot(t, cut(trace.height_m), color="0.5", ls=":", label="height above terrain, true")
    ax.plot(t, cut(trace.altitude_estimate_m), color="tab:blue", ls="--", label="estimated")
    sampled, accepted = cut(trace.lrf_sampled), cut(trace.lrf_accepted)
    lrf = cut(trace.lrf_altitude_m)
    ax.plot(t[accepted], lrf[accepted], ".", ms=3, color="tab:green", label="LRF accepted")
    rejected = sampled & ~accepted
    ax.plot(t[rejected], lrf[rejected], "x", ms=4, color="tab:red", label="LRF rejected")
    ax.set_ylabel("altitude (m)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _propellant_panel(ax, trace: Trace, mass_dry_kg: float) -> None:
    t, cut = _flown(trace)
    ax.plot(t, cut(trace.mass_kg) - mass_dry_kg, color="k")
    ax.set_ylabel("propellant (kg)")
    ax.set_xlabel("time (s)")
    ax.grid(alpha=0.3)


def plot_member(trace: Trace, title: str, mass_dry_kg: float, path: Path) -> None:
    """One re-flown scenario: altitude (true, estimated, LRF samples accepted and
    rejected), vertical speed, contingency and propellant against time."""
    plt = _pyplot()
    t, cut = _flown(trace)
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    _altitude_panel(axes[0], trace)
    ax = axes[1]
    ax.plot(t, -cut(trace.vertical_speed_mps), color="k", label="descent rate, true")
    ax.plot(
        t, -cut(trace.vertical_speed_estimate_mps), color="tab:blue", ls="--", label="estimated"
    )
    contingency = cut(trace.contingency)
    if contingency.any():
        ax.fill_between(
            t, 0, 1, where=contingency, transform=ax.get_xaxis_transform(), color="tab:orange",
            alpha=0.2, label="contingency envelope",
        )  # fmt: skip
    ax.set_ylabel("descent rate (m/s)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _propellant_panel(axes[2], trace, mass_dry_kg)
    axes[0].set_title(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_replay_flight(trace: Trace, title: str, mass_dry_kg: float, path: Path) -> None:
    """A mission replay: altitude against time (true, estimated, LRF ranges accepted and
    rejected), descent rate against altitude (true and estimated; the steps flown on the
    contingency envelope marked) and propellant against time."""
    plt = _pyplot()
    _, cut = _flown(trace)
    fig = plt.figure(figsize=(12, 8))
    grid = fig.add_gridspec(2, 2)
    _altitude_panel(fig.add_subplot(grid[0, 0]), trace)
    _propellant_panel(fig.add_subplot(grid[1, 0]), trace, mass_dry_kg)
    ax = fig.add_subplot(grid[:, 1])
    height = cut(trace.height_m)
    ax.plot(-cut(trace.vertical_speed_mps), height, color="k", label="true")
    ax.plot(
        -cut(trace.vertical_speed_estimate_mps), cut(trace.altitude_estimate_m),
        color="tab:blue", ls="--", label="estimated (estimated altitude)",
    )  # fmt: skip
    contingency = cut(trace.contingency)
    if contingency.any():
        ax.plot(
            -cut(trace.vertical_speed_mps)[contingency], height[contingency], ".", ms=3,
            color="tab:orange", label="flown on the contingency envelope",
        )  # fmt: skip
    ax.set_xlabel("descent rate (m/s)")
    ax.set_ylabel("height above the ground (m)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)
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
    save_figure_atomic(fig, path)
    plt.close(fig)


def summary_table(metrics: dict) -> str:
    """Plain-text table of the headline numbers of a robust_gains run."""
    rows = [
        ("success rate", "success_rate", "{:.2%}"),
        ("fuel mean (kg)", "fuel_kg_mean", "{:.2f}"),
        ("touchdown vz p99 (m/s)", "touchdown_vz_mps_p99", "{:.2f}"),
        ("touchdown vh p99 (m/s)", "touchdown_vh_mps_p99", "{:.2f}"),
        ("crash rate", "crash_rate", "{:.2%}"),
        ("LRF locked out at the end", "lrf_locked_out_rate", "{:.3%}"),
    ]
    b, o = metrics["baseline"], metrics["optimized"]
    lines = [f"Held-out population: {b['n_scenarios']:,} scenarios with altimeter faults", ""]
    lines.append(f"{'':26s}{'baseline':>12s}{'optimized':>12s}")
    for label, key, fmt in rows:
        lines.append(f"{label:26s}{fmt.format(b[key]):>12s}{fmt.format(o[key]):>12s}")
    times = [m["touchdown_time_s"] for m in (b, o)]
    for label, k in (("touchdown time p50 (s)", "p50"), ("touchdown time max (s)", "max")):
        lines.append(f"{label:26s}{times[0][k]:>12.1f}{times[1][k]:>12.1f}")
    lines.append(
        f"{'down after the plan':26s}{times[0]['late_rate']:>12.3%}{times[1]['late_rate']:>12.3%}"
    )
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
    if "certification" in o:
        lines += ["", "Optimized table, " + certification.lines(o["certification"])[0]]
        lines += certification.lines(o["certification"])[1:]
    return "\n".join(lines)


def plot_envelope(
    axis: str,
    curves: dict[str, list[dict]],
    catalog_range: tuple[float, float],
    edges: dict[str, float | None],
    required_success: float,
    path: Path,
) -> None:
    """A fault envelope: success rate with its 95 % Clopper-Pearson band against the fault's
    value, one curve per gain table (``curves[name]``: its points, benign first, each with
    ``value``, ``success_rate`` and ``success_rate_ci95``), the catalog's range shaded, the
    required success and each table's edge marked; the axis runs from benign to harsh."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    values = [p["value"] for points in curves.values() for p in points]
    shaded = max(catalog_range[0], min(values)), min(catalog_range[1], max(values))
    if shaded[1] > shaded[0]:  # the part of the catalog's range the grid covers
        ax.axvspan(*shaded, color="0.85", alpha=0.6, lw=0, label="catalog's range")
    ax.axhline(required_success, color="k", ls=":", lw=1, label=f"required {required_success:g}")
    for k, (name, points) in enumerate(curves.items()):
        color = f"C{k}"
        value = np.array([p["value"] for p in points])
        rate = np.array([p["success_rate"] for p in points])
        band = np.array([p["success_rate_ci95"] for p in points])
        ax.fill_between(value, band[:, 0], band[:, 1], color=color, alpha=0.25, lw=0)
        ax.plot(value, rate, marker="o", ms=3, color=color, label=name)
        if edges.get(name) is not None:
            ax.axvline(
                edges[name], color=color, ls="--", lw=1.2, label=f"{name}: edge {edges[name]:g}"
            )
    if len(values) > 1 and values[0] > values[-1]:
        ax.invert_xaxis()  # harsher is lower: benign on the left
    ax.set_xlabel(axis + " (benign to harsh)")
    ax.set_ylabel("success rate (95 % band)")
    low = min([p["success_rate_ci95"][0] for points in curves.values() for p in points] + [0.9])
    ax.set_ylim(max(0.0, low - 0.02), 1.005)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Fault envelope: {axis}")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_search_progress(
    progress: dict[str, list[list[tuple[int, float]]]], reference_mps: float | None, path: Path
) -> None:
    """Worst-case searches: the worst touchdown speed found against flights spent, one line
    per run, one colour per method, beside the worst of the plain catalog samples."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for color, (method, runs) in zip(("tab:blue", "tab:green", "tab:red"), progress.items()):
        for i, run in enumerate(runs):
            flights, speed = np.asarray(run, dtype=float).T
            ax.step(flights, speed, where="post", color=color, alpha=0.6,
                    label=method if i == 0 else None)  # fmt: skip
    if reference_mps is not None:
        ax.axhline(reference_mps, color="k", ls="--", label="worst of the catalog samples")
    ax.set_xscale("log")
    ax.set_xlabel("flights spent")
    ax.set_ylabel("worst touchdown speed found (m/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_sensitivities(rows: list[dict], path: Path, top: int = 20) -> None:
    """Sensitivities: the ``top`` largest scaled derivatives of the smoothed risk (with two
    standard errors) and the success rate's change per unit, one bar per parameter,
    coloured by kind."""
    plt = _pyplot()
    rows = rows[:top][::-1]
    kinds = sorted({r["kind"] for r in rows})
    colors = dict(zip(kinds, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                              "tab:brown")))  # fmt: skip
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(rows) + 1.6), sharey=True)
    for ax, figure, label in zip(axes, ("risk", "success_rate"),
                                 ("smoothed risk per unit", "success rate per unit")):  # fmt: skip
        values = [r[figure] for r in rows]
        errors = [2.0 * r[figure + "_se"] for r in rows]
        ax.barh(y, values, xerr=errors, color=[colors[r["kind"]] for r in rows], ecolor="0.3")
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_xlabel(label + " (bars: 2 standard errors)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [r["parameter"] for r in rows], fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in kinds]
    axes[1].legend(handles, kinds, fontsize=8, loc="lower right")
    fig.suptitle("Sensitivities, largest scaled risk derivative first")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
