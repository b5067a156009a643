"""The thrust_schedule job: minimum-fuel schedules for the nominal start and a dispersed
batch, with the nominal schedule written as a zero-order-hold CSV.

Member 0 of the batch is exactly ``scenario.r0_m`` / ``scenario.v0_mps`` at the vehicle's
initial mass; the others are drawn from the scenario dispersion with ``seed``.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from descent_opt.config import RunConfig
from descent_opt.jobs import Job
from descent_opt.optimize.thrust_schedule import Schedule, ScheduleProblem, solve_schedules
from descent_opt.rundir import save_figure_atomic, save_npz_atomic, write_metrics, write_text_atomic

CSV_COLUMNS = (
    "t_s", "thrust_x_n", "thrust_y_n", "thrust_z_n", "mass_kg",
    "x_m", "y_m", "z_m", "vx_mps", "vy_mps", "vz_mps",
)  # fmt: skip


class InfeasibleProblem(ValueError):
    """The nominal problem has no landing schedule (one line says why)."""


@dataclasses.dataclass
class ThrustScheduleResult:
    problems: ScheduleProblem
    schedules: Schedule  # NumPy leaves; infeasible members carry zero thrust
    metrics: dict


def sample_problems(config: RunConfig, n: int) -> ScheduleProblem:
    """Member 0 nominal, the rest from the scenario dispersion."""
    s = config.scenario
    k_r, k_v, k_m = jax.random.split(jax.random.key(config.seed), 3)
    r = jnp.asarray(s.r0_m) + jax.random.normal(k_r, (n, 3)) * jnp.asarray(s.position_sigma_m)
    v = jnp.asarray(s.v0_mps) + jax.random.normal(k_v, (n, 3)) * jnp.asarray(s.velocity_sigma_mps)
    m = config.vehicle.mass_initial_kg + s.mass_sigma_kg * jax.random.normal(k_m, (n,))
    m = jnp.minimum(m, config.vehicle.mass_initial_kg)
    return ScheduleProblem(
        position0_m=r.at[0].set(jnp.asarray(s.r0_m)),
        velocity0_mps=v.at[0].set(jnp.asarray(s.v0_mps)),
        mass0_kg=m.at[0].set(config.vehicle.mass_initial_kg),
    )


def _why_infeasible(config: RunConfig, s: Schedule, i: int) -> str:
    v = config.vehicle
    if not bool(s.feasible_delta_v[i]):
        return (
            "not enough propellant: even an ideal final burn needs more delta-v than "
            f"isp_s * g0 * ln(mass_initial_kg / mass_dry_kg) = "
            f"{v.exhaust_velocity_mps * np.log(v.mass_initial_kg / v.mass_dry_kg):.0f} m/s"
        )
    return (
        "no schedule reaches the target at rest within the thrust, pointing, glide-slope and "
        f"propellant limits (best miss {float(s.terminal_position_error_m[i]):.1f} m, "
        f"{float(s.terminal_velocity_error_mps[i]):.2f} m/s)"
    )


def run(config: RunConfig, *, progress=None) -> ThrustScheduleResult:
    """Solve the batch; raise :class:`InfeasibleProblem` if the nominal problem has no
    schedule."""
    start = time.perf_counter()
    problems = sample_problems(config, config.schedule_batch_size)
    raw = jax.tree.map(np.asarray, solve_schedules(config.schedule, problems))
    ok = raw.converged & raw.feasible_delta_v
    if not ok[0]:
        raise InfeasibleProblem(
            "thrust_schedule: nominal problem infeasible: " + _why_infeasible(config, raw, 0)
        )
    # Infeasible members are reported by their flags, never as schedules.
    schedules = jax.tree.map(
        lambda x: (
            np.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0).astype(x.dtype)
            if x.dtype != bool
            else x
        ),
        raw,
    )
    fuel = raw.fuel_kg[ok]
    metrics = {
        "fuel_kg": float(raw.fuel_kg[0]),
        "time_of_flight_s": float(raw.time_of_flight_s[0]),
        "terminal_position_error_m": float(raw.terminal_position_error_m[0]),
        "terminal_velocity_error_mps": float(raw.terminal_velocity_error_mps[0]),
        "glide_slope_violation_m": float(raw.glide_slope_violation_m[0]),
        "convex_fuel_kg": float(raw.convex_fuel_kg[0]),
        "solver_iterations": int(raw.iterations[0]),
        "batch": {
            "n_problems": int(ok.size),
            "n_converged": int(ok.sum()),
            "fuel_kg_mean": float(fuel.mean()),
            "fuel_kg_min": float(fuel.min()),
            "fuel_kg_max": float(fuel.max()),
            "time_of_flight_s_mean": float(raw.time_of_flight_s[ok].mean()),
            "terminal_position_error_m_max": float(raw.terminal_position_error_m[ok].max()),
            "terminal_velocity_error_mps_max": float(raw.terminal_velocity_error_mps[ok].max()),
            "solver_iterations_mean": float(raw.iterations.mean()),
        },
        "solve_time_s": time.perf_counter() - start,
    }
    return ThrustScheduleResult(jax.tree.map(np.asarray, problems), schedules, metrics)


def schedule_csv(s: Schedule, index: int = 0) -> str:
    """Rows k = 0..n-1 hold thrust k over [t_k, t_k+1); the last row is the terminal state
    at t_f with zero thrust."""
    one = jax.tree.map(lambda x: np.asarray(x)[index], s)
    thrust = np.concatenate([one.thrust_n, np.zeros((1, 3))])
    table = np.column_stack([one.time_s, thrust, one.mass_kg, one.position_m, one.velocity_mps])
    buf = io.StringIO()
    buf.write(",".join(CSV_COLUMNS) + "\n")
    np.savetxt(buf, table, delimiter=",", fmt="%.9g")
    return buf.getvalue()


def plot_schedule(s: Schedule, config: RunConfig, path: Path) -> None:
    """Altitude, speed, throttle and tilt versus time for the nominal schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = jax.tree.map(lambda x: np.asarray(x)[0], s)
    t = one.time_s
    magnitude = np.linalg.norm(one.thrust_n, axis=-1)
    tilt = np.degrees(np.arctan2(np.linalg.norm(one.thrust_n[:, :2], axis=-1), one.thrust_n[:, 2]))
    fig, axes = plt.subplots(4, 1, figsize=(7, 9), sharex=True)
    axes[0].plot(t, one.position_m[:, 2])
    axes[0].set_ylabel("altitude (m)")
    axes[1].plot(t, np.linalg.norm(one.velocity_mps, axis=-1))
    axes[1].set_ylabel("speed (m/s)")
    axes[2].step(t[:-1], magnitude / config.vehicle.thrust_max_n, where="post")
    axes[2].set_ylabel("throttle")
    axes[2].set_ylim(0.0, 1.05)
    axes[3].step(t[:-1], tilt, where="post")
    axes[3].set_ylabel("tilt (deg)")
    axes[3].set_xlabel("time (s)")
    axes[0].set_title(
        f"Minimum-fuel schedule: {one.fuel_kg:.2f} kg in {one.time_of_flight_s:.1f} s"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def write_outputs(result: ThrustScheduleResult, config: RunConfig, directory, wall_time_s: float):
    """CSV (nominal), NPZ (batch), plot, and ``metrics.json`` last."""
    directory = Path(directory)
    write_text_atomic(directory / "thrust_schedule.csv", schedule_csv(result.schedules))
    s, p = result.schedules, result.problems
    save_npz_atomic(
        directory / "thrust_schedules.npz",
        {
            **{f.name: getattr(s, f.name) for f in dataclasses.fields(s)},
            "position0_m": p.position0_m,
            "velocity0_mps": p.velocity0_mps,
            "mass0_kg": p.mass0_kg,
        },
    )
    plot_schedule(s, config, directory / "thrust_schedule.png")
    write_metrics(directory, dict(result.metrics, wall_time_s=wall_time_s))
    return [
        directory / n
        for n in (
            "thrust_schedule.csv",
            "thrust_schedules.npz",
            "thrust_schedule.png",
            "metrics.json",
        )
    ]


def summary(result: ThrustScheduleResult) -> str:
    """The lines printed at the end of the job."""
    m = result.metrics
    b = m["batch"]
    return (
        f"Nominal: {m['fuel_kg']:.2f} kg in {m['time_of_flight_s']:.1f} s, terminal error "
        f"{m['terminal_position_error_m']:.3f} m / {m['terminal_velocity_error_mps']:.4f} m/s\n"
        f"Batch: {b['n_converged']}/{b['n_problems']} converged, fuel {b['fuel_kg_min']:.2f}-"
        f"{b['fuel_kg_max']:.2f} kg (mean {b['fuel_kg_mean']:.2f})"
    )


JOB = Job(
    name="thrust_schedule",
    groups=("vehicle", "moon", "scenario", "thrust_schedule"),
    run=run,
    write_outputs=write_outputs,
    summary=summary,
    bad_input=(InfeasibleProblem,),
)
