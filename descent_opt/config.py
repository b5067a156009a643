"""Typed, validated run configuration built from a plain mapping (Hydra's composed config).

Every key is checked before any JIT: type, finiteness, range, vector length, allowed names,
and cross-key physics (dry mass below initial mass, thrust able to hold the lander up).
A violation raises :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from descent_opt.distributed import ENABLED, DistributedSpec
from descent_opt.dynamics import Vehicle
from descent_opt.faults import FAULT_CLASSES, FaultCatalog
from descent_opt.guidance import GuidanceSpec
from descent_opt.jobs import JOBS
from descent_opt.navigation import REJECT_POLICIES
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria
from descent_opt.optimize.gains import TrainSpec
from descent_opt.optimize.thrust_schedule import ScheduleSpec
from descent_opt.scenarios import TERRAIN_KINDS, ScenarioSampler, ScenarioSpec, TerrainSpec
from descent_opt.sensors import ImuSpec, LrfSpec
from descent_opt.simulate import SimSpec, decided_horizon_s

EXPERIMENTS = JOBS
# The library's defaults, which a key missing from the mapping takes.
_FAULTS, _SUCCESS, _OBJECTIVE, _TRAIN = (
    FaultCatalog(),
    SuccessCriteria(),
    ObjectiveSpec(),
    TrainSpec(),
)
PRECISIONS = ("float32", "float64")


class ConfigError(ValueError):
    """A configuration value that is not allowed; ``str()`` is one line naming the key."""

    def __init__(self, key: str, allowed: str, value: Any = None):
        self.key = key
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{key}: must be {allowed}{shown}")


@dataclasses.dataclass(frozen=True)
class EvaluationSpec:
    """Held-out and Monte Carlo populations."""

    n_scenarios: int = 100_000
    n_nominal_scenarios: int = 16_384  # robust_gains: held-out population with nominal sensors
    seed_offset: int = 1_000_003  # held-out population: seed + offset
    chunk_size: int | None = None  # scenarios drawn and flown at a time; None: automatic
    keep_failures: int = 20  # worst failures listed in metrics.json
    save_scenarios: bool = False  # write every scenario's parameters and outcome
    indices: tuple[int, ...] | None = None  # re-fly exactly these members


MAX_INDEX = 2**32 - 1  # members are drawn with fold_in of a 32-bit index
MAX_REFLY = 1000


@dataclasses.dataclass(frozen=True)
class ReplaySpec:
    """HAKUTO-R Mission 2 replay: late LRF, altitude estimate too high."""

    lrf_acquisition_m: float = 900.0
    altitude_error_m: float = 600.0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    experiment: str | None
    seed: int
    gains_path: str | None
    vehicle: Vehicle
    sim: SimSpec
    scenario: ScenarioSpec
    terrain: TerrainSpec
    faults: FaultCatalog
    success: SuccessCriteria
    objective: ObjectiveSpec
    optimizer: TrainSpec
    evaluation: EvaluationSpec
    replay: ReplaySpec
    altitude_breakpoints_m: tuple[float, ...]
    progress: bool
    precision: str = "float32"
    schedule: ScheduleSpec | None = None
    schedule_batch_size: int = 64
    distributed: DistributedSpec = DistributedSpec()
    compile_cache_dir: str | None = None
    checkpoint_every_steps: int = 10
    resume: bool = False
    unlandable: tuple[str, ...] = ("lrf_absent",)  # fault classes certified apart
    settings_json: str = "{}"  # every key as composed (dotted names), for checkpoints

    def settings(self) -> dict:
        """Every configuration key as composed, by dotted name."""
        import json

        return json.loads(self.settings_json)

    def population_key(self, nominal_sensors: bool = False):
        """Key of the held-out population (``seed + evaluation.seed_offset``): the one with
        the configured faults, or its twin with nominal sensors. ``monte_carlo`` and the
        main job's held-out evaluation fly the same members."""
        import jax

        key = jax.random.key(self.seed + self.evaluation.seed_offset)
        return jax.random.split(key)[1 if nominal_sensors else 0]

    def sampler(self, faults: FaultCatalog | None = None) -> ScenarioSampler:
        """Scenario sampler: the configured dispersion and terrain, with ``faults`` (default:
        the configured fault catalog)."""
        return ScenarioSampler(
            self.scenario,
            self.terrain,
            self.faults if faults is None else faults,
            self.vehicle.mass_initial_kg,
        )


class _Group:
    """Reads and checks the keys of one config group."""

    def __init__(self, cfg: Mapping, name: str):
        if name and not isinstance(cfg.get(name, {}), Mapping):
            raise ConfigError(name, "a group of keys")
        self.data = dict(cfg.get(name, {}) or {}) if name else dict(cfg)
        self.name = name
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.name}.{k}" if self.name else k

    def raw(self, k: str, default=None):
        self.used.add(k)
        if k not in self.data:
            if default is None:
                raise ConfigError(self.key(k), "set (it is required)")
            return default
        return self.data[k]

    def number(self, k, default=None, *, lo=None, hi=None, lo_open=False, integer=False):
        v = self.raw(k, default)
        kind = "an integer" if integer else "a number"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(self.key(k), kind, v)
        if integer and int(v) != v:
            raise ConfigError(self.key(k), kind, v)
        if not math.isfinite(v):
            raise ConfigError(self.key(k), f"a finite {kind[2:] if integer else 'number'}", v)
        if lo is not None and (v <= lo if lo_open else v < lo):
            bound = f"> {lo}" if lo_open else f">= {lo}"
            rng = f"{bound}" + (f" and <= {hi}" if hi is not None else "")
            raise ConfigError(self.key(k), f"{kind} {rng}", v)
        if hi is not None and v > hi:
            raise ConfigError(self.key(k), f"{kind} <= {hi}", v)
        return int(v) if integer else float(v)

    def vector(self, k, default=None, *, length=3, lo=None):
        v = self.raw(k, default)
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != length:
            raise ConfigError(self.key(k), f"a list of {length} numbers", v)
        out = []
        for x in v:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise ConfigError(self.key(k), f"a list of {length} finite numbers", v)
            if lo is not None and x < lo:
                raise ConfigError(self.key(k), f"a list of {length} numbers >= {lo}", v)
            out.append(float(x))
        return tuple(out)

    def choice(self, k, allowed, default=None):
        v = self.raw(k, default)
        if v not in allowed:
            raise ConfigError(self.key(k), "one of " + ", ".join(allowed), v)
        return v

    def flag(self, k, default):
        v = self.raw(k, default)
        if not isinstance(v, bool):
            raise ConfigError(self.key(k), "true or false", v)
        return v

    def done(self):
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise ConfigError(self.key(extra[0]), "a known key (unknown key)")


def _range(g: _Group, k: str, default, lo=0.0, hi=None) -> tuple[float, float]:
    a, b = g.vector(k, default, length=2, lo=lo)
    if a > b or (hi is not None and b > hi):
        raise ConfigError(
            g.key(k), "[low, high] with low <= high" + (f" <= {hi}" if hi else ""), [a, b]
        )
    return (a, b)


def _vehicle(cfg) -> Vehicle:
    g = _Group(cfg, "vehicle")
    g.raw("name", "custom")
    g.raw("note", "")
    v = Vehicle(
        mass_initial_kg=g.number("mass_initial_kg", lo=0.0, lo_open=True),
        mass_dry_kg=g.number("mass_dry_kg", lo=0.0, lo_open=True),
        thrust_max_n=g.number("thrust_max_n", lo=0.0, lo_open=True),
        thrust_min_n=g.number("thrust_min_n", lo=0.0),
        isp_s=g.number("isp_s", lo=0.0, lo_open=True),
        max_tilt_deg=g.number("max_tilt_deg", lo=0.0, hi=80.0),
        thrust_time_constant_s=g.number("thrust_time_constant_s", 0.2, lo=0.0, lo_open=True),
        tilt_rate_max_deg_s=g.number("tilt_rate_max_deg_s", 10.0, lo=0.0, lo_open=True),
    )
    g.done()
    if v.mass_dry_kg >= v.mass_initial_kg:
        raise ConfigError("vehicle.mass_dry_kg", "below vehicle.mass_initial_kg", v.mass_dry_kg)
    if v.thrust_min_n > v.thrust_max_n:
        raise ConfigError("vehicle.thrust_min_n", "at most vehicle.thrust_max_n", v.thrust_min_n)
    return v


def _evaluation(cfg) -> EvaluationSpec:
    ev = _Group(cfg, "evaluation")
    chunk = ev.raw("chunk_size", "auto")
    indices = ev.raw("indices", "none")
    spec = EvaluationSpec(
        n_scenarios=ev.number("n_scenarios", 100_000, lo=1, hi=MAX_INDEX, integer=True),
        n_nominal_scenarios=ev.number(
            "n_nominal_scenarios", 16_384, lo=1, hi=MAX_INDEX, integer=True
        ),
        seed_offset=ev.number("seed_offset", 1_000_003, lo=1, integer=True),
        chunk_size=None
        if chunk in ("auto", None)
        else ev.number("chunk_size", lo=1, hi=1 << 26, integer=True),
        keep_failures=ev.number("keep_failures", 20, lo=0, hi=100_000, integer=True),
        save_scenarios=ev.flag("save_scenarios", False),
        indices=None if indices in ("none", None) else _indices(ev, indices),
    )
    ev.done()
    return spec


def _distributed(cfg) -> DistributedSpec:
    d = _Group(cfg, "distributed")
    enabled = d.raw("enabled", "auto")
    if isinstance(enabled, bool):  # YAML reads true / false as booleans
        enabled = "true" if enabled else "false"
    if enabled not in ENABLED:
        raise ConfigError(d.key("enabled"), "one of " + ", ".join(ENABLED), enabled)
    address = d.raw("coordinator_address", "unset")
    host_port = isinstance(address, str) and address.rpartition(":")[0] != ""
    if address not in ("unset", None) and not (host_port and address.rpartition(":")[2].isdigit()):
        raise ConfigError(d.key("coordinator_address"), "HOST:PORT or null", address)
    processes = d.raw("num_processes", "unset")
    process_id = d.raw("process_id", "unset")
    spec = DistributedSpec(
        enabled=enabled,
        coordinator_address=None if address in ("unset", None) else address,
        num_processes=None
        if processes in ("unset", None)
        else d.number("num_processes", lo=1, hi=100_000, integer=True),
        process_id=None
        if process_id in ("unset", None)
        else d.number("process_id", lo=0, hi=100_000, integer=True),
    )
    d.done()
    if spec.process_id is not None and spec.num_processes is not None:
        if spec.process_id >= spec.num_processes:
            raise ConfigError(
                d.key("process_id"), "below distributed.num_processes", spec.process_id
            )
    return spec


def _gain_names(g: _Group, k: str) -> tuple[str, ...]:
    from descent_opt.guidance import NAV_GAINS, SCALAR_GAINS, SCHEDULED_COLUMNS

    names = SCHEDULED_COLUMNS + SCALAR_GAINS + NAV_GAINS
    value = g.raw(k, [])
    allowed = "a list of gain names, each one of " + ", ".join(names)
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ConfigError(g.key(k), allowed, value)
    if any(n not in names for n in value) or len(set(value)) != len(value):
        raise ConfigError(g.key(k), allowed + " (no repeats)", list(value))
    return tuple(value)


def _unlandable(cfg) -> tuple[str, ...]:
    g = _Group(cfg, "certification")
    value = g.raw("unlandable", ["lrf_absent"])
    g.done()
    allowed = "a list of fault classes, each one of " + ", ".join(FAULT_CLASSES)
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ConfigError(g.key("unlandable"), allowed, value)
    if any(name not in FAULT_CLASSES for name in value) or len(set(value)) != len(value):
        raise ConfigError(g.key("unlandable"), allowed + " (no repeats)", list(value))
    return tuple(value)


def _indices(ev: _Group, value) -> tuple[int, ...]:
    allowed = (
        f"a list of 1 to {MAX_REFLY} distinct scenario indices, integers from 0 to {MAX_INDEX}"
    )
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ConfigError(ev.key("indices"), allowed, value)
    ok = 0 < len(value) <= MAX_REFLY and all(
        not isinstance(i, bool) and isinstance(i, int) and 0 <= i <= MAX_INDEX for i in value
    )
    if not ok or len(set(value)) != len(value):
        raise ConfigError(ev.key("indices"), allowed, list(value))
    return tuple(int(i) for i in value)


def from_mapping(cfg: Mapping) -> RunConfig:
    """Validate a plain nested mapping and build the typed configuration."""
    top = _Group(cfg, "")
    experiment = top.raw("experiment", "")
    if experiment not in ("", None) and experiment not in EXPERIMENTS:
        raise ConfigError("experiment", "one of " + ", ".join(EXPERIMENTS), experiment)
    seed = top.number("seed", 0, lo=0, integer=True)
    gains_path = top.raw("gains", "") or None
    if gains_path is not None and not isinstance(gains_path, str):
        raise ConfigError("gains", "a path to a gains.json file", gains_path)
    progress = top.flag("progress", True)
    precision = top.choice("precision", PRECISIONS, "float32")
    resume = top.flag("resume", False)
    cache = top.raw("compile_cache_dir", "unset")
    if cache not in ("unset", None) and (not isinstance(cache, str) or not cache.strip()):
        raise ConfigError("compile_cache_dir", "a directory path or null", cache)
    for group in (
        "vehicle",
        "moon",
        "scenario",
        "terrain",
        "faults",
        "sensors",
        "sim",
        "navigation",
        "guidance",
        "success",
        "objective",
        "optimizer",
        "evaluation",
        "replay",
        "thrust_schedule",
        "distributed",
        "checkpoint",
        "certification",
        "hydra",
    ):
        top.used.add(group)
    top.done()

    vehicle = _vehicle(cfg)
    moon = _Group(cfg, "moon")
    gravity = moon.number("gravity_mps2", lo=0.0, lo_open=True)
    moon.done()
    if vehicle.thrust_max_n <= vehicle.mass_initial_kg * gravity:
        raise ConfigError(
            "vehicle.thrust_max_n",
            "above the initial weight mass_initial_kg * gravity = "
            f"{vehicle.mass_initial_kg * gravity:.0f} N (the lander could never stop descending)",
            vehicle.thrust_max_n,
        )

    s = _Group(cfg, "scenario")
    scenario = ScenarioSpec(
        r0_m=s.vector("r0_m"),
        v0_mps=s.vector("v0_mps"),
        position_sigma_m=s.vector("position_sigma_m", (0, 0, 0), lo=0.0),
        velocity_sigma_mps=s.vector("velocity_sigma_mps", (0, 0, 0), lo=0.0),
        mass_sigma_kg=s.number("mass_sigma_kg", 0.0, lo=0.0),
        nav_altitude_sigma_m=s.number("nav_altitude_sigma_m", 300.0, lo=0.0, lo_open=True),
        nav_horizontal_sigma_m=s.number("nav_horizontal_sigma_m", 20.0, lo=0.0),
        nav_velocity_sigma_mps=s.number("nav_velocity_sigma_mps", 0.1, lo=0.0, lo_open=True),
        imu_bias_sigma_mps2=s.number("imu_bias_sigma_mps2", 1e-3, lo=0.0, lo_open=True),
    )
    s.done()
    if scenario.r0_m[2] <= 0.0:
        raise ConfigError(
            "scenario.r0_m", "a start above the surface (third number > 0)", list(scenario.r0_m)
        )

    t = _Group(cfg, "terrain")
    terrain = TerrainSpec(
        kind=t.choice("kind", TERRAIN_KINDS),
        slope_deg=t.number("slope_deg", 0.0, lo=0.0, hi=30.0),
        slope_azimuth_deg=t.number("slope_azimuth_deg", 0.0),
        crater_center_m=t.vector("crater_center_m", (-600.0, 0.0), length=2),
        crater_radius_m=t.number("crater_radius_m", 200.0, lo=0.0, lo_open=True),
        crater_depth_m=t.number("crater_depth_m", 40.0, lo=0.0),
        crater_rim_m=t.number("crater_rim_m", 8.0, lo=0.0),
        field_n_craters=t.number("field_n_craters", 6, lo=1, hi=64, integer=True),
        field_extent_m=t.number("field_extent_m", 3000.0, lo=0.0, lo_open=True),
        field_radius_m=_range(t, "field_radius_m", (20.0, 300.0), lo=1.0),
        field_depth_to_diameter=t.number("field_depth_to_diameter", 0.12, lo=0.0, hi=0.5),
        field_keep_out_m=t.number("field_keep_out_m", 60.0, lo=0.0),
    )
    t.done()

    f = _Group(cfg, "faults")
    f.raw("name", "custom")
    rate = lambda k, d: f.number(k, d, lo=0.0, hi=1.0)  # noqa: E731
    faults = FaultCatalog(
        late_acquisition_rate=rate("late_acquisition_rate", _FAULTS.late_acquisition_rate),
        acquisition_range_m=_range(f, "acquisition_range_m", _FAULTS.acquisition_range_m, lo=1.0),
        latency_rate=rate("latency_rate", _FAULTS.latency_rate),
        latency_s=_range(f, "latency_s", _FAULTS.latency_s, hi=5.0),
        dropout_rate=rate("dropout_rate", _FAULTS.dropout_rate),
        dropout_prob=_range(f, "dropout_prob", _FAULTS.dropout_prob, hi=1.0),
        bias_sigma_m=f.number("bias_sigma_m", _FAULTS.bias_sigma_m, lo=0.0),
        scale_factor_sigma=f.number(
            "scale_factor_sigma", _FAULTS.scale_factor_sigma, lo=0.0, hi=0.2
        ),
        dark_terrain_rate=rate("dark_terrain_rate", _FAULTS.dark_terrain_rate),
        heavy_tail_scale_m=_range(f, "heavy_tail_scale_m", _FAULTS.heavy_tail_scale_m),
        absent_rate=rate("absent_rate", _FAULTS.absent_rate),
        rim_step_rate=rate("rim_step_rate", _FAULTS.rim_step_rate),
        rim_step_height_m=_range(f, "rim_step_height_m", _FAULTS.rim_step_height_m),
        rim_radius_m=_range(f, "rim_radius_m", _FAULTS.rim_radius_m, lo=1.0),
    )
    f.done()

    se = _Group(cfg, "sensors")
    imu = ImuSpec(noise_mps2=se.number("imu_noise_mps2", 1e-3, lo=0.0))
    lrf = LrfSpec(
        noise_m=se.number("lrf_noise_m", 2.0, lo=0.0),
        rate_hz=se.number("lrf_rate_hz", 10.0, lo=0.0, lo_open=True),
        max_range_m=se.number("lrf_max_range_m", 3000.0, lo=0.0, lo_open=True),
    )
    se.done()

    gu = _Group(cfg, "guidance")
    guidance = GuidanceSpec(
        lrf_expected_altitude_m=gu.number("lrf_expected_altitude_m", lrf.max_range_m, lo=0.0),
        lrf_stale_after_s=gu.number("lrf_stale_after_s", 2.0, lo=0.0, lo_open=True),
        tgo_max_s=gu.number("tgo_max_s", 200.0, lo=1.0),
    )
    bps = gu.raw(
        "altitude_breakpoints_m",
        [0, 20, 50, 100, 200, 400, 700, 1000, 1500, 2000, 3000, 4000, 6000],
    )
    if isinstance(bps, (str, bytes)) or not hasattr(bps, "__len__") or len(bps) < 2:
        raise ConfigError(
            "guidance.altitude_breakpoints_m", "a list of at least 2 increasing altitudes", bps
        )
    bps = _Group({"b": {str(i): x for i, x in enumerate(bps)}}, "b")
    breakpoints = tuple(bps.number(str(i), lo=0.0) for i in range(len(bps.data)))
    if breakpoints[0] != 0.0 or any(b >= a for a, b in zip(breakpoints[1:], breakpoints[:-1])):
        raise ConfigError(
            "guidance.altitude_breakpoints_m", "increasing and starting at 0", list(breakpoints)
        )
    gu.done()

    nav = _Group(cfg, "navigation")
    policy = nav.choice("reject_policy", REJECT_POLICIES, "reacquire")
    nav.done()

    sim = _Group(cfg, "sim")
    dt = sim.number("dt_s", 0.25, lo=0.0, lo_open=True, hi=2.0)
    duration = sim.number("duration_s", 180.0, lo=dt)
    longest = sim.raw("max_duration_s", "auto")
    if longest == "auto":
        longest = max(duration, decided_horizon(vehicle, gravity, scenario))
    elif longest is not None:
        longest = sim.number("max_duration_s", lo=duration, hi=100_000.0)
    sim.done()

    su = _Group(cfg, "success")
    success = SuccessCriteria(
        vertical_speed_max_mps=su.number(
            "vertical_speed_max_mps", _SUCCESS.vertical_speed_max_mps, lo=0.0, lo_open=True
        ),
        horizontal_speed_max_mps=su.number(
            "horizontal_speed_max_mps", _SUCCESS.horizontal_speed_max_mps, lo=0.0, lo_open=True
        ),
        tilt_max_deg=su.number("tilt_max_deg", _SUCCESS.tilt_max_deg, lo=0.0, lo_open=True),
        crash_speed_mps=su.number(
            "crash_speed_mps", _SUCCESS.crash_speed_mps, lo=0.0, lo_open=True
        ),
    )
    su.done()

    ob = _Group(cfg, "objective")
    objective = ObjectiveSpec(
        margin=ob.number("margin", _OBJECTIVE.margin, lo=0.0, lo_open=True, hi=1.0),
        sharpness=ob.number("sharpness", _OBJECTIVE.sharpness, lo=0.0, lo_open=True),
        miss_scale_m=ob.number("miss_scale_m", _OBJECTIVE.miss_scale_m, lo=0.0, lo_open=True),
        timeout_scale_m=ob.number(
            "timeout_scale_m", _OBJECTIVE.timeout_scale_m, lo=0.0, lo_open=True
        ),
        cvar_alpha=ob.number("cvar_alpha", _OBJECTIVE.cvar_alpha, lo=0.0, hi=0.999),
        cvar_weight=ob.number("cvar_weight", _OBJECTIVE.cvar_weight, lo=0.0),
        fuel_weight=ob.number("fuel_weight", _OBJECTIVE.fuel_weight, lo=0.0),
    )
    ob.done()

    op = _Group(cfg, "optimizer")
    optimizer = TrainSpec(
        steps=op.number("steps", _TRAIN.steps, lo=1, integer=True),
        batch_size=None  # auto: chosen by the backend when tuning starts
        if op.raw("batch_size", "auto") == "auto"
        else op.number("batch_size", lo=1, integer=True),
        learning_rate=op.number("learning_rate", _TRAIN.learning_rate, lo=0.0, lo_open=True),
        warmup_steps=op.number("warmup_steps", _TRAIN.warmup_steps, lo=0, integer=True),
        clip_norm=op.number("clip_norm", _TRAIN.clip_norm, lo=0.0, lo_open=True),
        gate_softness=op.number("gate_softness", _TRAIN.gate_softness, lo=0.0),
        replay_every=op.number("replay_every", _TRAIN.replay_every, lo=0, integer=True),
        replay_pool=op.number("replay_pool", _TRAIN.replay_pool, lo=2, hi=1 << 24, integer=True),
        replay_worst=op.number("replay_worst", _TRAIN.replay_worst, lo=1, integer=True),
        replay_fraction=op.number(
            "replay_fraction", _TRAIN.replay_fraction, lo=0.0, lo_open=True, hi=1.0
        ),
        frozen=_gain_names(op, "frozen"),
    )
    op.done()
    if optimizer.replay_worst >= optimizer.replay_pool:
        raise ConfigError(
            "optimizer.replay_worst", "below optimizer.replay_pool", optimizer.replay_worst
        )

    evaluation = _evaluation(cfg)

    rp = _Group(cfg, "replay")
    replay = ReplaySpec(
        lrf_acquisition_m=rp.number("lrf_acquisition_m", 900.0, lo=0.0, lo_open=True),
        altitude_error_m=rp.number("altitude_error_m", 600.0),
    )
    rp.done()

    ts = _Group(cfg, "thrust_schedule")
    schedule = ScheduleSpec(
        vehicle=vehicle,
        gravity_mps2=gravity,
        glide_slope_deg=ts.number("glide_slope_deg", 0.0, lo=0.0, hi=89.0),
        n_nodes=ts.number("n_nodes", 50, lo=2, hi=1000, integer=True),
        tf_steps=ts.number("tf_steps", 8, lo=1, hi=100, integer=True),
        tf_rtol=ts.number("tf_rtol", 5e-4, lo=0.0, lo_open=True, hi=0.5),
        refine=ts.number("refine", 0, lo=0, hi=20, integer=True),
        ipm_iterations=ts.number("ipm_iterations", 40, lo=5, hi=500, integer=True),
    )
    schedule_batch_size = ts.number("batch_size", 64, lo=1, integer=True)
    ts.done()

    distributed = _distributed(cfg)
    ck = _Group(cfg, "checkpoint")
    checkpoint_every_steps = ck.number("every_steps", 10, lo=1, integer=True)
    ck.done()
    unlandable = _unlandable(cfg)

    sim_spec = SimSpec(
        vehicle=vehicle,
        gravity_mps2=gravity,
        imu=imu,
        lrf=lrf,
        guidance=guidance,
        nav_altitude_sigma_m=scenario.nav_altitude_sigma_m,
        nav_velocity_sigma_mps=scenario.nav_velocity_sigma_mps,
        nav_bias_sigma_mps2=scenario.imu_bias_sigma_mps2,
        dt_s=dt,
        duration_s=duration,
        max_duration_s=longest,
        reject_policy=policy,
    )
    return RunConfig(
        experiment=experiment or None,
        seed=seed,
        gains_path=gains_path,
        vehicle=vehicle,
        sim=sim_spec,
        scenario=scenario,
        terrain=terrain,
        faults=faults,
        success=success,
        objective=objective,
        optimizer=optimizer,
        evaluation=evaluation,
        replay=replay,
        altitude_breakpoints_m=breakpoints,
        progress=progress,
        precision=precision,
        schedule=schedule,
        schedule_batch_size=schedule_batch_size,
        distributed=distributed,
        compile_cache_dir=None if cache in ("unset", None) else cache,
        checkpoint_every_steps=checkpoint_every_steps,
        resume=resume,
        unlandable=unlandable,
        settings_json=json.dumps(_flatten(cfg), sort_keys=True, default=str),
    )


def decided_horizon(vehicle: Vehicle, gravity_mps2: float, scenario: ScenarioSpec) -> float:
    """``sim.max_duration_s: auto``: a time by which every flight of the population has
    touched down (:func:`~descent_opt.simulate.decided_horizon_s` for a start 6 sigma high,
    climbing and heavy; the terrain is at most 1 km below the site)."""
    six = 6.0
    return decided_horizon_s(
        vehicle,
        gravity_mps2,
        scenario.r0_m[2] + six * scenario.position_sigma_m[2] + 1000.0,
        scenario.v0_mps[2] + six * scenario.velocity_sigma_mps[2],
        vehicle.mass_initial_kg + six * scenario.mass_sigma_kg,
    )


def _flatten(cfg: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if k == "hydra" and not prefix:
            continue
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, (list, tuple)) else v
    return out
