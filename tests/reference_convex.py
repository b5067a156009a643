"""Independent convex reference solver for minimum-fuel powered descent (test-only).

This module deliberately does not import ``descent_opt``: it is an independent reference used
to check the project's batched JAX optimiser. It needs ``cvxpy`` with the ``CLARABEL`` solver.

Problem (flat moon, uniform gravity, ENU frame with z up, target at the origin)
------------------------------------------------------------------------------
    r' = v,   v' = T/m + g,   m' = -|T| / (isp g0),   g = (0, 0, -g)
    thrust_min <= |T| <= thrust_max,   angle(T, +z) <= max_tilt,
    elevation of r seen from the target >= glide_slope   (glide_slope = 0: disabled),
    r(t_f) = v(t_f) = 0,   m(t_f) >= m_dry,   t_f free,   minimise m0 - m(t_f).

Lossless convexification (Acikmese & Ploen 2007, "Convex programming approach to powered
descent guidance for Mars landing"; Blackmore, Acikmese & Scharf 2010; the G-FOLD formulation)
--------------------------------------------------------------------------------------------
Change of variables u = T/m, sigma >= |u| (slack for the thrust magnitude per unit mass),
z = ln m. The dynamics become linear:

    r' = v,   v' = u + g,   z' = -alpha sigma,   alpha = 1 / (isp g0),

the pointing limit is the linear constraint u_z >= cos(max_tilt) sigma, and the thrust bounds
become rho1 e^{-z} <= sigma <= rho2 e^{-z}. The upper bound is non-convex; following Acikmese
& Ploen it is replaced by its first-order Taylor expansion about a reference log-mass z_ref(t),
and the lower bound by its second-order expansion (a second-order cone):

    mu1 [1 - (z - z_ref) + (z - z_ref)^2 / 2] <= sigma <= mu2 [1 - (z - z_ref)],
    mu1 = rho1 e^{-z_ref},  mu2 = rho2 e^{-z_ref}.

The textbook reference is the maximum-burn profile z0(t) = ln(m0 - alpha rho2 t), together with
the bound z >= z0(t) (the mass can never be below the maximum-burn mass). Because e^{-z} is
convex, the tangent in the upper bound lies below it, so the upper bound is an *inner*
approximation (every iterate respects |T| <= thrust_max). When the true mass is far from z0
(a coast before the burn, a large propellant fraction) that tangent is noticeably
conservative (10 % of thrust at z - z0 = 0.4): on the 1-D Meditch problem the textbook
single solve overestimates the optimal fuel by 1.2 % and reports t_f values near the
feasibility edge as infeasible. Two additions, both optional (``initial_reference``,
``refine_iters`` of ``solve_fixed_tf``), remove that bias:

* an *outer* relaxation is solved first: the secant of rho2 e^{-z} over [z0(t), ln m0] (above
  the convex curve) and a tangent of rho1 e^{-z} (below it). If it is infeasible the fixed-t_f
  problem is certified infeasible; otherwise its mass profile is the first Taylor reference.
* refinement: re-expanding about the previous solution's log-mass (a successive-
  convexification / minorise-maximise step). The previous iterate stays feasible for the
  re-expanded upper bound, so the fuel is non-increasing, and at convergence the upper bound
  is exact at the solution's mass (typically one or two extra solves).

Discretisation
--------------
``n_nodes`` intervals of length dt = t_f / n_nodes; u_k and sigma_k are held constant on each
interval (zero-order hold on the *acceleration*), so r, v and z integrate exactly:

    r_{k+1} = r_k + v_k dt + (u_k + g) dt^2 / 2
    v_{k+1} = v_k + (u_k + g) dt
    z_{k+1} = z_k - alpha sigma_k dt.

Thrust bounds and pointing are imposed at the start of each interval (node k), glide slope at
every node. The thrust vector reported for interval k is T_k = u_k exp(z_k). Holding T_k
(rather than u_k) constant over the interval is what a real engine does; ``reintegrate``
quantifies the gap between the two with a fine RK4 integration of the true dynamics.

Free final time is handled by a one-dimensional search over t_f: a geometric grid inside
physically justified bounds (``default_tf_bounds``) followed by golden-section refinement of
the bracket around the best grid point. Infeasible t_f values count as +inf fuel.

Public API: ``LandingProblem``, ``solve_fixed_tf``, ``solve_free_tf``, ``solve_batch``,
``reintegrate``, ``ideal_fuel_lower_bound``, ``free_fall_time``, ``default_tf_bounds``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from typing import NamedTuple, Sequence

import cvxpy as cp
import numpy as np

G0_MPS2 = 9.80665  # standard gravity, defines isp -> exhaust velocity
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...

_INFEASIBLE = {cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE, cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE}


# ---------------------------------------------------------------------------------------------
# Problem and solution containers
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LandingProblem:
    """One minimum-fuel landing. Plain floats/tuples so it is hashable (models are cached)."""

    r0: tuple[float, float, float]
    v0: tuple[float, float, float]
    m0: float
    m_dry: float
    thrust_min_n: float
    thrust_max_n: float
    isp_s: float
    max_tilt_deg: float = 90.0
    glide_slope_deg: float = 0.0  # 0 disables the glide-slope cone
    gravity_mps2: float = 1.62
    n_nodes: int = 50
    ground_constraint: bool = True  # altitude >= 0 at every node (implied by any glide slope)

    def __post_init__(self) -> None:
        object.__setattr__(self, "r0", tuple(float(x) for x in self.r0))
        object.__setattr__(self, "v0", tuple(float(x) for x in self.v0))
        if not 0.0 < self.m_dry < self.m0:
            raise ValueError("need 0 < m_dry < m0")
        if not 0.0 <= self.thrust_min_n < self.thrust_max_n:
            raise ValueError("need 0 <= thrust_min_n < thrust_max_n")
        if self.n_nodes < 2:
            raise ValueError("need n_nodes >= 2")

    @property
    def exhaust_velocity_mps(self) -> float:
        return self.isp_s * G0_MPS2

    @property
    def alpha(self) -> float:
        """Mass flow per unit thrust, 1 / (isp g0)."""
        return 1.0 / self.exhaust_velocity_mps

    @property
    def gravity_vector(self) -> np.ndarray:
        return np.array([0.0, 0.0, -self.gravity_mps2])


@dataclasses.dataclass
class Solution:
    """Discrete optimal landing for one t_f. Arrays: N = n_nodes intervals, N + 1 nodes."""

    problem: LandingProblem
    t_f: float
    fuel: float  # m0 - exp(z_N)
    times: np.ndarray  # (N+1,)
    r: np.ndarray  # (N+1, 3) positions at the nodes
    v: np.ndarray  # (N+1, 3) velocities at the nodes
    mass: np.ndarray  # (N+1,) exp(z_k)
    u: np.ndarray  # (N, 3) thrust acceleration held on each interval
    sigma: np.ndarray  # (N,) slack |u| bound
    thrust: np.ndarray  # (N, 3) T_k = u_k * m_k
    status: str  # cvxpy status of the last convex solve
    converged: bool  # last solve optimal and (if refining) refinement converged
    n_convex_solves: int  # convex programs solved to produce this solution
    solve_time_s: float  # wall time spent producing it (all convex solves)
    tf_evaluations: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    @property
    def final_mass(self) -> float:
        return float(self.mass[-1])

    @property
    def dt(self) -> float:
        return self.t_f / self.problem.n_nodes

    @property
    def thrust_magnitude(self) -> np.ndarray:
        return np.linalg.norm(self.thrust, axis=1)

    @property
    def tilt_deg(self) -> np.ndarray:
        """Angle between each thrust vector and +z (0 where the engine is off)."""
        mag = np.linalg.norm(self.u, axis=1)
        cosang = np.where(mag > 0, self.u[:, 2] / np.where(mag > 0, mag, 1.0), 1.0)
        return np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0)))

    @property
    def slack_gap(self) -> float:
        """max_k (sigma_k - |u_k|): zero when the relaxation is lossless."""
        return float(np.max(self.sigma - np.linalg.norm(self.u, axis=1)))

    @property
    def terminal_position_error_m(self) -> float:
        return float(np.linalg.norm(self.r[-1]))

    @property
    def terminal_velocity_error_mps(self) -> float:
        return float(np.linalg.norm(self.v[-1]))

    def glide_margin_m(self) -> np.ndarray:
        """r_z - tan(glide) |r_xy| at the nodes (>= 0 inside the cone)."""
        return glide_margin(self.problem, self.r)


def glide_margin(problem: LandingProblem, r: np.ndarray) -> np.ndarray:
    if problem.glide_slope_deg <= 0.0:
        return r[:, 2].copy()
    tan_g = math.tan(math.radians(problem.glide_slope_deg))
    return r[:, 2] - tan_g * np.linalg.norm(r[:, :2], axis=1)


# ---------------------------------------------------------------------------------------------
# Analytical bounds
# ---------------------------------------------------------------------------------------------


def free_fall_time(problem: LandingProblem) -> float:
    """Time to reach the ground with the engine off: a strict lower bound on t_f whenever the
    thrust cannot point below the horizon (max_tilt <= 90 deg), since then z'' >= -g."""
    h, vz, g = problem.r0[2], problem.v0[2], problem.gravity_mps2
    return (vz + math.sqrt(vz * vz + 2.0 * g * max(h, 0.0))) / g


def ideal_fuel_lower_bound(problem: LandingProblem) -> float:
    """Impulsive lower bound on the fuel (valid for max_tilt <= 90 deg).

    Coasting to the ground maximises the vertical speed gained from gravity at no cost, so the
    delta-v is at least |(v_x, v_y, v_impact)| with v_impact = sqrt(v_z^2 + 2 g h); the rocket
    equation turns that into fuel."""
    vx, vy, vz = problem.v0
    v_impact = math.sqrt(vz * vz + 2.0 * problem.gravity_mps2 * max(problem.r0[2], 0.0))
    dv = math.sqrt(vx * vx + vy * vy + v_impact * v_impact)
    return problem.m0 * (1.0 - math.exp(-dv / problem.exhaust_velocity_mps))


def default_tf_bounds(problem: LandingProblem) -> tuple[float, float]:
    """Bracket for the free-final-time search.

    Lower: the free-fall time (see ``free_fall_time``).
    Upper: the vertical velocity balance  integral(u_z) = g t_f - v_z0  and
    integral(|u|) <= c ln(m0/m_dry) give t_f <= (c ln(m0/m_dry) + v_z0) / g; with a minimum
    thrust the engine also runs dry no later than (m0 - m_dry) / (alpha thrust_min).
    """
    c = problem.exhaust_velocity_mps
    t_lo = free_fall_time(problem)
    t_hi = (c * math.log(problem.m0 / problem.m_dry) + problem.v0[2]) / problem.gravity_mps2
    if problem.thrust_min_n > 0.0:
        t_hi = min(t_hi, (problem.m0 - problem.m_dry) / (problem.alpha * problem.thrust_min_n))
    return t_lo, t_hi


# ---------------------------------------------------------------------------------------------
# Fixed-final-time SOCP
# ---------------------------------------------------------------------------------------------


class _Model:
    """The fixed-t_f SOCP. t_f and the thrust-bound approximation enter only through cvxpy
    Parameters (DPP), so re-solving for another t_f or reference skips re-canonicalisation.

    With w_k = z_k - z_ref_k the thrust bounds at node k are written generically as

        lo0_k + lo1_k w_k + lo2_k w_k^2  <=  sigma_k  <=  up0_k + up1_k w_k,   lo2_k >= 0,

    which covers both the Taylor (inner) expansion and the secant/tangent (outer) relaxation,
    see ``set_taylor`` and ``set_outer``.

    Internally everything is non-dimensional, which keeps Clarabel's accuracy uniform across
    problems: length unit L = max(|r0|, |v0|^2 / g, 1e-3 m-equivalent), acceleration unit g
    (so gravity is (0, 0, -1)), time unit sqrt(L / g), and log-mass measured from ln m0. The
    public accessors convert back to SI.
    """

    def __init__(self, p: LandingProblem):
        n = p.n_nodes
        self.problem = p
        g = p.gravity_mps2
        self.L = max(float(np.linalg.norm(p.r0)), float(np.dot(p.v0, p.v0)) / g, 1e-3)
        self.T = math.sqrt(self.L / g)
        self.V = self.L / self.T
        self.A = g
        self.ln_m0 = math.log(p.m0)

        self.r = cp.Variable((n + 1, 3))
        self.v = cp.Variable((n + 1, 3))
        self.z = cp.Variable(n + 1)  # ln(m / m0)
        self.u = cp.Variable((n, 3))
        self.sigma = cp.Variable(n)
        self.w = cp.Variable(n)  # z_k - z_ref_k: keeps the expansions DPP and well scaled

        self.dt = cp.Parameter(nonneg=True)
        self.half_dt2 = cp.Parameter(nonneg=True)
        self.alpha_dt = cp.Parameter(nonneg=True)
        self.z_ref = cp.Parameter(n)
        self.z_floor = cp.Parameter(n + 1)  # maximum-burn log-mass z0(t_k)
        self.up0 = cp.Parameter(n)
        self.up1 = cp.Parameter(n)
        self.lo0 = cp.Parameter(n)
        self.lo1 = cp.Parameter(n)
        self.lo2 = cp.Parameter(n, nonneg=True)

        gvec = np.tile([0.0, 0.0, -1.0], (n, 1))
        r, v, z, u, sigma, w = self.r, self.v, self.z, self.u, self.sigma, self.w
        cons = [
            r[0] == np.array(p.r0) / self.L,
            v[0] == np.array(p.v0) / self.V,
            z[0] == 0.0,
            r[n] == 0.0,
            v[n] == 0.0,
            z[n] >= math.log(p.m_dry / p.m0),
            # Exact integration of the zero-order-hold acceleration u_k + g.
            r[1:] == r[:-1] + self.dt * v[:-1] + self.half_dt2 * (u + gvec),
            v[1:] == v[:-1] + self.dt * (u + gvec),
            z[1:] == z[:-1] - self.alpha_dt * sigma,
            # Relaxed thrust magnitude |u_k| <= sigma_k (tight at the optimum: lossless).
            cp.SOC(sigma, u, axis=1),
            # The mass can never be below the maximum-burn mass.
            z >= self.z_floor,
            w == z[:-1] - self.z_ref,
            sigma <= self.up0 + cp.multiply(self.up1, w),
        ]
        if p.thrust_min_n > 0.0:
            cons.append(
                self.lo0 + cp.multiply(self.lo1, w) + cp.multiply(self.lo2, cp.square(w)) <= sigma
            )
        if p.max_tilt_deg <= 0.0:
            cons += [u[:, :2] == 0.0, u[:, 2] >= sigma]
        elif p.max_tilt_deg < 180.0:
            # Pointing: angle(u, +z) <= max_tilt  <=>  u_z >= cos(max_tilt) |u| (with lossless
            # sigma = |u|), a linear constraint.
            cons.append(u[:, 2] >= math.cos(math.radians(p.max_tilt_deg)) * sigma)
        if p.glide_slope_deg > 0.0:
            # Glide-slope cone |r_xy| <= r_z / tan(glide_slope).
            cot_g = 1.0 / math.tan(math.radians(p.glide_slope_deg))
            cons.append(cp.SOC(cot_g * r[:, 2], r[:, :2], axis=1))
        elif p.ground_constraint:
            cons.append(r[:, 2] >= 0.0)
        # Maximising the final log-mass minimises the fuel m0 - exp(z_N).
        self.prob = cp.Problem(cp.Maximize(z[n]), cons)
        assert self.prob.is_dpp()

    # Thrust bounds rho e^{-z_phys} in scaled units: (rho / (m0 A)) e^{-z}.
    def _rho(self, thrust_n: float) -> float:
        return thrust_n / (self.problem.m0 * self.A)

    def set_time(self, t_f: float) -> np.ndarray:
        """Set dt and the maximum-burn floor; returns the scaled z0(t_k) at the N + 1 nodes."""
        p = self.problem
        dt = t_f / p.n_nodes / self.T
        self.dt.value = dt
        self.half_dt2.value = 0.5 * dt * dt
        self.alpha_dt.value = p.alpha * self.V * dt  # alpha sigma dt in SI, non-dimensional
        t = np.arange(p.n_nodes + 1) * (t_f / p.n_nodes)
        # Maximum-burn mass, clipped at the dry mass (z >= ln m_dry holds anyway because z is
        # non-increasing and z_N >= ln m_dry); the clip keeps the logarithm finite.
        m_max_burn = np.maximum(p.m0 - p.alpha * p.thrust_max_n * t, p.m_dry)
        z0 = np.log(m_max_burn / p.m0)
        self.z_floor.value = z0
        return z0

    def set_taylor(self, z_ref: np.ndarray) -> None:
        """Acikmese-Ploen expansion about z_ref (inner approximation of the upper bound):
        sigma <= mu2 (1 - w),  sigma >= mu1 (1 - w + w^2/2),  mu_i = rho_i e^{-z_ref}."""
        e = np.exp(-z_ref)
        mu1 = self._rho(self.problem.thrust_min_n) * e
        mu2 = self._rho(self.problem.thrust_max_n) * e
        self.z_ref.value = z_ref
        self.up0.value = mu2
        self.up1.value = -mu2
        self.lo0.value = mu1
        self.lo1.value = -mu1
        self.lo2.value = 0.5 * mu1

    def set_outer(self, z0: np.ndarray) -> None:
        """Convex *relaxation* of the thrust bounds, valid for z in [z0(t), ln m0].

        Upper: rho2 e^{-z} is convex, so its secant between z0(t) and ln m0 lies above it.
        Lower: its tangent at the midpoint lies below it. Infeasibility of this relaxation
        therefore proves the discrete problem (with exact thrust bounds) infeasible, and its
        solution gives a mass profile close to the optimum to expand the Taylor terms about."""
        zl = z0[:-1]
        zh = np.zeros_like(zl)  # ln(m0 / m0)
        span = zh - zl
        rho2 = self._rho(self.problem.thrust_max_n)
        fl, fh = rho2 * np.exp(-zl), rho2 * np.exp(-zh)
        ok = span > 1e-12
        slope = np.where(ok, (fh - fl) / np.where(ok, span, 1.0), 0.0)
        # w is measured from z_ref = zl: sigma <= fl + slope * w.
        self.z_ref.value = zl
        self.up0.value = fl
        self.up1.value = slope
        zm = 0.5 * (zl + zh)
        em = self._rho(self.problem.thrust_min_n) * np.exp(-zm)
        # Tangent at zm: em (1 - (z - zm)) = em (1 - (zl - zm)) - em w.
        self.lo0.value = em * (1.0 - (zl - zm))
        self.lo1.value = -em
        self.lo2.value = np.zeros_like(zl)

    def solve(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # inaccuracy is reported through the status
            try:
                self.prob.solve(solver=cp.CLARABEL)
            except (cp.SolverError, ValueError):  # ValueError: non-finite expansion data
                return "solver_error"
        if self.z.value is None and self.prob.status not in _INFEASIBLE:
            return "solver_error"
        return self.prob.status

    # SI accessors of the current solution.
    def log_mass(self) -> np.ndarray:
        return np.array(self.z.value) + self.ln_m0

    def scaled_log_mass(self) -> np.ndarray:
        return np.array(self.z.value)

    def positions(self) -> np.ndarray:
        return np.array(self.r.value) * self.L

    def velocities(self) -> np.ndarray:
        return np.array(self.v.value) * self.V

    def accelerations(self) -> np.ndarray:
        return np.array(self.u.value) * self.A

    def slacks(self) -> np.ndarray:
        return np.array(self.sigma.value) * self.A


@functools.lru_cache(maxsize=32)
def _model(problem: LandingProblem) -> _Model:
    return _Model(problem)


def solve_fixed_tf(
    problem: LandingProblem,
    t_f: float,
    initial_reference: str = "outer",
    refine_iters: int = 8,
    refine_tol: float = 1e-8,
) -> Solution | None:
    """Minimum-fuel landing for a fixed final time; None if infeasible.

    initial_reference="max_burn": the textbook Acikmese-Ploen single expansion about
        z0(t) = ln(m0 - alpha thrust_max t); its feasible set is a conservative subset, so
        t_f values near the feasibility edge come out infeasible and the fuel is overestimated
        when the mass drifts far from z0 (long coasts, large propellant fractions).
    initial_reference="outer": first solve the secant/tangent relaxation (``_Model.set_outer``);
        if that is infeasible the problem is certified infeasible, else expand about its mass.
    In both cases ``refine_iters`` re-expansions about the previous solution's log-mass follow,
    until the final log-mass changes by less than ``refine_tol`` (0: a single Taylor solve).
    """
    if initial_reference not in ("outer", "max_burn"):
        raise ValueError(initial_reference)
    p = problem
    if not t_f > 0.0:
        return None
    model = _model(p)
    start = time.perf_counter()
    z0 = model.set_time(t_f)
    n_solves = 0

    def taylor_solve(z_ref: np.ndarray) -> str:
        nonlocal n_solves
        model.set_taylor(z_ref)
        n_solves += 1
        return model.solve()

    status = "not_solved"
    if initial_reference == "outer":
        model.set_outer(z0)
        n_solves += 1
        status = model.solve()
        if status in _INFEASIBLE:
            return None
        if status != "solver_error":
            status = taylor_solve(model.scaled_log_mass()[:-1])
    if status in _INFEASIBLE or status in ("solver_error", "not_solved"):
        # Textbook reference (also the fallback when the relaxation's mass is a poor reference,
        # which only happens right at the feasibility edge).
        status = taylor_solve(z0[:-1])
        if status in _INFEASIBLE or status == "solver_error":
            return None

    z_last = float(model.z.value[-1])
    refined_ok = True
    for _ in range(refine_iters):
        snapshot = _snapshot(model)
        status_new = taylor_solve(model.scaled_log_mass()[:-1])
        if status_new not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            # Should not happen (the previous iterate stays feasible); keep the last good one.
            _restore(model, snapshot)
            refined_ok = False
            break
        status = status_new
        z_new = float(model.z.value[-1])
        done = abs(z_new - z_last) < refine_tol
        z_last = z_new
        if done:
            break
    else:
        refined_ok = refine_iters == 0
    elapsed = time.perf_counter() - start

    u = model.accelerations()
    mass = np.exp(model.log_mass())
    return Solution(
        problem=p,
        t_f=float(t_f),
        fuel=float(p.m0 - mass[-1]),
        times=np.linspace(0.0, t_f, p.n_nodes + 1),
        r=model.positions(),
        v=model.velocities(),
        mass=mass,
        u=u,
        sigma=model.slacks(),
        thrust=u * mass[:-1, None],
        status=status,
        converged=(status == cp.OPTIMAL) and refined_ok,
        n_convex_solves=n_solves,
        solve_time_s=elapsed,
    )


def _snapshot(model: _Model) -> dict:
    return {var: np.array(var.value) for var in model.prob.variables()}


def _restore(model: _Model, snap: dict) -> None:
    for var, val in snap.items():
        var.value = val


# ---------------------------------------------------------------------------------------------
# Free final time
# ---------------------------------------------------------------------------------------------


def solve_free_tf(
    problem: LandingProblem,
    tf_bounds: tuple[float, float] | None = None,
    n_grid: int = 8,
    max_golden_iters: int = 20,
    tf_rtol: float = 1e-3,
    **fixed_tf_kwargs,
) -> Solution | None:
    """Minimum fuel over t_f; None if every t_f tried is infeasible.

    A geometric grid of ``n_grid`` t_f values over ``tf_bounds`` (default: the physical bounds
    of ``default_tf_bounds``) locates the basin; a bracketing golden-section search (keeping a
    triple a < x < b with f(x) <= f(a), f(b), probing the larger side) then shrinks the bracket
    around the best grid point until b - a <= ``tf_rtol`` * x. Infeasible or non-optimal
    solves count as +inf, so the search also converges onto a feasibility edge when the fuel
    is monotone in t_f (e.g. the 1-D problem, where the fuel for a fixed t_f is fixed by the
    vertical momentum balance and the optimum is the shortest feasible t_f).
    The returned Solution is the best one evaluated, ``tf_evaluations`` lists every (t_f,
    fuel), and ``converged`` also requires the bracket to have shrunk to tolerance.
    """
    start = time.perf_counter()
    lo, hi = tf_bounds if tf_bounds is not None else default_tf_bounds(problem)
    if not hi > lo:
        return None
    lo = max(lo, 1e-6 * hi)  # the geometric grid needs lo > 0
    cache: dict[float, Solution | None] = {}
    n_solves = 0

    def fuel(t: float) -> float:
        nonlocal n_solves
        if t not in cache:
            sol = solve_fixed_tf(problem, t, **fixed_tf_kwargs)
            cache[t] = sol
            n_solves += sol.n_convex_solves if sol is not None else 1
        s = cache[t]
        return s.fuel if s is not None and s.status == cp.OPTIMAL else math.inf

    grid = [float(t) for t in np.geomspace(lo, hi, n_grid)]
    values = [fuel(t) for t in grid]
    i = int(np.argmin(values))
    if not math.isfinite(values[i]):
        return None
    a, x, b = grid[max(i - 1, 0)], grid[i], grid[min(i + 1, n_grid - 1)]
    fx = values[i]
    bracket_ok = False
    for _ in range(max_golden_iters):
        if b - a <= tf_rtol * x:
            bracket_ok = True
            break
        # Probe the larger of [a, x] and [x, b] at the golden fraction.
        if b - x >= x - a:
            y = x + (1.0 - _GOLDEN) * (b - x)
        else:
            y = x - (1.0 - _GOLDEN) * (x - a)
        fy = fuel(y)
        if fy < fx:
            a, b = (x, b) if y > x else (a, x)
            x, fx = y, fy
        else:
            a, b = (a, y) if y > x else (y, b)
    else:
        bracket_ok = b - a <= tf_rtol * x

    sol = dataclasses.replace(cache[x])
    sol.tf_evaluations = sorted((t, fuel(t)) for t in cache)
    sol.n_convex_solves = n_solves
    sol.solve_time_s = time.perf_counter() - start
    sol.converged = sol.converged and bracket_ok
    return sol


class BatchResult(NamedTuple):
    fuel: float  # +inf when infeasible
    t_f: float  # nan when infeasible
    wall_s: float
    converged: bool


def solve_batch(problems: Sequence[LandingProblem], **free_tf_kwargs) -> list[BatchResult]:
    """Solve problems one after another with ``solve_free_tf`` (for benchmarks)."""
    out = []
    for p in problems:
        start = time.perf_counter()
        sol = solve_free_tf(p, **free_tf_kwargs)
        wall = time.perf_counter() - start
        if sol is None:
            out.append(BatchResult(math.inf, math.nan, wall, False))
        else:
            out.append(BatchResult(sol.fuel, sol.t_f, wall, sol.converged))
    return out


# ---------------------------------------------------------------------------------------------
# Independent re-integration of a thrust schedule
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reintegration:
    times: np.ndarray  # (N * substeps + 1,)
    r: np.ndarray  # (..., 3)
    v: np.ndarray  # (..., 3)
    mass: np.ndarray  # (...,)
    fuel: float
    position_error_m: float  # |r(t_f)|, the target is the origin
    velocity_error_mps: float  # |v(t_f)|
    min_glide_margin_m: float  # min over the fine path of r_z - tan(glide)|r_xy| (or r_z)


def reintegrate(sol: Solution, substeps: int = 40, hold: str = "thrust") -> Reintegration:
    """Fine RK4 integration of the true nonlinear dynamics under the solution's controls.

    hold="thrust": T_k held constant over interval k (what an engine does; differs from the
        convex model, whose acceleration u_k is constant, by O(dt * mass-flow / mass)).
    hold="acceleration": u_k held, T(t) = u_k m(t); reproduces the convex model's dynamics
        exactly when the relaxation is lossless, so only the RK4 error remains.
    """
    if hold not in ("thrust", "acceleration"):
        raise ValueError(hold)
    p = sol.problem
    g = p.gravity_vector
    alpha = p.alpha
    h = sol.dt / substeps

    def deriv(y: np.ndarray, k: int) -> np.ndarray:
        vel, m = y[3:6], y[6]
        if hold == "thrust":
            thrust = sol.thrust[k]
        else:
            thrust = sol.u[k] * m
        return np.concatenate([vel, thrust / m + g, [-alpha * np.linalg.norm(thrust)]])

    y = np.concatenate([np.array(p.r0), np.array(p.v0), [p.m0]])
    ys = [y]
    for k in range(p.n_nodes):
        for _ in range(substeps):
            k1 = deriv(y, k)
            k2 = deriv(y + 0.5 * h * k1, k)
            k3 = deriv(y + 0.5 * h * k2, k)
            k4 = deriv(y + h * k3, k)
            y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            ys.append(y)
    ys = np.array(ys)
    r, v, m = ys[:, :3], ys[:, 3:6], ys[:, 6]
    return Reintegration(
        times=np.linspace(0.0, sol.t_f, len(ys)),
        r=r,
        v=v,
        mass=m,
        fuel=float(p.m0 - m[-1]),
        position_error_m=float(np.linalg.norm(r[-1])),
        velocity_error_mps=float(np.linalg.norm(v[-1])),
        min_glide_margin_m=float(np.min(glide_margin(p, r))),
    )
