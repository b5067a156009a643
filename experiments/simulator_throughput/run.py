"""Closed-loop simulator throughput: scenario-steps per second, forward and with gradients.

    python experiments/simulator_throughput/run.py [--population 4096] [--repeats 3]

Uses the default configuration (conf/), the realistic fault catalog and the default gains.
"""

from __future__ import annotations

import argparse
import platform
import time

import equinox as eqx
import jax

import descent_opt
from descent_opt.guidance import default_gains
from descent_opt.objectives import risk
from descent_opt.optimize.gains import from_params, to_params
from descent_opt.robust_gains import make_sampler
from descent_opt.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4096)
    parser.add_argument("--grad-population", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = descent_opt.load_config([])
    spec = config.sim
    gains = default_gains(config.altitude_breakpoints_m)
    sampler = make_sampler(config, config.faults)
    scenarios = sampler(jax.random.key(0), args.population)
    forward = simulate

    t0 = time.perf_counter()
    jax.block_until_ready(forward(spec, gains, scenarios))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(forward(spec, gains, scenarios))
        times.append(time.perf_counter() - t0)
    best = min(times)

    small = sampler(jax.random.key(1), args.grad_population)
    propellant = config.vehicle.mass_initial_kg - config.vehicle.mass_dry_kg
    bp = gains.altitude_breakpoints_m

    @eqx.filter_jit
    def value_and_grad(params):
        return jax.value_and_grad(
            lambda p: risk(
                simulate(spec, from_params(p, bp), small),
                config.success,
                config.objective,
                propellant,
            )[0]
        )(params)

    params = to_params(gains)
    jax.block_until_ready(value_and_grad(params))
    grad_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(value_and_grad(params))
        grad_times.append(time.perf_counter() - t0)
    grad_best = min(grad_times)

    steps = spec.n_steps
    backend = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    cpu = platform.processor() or platform.machine()
    print(f"device: {backend}, {cpu}, jax {jax.__version__}")
    print(f"steps per scenario: {steps} (dt {spec.dt_s} s, {spec.duration_s} s)")
    print(
        f"forward: population {args.population}: {best:.3f} s, "
        f"{args.population * steps / best / 1e6:.3f} M scenario-steps/s (compile {compile_s:.1f} s)"
    )
    print(
        f"value+grad: population {args.grad_population}: {grad_best:.3f} s, "
        f"{args.grad_population * steps / grad_best / 1e6:.3f} M scenario-steps/s"
    )


if __name__ == "__main__":
    main()
