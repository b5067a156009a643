"""Monte Carlo throughput on whatever JAX backend is present (written for one GPU).

    python experiments/bench/accelerator.py --out DIR [--n 1000000] [--big 10000000]

Writes ``DIR/accelerator.json``. Measures, each in a fresh process through the command line:

- ``+experiment=monte_carlo evaluation.n_scenarios=N`` cold (no persistent compilation
  cache), then twice warm (``compile_cache_dir`` primed by the cold run): scenarios per
  second including compilation, the job's wall time, the process's wall time;
- the same warm at ``--big`` scenarios (0 skips);
- the main job (``+experiment=robust_gains``), its ``wall_time_s``;

and, in this process, the steady-state rate (programs already compiled) of
``population.fly_population`` at ``--n`` scenarios for several flight-piece sizes and
numbers of threads feeding the device, and the time of each stage of one piece (draw,
flight, transfer to the host and statistics on the host, or statistics folded on the
device), to check the settings the library uses on this backend. ``--skip-jobs`` measures
only these.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from bench import _run_job, machine  # noqa: E402


def _job(overrides: list[str]) -> dict:
    metrics, elapsed, peak_gb = _run_job(overrides)
    out = {"process_s": elapsed, "peak_memory_gb": peak_gb}
    for k in ("n_scenarios", "scenarios_per_s", "wall_time_s", "success_rate"):
        if k in metrics:
            out[k] = metrics[k]
    if "optimized" in metrics:
        out["success_rate"] = metrics["optimized"]["success_rate"]
        out["m2_replay_mps"] = metrics["m2_replay"]["optimized"]["touchdown_speed_mps"]
    print(json.dumps({" ".join(overrides): out}), flush=True)
    return out


def steady_state(n: int, pieces: list[int], workers: list[int], repeats: int) -> dict:
    """Scenarios per second of ``fly_population`` alone (programs compiled), for each flight
    piece size and number of threads feeding the device (rounds alternate over the
    settings, so drift falls on all), and the time of each stage of one piece."""
    import equinox as eqx
    import jax
    import numpy as np

    from descent_opt import load_config, population
    from descent_opt.jobs import starting_gains

    config = load_config(["+experiment=monte_carlo"])
    gains, _ = starting_gains(config)
    spec, sampler, criteria, key = (
        config.sim,
        config.sampler(),
        config.success,
        config.population_key(),
    )
    default_piece = population.flight_size

    def fly(piece: int, threads: int) -> tuple[float, float]:
        """Seconds for the population, and its success rate."""
        population.flight_size = lambda: piece
        try:
            start = time.perf_counter()
            result = population.fly_population(
                spec, gains, sampler, criteria, n, key=key, workers=threads
            )
            return time.perf_counter() - start, result.tally.summary()["success_rate"]
        finally:
            population.flight_size = default_piece

    settings = [(p, w) for p in pieces for w in workers]
    for p in pieces:
        fly(p, 1)  # compiles
    times = {s: [] for s in settings}
    rates = {}
    for _ in range(repeats):
        for setting in settings:
            elapsed, rates[setting] = fly(*setting)
            times[setting].append(elapsed)
            print(json.dumps({"piece": setting[0], "workers": setting[1], "s": elapsed}))
    out = {
        f"piece={p} workers={w}": {
            "scenarios_per_s": [n / t for t in times[(p, w)]],
            "median_scenarios_per_s": n / float(np.median(times[(p, w)])),
            "success_rate": rates[(p, w)],
        }
        for p, w in settings
    }
    # One piece of the library's size, stage by stage.
    piece = default_piece()
    indices = np.arange(piece, dtype=np.uint32)
    flight_spec = eqx.tree_at(
        lambda s: s.numerics.chunk_size, spec, piece, is_leaf=lambda x: x is None
    )
    device = jax.local_devices()[0]
    for _ in range(3):  # the last of three (the first may still be warming up)
        t0 = time.perf_counter()
        scenarios = jax.block_until_ready(population._draw(sampler, key, indices))
        t1 = time.perf_counter()
        outcome, metrics = jax.block_until_ready(
            population._fly(device, flight_spec, gains, scenarios, criteria)
        )
        t2 = time.perf_counter()
        records = population.records_of(indices, scenarios, outcome, criteria, metrics)
        t3 = time.perf_counter()
        bins = population.parameter_bins(sampler)
        population.Tally.of_records(records, bins)
        t4 = time.perf_counter()
        # What fly_population does without records: fold on the device (sketch mode).
        fold = population._DeviceFold(population.Tally(), bins, spec.duration_s, piece, False)
        fold.add([fold(device, indices, scenarios, outcome, metrics)])
        fold.finish()
        t5 = time.perf_counter()
        stages = {
            "draw_s": t1 - t0,
            "fly_s": t2 - t1,
            "records_s": t3 - t2,
            "tally_s": t4 - t3,
            "device_fold_s": t5 - t4,
        }
    out["stages_of_one_piece"] = {"piece": piece, **stages}
    print(json.dumps(out, indent=1), flush=True)
    out["backend"] = jax.default_backend()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=10_000_000)
    parser.add_argument(
        "--pieces", type=int, nargs="*", default=[1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20]
    )
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-main-job", action="store_true")
    parser.add_argument("--skip-jobs", action="store_true", help="steady state only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {}
    path = args.out / "accelerator.json"

    def save():
        path.write_text(json.dumps(result, indent=1, default=str))

    mc = ["+experiment=monte_carlo", f"evaluation.n_scenarios={args.n}"]
    with tempfile.TemporaryDirectory() as cache:
        if not args.skip_jobs:
            result["cold"] = _job(mc)
            save()
            warm = [*mc, f"compile_cache_dir={cache}"]
            result["prime"] = _job(warm)
            result["warm"] = _job(warm)
            save()
        # Only now does this process start JAX, without taking most of a GPU's memory
        # (which the jobs below would then lack).
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        result["machine"] = machine()
        del os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"]
        save()
        if args.pieces:
            result["steady_state"] = steady_state(args.n, args.pieces, args.workers, args.repeats)
            save()
        if not (args.skip_main_job or args.skip_jobs):
            result["main_job"] = _job(["+experiment=robust_gains"])
            save()
        if args.big and not args.skip_jobs:
            big = ["+experiment=monte_carlo", f"evaluation.n_scenarios={args.big}",
                   f"compile_cache_dir={cache}"]  # fmt: skip
            result["warm_big"] = _job(big)
            save()


if __name__ == "__main__":
    main()
