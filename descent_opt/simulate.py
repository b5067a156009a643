"""Closed-loop descent: guidance -> engine -> dynamics -> sensors -> navigation, scanned over
time, vmapped over a scenario population.

Touchdown is the first step whose end lies at or below the terrain; the touchdown state is
interpolated inside that step and the lander is frozen there, so landing metrics vary
continuously with the gains.

How it is laid out for speed (the model is the same whatever the layout;
``experiments/bench/README.md`` has the measurements):
- the step is scalar code (vectors as component tuples, the filter covariance as six
  entries, and with ``numerics.unrolled`` crater slots split by :meth:`Terrain.by_slot` and schedule
  segments as scalars), so vmap makes every quantity one population-long array that XLA
  vectorises and fuses; ``unrolled=False`` keeps slots and segments as short vectors, which
  makes a program several times smaller, whose reverse mode XLA runs far faster;
- gain-only work (segment slopes, time-to-go tables) is done once per flight
  (:func:`guidance.prepare`); the table is read once per step, at the end of the previous
  one, and carried;
- every random number of step t comes from a counter-based stream of the scenario's key
  (:mod:`descent_opt.noise`), drawn for a block of steps at a time, outside the
  differentiated step;
- the LRF ray cast starts from the previous step's range or, if smaller, the height above
  the ground below (already evaluated for touchdown), and makes ``numerics.beam_iterations``
  fixed-point passes (3 terrain evaluations per step instead of 6);
- time runs in blocks of ``numerics.block_steps`` steps, and a block in which every scenario has
  already landed is skipped (exact: landed scenarios are frozen);
- on the CPU, populations fly in cache-sized chunks, one share per core from threads
  (:func:`simulate_population`, through :mod:`descent_opt.execution`).

Over 400 lines because the closed-loop step, its time loops (planned horizon, blocks,
the flights still airborne after it) and the population entry points share the private
per-flight state (``_Flight``, ``_Carry``) that the speed layout above depends on.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, UInt32

from descent_opt import dynamics, execution, navigation, noise, sensors
from descent_opt import terrain as terrain_lib
from descent_opt.dynamics import LanderState, Scalar, Vec3, Vehicle, components
from descent_opt.faults import Faults
from descent_opt.guidance import (
    Gains,
    GuidanceSpec,
    Schedule,
    Scheduled,
    command_from,
    prepare,
    scheduled,
)
from descent_opt.scenarios import Scenario


class Numerics(eqx.Module):
    """How the closed loop is computed: solver passes, program layout and batching. The
    layout and batching never change an outcome; ``beam_iterations`` sets the ray cast's
    accuracy."""

    beam_iterations: int = 2  # LRF ray-cast passes per step, warm-started from the last range
    # Crater slots and schedule segments as separate scalars (the fastest forward flight of
    # large populations) or as short vectors (a several times smaller program: faster to
    # compile and, by far, to differentiate; gain tuning uses it).
    unrolled: bool = True
    block_steps: int = 20  # steps per block; blocks after everyone has landed are skipped
    # Scenarios flown at a time. None: 4,096 on CPU, where a chunk's state stays in cache
    # (65,536 at once ran at two thirds of the speed), the whole population on accelerators.
    chunk_size: int | None = None


class Smoothing(eqx.Module):
    """What gain tuning relaxes in the model for useful gradients; the defaults fly the
    model as it is."""

    gate_softness: float = 0.0  # > 0: sigmoid-weighted innovation gate; 0: hard gate


class SimSpec(eqx.Module):
    """Everything fixed across a population. The physics (vehicle, gravity, sensors,
    guidance settings, the filter's prior and policy, step size and horizon) come first;
    ``numerics`` says how it is computed and ``smoothing`` what tuning relaxes."""

    vehicle: Vehicle
    gravity_mps2: float = 1.62
    imu: sensors.ImuSpec = sensors.ImuSpec()
    lrf: sensors.LrfSpec = sensors.LrfSpec()
    guidance: GuidanceSpec = GuidanceSpec()
    # The filter's prior: the knowledge sigmas it is told at the start of the descent.
    nav_altitude_sigma_m: float = 300.0
    nav_velocity_sigma_mps: float = 0.1
    nav_bias_sigma_mps2: float = 1e-3
    dt_s: float = 0.25
    duration_s: float = 180.0  # planned horizon: every flight is flown at least this long
    # Flights still airborne at ``duration_s`` fly on, a few at a time, until they touch
    # down or this time (None: they stop at ``duration_s``, as tuning's do).
    # :func:`decided_horizon_s` gives a time by which every flight has touched down.
    max_duration_s: float | None = None
    reject_policy: str = "reacquire"
    numerics: Numerics = Numerics()
    smoothing: Smoothing = Smoothing()

    @property
    def n_steps(self) -> int:
        return int(round(self.duration_s / self.dt_s))

    @property
    def max_steps(self) -> int:
        """Steps of the longest flight: to ``max_duration_s`` (rounded up to whole blocks
        past the planned horizon), else ``duration_s``."""
        if self.max_duration_s is None:
            return self.n_steps
        more = max(0, int(math.ceil(self.max_duration_s / self.dt_s)) - self.n_steps)
        block = max(1, self.numerics.block_steps)
        return self.n_steps + -(-more // block) * block


def decided_horizon_s(
    vehicle: Vehicle,
    gravity_mps2: float,
    start_height_m: float,
    start_climb_mps: float,
    start_mass_kg: float | None = None,
) -> float:
    """A time by which any flight of ``vehicle`` starting at most ``start_height_m`` above the
    ground and climbing at most ``start_climb_mps`` has touched down, whatever its guidance:
    even spending its whole velocity budget ``dv = ve ln(m0 / m_dry)`` upward at once, its
    height ``h0 + (v0 + dv) t - g t^2 / 2`` reaches 0 by then."""
    mass = vehicle.mass_initial_kg if start_mass_kg is None else start_mass_kg
    budget = vehicle.exhaust_velocity_mps * math.log(mass / vehicle.mass_dry_kg)
    up = start_climb_mps + budget
    return (up + math.sqrt(up * up + 2.0 * gravity_mps2 * max(start_height_m, 0.0))) / gravity_mps2


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
    # How long the filter had been turning away valid LRF readings when the flight ended:
    # from the first valid reading after its last accepted one (0 if its last valid reading
    # was accepted). A filter locked out of its altimeter (Mission 1) ends with minutes.
    lrf_ignored_s: Float[Array, "*batch"]
    lrf_locked_out: Bool[Array, "*batch"]  # lrf_ignored_s above guidance's lrf_stale_after_s


class Trace(eqx.Module):
    """Per-step history of one scenario (for plots and replays)."""

    time_s: Float[Array, " t"]
    height_m: Float[Array, " t"]
    altitude_m: Float[Array, " t"]
    altitude_estimate_m: Float[Array, " t"]
    altitude_sigma_m: Float[Array, " t"]  # the filter's 1-sigma altitude uncertainty
    vertical_speed_mps: Float[Array, " t"]
    vertical_speed_estimate_mps: Float[Array, " t"]
    horizontal_speed_mps: Float[Array, " t"]
    tilt_deg: Float[Array, " t"]
    thrust_n: Float[Array, " t"]
    mass_kg: Float[Array, " t"]
    lrf_altitude_m: Float[Array, " t"]  # LRF range times the beam's vertical component
    lrf_sampled: Bool[Array, " t"]  # a valid LRF reading reached the filter this step
    lrf_accepted: Bool[Array, " t"]  # ... and passed its gate
    contingency: Bool[Array, " t"]


_MIN_SHARE = 512  # simulate_population: scenarios per share at least (else fewer shares)


class _Flight(eqx.Module):
    """What one scenario's flight reads at every step and never changes, in scalar form."""

    position0_m: Vec3
    velocity0_mps: Vec3
    mass0_kg: Scalar
    nav_position_error_m: Vec3
    nav_velocity_error_mps: Vec3
    imu_bias_mps2: Vec3
    faults: Faults
    terrain: terrain_lib.Terrain | terrain_lib.SlotTerrain
    key_words: tuple[UInt32[Array, "*b"], UInt32[Array, "*b"]]

    @classmethod
    def of(cls, scenarios: Scenario, unrolled: bool) -> "_Flight":
        return cls(
            position0_m=components(scenarios.position0_m),
            velocity0_mps=components(scenarios.velocity0_mps),
            mass0_kg=scenarios.mass0_kg,
            nav_position_error_m=components(scenarios.nav_position_error_m),
            nav_velocity_error_mps=components(scenarios.nav_velocity_error_mps),
            imu_bias_mps2=components(scenarios.imu_bias_mps2),
            faults=scenarios.faults,
            terrain=scenarios.terrain.by_slot() if unrolled else scenarios.terrain,
            key_words=noise.key_words(scenarios.key),
        )


class _Carry(eqx.Module):
    lander: LanderState
    nav: navigation.NavState
    height_m: Scalar
    landed: Bool[Array, "*b"]
    touchdown_time_s: Scalar
    exhausted: Bool[Array, "*b"]
    first_accept_height_m: Scalar
    beam_range_m: Scalar  # last LRF ray-cast range: the next step's starting point
    ignoring_since_s: Scalar  # first valid reading not accepted since the last accept; -1: none
    # The gain table read at the current filter state, for the next command. Read at the end
    # of each step (carried values are computed once; read where they are used, XLA CPU
    # recomputed the whole schedule in each of the fusions that consumed it).
    scheduled: Scheduled


def _initial_carry(spec: SimSpec, schedule: Schedule, flight: _Flight) -> _Carry:
    lander = dynamics.initial_state(
        spec.vehicle, flight.position0_m, flight.velocity0_mps, flight.mass0_kg
    )
    nav = navigation.initial_nav(
        tuple(r + e for r, e in zip(flight.position0_m, flight.nav_position_error_m)),
        tuple(v + e for v, e in zip(flight.velocity0_mps, flight.nav_velocity_error_mps)),
        spec.nav_altitude_sigma_m,
        spec.nav_velocity_sigma_mps,
        spec.nav_bias_sigma_mps2,
        schedule.gains.nav.lrf_noise_start_m,
    )
    x, y, z = lander.position_m
    height = z - terrain_lib.height_m(flight.terrain, (x, y))
    zero = jnp.zeros_like(height)
    return _Carry(
        lander=lander,
        nav=nav,
        height_m=height,
        landed=height <= 0.0,
        touchdown_time_s=zero,
        exhausted=jnp.zeros_like(height, dtype=bool),
        first_accept_height_m=zero - 1.0,
        beam_range_m=jnp.maximum(height, 0.0),  # the axis starts vertical
        ignoring_since_s=zero - 1.0,
        scheduled=scheduled(schedule, spec.guidance, nav),
    )


def _step(
    spec: SimSpec,
    schedule: Schedule,
    flight: _Flight,
    carry: _Carry,
    index,
    draws: noise.StepNoise,
):
    dt = spec.dt_s
    gains = schedule.gains
    faults = flight.faults
    lander = carry.lander

    contingency = carry.scheduled.contingency
    command = command_from(
        carry.scheduled, spec.vehicle, carry.nav, lander.mass_kg, spec.gravity_mps2
    )
    moved, specific_force = dynamics.step(spec.vehicle, lander, command, spec.gravity_mps2, dt)

    accel = sensors.imu_measure(specific_force, flight.imu_bias_mps2, spec.imu, draws.imu)
    nav = navigation.predict(carry.nav, accel, spec.gravity_mps2, gains.nav, dt)
    axis = dynamics.axis_from_tilt(moved.tilt_rad)
    x, y, z = moved.position_m
    ground_m = terrain_lib.height_m(flight.terrain, (x, y))
    stale_position = tuple(
        r - v * faults.latency_s for r, v in zip(moved.position_m, moved.velocity_mps)
    )
    true_range = sensors.beam_range_m(
        flight.terrain,
        stale_position,
        tuple(-a for a in axis),
        spec.numerics.beam_iterations,
        initial_range_m=carry.beam_range_m,
        ground_height_m=ground_m,
    )
    measured, valid = sensors.lrf_measure(
        true_range,
        spec.lrf,
        acquisition_range_m=faults.acquisition_range_m,
        bias_m=faults.bias_m,
        scale_factor=faults.scale_factor,
        heavy_tail_scale_m=faults.heavy_tail_scale_m,
        dropout_prob=faults.dropout_prob,
        absent=faults.absent,
        draws=draws.lrf,
    )
    sample_due = jnp.floor((index + 1) * dt * spec.lrf.rate_hz) > jnp.floor(
        index * dt * spec.lrf.rate_hz
    )
    lrf_altitude = measured * axis[2]
    # Readings the filter holds off in its terminal phase are not ignored: they end a run of
    # ignored readings as an accepted one does.
    held_off = valid & sample_due & navigation.terminal(nav, gains.nav)
    nav, accepted = navigation.update(
        nav,
        lrf_altitude,
        valid & sample_due,
        gains.nav,
        dt,
        spec.reject_policy,
        spec.smoothing.gate_softness,
    )

    height = z - ground_m
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
        beam_range_m=true_range,
        ignoring_since_s=jnp.where(
            carry.landed | ~(valid & sample_due),
            carry.ignoring_since_s,
            jnp.where(
                accepted | held_off,
                -1.0,
                jnp.where(carry.ignoring_since_s < 0.0, (index + 1) * dt, carry.ignoring_since_s),
            ),
        ),
        scheduled=scheduled(schedule, spec.guidance, nav),
    )
    trace = Trace(
        time_s=(index + 1) * dt,
        height_m=new_carry.height_m,
        altitude_m=after.position_m[2],
        altitude_estimate_m=nav.position_m[2],
        altitude_sigma_m=nav.altitude_sigma_m,
        vertical_speed_mps=after.velocity_mps[2],
        vertical_speed_estimate_mps=nav.velocity_mps[2],
        horizontal_speed_mps=dynamics.hypot(*after.velocity_mps[:2]),
        tilt_deg=dynamics.tilt_deg(after),
        thrust_n=after.thrust_n,
        mass_kg=after.mass_kg,
        lrf_altitude_m=lrf_altitude,
        lrf_sampled=valid & sample_due,
        lrf_accepted=accepted,
        contingency=contingency,
    )
    return new_carry, trace


def _block_draws(flight: _Flight, indices):
    """The population's random draws for the steps ``indices`` (time first)."""
    per_step = jax.vmap(noise.step_noise, in_axes=(0, None))
    return jax.vmap(per_step, in_axes=(None, 0))(flight.key_words, indices.astype(jnp.uint32))


def _fly(spec: SimSpec, gains: Gains, scenarios: Scenario, keep_trace: bool):
    """Population-level time loop; returns the final carry and (with ``keep_trace``) the
    per-step traces with time first."""
    schedule = prepare(gains, unrolled=spec.numerics.unrolled)
    flight = _Flight.of(scenarios, spec.numerics.unrolled)
    step = jax.vmap(lambda f, c, i, d: _step(spec, schedule, f, c, i, d), in_axes=(0, 0, None, 0))
    carry = jax.vmap(lambda f: _initial_carry(spec, schedule, f))(flight)

    if keep_trace:
        steps = jnp.arange(spec.max_steps)
        return jax.lax.scan(
            lambda c, x: step(flight, c, *x), carry, (steps, _block_draws(flight, steps))
        )

    steps = jnp.arange(spec.n_steps)
    # Reverse mode keeps only the carry of each step and recomputes the step; the draws are
    # drawn once per block, outside the differentiated step.
    body = jax.checkpoint(lambda c, x: (step(flight, c, *x)[0], None))

    def run(c, indices):
        return jax.lax.scan(body, c, (indices, _block_draws(flight, indices)))[0]

    def block(c, indices):
        return jax.lax.cond(jnp.all(c.landed), lambda c_, _: c_, run, c, indices), None

    size = max(1, min(spec.numerics.block_steps, spec.n_steps))
    n_blocks = spec.n_steps // size
    carry, _ = jax.lax.scan(block, carry, steps[: n_blocks * size].reshape(n_blocks, size))
    if spec.n_steps > n_blocks * size:
        carry, _ = block(carry, steps[n_blocks * size :])
    if spec.max_steps > spec.n_steps:
        carry = _fly_on(spec, gains, scenarios, carry)
    return carry, None


def straggler_group_size(n: int) -> int:
    """Flights still airborne at the planned horizon fly on this many at a time (out of a
    population of ``n``): small enough that a few slow descents do not keep a whole
    population's worth of work flying, large enough to take them in few rounds."""
    return min(n, max(32, n // 128))


def _fly_on(spec: SimSpec, gains: Gains, scenarios: Scenario, carry: _Carry) -> _Carry:
    """Fly every flight still airborne after the planned horizon on, in groups of
    :func:`straggler_group_size`, until it touches down or ``max_duration_s``.

    Each flight keeps its own draws (counter-based on its key and the step), and the
    groups use the compact layout (``unrolled=False``: the smaller program) whatever the
    population's, so a flight's outcome depends only on itself. Not differentiable (a
    ``while_loop``); tuning flies to the planned horizon only."""
    compact = eqx.tree_at(lambda s: s.numerics.unrolled, spec, False)
    schedule = prepare(gains, unrolled=False)
    flight = _Flight.of(scenarios, False)
    n = carry.landed.shape[0]
    group = straggler_group_size(n)
    step = jax.vmap(
        lambda f, c, i, d: _step(compact, schedule, f, c, i, d)[0], in_axes=(0, 0, None, 0)
    )
    size = max(1, spec.numerics.block_steps)
    end = spec.max_steps  # the planned horizon plus whole blocks

    def flying(c):
        # A flight whose state stopped being finite is over too (it is counted apart).
        return ~c.landed & jnp.isfinite(c.height_m)

    def fly_group(members):
        f, c = jax.tree.map(lambda x: jnp.take(x, members, axis=0, mode="clip"), (flight, carry))

        def airborne(state):
            c_, first = state
            return jnp.any(flying(c_)) & (first < end)

        def fly_block(state):
            c_, first = state
            indices = first + jnp.arange(size)
            draws = _block_draws(f, indices)

            def one(c__, x):
                return step(f, c__, *x), None

            return jax.lax.scan(one, c_, (indices, draws))[0], first + size

        c, _ = jax.lax.while_loop(airborne, fly_block, (c, jnp.asarray(spec.n_steps)))
        return c

    def pending(state):
        c, done = state
        return jnp.any(flying(c) & ~done)

    def next_group(state):
        c, done = state
        members = jnp.nonzero(flying(c) & ~done, size=group, fill_value=n)[0]
        flown = fly_group(members)
        c = jax.tree.map(lambda x, y: x.at[members].set(y, mode="drop"), c, flown)
        return c, done.at[members].set(True, mode="drop")

    carry, _ = jax.lax.while_loop(pending, next_group, (carry, jnp.zeros(n, bool)))
    return carry


def _outcome(spec: SimSpec, scenarios: Scenario, final: _Carry) -> Outcome:
    lander = final.lander
    end_s = jnp.where(final.landed, final.touchdown_time_s, spec.max_steps * spec.dt_s)
    ignored = jnp.where(final.ignoring_since_s < 0.0, 0.0, end_s - final.ignoring_since_s)
    return Outcome(
        landed=final.landed,
        touchdown_time_s=end_s,
        touchdown_velocity_mps=dynamics.stack(lander.velocity_mps),
        touchdown_position_m=dynamics.stack(lander.position_m),
        touchdown_tilt_deg=dynamics.tilt_deg(lander),
        fuel_kg=scenarios.mass0_kg - lander.mass_kg,
        exhausted=final.exhausted,
        final_height_m=final.height_m,
        lrf_first_accept_height_m=final.first_accept_height_m,
        lrf_ignored_s=ignored,
        lrf_locked_out=ignored > spec.guidance.lrf_stale_after_s,
    )


def chunk_size(spec: SimSpec, n: int) -> int:
    """How many scenarios of a population of ``n`` are flown at a time."""
    if spec.numerics.chunk_size is not None:
        return max(1, min(spec.numerics.chunk_size, n))
    return min(n, 4096) if jax.default_backend() == "cpu" else n


@eqx.filter_jit
def simulate(spec: SimSpec, gains: Gains, scenarios: Scenario) -> Outcome:
    """Fly every scenario of a population with one set of gains: one jitted program,
    differentiable in the gains, large populations flown in chunks of :func:`chunk_size`
    one after another inside it. Outcomes do not depend on the chunking.

    A large population already on the host flies faster through
    :func:`simulate_population` (one share per CPU core)."""

    def fly(population: Scenario) -> Outcome:
        return _outcome(spec, population, _fly(spec, gains, population, keep_trace=False)[0])

    return execution.map_in_program(fly, scenarios, chunk_size(spec, scenarios.size))


# The host-level flight: ``simulate`` compiled once per piece shape and run on any local
# device (:mod:`descent_opt.execution`).
_simulate_on = execution.DeviceProgram(simulate)


def simulate_population(
    spec: SimSpec, gains: Gains, scenarios: Scenario, *, workers: int | None = None
) -> Outcome:
    """:func:`simulate` of a concrete population cut into pieces of one shape and flown
    from threads (:mod:`descent_opt.execution`): on the CPU one share per core (default:
    every usable core, each share at least ``_MIN_SHARE`` long; ``workers`` to choose),
    each share flown in pieces of at most :func:`chunk_size`; one piece per device where
    there are several. XLA keeps a step's small kernels on one core, so one share per core
    doubles the throughput of two cores. Outcomes do not depend on ``workers`` or the
    pieces. Not for traced arguments (under ``jit`` or ``grad`` call :func:`simulate`)."""
    n = scenarios.size
    shares = execution.thread_count(workers)
    if workers is None:
        shares = min(shares, max(1, n // _MIN_SHARE))
    size = execution.piece_size(n, shares, limit=chunk_size(spec, n))

    def fly(device, piece: Scenario) -> Outcome:
        # Each program waited for: the threads' flights do not queue behind each other's.
        return jax.block_until_ready(_simulate_on(device, spec, gains, piece))

    return execution.fly_batch(fly, scenarios, size, workers=shares)


@eqx.filter_jit
def _simulate_traces(spec: SimSpec, gains: Gains, scenarios: Scenario) -> tuple[Outcome, Trace]:
    final, trace = _fly(spec, gains, scenarios, keep_trace=True)
    return _outcome(spec, scenarios, final), jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), trace)


def simulate_traces(spec: SimSpec, gains: Gains, scenarios: Scenario) -> tuple[Outcome, Trace]:
    """Like :func:`simulate` but also returns per-step histories, scenario first, up to the
    step after the last touchdown (memory grows with population times steps: meant for a
    few scenarios)."""
    outcome, trace = _simulate_traces(spec, gains, scenarios)
    last = float(jnp.max(outcome.touchdown_time_s))
    keep = min(spec.max_steps, int(math.floor(last / spec.dt_s)) + 2)
    return outcome, jax.tree.map(lambda x: x[..., :keep], trace)
