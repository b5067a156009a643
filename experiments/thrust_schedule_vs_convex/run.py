"""Batched thrust schedules versus cvxpy + Clarabel: problems per second at equal accuracy.

    python experiments/thrust_schedule_vs_convex/run.py [--problems 1024] [--reference 1024]
        [--glide-slope-deg 0] [--out results.json]

The problems are the thrust_schedule experiment's (conf/ defaults: member 0 nominal, the rest
from the scenario dispersion). The batched JAX solver runs once to compile and once timed;
the reference (tests/reference_convex.py, needs the ``test`` extra) solves the first
``--reference`` of the same problems one after another with its usual line search over t_f.
Accuracy: our fuel relative to the reference's, problem by problem.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

import descent_opt
from descent_opt.jobs.thrust_schedule import sample_problems
from descent_opt.optimize.thrust_schedule import solve_schedules

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import reference_convex as rc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=1024)
    parser.add_argument("--reference", type=int, default=1024)
    parser.add_argument("--glide-slope-deg", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    overrides = ["+experiment=thrust_schedule"]
    if args.glide_slope_deg is not None:
        overrides.append(f"thrust_schedule.glide_slope_deg={args.glide_slope_deg}")
    config = descent_opt.load_config(overrides)
    spec = config.schedule
    problems = sample_problems(config, args.problems)

    start = time.perf_counter()
    jax.block_until_ready(solve_schedules(spec, problems))
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = jax.tree.map(np.asarray, solve_schedules(spec, problems))
    ours_s = time.perf_counter() - start
    print(
        f"ours: {args.problems} problems in {ours_s:.1f} s ({args.problems / ours_s:.2f} "
        f"problems/s; first call with compilation {first_s:.1f} s), converged "
        f"{ours.converged.sum()}/{args.problems}"
    )

    v = config.vehicle
    m = min(args.reference, args.problems)
    refs = rc.solve_batch(
        [
            rc.LandingProblem(
                r0=tuple(map(float, problems.position0_m[i])),
                v0=tuple(map(float, problems.velocity0_mps[i])),
                m0=float(problems.mass0_kg[i]),
                m_dry=v.mass_dry_kg,
                thrust_min_n=v.thrust_min_n,
                thrust_max_n=v.thrust_max_n,
                isp_s=v.isp_s,
                max_tilt_deg=v.max_tilt_deg,
                glide_slope_deg=spec.glide_slope_deg,
                gravity_mps2=spec.gravity_mps2,
                n_nodes=spec.n_nodes,
            )
            for i in range(m)
        ]
    )
    ref_s = sum(r.wall_s for r in refs)
    ref_fuel = np.array([r.fuel for r in refs])
    ref_ok = np.array([r.converged and np.isfinite(r.fuel) for r in refs])
    both = ref_ok & ours.converged[:m]
    gap = ours.fuel_kg[:m][both] / ref_fuel[both] - 1.0
    print(
        f"reference: {m} problems in {ref_s:.1f} s ({m / ref_s:.3f} problems/s), converged "
        f"{ref_ok.sum()}/{m}"
    )
    print(
        f"fuel gap ours/reference - 1 over {both.sum()} problems: max {gap.max():+.4%}, "
        f"min {gap.min():+.4%}, mean {gap.mean():+.5%}; within +0.5 %: "
        f"{(gap <= 0.005).sum()}"
    )
    speedup = (args.problems / ours_s) / (m / ref_s)
    print(f"speed-up (problems/s): {speedup:.1f}x")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "problems": args.problems,
        "glide_slope_deg": spec.glide_slope_deg,
        "n_nodes": spec.n_nodes,
        "ours_s": ours_s,
        "ours_first_call_s": first_s,
        "ours_problems_per_s": args.problems / ours_s,
        "ours_converged": int(ours.converged.sum()),
        "reference_problems": m,
        "reference_s": ref_s,
        "reference_problems_per_s": m / ref_s,
        "reference_converged": int(ref_ok.sum()),
        "fuel_gap_max": float(gap.max()),
        "fuel_gap_min": float(gap.min()),
        "fuel_gap_mean": float(gap.mean()),
        "speedup": speedup,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
