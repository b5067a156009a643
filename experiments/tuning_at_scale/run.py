"""Tuning that sees the tail: the main job's robust tuning under several methods, each
judged on the same held-out members.

Each variant is a list of configuration overrides (the main job's keys). For each, the
robust table is tuned exactly as ``+experiment=robust_gains`` tunes it (same design, key and
catalog), its wall time and simulated scenario-steps are recorded, and it is flown over
``--n-eval`` members of the held-out population (the members ``monte_carlo`` flies) with
the certification verdict, and over ``--n-nominal`` members with nominal sensors (fuel).

    python experiments/tuning_at_scale/run.py --out DIR --n-eval 1000000 \\
        --variant today= --variant replay=optimizer.replay_every=10

Writes ``DIR/results.json`` and ``DIR/results.md`` and each variant's ``gains_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tune(config, design: dict, *, scale_steps: float):
    """The robust table of the main job under ``config``, from the built-in design with
    ``design`` (keyword arguments of ``default_gains``); returns gains, wall seconds and
    simulated scenario-steps (minibatch flights plus replay pools, at the planned horizon)."""
    from descent_opt.guidance import default_gains
    from descent_opt.optimize.gains import resolved, tune_gains

    key = jax.random.split(jax.random.key(config.seed))[1]
    start = time.perf_counter()
    gains, history = tune_gains(
        config.sim,
        default_gains(config.altitude_breakpoints_m, **design),
        config.sampler(),
        config.success,
        config.objective,
        config.optimizer,
        key=key,
    )
    jax.block_until_ready(gains)
    wall = time.perf_counter() - start
    train = resolved(config.optimizer)
    flights = train.steps * train.batch_size
    if train.replay_every:
        flights += -(-train.steps // train.replay_every) * train.replay_pool
    return gains, history, wall, flights * scale_steps


def evaluate(config, gains, n: int, *, nominal: bool = False) -> dict:
    from descent_opt.faults import FaultCatalog
    from descent_opt.population import fly_population

    faults = FaultCatalog.nominal(config.sim.lrf.max_range_m) if nominal else None
    result = fly_population(
        config.sim,
        gains,
        config.sampler(faults),
        config.success,
        n,
        key=config.population_key(nominal),
        keep_failures=50,
        unlandable=config.unlandable,
    )
    out = result.tally.summary()
    out["failures"] = result.tally.failure_list()
    out["wall_time_s"] = result.wall_time_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--n-eval", type=int, default=100_000)
    parser.add_argument("--n-nominal", type=int, default=16_384)
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME=override,override,... (empty: the configuration as it is; design.X=V sets "
        "the starting design's X, e.g. design.heavy_tail_weight=0)",
    )
    parser.add_argument("--common", default="", help="overrides for every variant")
    args = parser.parse_args()

    import descent_opt
    from descent_opt.export import gains_to_dict

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [o for o in args.common.split(",") if o]
    results = {
        "cpu": _cpu(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "n_eval": args.n_eval,
        "common": common,
        "variants": {},
    }
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        overrides = common + [o for o in overrides.split(",") if o]
        design = {
            o.split("=")[0].removeprefix("design."): float(o.split("=")[1])
            for o in overrides
            if o.startswith("design.")
        }
        keys = [o for o in overrides if not o.startswith("design.")]
        config = descent_opt.load_config(["+experiment=robust_gains", *keys])
        steps_per_flight = config.sim.n_steps
        gains, history, wall, scenario_steps = tune(config, design, scale_steps=steps_per_flight)
        (out / f"gains_{name}.json").write_text(json.dumps(gains_to_dict(gains, {}), indent=2))
        held = evaluate(config, gains, args.n_eval)
        clean = evaluate(config, gains, args.n_nominal, nominal=True)
        cert = held["certification"]
        row = {
            "overrides": overrides,
            "tuning_wall_s": wall,
            "scenario_steps": scenario_steps,
            "objective_last": float(history["objective"][-1]),
            "success_rate": held["success_rate"],
            "success_rate_ci95": held["success_rate_ci95"],
            "landable": cert["overall"],
            "classes": cert["classes"],
            "unlandable_classes": cert["unlandable_classes"],
            "certified_at": cert["certified_at"],
            "weakest_class": cert["weakest_class"],
            "fuel_kg_mean": held["fuel_kg_mean"],
            "nominal_fuel_kg_mean": clean["fuel_kg_mean"],
            "nominal_success_rate": clean["success_rate"],
            "touchdown_time_s": held["touchdown_time_s"],
            "failure_kinds": _kinds(held["failures"]),
        }
        results["variants"][name] = row
        landable = cert["overall"]
        print(
            f"{name}: tuning {wall:.1f} s, landable {landable['success_rate']:.4%} "
            f"(lower {landable['success_rate_lower95']:.4%}), weakest {cert['weakest_class']} "
            f"{cert['classes'][cert['weakest_class']]['success_rate_lower95']:.4%}, "
            f"nominal fuel {clean['fuel_kg_mean']:.2f} kg",
            flush=True,
        )
        (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(_markdown(results))


def _kinds(failures: list[dict]) -> dict:
    kinds: dict[str, int] = {}
    for f in failures:
        kinds[f["failure"]] = kinds.get(f["failure"], 0) + 1
    return kinds


def _markdown(results: dict) -> str:
    names = list(results["variants"])
    classes = list(results["variants"][names[0]]["classes"])
    head = ["variant", "tuning s", "scenario-steps", "landable success (95 % CI)", "lower 95 %"]
    head += [f"{c} lower 95 %" for c in classes] + ["nominal fuel kg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        r = results["variants"][name]
        land = r["landable"]
        low, high = land["success_rate_ci95"]
        cells = [
            name,
            f"{r['tuning_wall_s']:.0f}",
            f"{r['scenario_steps']:.3g}",
            f"{land['success_rate']:.4%} ({low:.4%} to {high:.4%})",
            f"{land['success_rate_lower95']:.4%}",
        ]
        cells += [f"{r['classes'][c]['success_rate_lower95']:.3%}" for c in classes]
        cells.append(f"{r['nominal_fuel_kg_mean']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"CPU: {results['cpu']}; backend {results['backend']}; jax {results['jax']}; "
        f"{results['n_eval']:,} held-out members."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
