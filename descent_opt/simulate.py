"""Closed-loop descent: guidance -> engine -> dynamics -> sensors -> navigation, scanned over
time, vmapped over a scenario population.

Touchdown is the first step whose end lies at or below the terrain; the touchdown state is
interpolated inside that step and the lander is frozen there, so landing metrics vary
continuously with the gains.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from descent_opt import dynamics, navigation, sensors
from descent_opt import terrain as terrain_lib
from descent_opt.dynamics import LanderState, Vehicle
from descent_opt.guidance import Gains, GuidanceSpec, in_contingency, thrust_command
from descent_opt.scenarios import Scenario


class SimSpec(eqx.Module):
    """Everything fixed across a population: models, step size, horizon, filter policy."""

    vehicle: Vehicle
    gravity_mps2: float = 1.62
    imu: sensors.ImuSpec = sensors.ImuSpec()
    lrf: sensors.LrfSpec = sensors.LrfSpec()
    guidance: GuidanceSpec = GuidanceSpec()
    # The filter's prior: the knowledge sigmas it is told at the start of the descent.
    nav_altitude_sigma_m: float = 300.0
    nav_velocity_sigma_mps: float = 0.1
    nav_bias_sigma_mps2: float = 1e-3
    dt_s: float = 0.2
    duration_s: float = 160.0
    reject_policy: str = "reacquire"
    gate_softness: float = 0.0  # > 0: sigmoid-weighted gate (for gradients); 0: hard gate

    @property
    def n_steps(self) -> int:
        return int(round(self.duration_s / self.dt_s))


class Outcome(eqx.Module):
    """Per-scenario result of one closed-loop descent."""

    landed: Bool[Array, "*batch"]
    touchdown_time_s: Float[Array, "*batch"]
    touchdown_velocity_mps: Float[Array, "*batch 3"]
    touchdown_position_m: Float[Array, "*batch 3"]
    touchdown_tilt_deg: Float[Array, "*batch"]
    fuel_kg: Float[Array, "*batch"]
    exhausted: Bool[Array, "*batch"]  # ran out of propellant above the surface
    final_height_m: Float[Array, "*batch"]  # height above terrain at the end (0 if landed)
    lrf_first_accept_height_m: Float[Array, "*batch"]  # true height of first accepted LRF reading


class Trace(eqx.Module):
    """Per-step history of one scenario (for plots and replays)."""

    time_s: Float[Array, " t"]
    height_m: Float[Array, " t"]
    altitude_m: Float[Array, " t"]
    altitude_estimate_m: Float[Array, " t"]
    vertical_speed_mps: Float[Array, " t"]
    vertical_speed_estimate_mps: Float[Array, " t"]
    horizontal_speed_mps: Float[Array, " t"]
    tilt_deg: Float[Array, " t"]
    thrust_n: Float[Array, " t"]
    mass_kg: Float[Array, " t"]
    lrf_accepted: Bool[Array, " t"]
    contingency: Bool[Array, " t"]


class _Carry(eqx.Module):
    lander: LanderState
    nav: navigation.NavState
    height_m: Float[Array, ""]
    landed: Bool[Array, ""]
    touchdown_time_s: Float[Array, ""]
    exhausted: Bool[Array, ""]
    first_accept_height_m: Float[Array, ""]


def _initial_carry(spec: SimSpec, scenario: Scenario) -> _Carry:
    lander = dynamics.initial_state(
        spec.vehicle, scenario.position0_m, scenario.velocity0_mps, scenario.mass0_kg
    )
    nav = navigation.initial_nav(
        scenario.position0_m + scenario.nav_position_error_m,
        scenario.velocity0_mps + scenario.nav_velocity_error_mps,
        spec.nav_altitude_sigma_m,
        spec.nav_velocity_sigma_mps,
        spec.nav_bias_sigma_mps2,
    )
    height = lander.position_m[2] - terrain_lib.height_m(scenario.terrain, lander.position_m[:2])
    return _Carry(
        lander=lander,
        nav=nav,
        height_m=height,
        landed=height <= 0.0,
        touchdown_time_s=jnp.asarray(0.0),
        exhausted=jnp.asarray(False),
        first_accept_height_m=jnp.asarray(-1.0),
    )


def _step(spec: SimSpec, gains: Gains, scenario: Scenario, carry: _Carry, xs):
    index, key = xs
    dt = spec.dt_s
    k_imu, k_lrf = jax.random.split(key)
    faults = scenario.faults
    lander = carry.lander

    contingency = in_contingency(carry.nav, spec.guidance)
    command = thrust_command(
        gains, spec.guidance, spec.vehicle, carry.nav, lander.mass_kg, spec.gravity_mps2
    )
    moved, specific_force = dynamics.step(spec.vehicle, lander, command, spec.gravity_mps2, dt)

    accel = sensors.imu_measure(specific_force, scenario.imu_bias_mps2, spec.imu, key=k_imu)
    nav = navigation.predict(carry.nav, accel, spec.gravity_mps2, gains.nav, dt)
    axis = dynamics.axis_from_tilt(moved.tilt_rad)
    stale_position = moved.position_m - moved.velocity_mps * faults.latency_s
    true_range = sensors.beam_range_m(scenario.terrain, stale_position, -axis)
    measured, valid = sensors.lrf_measure(
        true_range,
        spec.lrf,
        acquisition_range_m=faults.acquisition_range_m,
        bias_m=faults.bias_m,
        scale_factor=faults.scale_factor,
        heavy_tail_scale_m=faults.heavy_tail_scale_m,
        dropout_prob=faults.dropout_prob,
        absent=faults.absent,
        key=k_lrf,
    )
    sample_due = jnp.floor((index + 1) * dt * spec.lrf.rate_hz) > jnp.floor(
        index * dt * spec.lrf.rate_hz
    )
    nav, accepted = navigation.update(
        nav,
        measured * axis[2],
        valid & sample_due,
        gains.nav,
        dt,
        spec.reject_policy,
        spec.gate_softness,
    )

    height = moved.position_m[2] - terrain_lib.height_m(scenario.terrain, moved.position_m[:2])
    crossing = ~carry.landed & (height <= 0.0)
    touchdown, fraction = dynamics.interpolate_touchdown(lander, moved, carry.height_m, height)
    after = jax.tree.map(
        lambda frozen, td, free: jnp.where(carry.landed, frozen, jnp.where(crossing, td, free)),
        lander,
        touchdown,
        moved,
    )
    airborne = ~carry.landed & ~crossing
    out_of_propellant = moved.mass_kg <= spec.vehicle.mass_dry_kg + 1e-3
    new_carry = _Carry(
        lander=after,
        nav=nav,
        height_m=jnp.where(carry.landed | crossing, 0.0, height),
        landed=carry.landed | crossing,
        touchdown_time_s=jnp.where(crossing, (index + fraction) * dt, carry.touchdown_time_s),
        exhausted=carry.exhausted | (airborne & out_of_propellant),
        first_accept_height_m=jnp.where(
            (carry.first_accept_height_m < 0.0) & accepted & ~carry.landed,
            height,
            carry.first_accept_height_m,
        ),
    )
    trace = Trace(
        time_s=(index + 1) * dt,
        height_m=new_carry.height_m,
        altitude_m=after.position_m[2],
        altitude_estimate_m=nav.position_m[2],
        vertical_speed_mps=after.velocity_mps[2],
        vertical_speed_estimate_mps=nav.velocity_mps[2],
        horizontal_speed_mps=dynamics.safe_norm(after.velocity_mps[:2]),
        tilt_deg=dynamics.tilt_deg(after),
        thrust_n=after.thrust_n,
        mass_kg=after.mass_kg,
        lrf_accepted=accepted,
        contingency=contingency,
    )
    return new_carry, trace


def _run(spec: SimSpec, gains: Gains, scenario: Scenario, keep_trace: bool):
    def body(carry, xs):
        carry, trace = _step(spec, gains, scenario, carry, xs)
        return carry, (trace if keep_trace else None)

    body = jax.checkpoint(body)
    xs = (jnp.arange(spec.n_steps), jax.random.split(scenario.key, spec.n_steps))
    final, trace = jax.lax.scan(body, _initial_carry(spec, scenario), xs)
    lander = final.lander
    outcome = Outcome(
        landed=final.landed,
        touchdown_time_s=jnp.where(final.landed, final.touchdown_time_s, spec.duration_s),
        touchdown_velocity_mps=lander.velocity_mps,
        touchdown_position_m=lander.position_m,
        touchdown_tilt_deg=dynamics.tilt_deg(lander),
        fuel_kg=scenario.mass0_kg - lander.mass_kg,
        exhausted=final.exhausted,
        final_height_m=final.height_m,
        lrf_first_accept_height_m=final.first_accept_height_m,
    )
    return outcome, trace


@eqx.filter_jit
def simulate(spec: SimSpec, gains: Gains, scenarios: Scenario) -> Outcome:
    """Fly every scenario of a population with one set of gains (differentiable in gains)."""
    return jax.vmap(lambda s: _run(spec, gains, s, False)[0])(scenarios)


@eqx.filter_jit
def simulate_traces(spec: SimSpec, gains: Gains, scenarios: Scenario) -> tuple[Outcome, Trace]:
    """Like :func:`simulate` but also returns per-step histories (memory grows with
    population times steps: meant for a few scenarios)."""
    return jax.vmap(lambda s: _run(spec, gains, s, True))(scenarios)
