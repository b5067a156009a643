"""The closed-loop descent in plain NumPy: an independent peer of ``descent_opt.simulate``.

    python experiments/bench/numpy_closed_loop.py [--population 4096 65536] [--processes 1 2]
        [--repeats 2] [--dtype float32] [--block-size 16384] [--jax]

(``--jax`` also times ``descent_opt.simulate`` on the same populations in the same run.)

Same model as the JAX simulator (guidance with the contingency switch, engine lag and tilt
rate limit, propagation with propellant exhaustion, IMU, LRF with latency, acquisition range,
bias, scale factor, heavy-tailed noise, dropout and absence, the 3-state Kalman filter with
its gate and reject policy, touchdown interpolation), written the way a NumPy engineer writes
a population simulator:

- structure of arrays, the population as the last (only) axis: every per-scenario quantity is
  an ``(n,)`` array, a 3-vector is three of them, the filter covariance is its six distinct
  entries, crater slots are a Python loop over slots;
- one Python loop over time; no Python loop over scenarios; buffers reused in place where that
  saves memory traffic; a large population is flown in cache-sized blocks one after another
  (``block_size``);
- ``float32`` by default, ``float64`` for tight checks;
- random numbers from ``numpy.random.Generator`` (PCG64), drawn per step for the whole
  population: 3 IMU normals and 1 LRF normal (Box-Muller from 4 uniforms), 1 uniform for the
  Student-t term (exact inverse CDF for 2 degrees of freedom), 1 uniform for the dropout
  draw. The streams cannot match JAX's, so the two implementations agree in distribution,
  not sample by sample.

The LRF ray cast is warm-started: the smaller of the range found at the previous step and
the range to the ground straight below seeds ``beam_iterations`` fixed-point iterations from
the stale (latency-delayed) position along the new thrust axis; at the start the beam is
vertical and the seed is the true initial height. The time loop stops as soon as every
scenario has landed (outcomes are frozen from then on); throughput is always counted over the
nominal horizon.

Nothing here imports JAX: :func:`scenarios_to_numpy` and :func:`model_from_spec` read the JAX
objects through ``numpy.asarray`` and attribute access, so worker processes of
:func:`simulate_numpy_parallel` start without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import os
import sys
import time
from contextlib import contextmanager

import numpy as np

ABS_TO_SIGMA = math.sqrt(math.pi / 2.0)  # Gaussian: sigma over mean absolute value

G0_MPS2 = 9.80665

OUTCOME_FIELDS = (
    "landed",
    "touchdown_time_s",
    "touchdown_velocity_mps",
    "touchdown_position_m",
    "touchdown_tilt_deg",
    "fuel_kg",
    "exhausted",
    "final_height_m",
    "lrf_first_accept_height_m",
)

# Guidance schedule table rows (see Model.schedule_left / schedule_slope).
_RATE_NOM, _RATE_CON, _RATE_GAIN, _ZEM, _ZEV, _TGO_NOM, _TGO_CON = range(7)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    """Everything fixed across a population, as Python floats and small float64 tables
    (picklable without JAX)."""

    # vehicle
    mass_dry_kg: float
    thrust_max_n: float
    thrust_min_n: float
    exhaust_velocity_mps: float
    max_tilt_rad: float
    thrust_time_constant_s: float
    tilt_rate_max_rad_s: float
    gravity_mps2: float
    # sensors
    imu_noise_mps2: float
    lrf_noise_m: float
    lrf_rate_hz: float
    lrf_max_range_m: float
    # guidance
    lrf_expected_altitude_m: float
    lrf_stale_after_s: float
    tgo_max_s: float
    altitude_margin_sigma: float
    tgo_min_s: float
    breakpoints_m: np.ndarray  # (k,)
    schedule_left: np.ndarray  # (7, k-1): column value at the left end of each segment
    schedule_slope: np.ndarray  # (7, k-1): column slope on each segment
    schedule_first: np.ndarray  # (7,): value below the first breakpoint
    schedule_last: np.ndarray  # (7,): value above the last breakpoint
    contingency_last_rate_mps: float  # descent rates above the last breakpoint (time to go)
    nominal_last_rate_mps: float
    # navigation
    nav_accel_noise_mps2: float
    nav_lrf_noise_m: float
    nav_gate_sigma: float
    nav_reacquire_after_s: float
    nav_heavy_tail_weight: float
    nav_noise_adapt_rate: float
    nav_lrf_noise_start_m: float
    nav_sigma_floor_ratio: float
    nav_terminal_noise_ratio: float
    nav_altitude_sigma_m: float
    nav_velocity_sigma_mps: float
    nav_bias_sigma_mps2: float
    # simulation
    dt_s: float
    duration_s: float
    n_steps: int
    reject_policy: str
    gate_softness: float
    beam_iterations: int


def _cumulative_time_to_go(rate_mps: np.ndarray, breakpoints_m: np.ndarray) -> np.ndarray:
    """Time to descend from each breakpoint to the ground following the piecewise-linear
    rate envelope (each segment takes ``dh / logmean(v_i, v_i+1)``)."""
    v = np.maximum(rate_mps, 1e-3)
    a, b = v[:-1], v[1:]
    close = np.abs(b - a) < 1e-3 * a
    with np.errstate(divide="ignore", invalid="ignore"):
        logmean = np.where(close, 0.5 * (a + b), (b - a) / np.log(np.where(close, 2.0, b / a)))
    return np.concatenate([[0.0], np.cumsum(np.diff(breakpoints_m) / logmean)])


def model_from_spec(spec, gains, *, beam_iterations: int | None = None) -> Model:
    """Plain-number model from a ``descent_opt.simulate.SimSpec`` and a
    ``descent_opt.guidance.Gains``. ``beam_iterations`` defaults to the spec's field (2 where
    the spec has none)."""
    f = lambda x: float(np.asarray(x))  # noqa: E731
    vehicle = spec.vehicle
    bp = np.asarray(gains.altitude_breakpoints_m, dtype=np.float64)
    columns = [
        np.asarray(gains.descent_rate_mps, dtype=np.float64),
        np.asarray(gains.contingency_descent_rate_mps, dtype=np.float64),
        np.asarray(gains.descent_rate_gain_per_s, dtype=np.float64),
        np.asarray(gains.zem_gain, dtype=np.float64),
        np.asarray(gains.zev_gain, dtype=np.float64),
    ]
    columns.append(_cumulative_time_to_go(columns[_RATE_NOM], bp))
    columns.append(_cumulative_time_to_go(columns[_RATE_CON], bp))
    table = np.stack(columns)  # (7, k)
    dx = np.diff(bp)
    # Same guard as jnp.interp against zero-width segments.
    degenerate = np.abs(dx) <= np.spacing(np.finfo(np.float64).eps)
    slope = np.where(degenerate, 0.0, np.diff(table, axis=1) / np.where(degenerate, 1.0, dx))
    if beam_iterations is None:
        beam_iterations = int(spec.numerics.beam_iterations)
    n_steps = int(round(f(spec.duration_s) / f(spec.dt_s)))
    return Model(
        mass_dry_kg=f(vehicle.mass_dry_kg),
        thrust_max_n=f(vehicle.thrust_max_n),
        thrust_min_n=f(vehicle.thrust_min_n),
        exhaust_velocity_mps=f(vehicle.isp_s) * G0_MPS2,
        max_tilt_rad=math.radians(f(vehicle.max_tilt_deg)),
        thrust_time_constant_s=f(vehicle.thrust_time_constant_s),
        tilt_rate_max_rad_s=math.radians(f(vehicle.tilt_rate_max_deg_s)),
        gravity_mps2=f(spec.gravity_mps2),
        imu_noise_mps2=f(spec.imu.noise_mps2),
        lrf_noise_m=f(spec.lrf.noise_m),
        lrf_rate_hz=f(spec.lrf.rate_hz),
        lrf_max_range_m=f(spec.lrf.max_range_m),
        lrf_expected_altitude_m=f(spec.guidance.lrf_expected_altitude_m),
        lrf_stale_after_s=f(spec.guidance.lrf_stale_after_s),
        tgo_max_s=f(spec.guidance.tgo_max_s),
        altitude_margin_sigma=f(gains.altitude_margin_sigma),
        tgo_min_s=f(gains.tgo_min_s),
        breakpoints_m=bp,
        schedule_left=np.ascontiguousarray(table[:, :-1]),
        schedule_slope=np.ascontiguousarray(slope),
        schedule_first=table[:, 0].copy(),
        schedule_last=table[:, -1].copy(),
        nominal_last_rate_mps=float(max(columns[_RATE_NOM][-1], 1e-3)),
        contingency_last_rate_mps=float(max(columns[_RATE_CON][-1], 1e-3)),
        nav_accel_noise_mps2=f(gains.nav.accel_noise_mps2),
        nav_lrf_noise_m=f(gains.nav.lrf_noise_m),
        nav_gate_sigma=f(gains.nav.gate_sigma),
        nav_reacquire_after_s=f(gains.nav.reacquire_after_s),
        nav_heavy_tail_weight=f(gains.nav.heavy_tail_weight),
        nav_noise_adapt_rate=f(gains.nav.noise_adapt_rate),
        nav_lrf_noise_start_m=f(gains.nav.lrf_noise_start_m),
        nav_sigma_floor_ratio=f(gains.nav.sigma_floor_ratio),
        nav_terminal_noise_ratio=f(gains.nav.terminal_noise_ratio),
        nav_altitude_sigma_m=f(spec.nav_altitude_sigma_m),
        nav_velocity_sigma_mps=f(spec.nav_velocity_sigma_mps),
        nav_bias_sigma_mps2=f(spec.nav_bias_sigma_mps2),
        dt_s=f(spec.dt_s),
        duration_s=f(spec.duration_s),
        n_steps=n_steps,
        reject_policy=str(spec.reject_policy),
        gate_softness=f(spec.smoothing.gate_softness),
        beam_iterations=int(beam_iterations),
    )


def scenarios_to_numpy(scenarios) -> dict[str, np.ndarray]:
    """A ``descent_opt.scenarios.Scenario`` population as float64/bool NumPy arrays with the
    population as the last axis: 3-vectors ``(3, n)``, crater slots ``(slots, n)``, crater
    centres ``(slots, 2, n)``, terrain slope ``(2, n)``, everything else ``(n,)``. The
    per-scenario PRNG keys are not carried (NumPy draws its own streams)."""

    def arr(x, dtype=np.float64):
        return np.asarray(x).astype(dtype, copy=False)

    def vectors(x):  # (n, c) -> (c, n)
        return np.ascontiguousarray(arr(x).T)

    faults, terrain = scenarios.faults, scenarios.terrain
    out = {
        "position0_m": vectors(scenarios.position0_m),
        "velocity0_mps": vectors(scenarios.velocity0_mps),
        "mass0_kg": arr(scenarios.mass0_kg).copy(),
        "nav_position_error_m": vectors(scenarios.nav_position_error_m),
        "nav_velocity_error_mps": vectors(scenarios.nav_velocity_error_mps),
        "imu_bias_mps2": vectors(scenarios.imu_bias_mps2),
        "slope": vectors(terrain.slope),
        "offset_m": arr(terrain.offset_m).copy(),
        "crater_center_m": np.ascontiguousarray(arr(terrain.crater_center_m).transpose(1, 2, 0)),
        "crater_radius_m": vectors(terrain.crater_radius_m),
        "crater_depth_m": vectors(terrain.crater_depth_m),
        "crater_rim_m": vectors(terrain.crater_rim_m),
        "crater_floor_frac": vectors(terrain.crater_floor_frac),
        "absent": arr(faults.absent, bool).copy(),
    }
    for name in (
        "acquisition_range_m",
        "latency_s",
        "dropout_prob",
        "bias_m",
        "scale_factor",
        "heavy_tail_scale_m",
        "rim_step_height_m",
        "rim_radius_m",
    ):
        out[name] = arr(getattr(faults, name)).copy()
    return out


def population_size(scenarios_np: dict[str, np.ndarray]) -> int:
    return int(scenarios_np["mass0_kg"].shape[-1])


def slice_population(scenarios_np: dict[str, np.ndarray], start: int, stop: int) -> dict:
    """Members ``start:stop`` (contiguous copies)."""
    return {k: np.ascontiguousarray(v[..., start:stop]) for k, v in scenarios_np.items()}


# ---------------------------------------------------------------------------------------------
# Terrain
# ---------------------------------------------------------------------------------------------


def _clip(x, lo, hi):
    """In-place clip (the ufuncs directly: ``np.clip`` costs more per call)."""
    np.maximum(x, lo, out=x)
    np.minimum(x, hi, out=x)
    return x


class _Terrain:
    """Per-scenario terrain in the working dtype, with per-slot constants precomputed.
    Slots whose depth and rim are zero for the whole population add exactly nothing and are
    skipped; so is a slope that is zero everywhere."""

    def __init__(self, s: dict, dtype, n: int):
        c = lambda x: np.ascontiguousarray(x, dtype=dtype)  # noqa: E731
        self.offset = c(s["offset_m"])
        self.has_slope = bool(np.any(s["slope"] != 0.0))
        self.slope_x, self.slope_y = c(s["slope"][0]), c(s["slope"][1])
        self.slots = []
        for k in range(s["crater_radius_m"].shape[0]):
            depth, rim = s["crater_depth_m"][k], s["crater_rim_m"][k]
            if not (np.any(depth != 0.0) or np.any(rim != 0.0)):
                continue
            floor = s["crater_floor_frac"][k]
            self.slots.append(
                (
                    c(s["crater_center_m"][k, 0]),
                    c(s["crater_center_m"][k, 1]),
                    c(1.0 / s["crater_radius_m"][k]),
                    c(floor),
                    c(1.0 / (1.0 - floor)),
                    c(-depth),
                    c(depth + rim),
                    c(rim),
                )
            )
        self._a = np.empty(n, dtype)
        self._b = np.empty(n, dtype)
        self._c = np.empty(n, dtype)
        self._near = np.empty(n, bool)

    def height(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Terrain height at ``(x, y)`` into ``out``: plane plus craters (a flat floor inside
        ``floor_frac`` radii, a smoothstep wall up to the rim crest at one radius, Gaussian
        ejecta outside)."""
        a, b, c, near = self._a, self._b, self._c, self._near
        if self.has_slope:
            np.multiply(self.slope_x, x, out=out)
            np.multiply(self.slope_y, y, out=a)
            out += a
            out += self.offset
        else:
            np.copyto(out, self.offset)
        for cx, cy, inv_r, floor, inv_span, neg_depth, amp, rim in self.slots:
            # Distance from the centre in radii. (A distance below 1e-6 m, which the JAX
            # side's safe norm rounds to 0, lies on the flat floor either way.)
            np.subtract(x, cx, out=a)
            a *= a
            np.subtract(y, cy, out=b)
            b *= b
            a += b
            np.sqrt(a, out=a)
            a *= inv_r
            np.less(a, 1.0, out=near)
            # Ejecta: rim * exp(-((x - 1) / 0.3)^2).
            np.subtract(a, 1.0, out=b)
            b *= b
            b *= -1.0 / 0.09
            np.exp(b, out=b)
            b *= rim
            # Wall: -depth + (depth + rim) * smoothstep((x - floor) / (1 - floor)).
            np.subtract(a, floor, out=c)
            c *= inv_span
            _clip(c, 0.0, 1.0)
            np.multiply(c, -2.0, out=a)
            a += 3.0
            a *= c
            a *= c
            a *= amp
            a += neg_depth
            np.copyto(b, a, where=near)
            out += b
        return out


# ---------------------------------------------------------------------------------------------
# Closed loop
# ---------------------------------------------------------------------------------------------


def _norm2(x, y):
    """Norm of the 2-vector (x, y).

    The JAX side's safe norm returns exactly 0 where the square is at most 1e-12; every use
    below is insensitive to that difference: norms only enter ``limit / max(norm, 1e-12)``
    with limits far above 1e-6, the ``> 1e-9`` test of a tilt direction (both branches give
    the same tilt to 1e-12 relative), the small-angle branch of the thrust axis (below 1e-4)
    and the reported tilt angle."""
    sq = x * x
    sq += y * y
    return np.sqrt(sq, out=sq)


class _Schedule:
    """The guidance gain table in the working dtype, interpolated with ``jnp.interp``'s rule
    (segment by a right-sided search clipped to the table; held constant outside the
    breakpoints) and differentiated as ``jax.jvp`` does it (the chosen segment's slope, zero
    outside the breakpoints)."""

    def __init__(self, model: Model, dtype):
        self.breakpoints = model.breakpoints_m.astype(dtype)
        self.first_bp, self.last_bp = float(self.breakpoints[0]), float(self.breakpoints[-1])
        self.left = model.schedule_left.astype(dtype)
        self.slope = model.schedule_slope.astype(dtype)
        self.first = model.schedule_first.astype(dtype)[:, None]
        self.last = model.schedule_last.astype(dtype)[:, None]

    def __call__(self, h: np.ndarray):
        """Every column at ``h``: ``(values, slopes)``, each ``(7, n)``."""
        k = self.breakpoints.shape[0]
        seg = np.searchsorted(self.breakpoints, h, side="right")
        _clip(seg, 1, k - 1)
        seg -= 1
        slope = np.take(self.slope, seg, axis=1)
        values = np.take(self.left, seg, axis=1)
        delta = h - np.take(self.breakpoints, seg)
        delta = delta[None, :] * slope
        values += delta
        below, above = h < self.first_bp, h > self.last_bp
        if below.any():
            values[:, below] = self.first
            slope[:, below] = 0.0
        if above.any():
            values[:, above] = self.last
            slope[:, above] = 0.0
        return values, slope


def _axis_from_tilt(tx, ty):
    """Unit thrust axis for the tilt vector (tx, ty): angle |tilt| from +z."""
    angle = _norm2(tx, ty)
    small = angle < 1e-4
    a2 = angle * angle
    safe = np.where(small, 1.0, angle).astype(angle.dtype, copy=False)
    sinc = np.sin(safe)
    sinc /= safe
    cos = np.cos(safe)
    if small.any():
        np.copyto(sinc, 1.0 - a2 / 6.0, where=small)
        np.copyto(cos, 1.0 - a2 / 2.0, where=small)
    return tx * sinc, ty * sinc, cos


def _clip_norm_factor(norm, limit):
    """Factor that scales a vector of norm ``norm`` down to at most ``limit``."""
    factor = np.maximum(norm, 1e-12)
    np.divide(limit, factor, out=factor)
    np.minimum(factor, 1.0, out=factor)
    return factor


def _flight(model: Model, s: dict, *, seed, dtype) -> dict[str, np.ndarray]:
    """Fly one population (``s`` from :func:`scenarios_to_numpy`)."""
    dtype = np.dtype(dtype)
    n = population_size(s)
    m = model
    dt = m.dt_s
    rng = np.random.Generator(np.random.PCG64(seed))
    c = lambda x: np.array(x, dtype=dtype)  # noqa: E731  (always a fresh copy)
    terrain = _Terrain(s, dtype, n)
    schedule = _Schedule(m, dtype)

    # Scenario constants.
    bias_x, bias_y, bias_z = (c(s["imu_bias_mps2"][i]) for i in range(3))
    latency = c(s["latency_s"])
    lrf_scale = c(s["scale_factor"])
    lrf_bias = c(s["bias_m"])
    tail_scale = c(s["heavy_tail_scale_m"])
    dropout = c(s["dropout_prob"])
    in_range_limit = np.minimum(c(s["acquisition_range_m"]), m.lrf_max_range_m).astype(dtype)
    lrf_working = ~s["absent"].astype(bool)
    mass0 = c(s["mass0_kg"])

    # True state.
    px, py, pz = (c(s["position0_m"][i]) for i in range(3))
    vx, vy, vz = (c(s["velocity0_mps"][i]) for i in range(3))
    mass = mass0.copy()
    thrust = np.full(n, m.thrust_min_n, dtype)
    tilt_x = np.zeros(n, dtype)
    tilt_y = np.zeros(n, dtype)

    # Navigation state: estimate, vertical-channel covariance (6 entries), bookkeeping.
    ex = px + c(s["nav_position_error_m"][0])
    ey = py + c(s["nav_position_error_m"][1])
    ez = pz + c(s["nav_position_error_m"][2])
    evx = vx + c(s["nav_velocity_error_mps"][0])
    evy = vy + c(s["nav_velocity_error_mps"][1])
    evz = vz + c(s["nav_velocity_error_mps"][2])
    ebias = np.zeros(n, dtype)
    p00 = np.full(n, m.nav_altitude_sigma_m**2, dtype)
    p11 = np.full(n, m.nav_velocity_sigma_mps**2, dtype)
    p22 = np.full(n, m.nav_bias_sigma_mps2**2, dtype)
    p01 = np.zeros(n, dtype)
    p02 = np.zeros(n, dtype)
    p12 = np.zeros(n, dtype)
    since_accept = np.full(n, 1e6, dtype)
    rejecting = np.zeros(n, dtype)
    lrf_disabled = np.zeros(n, bool)
    noise_scale = np.full(n, m.nav_lrf_noise_start_m, dtype)  # LRF noise seen, 1-sigma

    # Touchdown bookkeeping.
    ground = terrain.height(px, py, np.empty(n, dtype))
    height = pz - ground
    landed = height <= 0.0
    touchdown_time = np.zeros(n, dtype)
    exhausted = np.zeros(n, bool)
    first_accept = np.full(n, -1.0, dtype)
    # Warm start of the ray cast: the beam starts vertical, at the true initial height.
    beam = np.maximum(height, 0.0)

    # Constants of the step.
    alpha = 1.0 - math.exp(-dt / m.thrust_time_constant_s)
    tilt_step_max = m.tilt_rate_max_rad_s * dt
    thrust_z_min = m.thrust_min_n * math.cos(m.max_tilt_rad)
    tan_max_tilt = math.tan(m.max_tilt_rad)
    burn_per_newton = dt / m.exhaust_velocity_mps
    ve = m.exhaust_velocity_mps
    g = m.gravity_mps2
    dry_limit = m.mass_dry_kg + 1e-3
    q = m.nav_accel_noise_mps2**2
    s0, s1 = 0.5 * dt * dt, dt  # process-noise shaping (altitude, vertical velocity)
    gate2 = m.nav_gate_sigma**2
    if m.reject_policy not in ("reacquire", "latch"):
        raise ValueError(f"reject_policy: {m.reject_policy!r} is not reacquire or latch")
    reacquire = m.reject_policy == "reacquire"

    # Per step: 4 standard normals (3 IMU axes, LRF noise) by Box-Muller from 4 uniforms, and
    # 2 uniforms for the LRF (Student-t term, dropout). Box-Muller over the generator's
    # uniforms costs about a third of its ziggurat normals here (float32, 16k draws a call).
    uniforms = np.empty((6, n), dtype)
    normals = np.empty((4, n), dtype)
    two_pi = 2.0 * math.pi
    # The generator's uniforms lie on a grid of eps / 2 in [0, 1); an exact 0 (probability
    # 2^-24 in float32) is moved to the first grid point so the Student-t draw stays finite.
    u_floor = float(np.finfo(dtype).eps) / 2.0
    foot_x = np.empty(n, dtype)
    foot_y = np.empty(n, dtype)
    ground_buf = np.empty(n, dtype)
    ground_here = np.empty(n, dtype)
    rate_hz = np.dtype(dtype).type(m.lrf_rate_hz)
    dt_typed = np.dtype(dtype).type(dt)

    for step in range(m.n_steps):
        # ---- guidance (on the navigation estimate) ------------------------------------
        contingency = (since_accept > m.lrf_stale_after_s) & (ez < m.lrf_expected_altitude_m)
        sigma_h = np.sqrt(np.maximum(p00, 0.0))
        h_sched = ez - m.altitude_margin_sigma * sigma_h
        np.maximum(h_sched, 0.0, out=h_sched)
        values, slopes = schedule(h_sched)
        rate = np.where(contingency, values[_RATE_CON], values[_RATE_NOM])
        rate_slope = np.where(contingency, slopes[_RATE_CON], slopes[_RATE_NOM])
        accel_z = rate * rate_slope
        accel_z += g
        accel_z -= values[_RATE_GAIN] * (rate + evz)
        beyond = np.maximum(h_sched - schedule.last_bp, 0.0)
        tgo = np.where(
            contingency,
            values[_TGO_CON] + beyond / m.contingency_last_rate_mps,
            values[_TGO_NOM] + beyond / m.nominal_last_rate_mps,
        )
        _clip(tgo, m.tgo_min_s, m.tgo_max_s)
        inv_tgo = 1.0 / tgo
        k_r = values[_ZEM] * inv_tgo * inv_tgo
        k_v = values[_ZEV] * inv_tgo
        # a_h = k_r ZEM - k_v ZEV with ZEM = -(r + v tgo), ZEV = -v.
        cmd_x = mass * (k_v * evx - k_r * (ex + evx * tgo))
        cmd_y = mass * (k_v * evy - k_r * (ey + evy * tgo))
        cmd_z = mass * accel_z
        _clip(cmd_z, thrust_z_min, m.thrust_max_n)
        room = np.maximum(m.thrust_max_n**2 - cmd_z * cmd_z, 1e-6)
        np.sqrt(room, out=room)
        np.minimum(room, cmd_z * tan_max_tilt, out=room)
        factor = _clip_norm_factor(_norm2(cmd_x, cmd_y), room)
        cmd_x *= factor
        cmd_y *= factor

        # ---- engine response ----------------------------------------------------------
        horizontal = _norm2(cmd_x, cmd_y)
        magnitude = np.sqrt(horizontal * horizontal + cmd_z * cmd_z)
        _clip(magnitude, m.thrust_min_n, m.thrust_max_n)
        new_thrust = magnitude
        new_thrust -= thrust
        new_thrust *= alpha
        new_thrust += thrust
        # Tilt of the command direction, bounded, then rate limited, then bounded again.
        angle = np.arctan2(horizontal, cmd_z)
        leaning = horizontal > 1e-9
        scale = np.divide(angle, horizontal, out=np.ones_like(angle), where=leaning)
        if not leaning.all():
            np.copyto(scale, 1.0 / np.maximum(cmd_z, 1e-9), where=~leaning)
        tcx = cmd_x * scale
        tcy = cmd_y * scale
        factor = _clip_norm_factor(_norm2(tcx, tcy), m.max_tilt_rad)
        tcx *= factor
        tcy *= factor
        tcx -= tilt_x
        tcy -= tilt_y
        factor = _clip_norm_factor(_norm2(tcx, tcy), tilt_step_max)
        tcx *= factor
        tcx += tilt_x
        tcy *= factor
        tcy += tilt_y
        factor = _clip_norm_factor(_norm2(tcx, tcy), m.max_tilt_rad)
        new_tilt_x = tcx
        new_tilt_x *= factor
        new_tilt_y = tcy
        new_tilt_y *= factor

        # ---- propagation (thrust held; the tanks may run dry inside the step) ----------
        burn = new_thrust * burn_per_newton
        fraction = np.maximum(mass - m.mass_dry_kg, 0.0)
        fraction /= np.maximum(burn, 1e-9)
        _clip(fraction, 0.0, 1.0)
        burn *= fraction  # propellant spent
        new_mass = mass - burn
        burn /= mass
        np.negative(burn, out=burn)
        dv = np.log1p(burn)
        dv *= -ve
        ax, ay, az = _axis_from_tilt(new_tilt_x, new_tilt_y)
        dvx, dvy, dvz = ax * dv, ay * dv, az * dv
        new_vx, new_vy, new_vz = vx + dvx, vy + dvy, vz + dvz
        new_vz -= g * dt
        new_px = vx + new_vx
        new_px *= 0.5 * dt
        new_px += px
        new_py = vy + new_vy
        new_py *= 0.5 * dt
        new_py += py
        new_pz = vz + new_vz
        new_pz *= 0.5 * dt
        new_pz += pz
        new_thrust *= fraction

        # ---- IMU and navigation prediction ---------------------------------------------
        rng.random(out=uniforms, dtype=dtype)
        radius, turn = uniforms[0:2], uniforms[2:4]
        np.subtract(1.0, radius, out=radius)  # (0, 1]
        np.log(radius, out=radius)
        radius *= -2.0
        np.sqrt(radius, out=radius)
        turn *= two_pi
        np.cos(turn, out=normals[0:2])
        np.sin(turn, out=normals[2:4])
        normals[0:2] *= radius
        normals[2:4] *= radius
        # Measured specific force (dv / dt) plus bias and noise, then remove gravity and
        # the estimated vertical bias.
        fx = dvx * (1.0 / dt) + bias_x + m.imu_noise_mps2 * normals[0]
        fy = dvy * (1.0 / dt) + bias_y + m.imu_noise_mps2 * normals[1]
        fz = dvz * (1.0 / dt) + bias_z + m.imu_noise_mps2 * normals[2]
        fz -= g
        fz -= ebias
        half_dt2 = 0.5 * dt * dt
        ex += evx * dt + half_dt2 * fx
        ey += evy * dt + half_dt2 * fy
        ez += evz * dt + half_dt2 * fz
        evx += fx * dt
        evy += fy * dt
        evz += fz * dt
        # P <- F P F^T + q s s^T + bias walk, F = [[1, dt, -dt^2/2], [0, 1, -dt], [0, 0, 1]].
        fp00 = p00 + dt * p01 - half_dt2 * p02
        fp01 = p01 + dt * p11 - half_dt2 * p12
        fp02 = p02 + dt * p12 - half_dt2 * p22
        fp11 = p11 - dt * p12
        fp12 = p12 - dt * p22
        p00 = fp00 + dt * fp01 - half_dt2 * fp02 + q * s0 * s0
        p01 = fp01 - dt * fp02 + q * s0 * s1
        p02 = fp02
        p11 = fp11 - dt * fp12 + q * s1 * s1
        p12 = fp12
        p22 = p22 + (1e-5) ** 2 * dt
        since_accept += dt

        # ---- LRF: warm-started ray cast from the stale position along the new axis -----
        sx = new_px - new_vx * latency
        sy = new_py - new_vy * latency
        sz = new_pz - new_vz * latency
        inv_down = 1.0 / np.maximum(az, 1e-3)
        # Start: the smaller of the previous range and the range to the ground straight
        # below (that height is reused for touchdown).
        terrain.height(new_px, new_py, ground_here)
        np.subtract(sz, ground_here, out=foot_x)
        np.maximum(foot_x, 0.0, out=foot_x)
        foot_x *= inv_down
        np.minimum(beam, foot_x, out=beam)
        for _ in range(m.beam_iterations):
            np.multiply(beam, ax, out=foot_x)
            np.subtract(sx, foot_x, out=foot_x)
            np.multiply(beam, ay, out=foot_y)
            np.subtract(sy, foot_y, out=foot_y)
            terrain.height(foot_x, foot_y, ground_buf)
            np.subtract(sz, ground_buf, out=beam)
            np.maximum(beam, 0.0, out=beam)
            beam *= inv_down
        # Student-t (2 dof) by its inverse CDF from a uniform in (0, 1).
        u = uniforms[4]
        np.maximum(u, u_floor, out=u)
        t_draw = 1.0 - u
        t_draw *= u
        t_draw *= 2.0
        np.sqrt(t_draw, out=t_draw)
        np.divide(2.0 * u - 1.0, t_draw, out=t_draw)
        measured = lrf_scale * beam
        measured += lrf_bias
        measured += m.lrf_noise_m * normals[3]
        measured += tail_scale * t_draw
        valid = beam < in_range_limit
        valid &= uniforms[5] >= dropout
        valid &= lrf_working
        valid &= measured > 0.0

        # ---- navigation update (altitude from range along the axis) --------------------
        due = np.floor(dtype.type(step + 1) * dt_typed * rate_hz) > np.floor(
            dtype.type(step) * dt_typed * rate_hz
        )
        if due:
            altitude_measured = measured * az
            # Terminal phase: converged and below terminal_noise_ratio noise levels.
            held_off = valid & (np.sqrt(np.maximum(p00, 0.0)) < noise_scale)
            held_off &= ez < m.nav_terminal_noise_ratio * noise_scale
            usable = valid & ~lrf_disabled & ~held_off
            noise = np.maximum(dtype.type(m.nav_lrf_noise_m), noise_scale)
            r_var = noise * noise
            innovation = altitude_measured - ez
            s_total = p00 + r_var
            seen = ABS_TO_SIGMA * np.minimum(
                np.abs(innovation) * np.sqrt(r_var / s_total), m.nav_gate_sigma * noise
            )
            noise_scale = noise_scale + m.nav_noise_adapt_rate * usable * (seen - noise_scale)
            noise_scale = noise_scale.astype(dtype, copy=False)
            margin = gate2 - innovation * innovation / s_total
            accepted = usable & (margin > 0.0)
            if m.gate_softness > 0.0:
                weight = usable / (1.0 + np.exp(-margin / m.gate_softness))
                weight = weight.astype(dtype, copy=False)
            else:
                weight = accepted.astype(dtype)
            d2 = innovation * innovation / s_total
            weight = weight / (1.0 + m.nav_heavy_tail_weight * np.maximum(d2 - 1.0, 0.0))
            ws = weight / s_total
            corr_z = ws * p00 * innovation
            corr_vz = ws * p01 * innovation
            corr_b = ws * p02 * innovation
            # P <- P - w P[:, 0] P[0, :] / s (symmetric).
            n00 = p00 - ws * p00 * p00
            n01 = p01 - ws * p00 * p01
            n02 = p02 - ws * p00 * p02
            n11 = p11 - ws * p01 * p01
            n12 = p12 - ws * p01 * p02
            n22 = p22 - ws * p02 * p02
            n00 = np.maximum(n00, (m.nav_sigma_floor_ratio * noise_scale) ** 2)
            rejected = usable & ~accepted
            rejecting = np.where(rejected, rejecting + dt, np.where(accepted, 0.0, rejecting))
            rejecting = rejecting.astype(dtype, copy=False)
            timed_out = rejected & (rejecting > m.nav_reacquire_after_s)
            new_ez = ez + corr_z
            if reacquire:
                if timed_out.any():
                    # Reset altitude to the reading and drop its correlations.
                    np.copyto(n00, r_var, where=timed_out)
                    np.copyto(n01, 0.0, where=timed_out)
                    np.copyto(n02, 0.0, where=timed_out)
                    np.copyto(new_ez, altitude_measured, where=timed_out)
                    np.copyto(rejecting, 0.0, where=timed_out)
                    accepted |= timed_out
            else:
                lrf_disabled |= timed_out
            ez = new_ez
            evz += corr_vz
            ebias += corr_b
            p00, p01, p02, p11, p12, p22 = n00, n01, n02, n11, n12, n22
            np.copyto(since_accept, 0.0, where=accepted | held_off)
        else:
            accepted = np.zeros(n, bool)

        # ---- touchdown ----------------------------------------------------------------
        new_height = new_pz - ground_here
        crossing = new_height <= 0.0
        crossing &= ~landed
        exhausted |= (new_mass <= dry_limit) & ~landed & ~crossing
        np.copyto(first_accept, new_height, where=(first_accept < 0.0) & accepted & ~landed)
        new_state = (new_px, new_py, new_pz, new_vx, new_vy, new_vz, new_mass, new_thrust,
                     new_tilt_x, new_tilt_y)  # fmt: skip
        old_state = (px, py, pz, vx, vy, vz, mass, thrust, tilt_x, tilt_y)
        if crossing.any():
            denom = height - new_height
            at = np.divide(height, denom, out=np.array(height), where=denom > 1e-9)
            _clip(at, 0.0, 1.0)
            for new, old in zip(new_state, old_state):
                np.copyto(new, old + at * (new - old), where=crossing)
            np.copyto(touchdown_time, (step + at) * dt, where=crossing, casting="same_kind")
        for new, old in zip(new_state, old_state):
            np.copyto(new, old, where=landed)
        px, py, pz, vx, vy, vz, mass, thrust, tilt_x, tilt_y = new_state
        landed |= crossing
        np.copyto(new_height, 0.0, where=landed)
        height = new_height
        if landed.all():
            break

    return {
        "landed": landed,
        "touchdown_time_s": np.where(landed, touchdown_time, m.duration_s).astype(dtype),
        "touchdown_velocity_mps": np.stack([vx, vy, vz], axis=-1),
        "touchdown_position_m": np.stack([px, py, pz], axis=-1),
        "touchdown_tilt_deg": np.degrees(_norm2(tilt_x, tilt_y)),
        "fuel_kg": mass0 - mass,
        "exhausted": exhausted,
        "final_height_m": height,
        "lrf_first_accept_height_m": first_accept,
    }


# Scenarios flown together. About sixty (n,) arrays are live inside a step, so a block of
# 16,384 float32 scenarios keeps the step's working set near a 2 MiB per-core L2 cache. On the
# 2-core development machine, in paired runs, it was 5-20 % faster than flying 65,536 at
# once or in blocks of 8,192 or 4,096 (where the fixed cost of each NumPy call weighs more).
DEFAULT_BLOCK_SIZE = 16384


def _fly_blocks(model: Model, scenarios_np: dict, seed, dtype, block_size) -> dict:
    n = population_size(scenarios_np)
    block = n if not block_size else int(block_size)
    starts = list(range(0, n, block)) or [0]
    if len(starts) == 1:
        return _flight(model, scenarios_np, seed=seed, dtype=dtype)
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    seeds = root.spawn(len(starts))
    parts = [
        _flight(model, slice_population(scenarios_np, a, a + block), seed=sq, dtype=dtype)
        for a, sq in zip(starts, seeds)
    ]
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in OUTCOME_FIELDS}


def simulate_numpy(
    spec,
    gains,
    scenarios_np: dict[str, np.ndarray],
    *,
    seed,
    dtype=np.float32,
    beam_iterations: int | None = None,
    block_size: int | None = DEFAULT_BLOCK_SIZE,
) -> dict[str, np.ndarray]:
    """Fly a population (from :func:`scenarios_to_numpy`) with one set of gains, in one
    process, ``block_size`` scenarios at a time (``None``: all at once; each block has its
    own random stream). ``spec`` is a ``SimSpec`` (or a model from
    :func:`model_from_spec`), ``gains`` a ``Gains`` (ignored when ``spec`` is already a
    model). Returns the ``Outcome`` fields, vectors as ``(n, 3)`` like the JAX side."""
    model = (
        spec
        if isinstance(spec, Model)
        else model_from_spec(spec, gains, beam_iterations=beam_iterations)
    )
    return _fly_blocks(model, scenarios_np, seed, dtype, block_size)


def throughput(n_scenarios: int, n_steps: int, wall_s: float) -> float:
    """Scenario-steps per second over the nominal horizon (an early exit still counts every
    step of the horizon, for both implementations)."""
    return n_scenarios * n_steps / wall_s


# ---------------------------------------------------------------------------------------------
# All cores: contiguous shares in worker processes
# ---------------------------------------------------------------------------------------------

_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _worker_flight(args):
    model, share, seed, dtype, block_size = args
    t0 = time.perf_counter()
    out = _fly_blocks(model, share, seed, dtype, block_size)
    return out, time.perf_counter() - t0


def _worker_ready(_):
    """(pid, whether JAX got imported): a started worker's answer."""
    return os.getpid(), "jax" in sys.modules


@contextmanager
def _single_threaded_children():
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
    os.environ.update({k: "1" for k in _SINGLE_THREAD_ENV})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class NumpyPool:
    """Worker processes (spawn context, never fork: JAX may be loaded here) that fly
    contiguous shares of a population. Start it once, reuse it for every timed run::

        with NumpyPool(2) as pool:
            outcome, wall_s = pool.simulate(spec, gains, scenarios_np, seed=0)
    """

    def __init__(self, processes: int | None = None):
        self.processes = int(processes or os.cpu_count() or 1)
        with _single_threaded_children():
            self._pool = multiprocessing.get_context("spawn").Pool(self.processes)
        # Make sure every worker is up and has imported this module before any timing.
        self.worker_info = self._pool.map(_worker_ready, range(self.processes), 1)
        self._warm = False

    def close(self):
        self._pool.close()
        self._pool.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def simulate(
        self,
        spec,
        gains,
        scenarios_np: dict[str, np.ndarray],
        *,
        seed,
        dtype=np.float32,
        beam_iterations: int | None = None,
        block_size: int | None = DEFAULT_BLOCK_SIZE,
    ) -> tuple[dict[str, np.ndarray], float]:
        """Fly the population split into ``processes`` contiguous shares (each flown
        ``block_size`` at a time, as :func:`simulate_numpy`); returns the concatenated outcome
        and the wall time of the flight, shares sent and results back included. Share ``k``
        draws from the ``k``-th child of ``SeedSequence(seed)``."""
        model = (
            spec
            if isinstance(spec, Model)
            else model_from_spec(spec, gains, beam_iterations=beam_iterations)
        )
        if not self._warm:  # first flight in the workers: one tiny run each, untimed
            tiny = slice_population(scenarios_np, 0, min(4, population_size(scenarios_np)))
            short = dataclasses.replace(model, n_steps=min(model.n_steps, 4))
            self._pool.map(_worker_flight, [(short, tiny, 0, dtype, None)] * self.processes, 1)
            self._warm = True
        n = population_size(scenarios_np)
        bounds = np.linspace(0, n, self.processes + 1).round().astype(int)
        seeds = np.random.SeedSequence(seed).spawn(self.processes)
        jobs = [
            (model, slice_population(scenarios_np, a, b), seeds[k], dtype, block_size)
            for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
            if b > a
        ]
        t0 = time.perf_counter()
        results = self._pool.map(_worker_flight, jobs, 1)
        wall = time.perf_counter() - t0
        outcome = {
            name: np.concatenate([r[0][name] for r in results], axis=0) for name in OUTCOME_FIELDS
        }
        self.last_worker_flight_s = [r[1] for r in results]
        return outcome, wall


def simulate_numpy_parallel(
    spec,
    gains,
    scenarios_np: dict[str, np.ndarray],
    *,
    seed,
    dtype=np.float32,
    processes: int | None = None,
    beam_iterations: int | None = None,
    block_size: int | None = DEFAULT_BLOCK_SIZE,
    pool: NumpyPool | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """:func:`simulate_numpy` over all cores: the population in ``processes`` contiguous
    shares, one per worker process. Returns ``(outcome, wall_s)``, ``wall_s`` being the time
    of the flight alone (the pool is started and warmed first, untimed; pass ``pool`` to
    reuse one across calls)."""
    options = dict(seed=seed, dtype=dtype, beam_iterations=beam_iterations, block_size=block_size)
    if pool is not None:
        return pool.simulate(spec, gains, scenarios_np, **options)
    with NumpyPool(processes or os.cpu_count()) as own:
        return own.simulate(spec, gains, scenarios_np, **options)


# ---------------------------------------------------------------------------------------------
# Command line: throughput on the default configuration
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="NumPy closed-loop throughput")
    parser.add_argument("--population", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="0: no blocks")
    parser.add_argument("--jax", action="store_true", help="also time descent_opt.simulate")
    args = parser.parse_args()

    import jax  # only here, in the parent, to draw the population

    import descent_opt
    from descent_opt.guidance import default_gains
    from descent_opt.simulate import simulate_population

    config = descent_opt.load_config(["sim.max_duration_s=null"])  # the peer's horizon
    spec = config.sim
    gains = default_gains(config.altitude_breakpoints_m)
    model = model_from_spec(spec, gains)
    sampler = config.sampler()
    block = args.block_size or None
    print(f"{model.n_steps} steps per scenario; {os.cpu_count()} CPUs; numpy {np.__version__}")
    pools = {p: NumpyPool(p) for p in args.processes if p > 1}

    def report(label, n, walls):
        best = min(walls)
        rate = throughput(n, model.n_steps, best) / 1e6
        print(f"{label}: population {n}: {best:.3f} s, {rate:.3f} M scenario-steps/s", flush=True)

    try:
        for n in args.population:
            scenarios = sampler(jax.random.key(0), n)
            population = scenarios_to_numpy(scenarios)
            if args.jax:
                jax.block_until_ready(simulate_population(spec, gains, scenarios))  # compile
                walls = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    jax.block_until_ready(simulate_population(spec, gains, scenarios))
                    walls.append(time.perf_counter() - t0)
                report(f"jax {jax.default_backend()}", n, walls)
            for p in args.processes:
                walls = []
                for r in range(args.repeats):
                    options = dict(seed=r, dtype=args.dtype, block_size=block)
                    if p == 1:
                        t0 = time.perf_counter()
                        simulate_numpy(model, None, population, **options)
                        walls.append(time.perf_counter() - t0)
                    else:
                        walls.append(pools[p].simulate(model, None, population, **options)[1])
                report(f"numpy {args.dtype}, {p} process(es)", n, walls)
    finally:
        for pool in pools.values():
            pool.close()


if __name__ == "__main__":
    main()
