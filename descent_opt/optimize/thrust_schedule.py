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
2. The final time is found per problem by a short geometric grid inside a physical bracket
   followed by golden-section refinement; z_ref follows the best solution found so far (on the
   normalised time grid) and is re-expanded about the final solution's own mass, which makes
   the bounds exact there.
3. The held-acceleration solution becomes a held-thrust schedule: on interval k the thrust
   ``T_k = m_k ve (1 - exp(-|u_k| dt / ve)) / dt`` along u_k gives exactly the same velocity
   and mass change (rocket equation) and almost the same position change. A few Gauss-Newton
   steps on (T, t_f), with the exact constant-thrust flight of
   :func:`descent_opt.dynamics.hold_thrust`, remove the remaining terminal miss, and the
   thrust is projected onto its bounds. Reported states and fuel are those of that flight.

Everything runs in float64 (the interior-point method needs it), vmapped over the batch.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from descent_opt import dynamics
from descent_opt.dynamics import Vehicle, safe_norm
from descent_opt.optimize import interior_point as ipm

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_PENALTY = 1.0  # L1 weight of the terminal miss, in scaled log-mass per scaled length/speed


class ScheduleSpec(eqx.Module):
    """Settings shared by every problem of a batch."""

    vehicle: Vehicle
    gravity_mps2: float = 1.62
    glide_slope_deg: float = 0.0  # minimum elevation seen from the target; 0 disables
    n_nodes: int = 50
    tf_grid: int = 5  # final times on the initial geometric grid
    tf_search: int = 12  # golden-section refinements of the final time
    refine: int = 1  # re-expansions of the thrust bounds at the chosen final time
    ipm_iterations: int = 40  # interior-point iterations per convex solve (upper limit)
    ipm_tol: float = 1e-8  # complementarity per cone and primal residual (scaled units)
    polish_steps: int = 3  # Gauss-Newton steps on the held-thrust schedule
    chunk_size: int = 32  # problems vmapped together (chunks run in sequence)
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
    dt = tf / n / units.time
    a_dt = units.speed / veh.exhaust_velocity_mps * dt  # z' = -alpha sigma in scaled units
    rho1 = veh.thrust_min_n / (m0 * spec.gravity_mps2)
    rho2 = veh.thrust_max_n / (m0 * spec.gravity_mps2)
    vertical_only = veh.max_tilt_deg <= 0.0
    lateral = 0.0 if vertical_only else 1.0
    cos_tilt = 0.0 if vertical_only else math.cos(math.radians(min(veh.max_tilt_deg, 180.0)))

    i3 = jnp.eye(3)
    a = jnp.zeros((7, 7)).at[:3, :3].set(i3).at[:3, 3:6].set(dt * i3)
    a = a.at[3:6, 3:6].set(i3).at[6, 6].set(1.0)
    b = jnp.zeros((7, 4)).at[:3, :3].set(0.5 * dt * dt * i3).at[3:6, :3].set(dt * i3)
    b = b.at[6, 3].set(-a_dt).at[:, :2].multiply(lateral)
    gvec = jnp.array([0.0, 0.0, -1.0])
    d = jnp.concatenate([0.5 * dt * dt * gvec, dt * gvec, jnp.zeros(1)])

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
    z: Array  # log-mass at the nodes 0 .. N-1 (the next reference)
    result: ipm.IpmResult


def _solve_convex(spec, problem, units, tf, z_ref) -> _Convex:
    program = _program(spec, problem, units, tf, z_ref)
    res = ipm.solve(program, iterations=spec.ipm_iterations, tol=spec.ipm_tol)
    objective = jnp.where(jnp.isfinite(res.objective), res.objective, jnp.inf)
    return _Convex(tf, objective, res.y[:, 6], res)


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


def _tf_upper_from_fuel(spec: ScheduleSpec, problem: ScheduleProblem, fuel_kg):
    """No schedule burning at most ``fuel_kg`` can fly longer than this: the vertical momentum
    balance needs a delta-v of at least g t_f - v_z0, and the fuel buys ve ln(m0/(m0-fuel))."""
    veh = spec.vehicle
    m0 = problem.mass0_kg
    fuel = jnp.clip(fuel_kg, 0.0, m0 - veh.mass_dry_kg)
    dv = veh.exhaust_velocity_mps * jnp.log(m0 / (m0 - fuel))
    return (dv + problem.velocity0_mps[2]) / spec.gravity_mps2


class _Bracket(eqx.Module):
    a: Array
    fa: Array
    b: Array
    fb: Array
    best: _Convex
    iterations: Array


def _search_tf(spec: ScheduleSpec, problem: ScheduleProblem, units: _Units):
    """Minimise the convex optimum over t_f (see the module docstring).

    A short geometric grid inside the physical bracket locates the basin; the incumbent's fuel
    then caps t_f (``_tf_upper_from_fuel``), and golden-section steps shrink the bracket
    around the incumbent. The thrust-bound
    reference always follows the incumbent's mass profile. Returns the best solution and the
    interior-point iterations spent."""
    lo, hi = tf_bracket(spec, problem)
    n = spec.n_nodes
    dv = _ideal_delta_v(spec, problem)
    z_first = -dv / spec.vehicle.exhaust_velocity_mps * jnp.arange(n) / n

    def solve_at(tf, z_ref):
        return _solve_convex(spec, problem, units, tf, z_ref)

    # The optimum is typically 1.3 to 2.5 times the free-fall time. The grid spans [1, 4]
    # times it (within the bracket); if the best grid point is the last one, the search may
    # still go up to the bracket's end, which the incumbent's fuel caps.
    k = spec.tf_grid
    grid = lo * jnp.minimum(hi / lo, 4.0) ** (jnp.arange(k) / max(k - 1, 1))

    def grid_step(carry, tf):
        best, iters = carry
        sol = solve_at(tf, best.z)
        better = sol.objective < best.objective
        best = jax.tree.map(lambda x, y: jnp.where(better, x, y), sol, best)
        return (best, iters + sol.result.iterations), sol.objective

    first = solve_at(grid[0], z_first)
    (best, iters), values = jax.lax.scan(grid_step, (first, first.result.iterations), grid[1:])
    values = jnp.concatenate([first.objective[None], values])
    i = jnp.argmin(values)
    fuel = problem.mass0_kg * (1.0 - jnp.exp(-values[i]))
    hi = jnp.maximum(jnp.minimum(hi, _tf_upper_from_fuel(spec, problem, fuel) * 1.001), grid[i])
    inf = jnp.asarray(jnp.inf, values.dtype)
    a = jnp.where(i > 0, grid[jnp.maximum(i - 1, 0)], lo)
    fa = jnp.where(i > 0, values[jnp.maximum(i - 1, 0)], inf)
    b = jnp.where(i < k - 1, jnp.minimum(grid[jnp.minimum(i + 1, k - 1)], hi), hi)
    fb = jnp.where((i < k - 1) & (b < hi), values[jnp.minimum(i + 1, k - 1)], inf)

    def search_step(br: _Bracket, _):
        # The fuel is often V-shaped in t_f near the optimum (a kink where a constraint
        # becomes active), where parabolic steps stall; golden section is robust.
        x, fx = br.best.tf, br.best.objective
        right = br.b - x >= x - br.a
        y = jnp.where(right, x + (1.0 - _GOLDEN) * (br.b - x), x - (1.0 - _GOLDEN) * (x - br.a))
        sol = solve_at(y, br.best.z)
        fy = sol.objective
        better = fy < fx
        pick = lambda p, q: jnp.where(better, p, q)  # noqa: E731
        a_new = pick(jnp.where(right, x, br.a), jnp.where(right, br.a, y))
        fa_new = pick(jnp.where(right, fx, br.fa), jnp.where(right, br.fa, fy))
        b_new = pick(jnp.where(right, br.b, x), jnp.where(right, y, br.b))
        fb_new = pick(jnp.where(right, br.fb, fx), jnp.where(right, fy, br.fb))
        best = jax.tree.map(pick, sol, br.best)
        iters = br.iterations + sol.result.iterations
        return _Bracket(a_new, fa_new, b_new, fb_new, best, iters), None

    br, _ = jax.lax.scan(
        search_step, _Bracket(a, fa, b, fb, best, iters), None, length=spec.tf_search
    )

    def refine(carry, _):
        best, iters = carry
        sol = solve_at(best.tf, best.z)
        return (sol, iters + sol.result.iterations), None

    (best, iters), _ = jax.lax.scan(refine, (br.best, br.iterations), None, length=spec.refine)
    return best, iters


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
    best, iterations = _search_tf(spec, problem, units)
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
        & (jnp.max(jnp.abs(miss)) < 1e-6)
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
        converged=converged,
        feasible_delta_v=available >= needed,
    )


@eqx.filter_jit
def _solve_batch(spec: ScheduleSpec, problems: ScheduleProblem) -> Schedule:
    # Chunks run one after another, each vmapped: the interior-point loops of a chunk stop
    # when its slowest member converges, and small chunks stay in cache.
    n = problems.mass0_kg.shape[0]
    chunk = min(spec.chunk_size, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def split(x):
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
        return x.reshape((n_chunks, chunk) + x.shape[1:])

    out = jax.lax.map(jax.vmap(lambda p: _solve_one(spec, p)), jax.tree.map(split, problems))
    return jax.tree.map(lambda x: x.reshape((n_chunks * chunk,) + x.shape[2:])[:n], out)


def solve_schedules(spec: ScheduleSpec, problems: ScheduleProblem) -> Schedule:
    """Minimum-fuel schedules for a batch of initial states (vmapped, one compilation, float64
    whatever the global precision)."""
    with jax.enable_x64(True):
        problems = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), problems)
        return _solve_batch(spec, problems)
