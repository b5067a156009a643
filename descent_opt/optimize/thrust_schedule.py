"""Batched minimum-fuel thrust schedules (free final time) by direct shooting.

Each problem: 3-DOF point mass with variable mass from ``position0_m, velocity0_mps,
mass0_kg`` to rest at the target, thrust held constant on each of ``n_nodes`` equal
intervals (zero-order hold), thrust magnitude in ``[thrust_min_n, thrust_max_n]``, pointing
within ``max_tilt_deg`` of vertical, optional glide slope, propellant limited by the dry
mass, final time free.

Bounds on thrust magnitude and pointing hold by construction (sigmoid and bounded-tilt
parameterisations), so only the terminal state (6 equalities) and the glide slope (one
inequality per node) are constraints. They are handled by an augmented Lagrangian whose
inner problems are solved by Adam (robust from a rough start) then L-BFGS, all vmapped over
the population. Per-problem diagnostics (constraint violation, converged flag) come back
with every schedule.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float

from descent_opt import dynamics
from descent_opt.dynamics import LanderState, Vehicle, safe_norm


class ScheduleSpec(eqx.Module):
    """Settings shared by every problem of a batch."""

    vehicle: Vehicle
    gravity_mps2: float = 1.62
    glide_slope_deg: float = 0.0  # minimum elevation seen from the target; 0 disables
    n_nodes: int = 50
    substeps: int = 4  # integration substeps per hold interval
    adam_steps: int = 400
    outer_iterations: int = 8
    lbfgs_steps: int = 60
    rho_max: float = 1e3
    fuel_weight: float = 1.0  # objective scale relative to the constraint terms
    position_tol_m: float = 0.5
    velocity_tol_mps: float = 0.05
    glide_tol_m: float = 0.5


class ScheduleProblem(eqx.Module):
    """Initial states (a batch when leaves carry a leading axis)."""

    position0_m: Float[Array, "*batch 3"]
    velocity0_mps: Float[Array, "*batch 3"]
    mass0_kg: Float[Array, "*batch"]


class Schedule(eqx.Module):
    """Solution of one problem (or a batch): ZOH thrust and the trajectory at the nodes."""

    time_s: Float[Array, "*batch n1"]  # node times, n_nodes + 1
    thrust_n: Float[Array, "*batch n 3"]  # thrust vector held on [t_k, t_k+1)
    position_m: Float[Array, "*batch n1 3"]
    velocity_mps: Float[Array, "*batch n1 3"]
    mass_kg: Float[Array, "*batch n1"]
    fuel_kg: Float[Array, "*batch"]
    time_of_flight_s: Float[Array, "*batch"]
    terminal_position_error_m: Float[Array, "*batch"]
    terminal_velocity_error_mps: Float[Array, "*batch"]
    glide_slope_violation_m: Float[Array, "*batch"]
    converged: Bool[Array, "*batch"]
    feasible_delta_v: Bool[Array, "*batch"]  # the rocket equation allows a landing at all


class _Params(eqx.Module):
    magnitude: Float[Array, " n"]
    tilt: Float[Array, "n 2"]
    log_tf: Float[Array, ""]


def _controls(spec: ScheduleSpec, p: _Params):
    v = spec.vehicle
    # sin maps onto the bounds at finite raw values (a sigmoid would need infinite ones for
    # the bang-bang optimum), with a zero gradient only exactly on a bound.
    thrust = v.thrust_min_n + (v.thrust_max_n - v.thrust_min_n) * 0.5 * (1.0 + jnp.sin(p.magnitude))
    radius = safe_norm(p.tilt)[:, None]
    small = radius < 1e-6
    sinc = jnp.where(small, 1.0 - radius**2 / 6.0, jnp.sin(radius) / jnp.where(small, 1.0, radius))
    return thrust, jnp.deg2rad(v.max_tilt_deg) * p.tilt * sinc, jnp.exp(p.log_tf)


def _rollout(spec: ScheduleSpec, problem: ScheduleProblem, thrust, tilt, tf):
    """Integrate the held controls; returns node states."""
    dt = tf / (spec.n_nodes * spec.substeps)
    start = LanderState(
        position_m=problem.position0_m,
        velocity_mps=problem.velocity0_mps,
        mass_kg=problem.mass0_kg,
        thrust_n=jnp.asarray(0.0),
        tilt_rad=jnp.zeros(2),
    )

    def interval(state, control):
        f, t = control

        def sub(s, _):
            return dynamics.propagate(spec.vehicle, s, f, t, spec.gravity_mps2, dt)[0], None

        state, _ = jax.lax.scan(sub, state, None, length=spec.substeps)
        return state, state

    _, states = jax.lax.scan(interval, start, (thrust, tilt))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), start, states)


def _glide_violation(spec: ScheduleSpec, position_m):
    """tan(glide slope) * horizontal distance - height at the interior nodes (<= 0 is inside)."""
    if spec.glide_slope_deg <= 0.0:
        return jnp.zeros(1)
    r = position_m[1:-1]
    return jnp.tan(jnp.deg2rad(spec.glide_slope_deg)) * safe_norm(r[:, :2]) - r[:, 2]


def _burn_kg(spec: ScheduleSpec, thrust, tf):
    """Propellant the schedule asks for; equals the fuel used while the tanks last, and keeps
    its gradient when they would run dry."""
    return jnp.sum(thrust) * tf / spec.n_nodes / spec.vehicle.exhaust_velocity_mps


def _lagrangian(p, problem, spec, lam, mu, rho):
    thrust, tilt, tf = _controls(spec, p)
    states = _rollout(spec, problem, thrust, tilt, tf)
    propellant = problem.mass0_kg - spec.vehicle.mass_dry_kg
    burn = _burn_kg(spec, thrust, tf)
    fuel = spec.fuel_weight * burn / propellant
    eq = jnp.concatenate([states.position_m[-1] / 10.0, states.velocity_mps[-1] / 1.0])
    ineq = jnp.concatenate(
        [_glide_violation(spec, states.position_m) / 10.0, (burn / propellant - 1.0)[None] * 10.0]
    )
    value = (
        fuel
        + jnp.dot(lam, eq)
        + 0.5 * rho * jnp.sum(eq**2)
        + jnp.sum(jnp.maximum(0.0, mu + rho * ineq) ** 2 - mu**2) / (2.0 * rho)
    )
    return value, (eq, ineq)


def _initial_params(spec: ScheduleSpec, problem: ScheduleProblem) -> _Params:
    """Vertical bang-bang start: coast at minimum thrust until a switch time t1, then brake
    at 80 % of maximum thrust to rest at the ground, with t1 and t_f from the 1-D
    kinematics at the initial mass (a rough but well-placed guess: the optimum has this
    shape when the constraints allow)."""
    v = spec.vehicle
    g = spec.gravity_mps2
    m0 = problem.mass0_kg
    a_coast = g - v.thrust_min_n / m0  # downward acceleration while coasting
    a_brake = jnp.maximum(0.8 * v.thrust_max_n / m0 - g, 0.1 * g)
    h0 = jnp.maximum(problem.position0_m[2], 1e-3)
    v0 = -problem.velocity0_mps[2]  # descent rate, positive down
    # (v0 + a_c t)^2 = 2 a_b (h0 - v0 t - a_c t^2 / 2), a quadratic in the switch time t.
    qa = a_coast * (a_coast + a_brake)
    qb = 2.0 * v0 * (a_coast + a_brake)
    qc = v0**2 - 2.0 * a_brake * h0
    disc = jnp.sqrt(jnp.maximum(qb**2 - 4.0 * qa * qc, 0.0))
    linear = -qc / jnp.where(jnp.abs(qb) > 1e-9, qb, 1e-9)
    t1 = jnp.where(
        jnp.abs(qa) > 1e-9, (-qb + disc) / (2.0 * jnp.where(jnp.abs(qa) > 1e-9, qa, 1.0)), linear
    )
    t1 = jnp.maximum(jnp.where(qc >= 0.0, 0.0, t1), 0.0)
    tf = t1 + jnp.maximum(v0 + a_coast * t1, 0.0) / a_brake
    tf = jnp.maximum(tf, 1e-2) + safe_norm(problem.velocity0_mps[:2]) / a_brake
    nodes = (jnp.arange(spec.n_nodes) + 0.5) / spec.n_nodes * tf
    # Fractions kept off the bounds, where the sin parameterisation has no gradient.
    frac = jnp.where(nodes < t1, 0.05, 0.85)
    return _Params(
        magnitude=jnp.arcsin(2.0 * frac - 1.0),
        tilt=jnp.zeros((spec.n_nodes, 2)),
        log_tf=jnp.log(tf),
    )


def _solve_one(spec: ScheduleSpec, problem: ScheduleProblem):
    params = _initial_params(spec, problem)
    n_eq = 6
    n_in = (spec.n_nodes - 1 if spec.glide_slope_deg > 0.0 else 1) + 1
    lam = jnp.zeros(n_eq)
    mu = jnp.zeros(n_in)

    # Phase 1: Adam on a quadratic penalty finds the basin from the rough start.
    adam = optax.adam(optax.cosine_decay_schedule(0.05, max(spec.adam_steps, 1), 0.05))

    def adam_step(carry, _):
        p, state = carry
        grad = jax.grad(lambda q: _lagrangian(q, problem, spec, lam, mu, 10.0)[0])(p)
        updates, state = adam.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(
        adam_step, (params, adam.init(params)), None, length=spec.adam_steps
    )

    # Phase 2: augmented Lagrangian, inner problems by L-BFGS.
    lbfgs = optax.lbfgs()

    def outer(carry, _):
        p, lam, mu, rho = carry

        def f(q):
            return _lagrangian(q, problem, spec, lam, mu, rho)[0]

        value_and_grad = optax.value_and_grad_from_state(f)

        def inner(c, _):
            q, state = c
            value, grad = value_and_grad(q, state=state)
            updates, state = lbfgs.update(grad, state, q, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(q, updates), state), None

        (p, _), _ = jax.lax.scan(inner, (p, lbfgs.init(p)), None, length=spec.lbfgs_steps)
        _, (eq, ineq) = _lagrangian(p, problem, spec, lam, mu, rho)
        lam = lam + rho * eq
        mu = jnp.maximum(0.0, mu + rho * ineq)
        return (p, lam, mu, jnp.minimum(rho * 2.0, spec.rho_max)), None

    (params, lam, mu, rho), _ = jax.lax.scan(
        outer, (params, lam, mu, jnp.asarray(10.0)), None, length=spec.outer_iterations
    )
    return _package(spec, problem, params)


def _package(spec: ScheduleSpec, problem: ScheduleProblem, params: _Params) -> Schedule:
    thrust, tilt, tf = _controls(spec, params)
    states = _rollout(spec, problem, thrust, tilt, tf)
    axis = jax.vmap(dynamics.axis_from_tilt)(tilt)
    pos_err = safe_norm(states.position_m[-1])
    vel_err = safe_norm(states.velocity_mps[-1])
    glide_violation = jnp.maximum(jnp.max(_glide_violation(spec, states.position_m)), 0.0)
    v = spec.vehicle
    needed = jnp.sqrt(
        jnp.sum(problem.velocity0_mps**2)
        + 2.0 * spec.gravity_mps2 * jnp.maximum(problem.position0_m[2], 0.0)
    )
    available = v.exhaust_velocity_mps * jnp.log(problem.mass0_kg / v.mass_dry_kg)
    converged = (
        (pos_err <= spec.position_tol_m)
        & (vel_err <= spec.velocity_tol_mps)
        & (glide_violation <= spec.glide_tol_m)
        & jnp.all(jnp.isfinite(thrust))
    )
    return Schedule(
        time_s=jnp.linspace(0.0, 1.0, spec.n_nodes + 1) * tf,
        thrust_n=thrust[:, None] * axis,
        position_m=states.position_m,
        velocity_mps=states.velocity_mps,
        mass_kg=states.mass_kg,
        fuel_kg=problem.mass0_kg - states.mass_kg[-1],
        time_of_flight_s=tf,
        terminal_position_error_m=pos_err,
        terminal_velocity_error_mps=vel_err,
        glide_slope_violation_m=glide_violation,
        converged=converged,
        feasible_delta_v=available >= needed,
    )


@eqx.filter_jit
def solve_schedules(spec: ScheduleSpec, problems: ScheduleProblem) -> Schedule:
    """Minimum-fuel schedules for a batch of initial states (vmapped, one compilation)."""
    return jax.vmap(lambda p: _solve_one(spec, p))(problems)
