"""Mission replays: one reported descent as one scenario, flown with any gain table.

A :class:`ReplaySpec` states how a descent departs from the nominal one (start, what
navigation believes, what the altimeter does, the ground below, the filter's policy); the
options of ``conf/replay/`` hold the four reported descents with the facts they come from.
:func:`replay_scenario` and :func:`replay_sim` turn it into the scenario and the simulation
settings, :func:`flight_record` reads what a review compares with the reports off the
flight's trace.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from descent_opt import terrain as terrain_lib
from descent_opt.faults import FaultCatalog
from descent_opt.objectives import SuccessCriteria, landing_metrics
from descent_opt.scenarios import (
    Scenario,
    ScenarioSpec,
    TerrainSpec,
    replace_member,
    sample_scenarios,
)
from descent_opt.simulate import Outcome, SimSpec, Trace, decided_horizon_s

TARGET_SPEED_MPS = 1.0  # "reached its target speed (< 1 m/s)": HAKUTO-R Mission 1


@dataclasses.dataclass(frozen=True)
class ReplaySpec:
    """One descent as reported: where it starts, what navigation believes, what the
    altimeter does and the ground below. The defaults fly the nominal descent with nominal
    sensors (the options of ``conf/replay/`` set each mission's departures)."""

    mission: str = "nominal descent"
    r0_m: tuple[float, float, float] | None = None  # None: scenario.r0_m
    v0_mps: tuple[float, float, float] | None = None  # None: scenario.v0_mps
    altitude_error_m: float = 0.0  # estimate minus truth at the start (+: believes higher)
    velocity_error_mps: tuple[float, float, float] = (0.0, 0.0, 0.0)  # estimate minus truth
    imu_bias_mps2: tuple[float, float, float] = (0.0, 0.0, 0.0)  # accelerometer bias
    lrf_acquisition_m: float | None = None  # first valid range below this; None: design range
    lrf_max_range_m: float | None = None  # None: sensors.lrf_max_range_m
    lrf_absent: bool = False
    lrf_bias_m: float = 0.0
    heavy_tail_scale_m: float = 0.0  # Student-t scale of dark-terrain noise; 0: none
    rim_step_height_m: float = 0.0  # crater rim under the approach; 0: none
    rim_radius_m: float = 1000.0
    slope_deg: float = 0.0  # ground slope at the site
    reject_policy: str | None = None  # None: navigation.reject_policy
    report_height_m: float | None = None  # the flight read at this height (last telemetry)

    def nominal(self) -> "ReplaySpec":
        """The same start and ground with nothing wrong: the descent as planned."""
        kept = ("mission", "r0_m", "v0_mps", "slope_deg", "lrf_max_range_m", "report_height_m")
        return ReplaySpec(**{k: getattr(self, k) for k in kept})


def replay_scenario(
    spec: ReplaySpec,
    scenario: ScenarioSpec,
    mass_initial_kg: float,
    lrf_max_range_m: float,
    *,
    key: PRNGKeyArray,
    dtype=None,
) -> Scenario:
    """The descent as a population of one: the nominal start of ``scenario`` (or the
    replay's) with no dispersion, the sensor noise of ``key``, and the replay's departures
    (entries replaced in ``dtype``, default JAX's float)."""
    start = eqx.tree_at(
        lambda s: (s.r0_m, s.v0_mps),
        scenario,
        (spec.r0_m or scenario.r0_m, spec.v0_mps or scenario.v0_mps),
    )
    ground = TerrainSpec(kind="slope", slope_deg=spec.slope_deg) if spec.slope_deg else None
    one = sample_scenarios(
        start,
        ground or TerrainSpec(kind="flat"),
        FaultCatalog.nominal(spec.lrf_max_range_m or lrf_max_range_m),
        mass_initial_kg,
        1,
        key=key,
        nominal_first=True,
    )
    vector = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    changes = {
        "nav_position_error_m": vector([0.0, 0.0, spec.altitude_error_m]),
        "imu_bias_mps2": vector(spec.imu_bias_mps2),
    }
    if any(spec.velocity_error_mps):
        changes["nav_velocity_error_mps"] = vector(spec.velocity_error_mps)
    if spec.lrf_acquisition_m is not None:
        changes["faults.acquisition_range_m"] = spec.lrf_acquisition_m
    if spec.lrf_absent:
        changes["faults.absent"] = True
    if spec.lrf_bias_m:
        changes["faults.bias_m"] = spec.lrf_bias_m
    if spec.heavy_tail_scale_m:
        changes["faults.heavy_tail_scale_m"] = spec.heavy_tail_scale_m
    if spec.rim_step_height_m:
        changes["faults.rim_step_height_m"] = spec.rim_step_height_m
        changes["faults.rim_radius_m"] = spec.rim_radius_m
        ground = terrain_lib.with_rim_step(
            jax.tree.map(lambda x: x[0], one.terrain), spec.rim_step_height_m, spec.rim_radius_m
        )
        one = eqx.tree_at(lambda s: s.terrain, one, jax.tree.map(lambda x: x[None], ground))
    return replace_member(one, 0, **changes)


def replay_sim(sim: SimSpec, spec: ReplaySpec, start_height_m: float, climb_mps: float) -> SimSpec:
    """``sim`` with the replay's filter policy and LRF range, flown (when ``sim`` flies on
    past its planned horizon) until a flight starting ``start_height_m`` up, climbing at
    ``climb_mps``, is surely down."""
    out = sim
    if spec.reject_policy is not None:
        out = eqx.tree_at(lambda s: s.reject_policy, out, spec.reject_policy)
    if spec.lrf_max_range_m is not None:
        out = eqx.tree_at(lambda s: s.lrf.max_range_m, out, spec.lrf_max_range_m)
    if out.max_duration_s is not None:
        down = decided_horizon_s(sim.vehicle, sim.gravity_mps2, start_height_m, climb_mps)
        out = eqx.tree_at(lambda s: s.max_duration_s, out, max(out.max_duration_s, down))
    return out


def _first(mask: np.ndarray, values: np.ndarray) -> float | None:
    return float(values[int(np.argmax(mask))]) if mask.any() else None


def failure_reason(block: dict, criteria: SuccessCriteria) -> str | None:
    """Why a flight is not a success, in words (None for a success)."""
    if block["success"]:
        return None
    if block["exhausted"]:
        return "propellant exhausted above the ground"
    if not block["landed"]:
        return "still airborne at the end of the horizon"
    broken = [
        f"{name} {block[key]:.2f} > {limit:g} m/s"
        for name, key, limit in (
            ("vertical speed", "touchdown_vz_mps", criteria.vertical_speed_max_mps),
            ("horizontal speed", "touchdown_vh_mps", criteria.horizontal_speed_max_mps),
        )
        if block[key] > limit
    ]
    if block["tilt_deg"] > criteria.tilt_max_deg:
        broken.append(f"tilt {block['tilt_deg']:.1f} > {criteria.tilt_max_deg:g} deg")
    crash = block["touchdown_speed_mps"] > criteria.crash_speed_mps
    return ("crash: " if crash else "hard landing: ") + ", ".join(broken)


def flight_record(
    outcome: Outcome, trace: Trace, criteria: SuccessCriteria, mass_dry_kg: float
) -> dict:
    """What a review compares with the reports, read off one flight (``outcome`` and
    ``trace`` of a population of one, trace cut at touchdown): touchdown speeds, fuel,
    success and why not, when the LRF gave its first valid range, how far the altitude
    estimate strayed (estimate minus truth: ``min`` the most below, ``max`` the most above),
    where the descent first slowed under 1 m/s and where the propellant ran out."""
    m = jax.tree.map(lambda x: np.asarray(x)[0], landing_metrics(outcome, criteria))
    t = np.asarray(trace.time_s)
    height = np.asarray(trace.height_m)
    error = np.asarray(trace.altitude_estimate_m) - np.asarray(trace.altitude_m)
    descent = -np.asarray(trace.vertical_speed_mps)
    sampled, accepted = np.asarray(trace.lrf_sampled), np.asarray(trace.lrf_accepted)
    dry = np.asarray(trace.mass_kg) <= mass_dry_kg + 1e-3
    block = {
        "touchdown_speed_mps": float(m.speed_mps),
        "touchdown_vz_mps": float(m.vertical_speed_mps),
        "touchdown_vh_mps": float(m.horizontal_speed_mps),
        "tilt_deg": float(m.tilt_deg),
        "fuel_kg": float(m.fuel_kg),
        "success": bool(m.success),
        "landed": bool(m.landed),
        "exhausted": bool(m.exhausted),
        "touchdown_time_s": float(np.asarray(outcome.touchdown_time_s)[0]),
        "lrf_first_valid_s": _first(sampled, t),
        "lrf_first_valid_height_m": _first(sampled, height),
        "lrf_first_accepted_s": _first(accepted, t),
        "lrf_valid_readings": int(sampled.sum()),
        "lrf_accepted_readings": int(accepted.sum()),
        "min_altitude_error_m": float(error.min()),
        "max_altitude_error_m": float(error.max()),
        "target_speed_height_m": _first((descent < TARGET_SPEED_MPS) & (height > 0.0), height),
        "propellant_out_height_m": _first(dry, height),
        "propellant_out_s": _first(dry, t),
    }
    block["failure"] = failure_reason(block, criteria)
    return block


def at_height(trace: Trace, height_m: float) -> dict | None:
    """The flight as it passed ``height_m`` above the ground on the way down (true and
    estimated altitude and descent rate, time left to touchdown); None if it never did."""
    height = np.asarray(trace.height_m)
    below = (height <= height_m) & (np.arange(height.size) > 0)
    if not below.any():
        return None
    i = int(np.argmax(below))
    return {
        "height_m": float(height[i]),
        "descent_rate_mps": float(-trace.vertical_speed_mps[i]),
        "altitude_estimate_m": float(trace.altitude_estimate_m[i]),
        "descent_rate_estimate_mps": float(-trace.vertical_speed_estimate_mps[i]),
        "time_s": float(trace.time_s[i]),
    }
