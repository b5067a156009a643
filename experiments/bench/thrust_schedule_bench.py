"""Thrust schedules: the batched JAX solver versus a fair cvxpy + Clarabel peer on all cores.

    python experiments/bench/thrust_schedule_bench.py [--quick] [--problems 1024]
        [--peer-problems N] [--reference N] [--out results.json]

The problems are those of ``+experiment=thrust_schedule`` with the default configuration
(member 0 nominal, the rest from the scenario dispersion).

* Ours: ``solve_schedules`` on the whole batch with its defaults (float64, chunks of 32
  vmapped problems, one share per core solved from its own thread). One call compiles and is
  not timed; then two timed calls, one before and one after the peer, so that load changes
  on a shared machine touch both sides; the rate is that of their mean time.
* Peer: ``convex_peer.solve_peer`` (one process per core, one compiled cvxpy problem per
  process, one Clarabel solve per final time, grid then golden-section search to the same
  final-time tolerance), on the first ``peer_problems`` of the same problems. Its timed
  region excludes process start-up and the one-time build (see ``convex_peer``).
* Accuracy: fuel ours / peer - 1 per problem (both converged). Optionally also against the
  accuracy reference ``tests/reference_convex.py`` (outer relaxation and re-expansions per
  final time), which runs serially on the first ``reference_problems``; it is slow (about
  1.6 problems/s) and not a speed peer.

``run`` returns a dict (see its docstring) and is what the benchmark suite imports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import convex_peer  # noqa: E402

QUICK_PROBLEMS = 256


def _gap_stats(ours_fuel, other_fuel, ours_ok, other_ok, suffix: str = "") -> dict:
    """ours / other - 1 over the problems both solved."""
    both = ours_ok & other_ok & np.isfinite(other_fuel)
    gap = ours_fuel[both] / other_fuel[both] - 1.0
    out = {f"compared{suffix}": int(both.sum())}
    if gap.size:
        out[f"max_fuel_gap{suffix}"] = float(gap.max())
        out[f"min_fuel_gap{suffix}"] = float(gap.min())
        out[f"mean_fuel_gap{suffix}"] = float(gap.mean())
    return out


def _reference(problems, spec, m: int):
    sys.path.insert(0, str(_HERE.parents[1] / "tests"))
    import reference_convex as rc

    v = spec.vehicle
    out = rc.solve_batch(
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
    fuel = np.array([r.fuel for r in out])
    ok = np.array([r.converged and np.isfinite(r.fuel) for r in out])
    return fuel, ok, sum(r.wall_s for r in out)


def run(
    n_problems: int = 1024,
    peer_problems: int | None = None,
    *,
    reference_problems: int = 0,
    processes: int | None = None,
    overrides: tuple[str, ...] = (),
) -> dict:
    """Time both solvers on the same problems; returns

    ``problems``, ``jax_problems_per_s``, ``cvxpy_problems_per_s``, ``speedup`` (the ratio of
    the two rates), ``max_fuel_gap`` / ``mean_fuel_gap`` / ``min_fuel_gap`` (ours / peer - 1
    over the problems both solved), the timed wall times, convergence counts, the peer's
    process count and solves per problem, the machine; with ``reference_problems`` also
    ``max_fuel_gap_reference`` etc. against the accuracy reference."""
    import jax

    import descent_opt
    from descent_opt.execution import default_workers
    from descent_opt.jobs.thrust_schedule import sample_problems
    from descent_opt.optimize.thrust_schedule import solve_schedules

    config = descent_opt.load_config(["+experiment=thrust_schedule", *overrides])
    spec = config.schedule
    problems = jax.tree.map(np.asarray, sample_problems(config, n_problems))
    m = n_problems if peer_problems is None else max(1, min(peer_problems, n_problems))
    processes = processes or os.cpu_count() or 1

    start = time.perf_counter()
    jax.block_until_ready(solve_schedules(spec, problems))
    compile_s = time.perf_counter() - start

    def timed():
        t0, c0 = time.perf_counter(), time.process_time()
        out = jax.tree.map(np.asarray, solve_schedules(spec, problems))
        return out, time.perf_counter() - t0, time.process_time() - c0

    ours, ours_s_before, ours_cpu_before = timed()
    peer = convex_peer.solve_peer(
        problems.position0_m[:m],
        problems.velocity0_mps[:m],
        problems.mass0_kg[:m],
        convex_peer.peer_spec_from_schedule_spec(spec),
        processes=processes,
    )
    _, ours_s_after, ours_cpu_after = timed()
    ours_s = 0.5 * (ours_s_before + ours_s_after)
    ours_cpu = 0.5 * (ours_cpu_before + ours_cpu_after)
    jax_rate = n_problems / ours_s
    peer_rate = m / peer.wall_s
    result = {
        "problems": n_problems,
        "peer_problems": m,
        "jax_problems_per_s": jax_rate,
        "cvxpy_problems_per_s": peer_rate,
        "speedup": jax_rate / peer_rate,
        # Problems per CPU-second (all threads or processes): less sensitive than the wall
        # rates to other work on a shared machine.
        "jax_problems_per_cpu_s": n_problems / ours_cpu,
        "cvxpy_problems_per_cpu_s": m / peer.cpu_s,
        "speedup_cpu": (n_problems / ours_cpu) / (m / peer.cpu_s),
        "jax_wall_s": [ours_s_before, ours_s_after],
        "jax_first_call_s": compile_s,
        "jax_threads": min(default_workers(), -(-n_problems // spec.chunk_size)),
        "jax_converged": int(ours.converged.sum()),
        "jax_convex_solves_mean": float(ours.convex_solves.mean()),
        "jax_ipm_iterations_mean": float(ours.iterations.mean()),
        "cvxpy_wall_s": peer.wall_s,
        "cvxpy_processes": peer.processes,
        "cvxpy_converged": int(peer.converged.sum()),
        "cvxpy_convex_solves_mean": float(peer.solves.mean()),
        "tf_rtol_peer": convex_peer.TF_RTOL,
        "tf_rtol_jax": spec.tf_rtol,  # or 4x that with a predicted gain below tf_gain_tol
        "tf_gain_tol_jax": spec.tf_gain_tol,
    }
    result.update(_gap_stats(ours.fuel_kg[:m], peer.fuel_kg, ours.converged[:m], peer.converged))
    if reference_problems:
        k = min(reference_problems, n_problems)
        fuel, ok, wall = _reference(problems, spec, k)
        result.update(_gap_stats(ours.fuel_kg[:k], fuel, ours.converged[:k], ok, "_reference"))
        result["reference_problems"] = k
        result["reference_problems_per_s_serial"] = k / wall
        peer_k = min(k, m)
        result.update(
            _gap_stats(
                peer.fuel_kg[:peer_k],
                fuel[:peer_k],
                peer.converged[:peer_k],
                ok[:peer_k],
                "_peer_vs_reference",
            )
        )
    result["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].device_kind}"
    )
    result["jax"] = jax.__version__
    try:
        import clarabel
        import cvxpy

        result["cvxpy"] = cvxpy.__version__
        result["clarabel"] = clarabel.__version__
    except ImportError:
        pass
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PROBLEMS} problems")
    parser.add_argument("--problems", type=int, default=None)
    parser.add_argument("--peer-problems", type=int, default=None)
    parser.add_argument("--reference", type=int, default=0, help="problems for the reference")
    parser.add_argument("--processes", type=int, default=None, help="peer processes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    n = args.problems or (QUICK_PROBLEMS if args.quick else 1024)
    result = run(n, args.peer_problems, reference_problems=args.reference, processes=args.processes)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
