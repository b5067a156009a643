"""descent_opt benchmark suite: closed-loop throughput against NumPy, gradient cost, compile
time, thrust schedules against cvxpy + Clarabel, and the main job's wall time.

    python experiments/bench/bench.py [--quick] --out DIR [--skip SECTION ...]

Writes ``DIR/bench.json`` and ``DIR/bench.md``. Sections (``--skip`` any of them):

- ``closed_loop``: forward closed loop (default configuration: crater field, realistic
  faults, default gains, 720 steps of 0.25 s) in scenario-steps per second, counted over the
  nominal horizon, for ``descent_opt.simulate.simulate_population`` and for the independent
  NumPy implementation in ``numpy_closed_loop.py`` on one process and on all cores (one
  process per core), on the same population, in the same run. The ratio is against the faster of
  the two NumPy figures (where the cores do not scale, one process wins). Full: 1,024 to
  1,048,576 scenarios; ``--quick``: 4,096 and 65,536.
- ``grad``: value and gradient of the training objective (``population_risk`` as gain
  tuning builds it: compact layout, soft gate) against population and horizon: best wall
  time of three after compiling, and the program's memory from XLA's buffer assignment.
- ``compile``: cold compilation (fresh process, no persistent cache) of the main job's
  programs: the training step, the held-out evaluation and the replay traces.
- ``thrust_schedule``: ``thrust_schedule_bench.run`` (batched interior point against cvxpy
  + Clarabel, one process per core, one solve per final time).
- ``main_job``: ``python -m descent_opt +experiment=robust_gains`` end to end in a fresh
  process; its ``wall_time_s``.
- ``monte_carlo``: ``+experiment=monte_carlo`` over 10^6 scenarios (``--quick``: 10^5) in a
  fresh process: scenarios per second and peak memory.
- ``roofline``: XLA's cost analysis of one closed-loop step and what an H100 would make of
  it (see the README).

Timings on a shared machine drift; the ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tables import render

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

SECTIONS = (
    "closed_loop",
    "grad",
    "compile",
    "thrust_schedule",
    "main_job",
    "monte_carlo",
    "devices",
    "roofline",
)
H100 = {"name": "NVIDIA H100 SXM", "bandwidth_bytes_per_s": 3.35e12, "fp32_flops_per_s": 67e12}


def machine() -> dict:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def closed_loop(populations: list[int], repeats: int, numpy_repeats: int) -> dict:
    """Forward throughput of JAX and of the NumPy peer (1 process and all cores)."""
    import jax
    import numpy_closed_loop as peer

    import descent_opt
    from descent_opt.guidance import default_gains
    from descent_opt.simulate import simulate_population

    config = descent_opt.load_config(["sim.max_duration_s=null"])  # the peer's horizon
    spec = config.sim
    gains = default_gains(config.altitude_breakpoints_m)
    model = peer.model_from_spec(spec, gains)
    sampler = config.sampler()
    steps = spec.n_steps
    cores = os.cpu_count() or 1
    rows = []
    with peer.NumpyPool(cores) as pool:
        for n in populations:
            scenarios = sampler(jax.random.key(0), n)
            population = peer.scenarios_to_numpy(scenarios)

            def fly(scenarios=scenarios):
                jax.block_until_ready(simulate_population(spec, gains, scenarios))

            start = time.perf_counter()
            fly()
            first_s = time.perf_counter() - start
            jax_s = _best(fly, repeats)
            one_s = _best(
                lambda p=population: peer.simulate_numpy(model, None, p, seed=1), numpy_repeats
            )
            all_s = min(
                pool.simulate(model, None, population, seed=1)[1] for _ in range(numpy_repeats)
            )
            peer_s = min(one_s, all_s)  # the peer as its user would run it: the faster
            row = {
                "population": n,
                "jax_steps_per_s": n * steps / jax_s,
                "numpy_steps_per_s": n * steps / peer_s,
                "numpy_1_process_steps_per_s": n * steps / one_s,
                "numpy_all_cores_steps_per_s": n * steps / all_s,
                "numpy_processes": cores,
                "speedup_vs_numpy": peer_s / jax_s,
                "speedup_vs_numpy_1_process": one_s / jax_s,
                "speedup_vs_numpy_all_cores": all_s / jax_s,
                "jax_first_call_s": first_s,
            }
            rows.append(row)
            print(
                f"closed loop {n}: jax {row['jax_steps_per_s'] / 1e6:.2f} M/s, numpy "
                f"{row['numpy_1_process_steps_per_s'] / 1e6:.2f} M/s (1 process), "
                f"{row['numpy_all_cores_steps_per_s'] / 1e6:.2f} M/s ({cores} processes): "
                f"{row['speedup_vs_numpy']:.2f}x the faster",
                flush=True,
            )
            del scenarios, population
    headline = next((r for r in rows if r["population"] == 65536), rows[-1])
    keys = ("population", "jax_steps_per_s", "numpy_steps_per_s", "speedup_vs_numpy")
    return {"closed_loop": {k: headline[k] for k in keys}, "closed_loop_table": rows}


def _training_objective(config, n: int, duration_s: float | None = None):
    """The jitted value-and-gradient of the training objective on ``n`` scenarios, as
    ``tune_gains`` builds it, with its arguments."""
    import equinox as eqx
    import jax

    from descent_opt.guidance import default_gains
    from descent_opt.optimize.gains import population_risk, to_params

    spec = eqx.tree_at(  # as tune_gains flies: soft gate, compact layout, planned horizon
        lambda s: (s.smoothing.gate_softness, s.numerics.unrolled, s.max_duration_s),
        config.sim,
        (config.optimizer.gate_softness, False, None),
        is_leaf=lambda x: x is None,
    )
    if duration_s is not None:
        spec = eqx.tree_at(lambda s: s.duration_s, spec, duration_s)
    gains = default_gains(config.altitude_breakpoints_m)
    scenarios = config.sampler()(jax.random.key(1), n)

    def objective(params, scenarios):
        return population_risk(
            params, gains.altitude_breakpoints_m, spec, scenarios, config.success, config.objective
        )

    value_and_grad = jax.jit(lambda p, s: eqx.filter_value_and_grad(objective, has_aux=True)(p, s))
    return value_and_grad, (to_params(gains), scenarios), spec.n_steps


def grad(populations: list[int], horizons_s: list[float], repeats: int) -> dict:
    """Value-and-gradient time and memory of the training objective."""
    import jax

    import descent_opt

    config = descent_opt.load_config([])
    cases = [(n, config.sim.duration_s) for n in populations]
    cases += [(populations[0], h) for h in horizons_s if h != config.sim.duration_s]
    rows = []
    for n, horizon in cases:
        fn, args, steps = _training_objective(config, n, horizon)
        compiled = fn.lower(*args).compile()
        memory = compiled.memory_analysis()
        jax.block_until_ready(compiled(*args))
        wall = _best(lambda c=compiled, a=args: jax.block_until_ready(c(*a)), repeats)
        program_bytes = None
        if memory is not None:
            program_bytes = int(
                memory.temp_size_in_bytes
                + memory.argument_size_in_bytes
                + memory.output_size_in_bytes
            )
        rows.append(
            {
                "population": n,
                "horizon_s": horizon,
                "steps": steps,
                "value_and_grad_s": wall,
                "scenario_steps_per_s": n * steps / wall,
                "program_memory_mb": None if program_bytes is None else program_bytes / 2**20,
            }
        )
        print(f"grad {n} x {horizon:g} s: {wall:.3f} s, {rows[-1]['program_memory_mb']} MB")
    return {"grad": rows}


_COMPILE_PROBE = """
import json, time
import jax, equinox as eqx
import descent_opt
from descent_opt.guidance import default_gains
from descent_opt.optimize import gains as tuning
from descent_opt.stages import replay_scenario_of
from descent_opt.simulate import _simulate_traces, simulate

config = descent_opt.load_config(["+experiment=robust_gains"])
gains = default_gains(config.altitude_breakpoints_m)
train = tuning.resolved(config.optimizer)
spec = eqx.tree_at(
    lambda s: (s.smoothing.gate_softness, s.numerics.unrolled, s.max_duration_s),
    config.sim,
    (train.gate_softness, False, None),
    is_leaf=lambda x: x is None,
)
sampler = config.sampler()
params = tuning.to_params(gains)
opt_state = tuning._optimizer(train).init(params)
out = {}
start = time.perf_counter()
tuning._train_step.lower(train, spec, config.success, config.objective, sampler,
    gains.altitude_breakpoints_m, params, opt_state, params, jax.random.key(0),
    tuple(jax.local_devices())).compile()
out["training_step_s"] = time.perf_counter() - start
heldout = sampler(jax.random.key(1), config.evaluation.n_scenarios)
start = time.perf_counter()
simulate.lower(config.sim, gains, heldout).compile()
out["evaluation_s"] = time.perf_counter() - start
start = time.perf_counter()
_simulate_traces.lower(config.sim, gains, replay_scenario_of(config)).compile()
out["replay_traces_s"] = time.perf_counter() - start
out["total_s"] = sum(out.values())
print(json.dumps(out))
"""


def compile_times() -> dict:
    """Cold compile of the main job's programs, in a fresh process."""
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_PROBE], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"compile probe failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"compile (cold): {result}")
    return {"compile_s": result}


def _run_job(overrides: list[str], env: dict | None = None) -> tuple[dict, float, float]:
    """``python -m descent_opt`` in a fresh process: its metrics, the process's wall time and
    its peak resident memory (GB)."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "descent_opt", *overrides, "progress=false",
             f"hydra.run.dir={tmp}"],
            capture_output=True,
            text=True,
            env=env,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{overrides[0]} failed:\n{done.stderr[-2000:]}")
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    return metrics, elapsed, peak_gb


def main_job() -> dict:
    """The main job end to end in a fresh process; returns its ``wall_time_s``."""
    metrics, elapsed, _ = _run_job(["+experiment=robust_gains"])
    result = {
        "main_job_s": metrics["wall_time_s"],
        "main_job_process_s": elapsed,
        "main_job_success_rate": metrics["optimized"]["success_rate"],
        "main_job_m2_replay_mps": metrics["m2_replay"]["optimized"]["touchdown_speed_mps"],
    }
    print(f"main job: {result}")
    return result


def monte_carlo(n: int) -> dict:
    """``+experiment=monte_carlo`` over ``n`` scenarios in a fresh process (the built-in
    design, default faults): scenarios per second including compilation, peak memory (the
    largest of this run's child processes so far)."""
    metrics, elapsed, peak_gb = _run_job(["+experiment=monte_carlo", f"evaluation.n_scenarios={n}"])
    result = {
        "n_scenarios": metrics["n_scenarios"],
        "scenarios_per_s": metrics["scenarios_per_s"],
        "wall_time_s": metrics["wall_time_s"],
        "process_s": elapsed,
        "peak_memory_gb": peak_gb,
        "success_rate": metrics["success_rate"],
        "success_rate_ci95": metrics["success_rate_ci95"],
    }
    print(f"monte carlo: {result}")
    return {"monte_carlo": result}


def devices(n: int, repeats: int) -> dict:
    """``+experiment=monte_carlo`` over ``n`` scenarios with 1 and with 2 forced host
    devices, each in a fresh process, ``repeats`` pairs (1 then 2, then 2 then 1, and so
    on, so that drift in the machine's speed falls on both): cold (nothing cached, each run
    compiles) and warm (a persistent compilation cache primed by one run of each).
    Scenarios per second including compilation and the process's CPU seconds; medians, and
    the median and range of the pairs' ratios (the pairs share the machine's state)."""
    runs: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        for mode in ("cold", "warm"):
            extra = [f"compile_cache_dir={cache}"] if mode == "warm" else []
            if mode == "warm":
                for count in (1, 2):
                    _run_job(["+experiment=monte_carlo", "evaluation.n_scenarios=4096", *extra],
                             _forced_devices(count))  # fmt: skip
            for r in range(repeats):
                for count in (1, 2) if r % 2 == 0 else (2, 1):
                    cpu = _children_cpu_s()
                    metrics, _, _ = _run_job(
                        ["+experiment=monte_carlo", f"evaluation.n_scenarios={n}", *extra],
                        _forced_devices(count),
                    )
                    run = runs.setdefault(f"{mode}_{count}", {"per_s": [], "cpu_s": []})
                    run["per_s"].append(metrics["scenarios_per_s"])
                    run["cpu_s"].append(_children_cpu_s() - cpu)
    result = {"n_scenarios": n, "repeats": repeats, "runs": runs}
    for mode in ("cold", "warm"):
        one, two = runs[f"{mode}_1"], runs[f"{mode}_2"]
        ratios = np.asarray(two["per_s"]) / np.asarray(one["per_s"])
        result[mode] = {
            "one_device": float(np.median(one["per_s"])),
            "two_devices": float(np.median(two["per_s"])),
            "ratio": float(np.median(ratios)),
            "ratio_range": [float(ratios.min()), float(ratios.max())],
            "cpu_s_one": float(np.median(one["cpu_s"])),
            "cpu_s_two": float(np.median(two["cpu_s"])),
        }
    print(f"devices: {result}")
    return {"devices": result}


def _children_cpu_s() -> float:
    """CPU seconds (user and system) of the finished child processes so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _forced_devices(count: int) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    return dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={count}")


def roofline(population: int = 65536) -> dict:
    """Work of one closed-loop step per scenario from XLA's cost analysis, and the H100's
    bound on it: the memory a step must move at least (the carried state in and out, the
    step's random draws) against HBM bandwidth, the floating-point work against fp32 peak."""
    import jax
    import jax.numpy as jnp

    import descent_opt
    from descent_opt import noise
    from descent_opt import simulate as sim
    from descent_opt.guidance import default_gains, prepare

    config = descent_opt.load_config(["sim.max_duration_s=null"])  # the peer's horizon
    spec = config.sim
    gains = default_gains(config.altitude_breakpoints_m)
    scenarios = config.sampler()(jax.random.key(0), population)
    flight = sim._Flight.of(scenarios, spec.numerics.unrolled)
    schedule = prepare(gains, unrolled=spec.numerics.unrolled)
    carry = jax.vmap(lambda f: sim._initial_carry(spec, schedule, f))(flight)
    draws = jax.vmap(noise.step_noise, in_axes=(0, None))(flight.key_words, jnp.uint32(300))

    def one_step(gains, flight, carry, draws):
        schedule = prepare(gains, unrolled=spec.numerics.unrolled)
        step = jax.vmap(lambda f, c, d: sim._step(spec, schedule, f, c, jnp.int32(300), d)[0])
        return step(flight, carry, draws)

    lowered = jax.jit(one_step).lower(gains, flight, carry, draws)
    analysis = lowered.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    flops = float(analysis.get("flops", 0.0)) / population
    transcendentals = float(analysis.get("transcendentals", 0.0)) / population
    compiled = lowered.compile().cost_analysis()
    compiled = compiled[0] if isinstance(compiled, list) else compiled
    cpu_bytes = float(compiled.get("bytes accessed", 0.0)) / population

    def bytes_per_scenario(tree):
        return sum(x.dtype.itemsize * x[0].size for x in jax.tree.leaves(tree))

    carry_bytes = bytes_per_scenario(carry)
    flight_bytes = bytes_per_scenario(flight)
    draw_bytes = bytes_per_scenario(draws)
    # Every step must read the carried state, the scenario's fixed data (terrain, faults,
    # key) and its draws, and write the state back.
    minimum_bytes = 2 * carry_bytes + flight_bytes + draw_bytes
    bandwidth, peak = H100["bandwidth_bytes_per_s"], H100["fp32_flops_per_s"]
    compute_bound = peak / max(flops + 10.0 * transcendentals, 1.0)
    memory_bound = bandwidth / minimum_bytes
    partitioned_bound = bandwidth / cpu_bytes
    result = {
        "flops_per_scenario_step": flops,
        "transcendentals_per_scenario_step": transcendentals,
        "carry_bytes_per_scenario": carry_bytes,
        "fixed_bytes_per_scenario": flight_bytes,
        "draw_bytes_per_scenario_step": draw_bytes,
        "minimum_bytes_per_scenario_step": minimum_bytes,
        "cpu_program_bytes_per_scenario_step": cpu_bytes,
        "gpu": H100["name"],
        "h100_compute_bound_steps_per_s": compute_bound,
        "h100_memory_bound_steps_per_s": memory_bound,
        "h100_cpu_partition_bound_steps_per_s": partitioned_bound,
        "h100_bound_steps_per_s": min(memory_bound, compute_bound),
        "h100_bound_1e6_scenarios_s": 1e6 * spec.n_steps / min(memory_bound, compute_bound),
        "h100_cpu_partition_1e6_scenarios_s": 1e6 * spec.n_steps / partitioned_bound,
    }
    print(f"roofline: {result}")
    return {"roofline": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the under-10-minute subset")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    result: dict = {"machine": machine(), "command": " ".join(["bench.py", *sys.argv[1:]])}
    started = time.perf_counter()
    if "closed_loop" not in args.skip:
        populations = [4096, 65536] if quick else [1024, 4096, 16384, 65536, 262144, 1048576]
        result.update(closed_loop(populations, repeats=3, numpy_repeats=1 if quick else 2))
    if "grad" not in args.skip:
        populations = [128, 1024] if quick else [128, 512, 1024, 4096]
        horizons = [90.0] if quick else [45.0, 90.0]
        result.update(grad(populations, horizons, repeats=3))
    if "compile" not in args.skip:
        result.update(compile_times())
    if "thrust_schedule" not in args.skip:
        import thrust_schedule_bench

        n = thrust_schedule_bench.QUICK_PROBLEMS if quick else 1024
        result["thrust_schedule"] = thrust_schedule_bench.run(n, n)
    if "main_job" not in args.skip:
        result.update(main_job())
    if "monte_carlo" not in args.skip:
        result.update(monte_carlo(100_000 if quick else 1_000_000))
    if "devices" not in args.skip:
        result.update(devices(100_000 if quick else 300_000, repeats=2 if quick else 6))
    if "roofline" not in args.skip:
        result.update(roofline())
    result["bench_s"] = time.perf_counter() - started
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench.md").write_text("# descent_opt benchmark\n\n" + render(result))
    print(
        f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.md'} ({result['bench_s']:.0f} s)"
    )


if __name__ == "__main__":
    main()
