"""The robustness-propellant front from the sweeps of ``run.sh``.

    python experiments/robustness_tradeoff/pareto.py OUT_DIR

For each axis under OUT_DIR (``tune/``, ``heldout/``, ``nominal/``: Hydra multiruns, each
summarised by ``descent_opt.aggregate``), joins every tuned table's value of the swept key
with its success on the common held-out population (95 % interval, one-sided lower bound,
the late-acquisition class) and its mean propellant there and on nominal sensors; writes
``OUT_DIR/tradeoff.md``, ``OUT_DIR/tradeoff.json`` and ``OUT_DIR/pareto.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from descent_opt.aggregate import collect, swept_keys
from descent_opt.rundir import save_figure_atomic


def axis_rows(directory: Path) -> tuple[str, list[dict]]:
    """The swept key and one row per tuned table, in sweep order."""
    tuned = collect(directory / "tune")
    (key,) = swept_keys(tuned)
    by_table = {}
    for part in ("heldout", "nominal"):
        for row in collect(directory / part):
            path = str(Path(row["override:gains"]).resolve())
            metrics = json.loads((directory / part / row["job"] / "metrics.json").read_text())
            by_table.setdefault(path, {})[part] = (row, metrics)
    rows = []
    for t in tuned:
        path = str((directory / "tune" / t["job"] / "gains.json").resolve())
        (held, held_m), (nominal, _) = by_table[path]["heldout"], by_table[path]["nominal"]
        late = held_m["by_fault"]["acquisition_below_1200m"]
        rows.append({
            "value": t[f"override:{key}"],
            "heldout_success": held["success_rate"],
            "heldout_ci95": [held["success_rate_ci95_low"], held["success_rate_ci95_high"]],
            "heldout_lower95": held["success_rate_lower95"],
            "heldout_n": held["n_scenarios"],
            "late_acquisition_success": late["success_rate"],
            "late_acquisition_ci95": late["success_rate_ci95"],
            "heldout_fuel_kg": held["fuel_kg_mean"],
            "nominal_fuel_kg": nominal["fuel_kg_mean"],
            "nominal_success": nominal["success_rate"],
            "m2_replay_speed_mps": t["m2_replay_speed_mps"],
            "gains": path,
        })  # fmt: skip
    return key, rows


def front_notes(rows: list[dict]) -> list[str]:
    """Where, walking from the mildest tuning catalog to the harshest, held-out success
    falls outside its interval or nominal propellant falls (a non-monotone front)."""
    notes = []
    for a, b in zip(rows, rows[1:]):
        if b["heldout_ci95"][1] < a["heldout_ci95"][0]:
            notes.append(f"held-out success falls from {a['value']} to {b['value']}")
        if b["nominal_fuel_kg"] < a["nominal_fuel_kg"]:
            notes.append(
                f"nominal propellant falls from {a['value']} to {b['value']} "
                f"({a['nominal_fuel_kg']:.2f} -> {b['nominal_fuel_kg']:.2f} kg)"
            )
    return notes


def non_dominated(rows: list[dict]) -> list[dict]:
    """The tables no other beats on both counts (more held-out success for no more
    propellant on nominal sensors)."""

    def beats(a, b):
        more = a["heldout_success"] >= b["heldout_success"]
        cheaper = a["nominal_fuel_kg"] <= b["nominal_fuel_kg"]
        return more and cheaper and a is not b

    return [r for r in rows if not any(beats(o, r) for o in rows)]


def markdown(key: str, rows: list[dict]) -> str:
    base = rows[0]["nominal_fuel_kg"]
    lines = [
        f"| `{key}` | held-out success (95 % CI) | lower 95 % | acquisition < 1,200 m | "
        "fuel, nominal sensors (kg) | price vs first row (kg) | fuel, held-out (kg) | "
        "M2 replay (m/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["heldout_ci95"]
        lines.append(
            f"| {r['value']} | {r['heldout_success']:.3%} ({lo:.3%} to {hi:.3%}) | "
            f"{r['heldout_lower95']:.3%} | {r['late_acquisition_success']:.3%} | "
            f"{r['nominal_fuel_kg']:.2f} | {r['nominal_fuel_kg'] - base:+.2f} | "
            f"{r['heldout_fuel_kg']:.2f} | {r['m2_replay_speed_mps']:.2f} |"
        )
    return "\n".join(lines)


def plot(axes: dict[str, tuple[str, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(axes), figsize=(6.5 * len(axes), 4.8), squeeze=False)
    for ax, (name, (key, rows)) in zip(panels[0], axes.items()):
        x = [r["nominal_fuel_kg"] for r in rows]
        y = [100 * r["heldout_success"] for r in rows]
        err = [
            [100 * (r["heldout_success"] - r["heldout_ci95"][0]) for r in rows],
            [100 * (r["heldout_ci95"][1] - r["heldout_success"]) for r in rows],
        ]
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color="tab:blue", label="tuned table")
        front = sorted(non_dominated(rows), key=lambda r: r["nominal_fuel_kg"])
        ax.plot([r["nominal_fuel_kg"] for r in front], [100 * r["heldout_success"] for r in front],
                "--", color="tab:red", label="non-dominated")  # fmt: skip
        ax.legend(fontsize=8)
        for xi, yi, r in zip(x, y, rows):
            ax.annotate(str(r["value"]), (xi, yi), textcoords="offset points", xytext=(4, -12),
                        fontsize=8)  # fmt: skip
        ax.set_xlabel("propellant on nominal sensors (kg, mean)")
        ax.set_ylabel("held-out success (%, 95 % interval)")
        ax.set_title(f"{name}: tables tuned on {key}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    axes = {d.name: axis_rows(d) for d in sorted(out.iterdir()) if (d / "tune").is_dir()}
    text = []
    for name, (key, rows) in axes.items():
        notes = front_notes(rows) or ["monotone within the intervals"]
        text += [f"## {name}", "", markdown(key, rows), "", "Front: " + "; ".join(notes), ""]
    (out / "tradeoff.md").write_text("\n".join(text))
    (out / "tradeoff.json").write_text(json.dumps(axes, indent=2))
    plot(axes, out / "pareto.png")
    print("\n".join(text))


if __name__ == "__main__":
    main(sys.argv[1:])
