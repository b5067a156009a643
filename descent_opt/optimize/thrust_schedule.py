"""Batched minimum-fuel thrust schedules (free final time) by lossless convexification.

Each problem: 3-DOF point mass with variable mass from ``position0_m, velocity0_mps,
mass0_kg`` to rest at the target (the origin), thrust magnitude in ``[thrust_min_n,
thrust_max_n]``, pointing within ``max_tilt_deg`` of vertical (0: vertical only), optional
glide slope, propellant limited by the dry mass, final time free, thrust held constant on each
of ``n_nodes`` equal intervals.

Method
------
1. For a fixed final time the problem is convexified losslessly (Acikmese & Ploen 2007):
   with u = T/m, sigma >= |u| and z = ln m the dynamics are linear, the pointing limit is
   linear in (u, sigma) and the thrust bounds rho e^{-z} are expanded about a reference
   log-mass z_ref (tangent above for the upper bound, which keeps it conservative; tangent
   below for the lower bound). The acceleration u_k is held on each interval, so r, v, z
   integrate exactly. The terminal condition is elastic (an exact L1 penalty), so every
   fixed-t_f program is feasible and a positive penalty certifies that the final time or the
   problem is infeasible. The second-order cone program is solved by the structured
   interior-point method of :mod:`descent_opt.optimize.interior_point`.
2. The final time is found per problem from the optimal value J(t_f) of that program and its
   derivative: the envelope theorem gives dJ/dt_f from the multipliers of the dynamics (t_f
   enters only through the time step), at the cost of one backward recursion. J is typically
   steep and decreasing where t_f is too short (the terminal-miss penalty), then rises slowly;
   the minimum is a kink at the feasibility edge or a smooth minimum just after it. Starting
   from a coast-then-full-thrust estimate, a Newton step on the miss penalty, secant steps on
   the slope and, once the minimum is bracketed by slopes of opposite signs, the
   intersection of the two end tangents (exact on a kink between straight pieces) with a
   bisection safeguard narrow the bracket to ``tf_rtol`` (or to 4 ``tf_rtol`` when the end
   tangents predict less than ``tf_gain_tol`` left to gain) in about four solves
   (``tf_steps`` at most). A solve that fails (a hard constraint cannot be met, e.g. the
   glide cone from a start outside it) counts as too short a final time. Each solve starts
   from the previous solution (warm start) and z_ref follows the best solution so far (on
   the normalised time grid); if the chosen solution's mass is not within ``expansion_tol``
   of the profile its bounds were expanded about, it is solved again expanded about its own
   mass (the bounds are then exact to second order there).
3. The held-acceleration solution becomes a held-thrust schedule: on interval k the thrust
   ``T_k = m_k ve (1 - exp(-|u_k| dt / ve)) / dt`` along u_k gives exactly the same velocity
   and mass change (rocket equation) and almost the same position change. A few Gauss-Newton
   steps on (T, t_f), with the exact constant-thrust flight of
   :func:`descent_opt.dynamics.hold_thrust`, remove the remaining terminal miss, and the
   thrust is projected onto its bounds. Reported states and fuel are those of that flight.

Everything runs in float64 (the interior-point method needs it), vmapped over the batch.

Over 400 lines because the discretisation, the convex subproblem assembled from it, the
final-time search over those subproblems and the polish of the held-thrust schedule all
read the same node layout; the generic cone solver lives apart
(:mod:`descent_opt.optimize.interior_point`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from descent_opt import dynamics, execution
from descent_opt.dynamics import Vehicle, safe_norm
from descent_opt.optimize import interior_point as ipm

_MISS_TOL = 1e-6  # terminal miss (scaled) of a feasible convex solution
_NEWTON_PENALTY = 1e-6  # above this terminal-miss penalty, the next t_f is a Newton step on it
_LOOSE_BRACKET = 4.0  # see ScheduleSpec.tf_gain_tol
_DUAL_BOUND = 1e6  # a multiplier beyond this (scaled units) stops a solve as infeasible
_PENALTY = 1.0  # L1 weight of the terminal miss, in scaled log-mass per scaled length/speed


class ScheduleSpec(eqx.Module):
    """Settings shared by every problem of a batch."""

    vehicle: Vehicle
    gravity_mps2: float = 1.62
    glide_slope_deg: float = 0.0  # minimum elevation seen from the target; 0 disables
    n_nodes: int = 50
    tf_steps: int = 8  # convex solves of the final-time search (upper limit)
    # The t_f search stops once the optimum is bracketed to tf_rtol (relative), or to
    # 4 tf_rtol when the end tangents predict at most tf_gain_tol (scaled log-mass) left.
    tf_rtol: float = 5e-4
    tf_gain_tol: float = 1e-6
    expansion_tol: float = 3e-3  # max |z - z_ref| of an accepted solution (else re-expand)
    refine: int = 0  # extra re-expansions of the thrust bounds at the chosen final time
    ipm_iterations: int = 40  # interior-point iterations per convex solve (upper limit)
    warm_margin: float = 0.01  # interior margin of a warm start (cone units)
    ipm_tol: float = 1e-8  # complementarity per cone and primal residual (scaled units)
    polish_steps: int = 5  # Gauss-Newton steps on the held-thrust schedule
    chunk_size: int = 16  # problems vmapped together (a share's chunks run in sequence)
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
    convex_fuel_kg: Float[Array, "*batch"]  # fuel of the held-acceleration convex optimum
    duality_gap: Float[Array, "*batch"]  # of the last convex solve (scaled log-mass)
    iterations: Int[Array, "*batch"]  # interior-point iterations, all solves together
    convex_solves: Int[Array, "*batch"]  # fixed-final-time programs solved
    tf_converged: Bool[Array, "*batch"]  # the t_f search met its tolerance within tf_steps
    converged: Bool[Array, "*batch"]
    feasible_delta_v: Bool[Array, "*batch"]  # the rocket equation allows a landing at all


class _Units(eqx.Module):
    """Per-problem scaling: length L, time sqrt(L/g), speed, acceleration g, mass m0."""

    length: Array
    time: Array
    speed: Array


def _units(spec: ScheduleSpec, problem: ScheduleProblem) -> _Units:
    g = spec.gravity_mps2
    length = jnp.maximum(
        jnp.maximum(safe_norm(problem.position0_m), jnp.sum(problem.velocity0_mps**2) / g), 1e-3
    )
    time = jnp.sqrt(length / g)
    return _Units(length, time, length / time)


def _stage_cones(spec: ScheduleSpec) -> ipm.Cones:
    if spec.glide_slope_deg > 0.0:
        return ipm.Cones(3, (4, 3))
    return ipm.Cones(4, (4,))


_TERMINAL = ipm.Cones(13)


def _program(spec: ScheduleSpec, problem: ScheduleProblem, units: _Units, tf, z_ref):
    """The fixed-final-time SOCP in scaled units (see the module docstring).

    Stage vector y = (r 0:3, v 3:6, z 6, u 7:10, sigma 10); terminal (r, v, z, e 7:13)."""
    n = spec.n_nodes
    veh = spec.vehicle
    m0 = problem.mass0_kg
    rho1 = veh.thrust_min_n / (m0 * spec.gravity_mps2)
    rho2 = veh.thrust_max_n / (m0 * spec.gravity_mps2)
    vertical_only = veh.max_tilt_deg <= 0.0
    lateral = 0.0 if vertical_only else 1.0
    cos_tilt = 0.0 if vertical_only else math.cos(math.radians(min(veh.max_tilt_deg, 180.0)))

    a, b, d = _dynamics(spec, units, tf)
    cones = _stage_cones(spec)
    mu1 = rho1 * jnp.exp(-z_ref)
    mu2 = rho2 * jnp.exp(-z_ref)
    first = (jnp.arange(n) == 0).astype(a.dtype)  # x_0 is fixed: no state rows at stage 0
    g = jnp.zeros((n, cones.size, 11))
    h = jnp.zeros((n, cones.size))
    g = g.at[:, 0, 9].set(-1.0).at[:, 0, 10].set(cos_tilt)  # u_z >= cos(tilt) sigma
    g = g.at[:, 1, 6].set(mu2).at[:, 1, 10].set(1.0)  # sigma <= mu2 (1 - (z - z_ref))
    h = h.at[:, 1].set(mu2 * (1.0 + z_ref))
    g = g.at[:, 2, 6].set(-mu1).at[:, 2, 10].set(-1.0)  # sigma >= mu1 (1 - (z - z_ref))
    h = h.at[:, 2].set(-mu1 * (1.0 + z_ref))
    o = cones.n_l
    if spec.glide_slope_deg <= 0.0:
        g = g.at[:, 3, 2].set(first - 1.0)  # ground: r_z >= 0
        h = h.at[:, 3].set(first)
    g = g.at[:, o, 10].set(-1.0).at[:, o + 3, 9].set(-1.0)  # |u| <= sigma
    g = g.at[:, o + 1, 7].set(-lateral).at[:, o + 2, 8].set(-lateral)
    if spec.glide_slope_deg > 0.0:
        cot = 1.0 / math.tan(math.radians(spec.glide_slope_deg))
        q = o + 4
        g = g.at[:, q, 2].set(-cot * (1.0 - first))
        g = g.at[:, q + 1, 0].set(first - 1.0).at[:, q + 2, 1].set(first - 1.0)
        h = h.at[:, q].set(first)

    z_dry = jnp.log(veh.mass_dry_kg / m0)
    g_t = jnp.zeros((13, 13))
    for i in range(6):
        g_t = g_t.at[i, 7 + i].set(-1.0)  # e >= 0
        g_t = g_t.at[6 + i, 7 + i].set(-1.0).at[6 + i, i].set(1.0)  # e - (r, v) >= 0
    g_t = g_t.at[12, 6].set(-1.0)  # z_N >= ln(m_dry / m0)
    h_t = jnp.zeros(13).at[12].set(-z_dry)
    c_t = jnp.concatenate([jnp.full(6, -_PENALTY), -jnp.ones(1), jnp.full(6, 2.0 * _PENALTY)])

    hover = jnp.array([0.0, 0.0, 1.0, 1.0])
    return ipm.StageSOCP(
        a=a,
        b=b,
        d=d,
        x0=jnp.concatenate(
            [problem.position0_m / units.length, problem.velocity0_mps / units.speed, jnp.zeros(1)]
        ),
        g=g,
        h=h,
        c=jnp.zeros((n, 11)),
        g_t=g_t,
        h_t=h_t,
        c_t=c_t,
        u0=jnp.broadcast_to(hover, (n, 4)),
        e0=jnp.zeros(6),
        fixed_u=jnp.array([1.0 - lateral, 1.0 - lateral, 0.0, 0.0]),
        cones=cones,
        cones_t=_TERMINAL,
    )


class _Convex(eqx.Module):
    """A fixed-t_f convex solution, in scaled units."""

    tf: Array
    objective: Array  # -z_N + penalty * |terminal miss|_1
    penalty: Array  # the terminal-miss part of the objective (0 when t_f is feasible)
    feasible: Array  # terminal miss below _MISS_TOL in every component
    slope: Array  # d(objective)/d(t_f) per second, by the envelope theorem
    z: Array  # log-mass at the nodes 0 .. N-1 (the next reference)
    expansion_gap: Array  # max |z - z_ref|: the thrust bounds are exact at z_ref
    result: ipm.IpmResult


def _dynamics(spec: ScheduleSpec, units: _Units, tf):
    """x_{k+1} = a x_k + b u_k + d for the held acceleration (scaled units)."""
    n = spec.n_nodes
    dt = tf / n / units.time
    a_dt = units.speed / spec.vehicle.exhaust_velocity_mps * dt  # z' = -alpha sigma, scaled
    lateral = 0.0 if spec.vehicle.max_tilt_deg <= 0.0 else 1.0
    i3 = jnp.eye(3)
    a = jnp.zeros((7, 7)).at[:3, :3].set(i3).at[:3, 3:6].set(dt * i3)
    a = a.at[3:6, 3:6].set(i3).at[6, 6].set(1.0)
    b = jnp.zeros((7, 4)).at[:3, :3].set(0.5 * dt * dt * i3).at[3:6, :3].set(dt * i3)
    b = b.at[6, 3].set(-a_dt).at[:, :2].multiply(lateral)
    gvec = jnp.array([0.0, 0.0, -1.0])
    d = jnp.concatenate([0.5 * dt * dt * gvec, dt * gvec, jnp.zeros(1)])
    return a, b, d


def _solve_convex(spec, problem, units, tf, z_ref, warm=None, margin=1.0) -> _Convex:
    """One fixed-t_f program. ``warm``: an IpmResult of a neighbouring program to start from
    (its controls, terminal extras and multipliers, pushed ``margin`` into the cone
    interiors); None: the hover start."""
    program = _program(spec, problem, units, tf, z_ref)
    if warm is not None:
        program = eqx.tree_at(lambda p: (p.u0, p.e0), program, (warm.y[:, 7:], warm.y_t[7:]))
        warm = (warm.z, warm.z_t)
    res = ipm.solve(
        program,
        iterations=spec.ipm_iterations,
        tol=spec.ipm_tol,
        warm=warm,
        margin=margin,
        dual_bound=_DUAL_BOUND,
    )
    # Only the dynamics depend on t_f (the thrust-bound reference is held on the normalised
    # time grid), so the derivative of the optimal value is that of the dynamics' Lagrangian
    # term at the solution.
    lam = ipm.dynamics_multipliers(program, res)
    x, u = res.y[:, :7], res.y[:, 7:]
    x_next = jnp.concatenate([x[1:], res.y_t[None, :7]])

    def dynamics_term(t):
        a, b, d = _dynamics(spec, units, t)
        return jnp.sum(lam * (x @ a.T + u @ b.T + d - x_next))

    slope = jax.jvp(dynamics_term, (tf,), (jnp.ones_like(tf),))[1]
    # A solve that did not converge (a constraint other than the elastic terminal one cannot
    # be met, e.g. the glide cone from a start outside it) counts as an infinite objective.
    ok = res.converged & jnp.isfinite(res.objective) & jnp.isfinite(slope)
    inf = jnp.asarray(jnp.inf, res.objective.dtype)
    objective = jnp.where(ok, res.objective, inf)
    penalty = jnp.where(ok, res.objective + res.y_t[6], inf)
    slope = jnp.where(ok, slope, jnp.nan)
    feasible = ok & (jnp.max(res.y_t[7:]) < _MISS_TOL)
    z = res.y[:, 6]
    gap = jnp.max(jnp.abs(z - z_ref))
    return _Convex(tf, objective, penalty, feasible, slope, z, gap, res)


def tf_bracket(spec: ScheduleSpec, problem: ScheduleProblem):
    """Physical bounds on the final time.

    Lower: the engine-off fall to the ground (thrust never points below the horizon, so
    z'' >= -g). Upper: the vertical momentum balance with all propellant spent,
    (ve ln(m0/m_dry) + v_z0) / g, and with a minimum thrust the time to empty the tanks."""
    veh = spec.vehicle
    g = spec.gravity_mps2
    h = jnp.maximum(problem.position0_m[2], 0.0)
    vz = problem.velocity0_mps[2]
    lo = (vz + jnp.sqrt(vz * vz + 2.0 * g * h)) / g
    ve = veh.exhaust_velocity_mps
    hi = (ve * jnp.log(problem.mass0_kg / veh.mass_dry_kg) + vz) / g
    if veh.thrust_min_n > 0.0:
        hi = jnp.minimum(hi, (problem.mass0_kg - veh.mass_dry_kg) * ve / veh.thrust_min_n)
    lo = jnp.maximum(lo, 1e-3 * jnp.maximum(hi, 1.0))
    return lo, jnp.maximum(hi, lo * 1.01)


def _ideal_delta_v(spec: ScheduleSpec, problem: ScheduleProblem):
    """Delta-v of coasting to the ground then stopping impulsively: a lower bound on any
    landing's (thrust never points below the horizon)."""
    return jnp.sqrt(
        jnp.sum(problem.velocity0_mps**2)
        + 2.0 * spec.gravity_mps2 * jnp.maximum(problem.position0_m[2], 0.0)
    )


def tf_guess(spec: ScheduleSpec, problem: ScheduleProblem):
    """First final time to try: a vertical coast followed by a full-thrust stop at the
    mid-burn mass (the minimum-fuel landing is often close to the shortest feasible one).
    Clipped into :func:`tf_bracket`; a vehicle too weak for the estimate gets twice the fall
    time."""
    veh = spec.vehicle
    g = spec.gravity_mps2
    lo, hi = tf_bracket(spec, problem)
    h = jnp.maximum(problem.position0_m[2], 0.0)
    vz = problem.velocity0_mps[2]
    ve = veh.exhaust_velocity_mps
    mass = problem.mass0_kg * jnp.exp(-0.5 * _ideal_delta_v(spec, problem) / ve)
    decel = veh.thrust_max_n / mass - g  # net upward acceleration of the burn
    ok = decel > 1e-6 * g
    decel = jnp.where(ok, decel, 1.0)
    burn_height = (vz * vz + 2.0 * g * h) / (2.0 * (decel + g))
    speed = jnp.sqrt(2.0 * decel * burn_height)  # at ignition
    guess = jnp.maximum(speed + vz, 0.0) / g + speed / decel
    guess = jnp.where(ok & jnp.isfinite(guess), guess, 2.0 * lo)
    return jnp.clip(guess, lo * (1.0 + spec.tf_rtol), hi * (1.0 - spec.tf_rtol))


class _Search(eqx.Module):
    """Bracket of the final time: ``a`` is the largest final time tried with a negative
    slope, ``b`` the smallest with a non-negative one (``has_*`` false: not found yet, the
    physical bound stands in)."""

    a: Array
    fa: Array
    da: Array
    pa: Array
    has_a: Array
    b: Array
    fb: Array
    db: Array
    pb: Array
    has_b: Array
    a_prev: Array  # previous a and its slope (nan if none), for secant extrapolation
    da_prev: Array
    b_prev: Array
    db_prev: Array
    width1: Array  # bracket width after the last step and the two before
    width2: Array
    width3: Array
    t: Array  # next final time to solve
    best: _Convex
    last: _Convex  # the latest solution (the next solve starts from it)
    iterations: Array
    solves: Array
    done: Array


def _better(new: _Convex, old: _Convex):
    """Feasible beats infeasible, then lower objective."""
    return (new.feasible & ~old.feasible) | (
        (new.feasible == old.feasible) & (new.objective < old.objective)
    )


def _search_tf(spec: ScheduleSpec, problem: ScheduleProblem, units: _Units):
    """Minimise the convex optimum over t_f with its derivative (see the module docstring).

    Every solve gives the optimal value and its slope in t_f. Until the optimum is
    bracketed (a negative slope on one side, a non-negative one on the other) the next final
    time comes from a Newton step on the terminal-miss penalty (infeasible side), a secant
    step on the slope, or a fixed 20 % / 7 % step. Once bracketed it is the intersection of the
    two end tangents, which lands on a kink of the fuel curve (where a constraint becomes
    active, often the feasibility edge) as well as on a smooth minimum; it stays a small
    margin inside the bracket, and bisection takes over when the bracket has not halved in
    three steps. The search stops when the bracket is narrower than ``tf_rtol`` times t_f (or
    4 ``tf_rtol`` with a predicted gain below ``tf_gain_tol``: the incumbent's objective minus
    the end tangents' value at their intersection) and the incumbent's thrust bounds were
    expanded about a mass profile within ``expansion_tol`` of its own (else it is solved
    again at its t_f, expanded about its own mass), or after ``tf_steps`` solves. Feasible
    solutions beat infeasible ones, then the lower objective wins. ``refine`` extra solves
    re-expand about the chosen solution's mass.
    Returns the best solution, the interior-point iterations and the convex solves spent, and
    whether the search met its tolerances."""
    lo, hi = tf_bracket(spec, problem)
    n = spec.n_nodes
    rtol = spec.tf_rtol
    dv = _ideal_delta_v(spec, problem)
    z_first = -dv / spec.vehicle.exhaust_velocity_mps * jnp.arange(n) / n

    def solve_at(tf, z_ref, warm=None, margin=1.0):
        return _solve_convex(spec, problem, units, tf, z_ref, warm, margin)

    def propose(s: _Search):
        # Both ends known: tangent intersection (bisection if the bracket shrinks slowly).
        width = s.b - s.a
        tangent = (s.fb - s.fa + s.da * s.a - s.db * s.b) / (s.da - s.db)
        bisect = (width > 0.5 * s.width3) | ~jnp.isfinite(tangent)
        t_both = jnp.where(bisect, 0.5 * (s.a + s.b), tangent)
        margin = jnp.minimum(0.5 * rtol * s.b, 0.25 * width)
        t_both = jnp.clip(t_both, s.a + margin, s.b - margin)
        # Only negative slopes so far: the optimum is later.
        newton_a = s.a + s.pa / -s.da + 0.5 * rtol * s.a
        secant_a_ok = jnp.isfinite(s.a_prev) & (s.da > s.da_prev)
        secant_a = s.a - s.da * (s.a - s.a_prev) / jnp.where(secant_a_ok, s.da - s.da_prev, 1.0)
        newton_a = jnp.where(jnp.isfinite(newton_a), newton_a, 1.5 * s.a)  # failed solve
        t_a = jnp.where(
            s.pa > _NEWTON_PENALTY, newton_a, jnp.where(secant_a_ok, secant_a, 1.2 * s.a)
        )
        t_a = jnp.clip(t_a, s.a * (1.0 + rtol), jnp.minimum(1.5 * s.a, hi))
        # Only non-negative slopes so far: the optimum is earlier.
        newton_b = s.b - s.pb / jnp.where(s.db > 0.0, s.db, jnp.inf) - 0.5 * rtol * s.b
        secant_b_ok = jnp.isfinite(s.b_prev) & (s.db_prev > s.db)
        secant_b = s.b - s.db * (s.b_prev - s.b) / jnp.where(secant_b_ok, s.db_prev - s.db, 1.0)
        t_b = jnp.where(
            (s.pb > _NEWTON_PENALTY) & (s.db > 0.0),
            newton_b,
            jnp.where(secant_b_ok, secant_b, 0.93 * s.b),
        )
        t_b = jnp.clip(t_b, jnp.maximum(0.85 * s.b, lo), s.b * (1.0 - rtol))
        t = jnp.where(s.has_a & s.has_b, t_both, jnp.where(s.has_a, t_a, t_b))
        return jnp.where(jnp.isfinite(t), t, 0.5 * (s.a + s.b))

    def step(s: _Search):
        # Warm start from the latest solution if that solve converged, else the hover start.
        warm_ok = jnp.isfinite(s.last.objective)
        start = jax.tree.map(lambda p, q: jnp.where(warm_ok, p, q), s.last.result, cold)
        sol = solve_at(s.t, s.best.z, start, jnp.where(warm_ok, spec.warm_margin, 1.0))
        # A failed solve counts as too short a final time (nan slope: the left side).
        left = ~(sol.slope >= 0.0)
        nan = jnp.asarray(jnp.nan, sol.tf.dtype)
        pick = lambda c, p, q: jnp.where(c, p, q)  # noqa: E731
        has_a, has_b = s.has_a | left, s.has_b | ~left
        a, b = pick(left, sol.tf, s.a), pick(left, s.b, sol.tf)
        width = jnp.where(has_a & has_b, b - a, jnp.inf)
        # Re-solving at the incumbent's t_f (re-expansion) replaces it unless it loses
        # feasibility; the old expansion is no better than the new one.
        again = s.t == s.best.tf
        better = _better(sol, s.best) | (again & (sol.feasible | ~s.best.feasible))
        best = jax.tree.map(lambda p, q: jnp.where(better, p, q), sol, s.best)
        # Predicted gain left in the bracket: the incumbent against the two end tangents at
        # their intersection.
        fa = pick(left, sol.objective, s.fa)
        da = pick(left, sol.slope, s.da)
        fb = pick(left, s.fb, sol.objective)
        db = pick(left, s.db, sol.slope)
        t_low = (fb - fa + da * a - db * b) / (da - db)
        gain = best.objective - (fa + da * (t_low - a))
        gain = jnp.where(jnp.isfinite(gain), gain, jnp.inf)
        bracketed = (width <= rtol * b) | (
            (width <= _LOOSE_BRACKET * rtol * b) & (gain <= spec.tf_gain_tol)
        )
        expanded = best.expansion_gap <= spec.expansion_tol
        s = _Search(
            a=a,
            fa=fa,
            da=da,
            pa=pick(left, sol.penalty, s.pa),
            has_a=has_a,
            b=b,
            fb=fb,
            db=db,
            pb=pick(left, s.pb, sol.penalty),
            has_b=has_b,
            a_prev=pick(left, pick(s.has_a, s.a, nan), s.a_prev),
            da_prev=pick(left, pick(s.has_a, s.da, nan), s.da_prev),
            b_prev=pick(left, s.b_prev, pick(s.has_b, s.b, nan)),
            db_prev=pick(left, s.db_prev, pick(s.has_b, s.db, nan)),
            width1=width,
            width2=s.width1,
            width3=s.width2,
            t=s.t,
            best=best,
            last=sol,
            iterations=s.iterations + sol.result.iterations,
            solves=s.solves + 1,
            done=bracketed & expanded,
        )
        # Bracketed but the incumbent's bounds were expanded about a distant mass profile:
        # solve again at its t_f, expanded about its own.
        t = jnp.where(bracketed & ~expanded, best.tf, propose(s))
        return eqx.tree_at(lambda q: q.t, s, t)

    # The incumbent starts as a placeholder (infinite objective) holding the first reference
    # and the hover start (hover controls, unit multipliers).
    t0 = tf_guess(spec, problem)
    shape = jax.eval_shape(solve_at, t0, z_first)
    inf = jnp.asarray(jnp.inf, lo.dtype)
    nan = jnp.asarray(jnp.nan, lo.dtype)
    false = jnp.asarray(False)
    placeholder = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shape)
    cones = _stage_cones(spec)
    placeholder = eqx.tree_at(
        lambda c: (c.tf, c.objective, c.penalty, c.z, c.result.y, c.result.z, c.result.z_t),
        placeholder,
        (
            t0,
            inf,
            inf,
            z_first,
            placeholder.result.y.at[:, 9:11].set(1.0),
            ipm.identity(cones, placeholder.result.z),
            ipm.identity(_TERMINAL, placeholder.result.z_t),
        ),
    )
    cold = placeholder.result
    init = _Search(
        a=lo, fa=inf, da=nan, pa=inf, has_a=false,
        b=hi, fb=inf, db=nan, pb=inf, has_b=false,
        a_prev=nan, da_prev=nan, b_prev=nan, db_prev=nan,
        width1=inf, width2=inf, width3=inf,
        t=t0, best=placeholder, last=placeholder,
        iterations=jnp.asarray(0), solves=jnp.asarray(0), done=false,
    )  # fmt: skip
    s = jax.lax.while_loop(lambda s: (s.solves < spec.tf_steps) & ~s.done, step, init)

    def refine(carry, _):
        best, iters = carry
        sol = solve_at(best.tf, best.z, best.result, spec.warm_margin)
        return (sol, iters + sol.result.iterations), None

    (best, iters), _ = jax.lax.scan(refine, (s.best, s.iterations), None, length=spec.refine)
    return best, iters, s.solves + spec.refine, s.done


# ---------------------------------------------------------------------------------------------
# Held-thrust schedule
# ---------------------------------------------------------------------------------------------


def _fly(spec: ScheduleSpec, problem: ScheduleProblem, thrust, tf):
    """Exact constant-thrust flight through the intervals; node states."""
    dt = tf / spec.n_nodes
    ve = spec.vehicle.exhaust_velocity_mps

    def interval(state, t):
        r, v, m = dynamics.hold_thrust(*state, t, spec.gravity_mps2, ve, dt)
        return (r, v, m), (r, v, m)

    start = (problem.position0_m, problem.velocity0_mps, problem.mass0_kg)
    _, (r, v, m) = jax.lax.scan(interval, start, thrust)
    return (
        jnp.concatenate([start[0][None], r]),
        jnp.concatenate([start[1][None], v]),
        jnp.concatenate([start[2][None], m]),
    )


def _project_thrust(vehicle: Vehicle, thrust):
    """Nearest admissible thrust in magnitude and pointing (the direction is kept)."""
    mag = safe_norm(thrust)
    horiz = safe_norm(thrust[..., :2])
    angle = jnp.arctan2(horiz, thrust[..., 2])
    limit = math.radians(vehicle.max_tilt_deg)
    angle = jnp.minimum(angle, limit)
    scale = jnp.where(horiz > 0.0, 1.0 / jnp.where(horiz > 0.0, horiz, 1.0), 0.0)
    direction = jnp.concatenate(
        [thrust[..., :2] * (scale * jnp.sin(angle))[..., None], jnp.cos(angle)[..., None]], -1
    )
    mag = jnp.clip(mag, vehicle.thrust_min_n, vehicle.thrust_max_n)
    return direction * mag[..., None]


def _polish(spec: ScheduleSpec, problem: ScheduleProblem, units: _Units, thrust, tf):
    """Gauss-Newton on (thrust, t_f) for the terminal state of the exact held-thrust flight,
    with minimum-norm corrections, each followed by projection onto the thrust limits."""
    scale_t = spec.vehicle.thrust_max_n

    def miss(params):
        t, log_tf = params
        r, v, _ = _fly(spec, problem, t * scale_t, tf * jnp.exp(log_tf))
        return jnp.concatenate([r[-1] / units.length, v[-1] / units.speed])

    def gn(params, _):
        f = miss(params)
        jac = jax.jacrev(miss)(params)
        jt = jac[0].reshape(6, -1)
        jl = jac[1][:, None]
        full = jnp.concatenate([jt, jl], 1)
        step = -full.T @ jnp.linalg.solve(full @ full.T + 1e-12 * jnp.eye(6), f)
        t = params[0] + step[:-1].reshape(params[0].shape)
        t = _project_thrust(spec.vehicle, t * scale_t) / scale_t
        return (t, params[1] + step[-1]), None

    params = (thrust / scale_t, jnp.zeros(()))
    (t, log_tf), _ = jax.lax.scan(gn, params, None, length=spec.polish_steps)
    return t * scale_t, tf * jnp.exp(log_tf)


def _glide_violation(spec: ScheduleSpec, position_m):
    """Largest tan(glide slope) * horizontal distance - height at the nodes (<= 0 inside)."""
    r = position_m[1:-1]
    if spec.glide_slope_deg <= 0.0:
        return jnp.maximum(jnp.max(-r[:, 2]), 0.0)
    v = jnp.tan(jnp.deg2rad(spec.glide_slope_deg)) * safe_norm(r[:, :2]) - r[:, 2]
    return jnp.maximum(jnp.max(v), 0.0)


def _solve_one(spec: ScheduleSpec, problem: ScheduleProblem) -> Schedule:
    veh = spec.vehicle
    units = _units(spec, problem)
    best, iterations, solves, tf_converged = _search_tf(spec, problem, units)
    n = spec.n_nodes
    tf = best.tf
    dt = tf / n
    y = best.result.y
    accel = y[:, 7:10] * spec.gravity_mps2
    magnitude = safe_norm(accel)
    ve = veh.exhaust_velocity_mps
    # Mass at the node starts of the convex solution, then the thrust that reproduces its
    # velocity and mass increments exactly with the thrust held instead of the acceleration.
    mass = problem.mass0_kg * jnp.exp(y[:, 6])
    thrust_mag = mass * ve * (-jnp.expm1(-magnitude * dt / ve)) / dt
    direction = accel / jnp.maximum(magnitude, 1e-12)[:, None]
    thrust = _project_thrust(veh, direction * thrust_mag[:, None])
    thrust, tf = _polish(spec, problem, units, thrust, tf)
    r, v, m = _fly(spec, problem, thrust, tf)

    z_n = best.result.y_t[6]
    miss = best.result.y_t[7:]
    pos_err = safe_norm(r[-1])
    vel_err = safe_norm(v[-1])
    glide = _glide_violation(spec, r)
    needed = _ideal_delta_v(spec, problem)
    available = ve * jnp.log(problem.mass0_kg / veh.mass_dry_kg)
    converged = (
        best.result.converged
        & (jnp.max(jnp.abs(miss)) < _MISS_TOL)
        & (pos_err <= spec.position_tol_m)
        & (vel_err <= spec.velocity_tol_mps)
        & (glide <= spec.glide_tol_m)
        & (m[-1] >= veh.mass_dry_kg - 1e-6)
        & jnp.all(jnp.isfinite(thrust))
    )
    return Schedule(
        time_s=jnp.linspace(0.0, 1.0, n + 1) * tf,
        thrust_n=thrust,
        position_m=r,
        velocity_mps=v,
        mass_kg=m,
        fuel_kg=problem.mass0_kg - m[-1],
        time_of_flight_s=tf,
        terminal_position_error_m=pos_err,
        terminal_velocity_error_mps=vel_err,
        glide_slope_violation_m=glide,
        convex_fuel_kg=problem.mass0_kg * (1.0 - jnp.exp(z_n)),
        duality_gap=best.result.gap,
        iterations=iterations,
        convex_solves=solves,
        tf_converged=tf_converged,
        converged=converged,
        feasible_delta_v=available >= needed,
    )


@eqx.filter_jit
def _solve_batch(spec: ScheduleSpec, problems: ScheduleProblem) -> Schedule:
    # Chunks run one after another, each vmapped: the interior-point loops of a chunk stop
    # when its slowest member converges, and small chunks stay in cache.
    chunk = min(spec.chunk_size, problems.mass0_kg.shape[0])
    return execution.map_in_program(jax.vmap(lambda p: _solve_one(spec, p)), problems, chunk)


def solve_schedules(
    spec: ScheduleSpec, problems: ScheduleProblem, *, workers: int | None = None
) -> Schedule:
    """Minimum-fuel schedules for a batch of initial states (vmapped, one compilation, float64
    whatever the global precision).

    ``workers`` (default: one per CPU core): the batch is cut into that many equal shares
    of whole chunks, solved concurrently from as many threads (one per device where there
    are several; :mod:`descent_opt.execution`). Every problem is solved on its own: the
    result does not depend on ``workers``, and ``spec.chunk_size`` changes it only by
    rounding."""
    with jax.enable_x64(True):
        problems = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), problems)
        n = problems.mass0_kg.shape[0]
        chunk = max(1, min(spec.chunk_size, n))
        shares = execution.thread_count(workers)
        size = execution.piece_size(n, shares, multiple=chunk)

        def solve_share(device, part: ScheduleProblem) -> Schedule:
            with jax.enable_x64(True):  # the precision setting is per thread
                return _solve_batch(spec, jax.device_put(part, device))

        # Equal shares of whole chunks: one compilation serves all.
        return execution.fly_batch(solve_share, problems, size, workers=shares)
