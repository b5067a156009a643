"""A fair cvxpy + Clarabel peer for the batched thrust-schedule solver.

This is the free-final-time minimum-fuel landing as a careful cvxpy user would solve it, on
every core of the machine:

* **One compiled problem per process.** The fixed-final-time second-order cone program is
  built once with cvxpy Parameters for everything that changes between solves (initial state,
  time step, thrust-bound expansion, mass bounds), so it is DPP and cvxpy canonicalises it
  once; afterwards only parameter values change and each solve goes straight to Clarabel.
* **One convex solve per final time.** The thrust bounds rho1 e^-z <= sigma <= rho2 e^-z are
  expanded once about the maximum-thrust mass profile z0(t) = ln(m0 - alpha T_max t), the
  textbook lossless convexification (Acikmese & Ploen 2007, Blackmore, Acikmese & Scharf
  2010): sigma <= mu2 (1 - (z - z0)) and mu1 (1 - (z - z0) + (z - z0)^2 / 2) <= sigma with
  mu_i = rho_i e^-z0, plus the mass bounds z0(t) <= z <= ln(m0 - alpha T_min t). There is no
  outer relaxation and no re-expansion (those are what the accuracy reference in
  ``tests/reference_convex.py`` adds, at several solves per final time).
* **Final time:** a geometric grid of 8 final times over the physical bracket (free-fall
  time to the momentum-balance bound, as in the JAX solver), then golden-section search
  around the best grid point until the bracket is narrower than ``tf_rtol`` times the best
  final time (default 0.2 %, the loosest bracket the JAX solver's search accepts; see
  ``TF_RTOL``). Infeasible final times count as +inf fuel.
* **Processes:** ``processes`` workers (default ``os.cpu_count()``) started with the
  ``spawn`` context; each builds its problem once, solves one warm-up instance (cvxpy
  compiles the DPP program on the first solve) and then a contiguous share of the problems.

Discretisation, identical to the JAX solver's convex model: ``n_nodes`` equal intervals,
zero-order hold of the acceleration u = T/m and of sigma on each interval (so r, v and ln m
integrate exactly), thrust bounds and pointing at nodes 0 .. N-1, the glide-slope cone (or
the ground, r_z >= 0, without one) at nodes 1 .. N-1, rest at the target at t_f, final mass
at least the dry mass. Each problem is non-dimensionalised (length max(|r0|, |v0|^2/g),
acceleration g, mass m0), which keeps Clarabel's tolerances uniform across problems.

Timed region (``wall_s``): from the moment every worker has built and compiled its problem
(a barrier that the parent process also waits on) until the parent has received every
worker's results. It contains everything done per problem: bracket, parameter updates,
cvxpy's parameter-to-solver-data mapping, Clarabel, the search logic and returning the
results. Process start-up, imports, the one-time problem build and the warm-up solve are not
timed.

The worker needs only NumPy and cvxpy with Clarabel (the ``test`` extra).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings

import numpy as np

G0_MPS2 = 9.80665
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

# Relative final-time tolerance. The JAX solver's former search (5-point geometric grid over
# [1, 4] free-fall times, then 12 golden-section steps) ended with a bracket of 0.21 % of t_f
# (median; 0.28 % at worst) on unimodal fuel curves with optima between 1.2 and 2.6 free-fall
# times. Its current derivative-based search stops at a bracket of 0.05 % (``tf_rtol``), or
# of 0.2 % when its end tangents predict a fuel gain below 1e-6 in log-mass; it is never
# looser than 0.2 %, the tolerance given to the peer.
TF_RTOL = 2e-3


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """Vehicle and problem settings shared by the batch (SI units)."""

    mass_dry_kg: float
    thrust_min_n: float
    thrust_max_n: float
    isp_s: float
    max_tilt_deg: float
    glide_slope_deg: float = 0.0
    gravity_mps2: float = 1.62
    n_nodes: int = 50
    n_grid: int = 8
    tf_rtol: float = TF_RTOL
    max_golden_steps: int = 40

    @property
    def exhaust_velocity_mps(self) -> float:
        return self.isp_s * G0_MPS2


def peer_spec_from_schedule_spec(spec, **overrides) -> PeerSpec:
    """The peer's settings from a :class:`descent_opt.optimize.thrust_schedule.ScheduleSpec`."""
    v = spec.vehicle
    return PeerSpec(
        mass_dry_kg=float(v.mass_dry_kg),
        thrust_min_n=float(v.thrust_min_n),
        thrust_max_n=float(v.thrust_max_n),
        isp_s=float(v.isp_s),
        max_tilt_deg=float(v.max_tilt_deg),
        glide_slope_deg=float(spec.glide_slope_deg),
        gravity_mps2=float(spec.gravity_mps2),
        n_nodes=int(spec.n_nodes),
        **overrides,
    )


@dataclasses.dataclass
class PeerResult:
    fuel_kg: np.ndarray  # (n,) +inf where no final time was feasible
    converged: np.ndarray  # (n,) bool: feasible optimum and bracket within tolerance
    tf_s: np.ndarray  # (n,) best final time (nan if none)
    solves: np.ndarray  # (n,) convex solves per problem
    wall_s: float  # timed region, see the module docstring
    processes: int
    cpu_s: float  # CPU time of the workers in the timed region, summed


# ---------------------------------------------------------------------------------------------
# One process: the compiled fixed-final-time program and the search over t_f
# ---------------------------------------------------------------------------------------------


class FixedTimeProgram:
    """The fixed-final-time SOCP, built once; ``fuel(problem, t_f)`` solves one instance."""

    def __init__(self, spec: PeerSpec):
        import cvxpy as cp

        self.cp = cp
        self.spec = spec
        n = spec.n_nodes
        self.r = cp.Variable((n + 1, 3))
        self.v = cp.Variable((n + 1, 3))
        self.z = cp.Variable(n + 1)  # ln(m / m0)
        self.u = cp.Variable((n, 3))  # thrust acceleration, units of g
        self.sigma = cp.Variable(n)
        self.w = cp.Variable(n)  # z_k - z0_k

        self.r0 = cp.Parameter(3)
        self.v0 = cp.Parameter(3)
        self.dt = cp.Parameter(nonneg=True)
        self.half_dt2 = cp.Parameter(nonneg=True)
        self.alpha_dt = cp.Parameter(nonneg=True)
        self.z0 = cp.Parameter(n)  # maximum-thrust log-mass at nodes 0 .. N-1
        self.z_lo = cp.Parameter(n + 1)  # maximum-thrust log-mass at every node
        self.z_hi = cp.Parameter(n + 1)  # minimum-thrust log-mass at every node
        self.z_dry = cp.Parameter()
        self.mu1 = cp.Parameter(n, nonneg=True)
        self.mu1_half = cp.Parameter(n, nonneg=True)
        self.mu2 = cp.Parameter(n, nonneg=True)

        gvec = np.tile([0.0, 0.0, -1.0], (n, 1))
        r, v, z, u, sigma, w = self.r, self.v, self.z, self.u, self.sigma, self.w
        cons = [
            r[0] == self.r0,
            v[0] == self.v0,
            z[0] == 0.0,
            r[n] == 0.0,
            v[n] == 0.0,
            z[n] >= self.z_dry,
            r[1:] == r[:-1] + self.dt * v[:-1] + self.half_dt2 * (u + gvec),
            v[1:] == v[:-1] + self.dt * (u + gvec),
            z[1:] == z[:-1] - self.alpha_dt * sigma,
            cp.SOC(sigma, u, axis=1),
            w == z[:-1] - self.z0,
            sigma <= cp.multiply(self.mu2, 1.0 - w),
            z >= self.z_lo,
            z <= self.z_hi,
        ]
        if spec.thrust_min_n > 0.0:
            cons.append(
                cp.multiply(self.mu1, 1.0 - w) + cp.multiply(self.mu1_half, cp.square(w)) <= sigma
            )
        if spec.max_tilt_deg <= 0.0:
            cons += [u[:, :2] == 0.0, u[:, 2] >= sigma]
        elif spec.max_tilt_deg < 180.0:
            cons.append(u[:, 2] >= math.cos(math.radians(spec.max_tilt_deg)) * sigma)
        if spec.glide_slope_deg > 0.0:
            cot = 1.0 / math.tan(math.radians(spec.glide_slope_deg))
            cons.append(cp.SOC(cot * r[1:n, 2], r[1:n, :2], axis=1))
        else:
            cons.append(r[1:n, 2] >= 0.0)
        self.problem = cp.Problem(cp.Maximize(z[n]), cons)
        assert self.problem.is_dpp()

    def set_instance(self, position0_m, velocity0_mps, mass0_kg: float, tf_s: float) -> float:
        """Parameter values for one problem and final time; returns the mass unit m0."""
        s = self.spec
        g = s.gravity_mps2
        r0 = np.asarray(position0_m, float)
        v0 = np.asarray(velocity0_mps, float)
        length = max(float(np.linalg.norm(r0)), float(v0 @ v0) / g, 1e-3)
        time_unit = math.sqrt(length / g)
        speed = length / time_unit
        n = s.n_nodes
        dt = tf_s / n / time_unit
        alpha = 1.0 / s.exhaust_velocity_mps
        self.r0.value = r0 / length
        self.v0.value = v0 / speed
        self.dt.value = dt
        self.half_dt2.value = 0.5 * dt * dt
        self.alpha_dt.value = alpha * speed * dt
        t = np.arange(n + 1) * (tf_s / n)
        m_dry = s.mass_dry_kg
        z_lo = np.log(np.maximum(mass0_kg - alpha * s.thrust_max_n * t, m_dry) / mass0_kg)
        z_hi = np.log(np.maximum(mass0_kg - alpha * s.thrust_min_n * t, m_dry) / mass0_kg)
        self.z_lo.value = z_lo
        self.z_hi.value = z_hi
        self.z0.value = z_lo[:-1]
        self.z_dry.value = math.log(m_dry / mass0_kg)
        e = np.exp(-z_lo[:-1])
        mu1 = s.thrust_min_n / (mass0_kg * g) * e
        self.mu1.value = mu1
        self.mu1_half.value = 0.5 * mu1
        self.mu2.value = s.thrust_max_n / (mass0_kg * g) * e
        return mass0_kg

    def fuel(self, position0_m, velocity0_mps, mass0_kg: float, tf_s: float) -> float:
        """Minimum fuel for one final time (+inf if infeasible or not solved to optimality)."""
        cp = self.cp
        if not tf_s > 0.0:
            return math.inf
        m0 = self.set_instance(position0_m, velocity0_mps, mass0_kg, tf_s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.problem.solve(solver=cp.CLARABEL)
            except (cp.SolverError, ValueError):
                return math.inf
        if self.problem.status != cp.OPTIMAL or self.z.value is None:
            return math.inf
        return float(m0 * -math.expm1(float(self.z.value[-1])))


def tf_bounds(spec: PeerSpec, position0_m, velocity0_mps, mass0_kg: float):
    """Free-fall time (thrust never points below the horizon) and the vertical momentum
    balance with all propellant spent; with a minimum thrust, the time to empty the tanks."""
    g = spec.gravity_mps2
    h = max(float(position0_m[2]), 0.0)
    vz = float(velocity0_mps[2])
    lo = (vz + math.sqrt(vz * vz + 2.0 * g * h)) / g
    ve = spec.exhaust_velocity_mps
    hi = (ve * math.log(mass0_kg / spec.mass_dry_kg) + vz) / g
    if spec.thrust_min_n > 0.0:
        hi = min(hi, (mass0_kg - spec.mass_dry_kg) * ve / spec.thrust_min_n)
    lo = max(lo, 1e-3 * max(hi, 1.0))
    return lo, max(hi, 1.01 * lo)


def solve_free_time(program: FixedTimeProgram, position0_m, velocity0_mps, mass0_kg: float):
    """Grid then golden-section search over t_f; (fuel, t_f, converged, solves)."""
    spec = program.spec
    lo, hi = tf_bounds(spec, position0_m, velocity0_mps, mass0_kg)
    solves = 0

    def f(t):
        nonlocal solves
        solves += 1
        return program.fuel(position0_m, velocity0_mps, mass0_kg, t)

    grid = np.geomspace(lo, hi, spec.n_grid)
    values = [f(t) for t in grid]
    i = int(np.argmin(values))
    if not math.isfinite(values[i]):
        return math.inf, math.nan, False, solves
    a, x, b = grid[max(i - 1, 0)], grid[i], grid[min(i + 1, spec.n_grid - 1)]
    fx = values[i]
    ok = False
    for _ in range(spec.max_golden_steps):
        if b - a <= spec.tf_rtol * x:
            ok = True
            break
        if b - x >= x - a:
            y = x + (1.0 - _GOLDEN) * (b - x)
        else:
            y = x - (1.0 - _GOLDEN) * (x - a)
        fy = f(y)
        if fy < fx:
            a, b = (x, b) if y > x else (a, x)
            x, fx = y, fy
        else:
            a, b = (a, y) if y > x else (y, b)
    else:
        ok = b - a <= spec.tf_rtol * x
    return fx, float(x), ok, solves


def solve_share(spec: PeerSpec, position0_m, velocity0_mps, mass0_kg, program=None):
    """Solve problems one after another in this process; arrays (fuel, tf, converged,
    solves)."""
    program = program or FixedTimeProgram(spec)
    n = len(mass0_kg)
    fuel = np.full(n, math.inf)
    tf = np.full(n, math.nan)
    conv = np.zeros(n, bool)
    solves = np.zeros(n, int)
    for i in range(n):
        fuel[i], tf[i], conv[i], solves[i] = solve_free_time(
            program, position0_m[i], velocity0_mps[i], float(mass0_kg[i])
        )
    return fuel, tf, conv, solves


def _worker(spec, position0_m, velocity0_mps, mass0_kg, barrier, queue, index):
    try:
        program = FixedTimeProgram(spec)
        if len(mass0_kg):
            # Warm-up: cvxpy compiles the DPP program on its first solve.
            lo, hi = tf_bounds(spec, position0_m[0], velocity0_mps[0], float(mass0_kg[0]))
            program.fuel(position0_m[0], velocity0_mps[0], float(mass0_kg[0]), 2.0 * lo)
    except BaseException as exc:  # keep the parent from waiting forever
        barrier.abort()
        queue.put((index, repr(exc)))
        return
    barrier.wait()
    start = time.process_time()
    out = solve_share(spec, position0_m, velocity0_mps, mass0_kg, program)
    queue.put((index, (*out, time.process_time() - start)))


def solve_peer(
    position0_m,
    velocity0_mps,
    mass0_kg,
    spec: PeerSpec,
    processes: int | None = None,
    timeout_s: float = 3600.0,
) -> PeerResult:
    """Solve a batch on ``processes`` spawned workers (default: one per core), each on a
    contiguous share of the problems. See the module docstring for the timed region."""
    import multiprocessing as mp

    position0_m = np.asarray(position0_m, float).reshape(-1, 3)
    velocity0_mps = np.asarray(velocity0_mps, float).reshape(-1, 3)
    mass0_kg = np.asarray(mass0_kg, float).reshape(-1)
    n = len(mass0_kg)
    processes = max(1, min(processes or os.cpu_count() or 1, n))
    bounds = np.linspace(0, n, processes + 1).round().astype(int)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    queue = ctx.Queue()
    workers = []
    for j in range(processes):
        sl = slice(bounds[j], bounds[j + 1])
        args = (spec, position0_m[sl], velocity0_mps[sl], mass0_kg[sl], barrier, queue, j)
        workers.append(ctx.Process(target=_worker, args=args, daemon=True))
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=timeout_s)
        start = time.perf_counter()
        parts = dict(queue.get(timeout=timeout_s) for _ in range(processes))
        wall = time.perf_counter() - start
    except Exception:
        errors = []
        while not queue.empty():
            errors.append(queue.get())
        raise RuntimeError(f"convex peer workers failed: {errors}") from None
    finally:
        for w in workers:
            w.join(timeout=10.0)
            if w.is_alive():
                w.terminate()
    for j, part in parts.items():
        if isinstance(part, str):
            raise RuntimeError(f"convex peer worker {j} failed: {part}")
    fuel, tf, conv, solves = (
        np.concatenate([parts[j][k] for j in range(processes)]) for k in range(4)
    )
    cpu = sum(parts[j][4] for j in range(processes))
    return PeerResult(fuel, conv, tf, solves, wall, processes, cpu)
