"""The run configuration: every config group declared once, and read into typed Modules.

:data:`GROUPS` declares each key of ``conf/`` with its kind, bounds, default and meaning
(:mod:`descent_opt.schema`); defaults are read off the library Modules the keys configure,
so ``FaultCatalog()`` or ``SimSpec(vehicle)`` is the model the command line flies. Hydra
composes those defaults (:func:`register_defaults`) under the group options and overrides;
:func:`read_config` checks every key before any JIT (type, finiteness, range, vector length,
allowed names, and cross-key physics: dry mass below initial mass, thrust able to hold the
lander up) and raises :class:`ConfigError`, one line naming the key and what is allowed.

Over 400 lines because :data:`GROUPS` is one table of every key, kept whole so that a
reader finds each key, its bounds and its default in one place.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from descent_opt.distributed import ENABLED, DistributedSpec
from descent_opt.dynamics import Vehicle
from descent_opt.envelope import AXES, VALUE_BOUNDS, EnvelopeSpec
from descent_opt.faults import FAULT_CLASSES, FaultCatalog
from descent_opt.guidance import (
    ALTITUDE_BREAKPOINTS_M,
    NAV_GAINS,
    SCALAR_GAINS,
    SCHEDULED_COLUMNS,
    GuidanceSpec,
)
from descent_opt.latent_flights import EVENTS
from descent_opt.navigation import REJECT_POLICIES
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria
from descent_opt.optimize.gains import TrainSpec
from descent_opt.optimize.thrust_schedule import ScheduleSpec
from descent_opt.replays import ReplaySpec
from descent_opt.scenarios import TERRAIN_KINDS, ScenarioSampler, ScenarioSpec, TerrainSpec
from descent_opt.schema import (
    Choice,
    ConfigError,
    Flag,
    Group,
    Key,
    Kind,
    Names,
    Number,
    OrNone,
    Range,
    Vector,
    default_of,
    defaults_tree,
    key_reference,
)
from descent_opt.sensitivity import SensitivitySpec, select
from descent_opt.sensors import ImuSpec, LrfSpec
from descent_opt.simulate import SimSpec, decided_horizon_s
from descent_opt.worst_case import METHODS as WORST_CASE_METHODS
from descent_opt.worst_case import TARGETS as WORST_CASE_TARGETS
from descent_opt.worst_case import WorstCaseSpec

PRECISIONS = ("float32", "float64")
RARE_EVENT_METHODS = ("cross_entropy", "subset_simulation", "monte_carlo")
MAX_INDEX = 2**32 - 1  # members are drawn with fold_in of a 32-bit index
MAX_REFLY = 1000


@dataclasses.dataclass(frozen=True)
class EvaluationSpec:
    """Held-out and Monte Carlo populations."""

    n_scenarios: int = 100_000  # the verdict: 0.9973 at 95 % needs >= 1,109 flights per class
    n_nominal_scenarios: int = 16_384  # robust_gains: the same tables with nominal sensors
    seed_offset: int = 1_000_003  # held-out population: seed + offset
    chunk_size: int | None = None  # scenarios drawn and flown at a time; None: automatic
    keep_failures: int = 20  # worst failures listed in metrics.json
    save_scenarios: bool = False  # write every scenario's parameters and outcome
    indices: tuple[int, ...] | None = None  # re-fly exactly these members


@dataclasses.dataclass(frozen=True)
class RareEventSpec:
    """What rare event, by which method, with what budget."""

    method: str = "cross_entropy"
    event: str = "failure"  # failure: the success rules broken; touchdown_speed: above threshold
    threshold_mps: float | None = None  # touchdown_speed: the speed; failure: unused
    n_per_level: int = 4000  # flights per adaptation level (subset simulation: per level)
    n_final: int = 20_000  # cross_entropy: flights of the final estimate; monte_carlo: all
    max_levels: int = 20
    keep: int = 20  # failures listed, re-flown by evaluation index
    by_fault: bool = False  # also the probability given each fault class of the catalog


@dataclasses.dataclass(frozen=True)
class RunConfig:
    experiment: str | None
    seed: int
    gains_path: str | None  # the first (the only one, but for envelope) of gains_paths
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
    envelope: EnvelopeSpec
    rare_event: RareEventSpec
    altitude_breakpoints_m: tuple[float, ...]
    progress: bool
    precision: str = "float32"
    schedule: ScheduleSpec | None = None
    schedule_batch_size: int = 64
    distributed: DistributedSpec = DistributedSpec()
    sensitivity: SensitivitySpec = SensitivitySpec()
    compile_cache_dir: str | None = None
    checkpoint_every_steps: int = 10
    resume: bool = False
    gains_paths: tuple[str, ...] = ()  # gains=PATH or gains=[A,B] (envelope)
    unlandable: tuple[str, ...] = ("lrf_absent",)  # fault classes certified apart
    worst_case: WorstCaseSpec = WorstCaseSpec()
    settings_json: str = "{}"  # every key as read (dotted names), for checkpoints

    def settings(self) -> dict:
        """Every configuration key as read (defaults included), by dotted name."""
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


class _Text(Kind):
    """A non-empty string (``what`` names it in the error), or null."""

    def __init__(self, what: str):
        self.allowed = what

    def check(self, key, v):
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(key, self.allowed, v)
        return v


class _Paths(Kind):
    """A path, or a list of distinct paths (read as a tuple)."""

    allowed = "a path to a gain table (json, csv or npz), or a list of them"

    def check(self, key, v):
        paths = [v] if isinstance(v, str) else v
        if isinstance(paths, bytes) or not hasattr(paths, "__len__") or len(paths) == 0:
            raise ConfigError(key, self.allowed, v)
        if any(not isinstance(p, str) or not p.strip() for p in paths):
            raise ConfigError(key, self.allowed, v)
        if len(set(paths)) != len(paths):
            raise ConfigError(key, self.allowed + " (no repeats)", list(paths))
        return tuple(paths)

    def show(self, value):
        return value[0] if len(value) == 1 else list(value)


class _Address(Kind):
    allowed = "HOST:PORT or null"

    def check(self, key, v):
        host, _, port = v.rpartition(":") if isinstance(v, str) else ("", "", "")
        if v is not None and not (host and port.isdigit()):
            raise ConfigError(key, self.allowed, v)
        return v


class _Enabled(Choice):
    def check(self, key, v):  # YAML reads true / false as booleans
        return super().check(key, ("true" if v else "false") if isinstance(v, bool) else v)


class _Indices(Kind):
    allowed = (
        f"a list of 1 to {MAX_REFLY} distinct scenario indices, integers from 0 to {MAX_INDEX}"
    )

    def check(self, key, v):
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
            raise ConfigError(key, self.allowed, v)
        ok = 0 < len(v) <= MAX_REFLY and all(
            not isinstance(i, bool) and isinstance(i, int) and 0 <= i <= MAX_INDEX for i in v
        )
        if not ok or len(set(v)) != len(v):
            raise ConfigError(key, self.allowed, list(v))
        return tuple(int(i) for i in v)


class _Parameters(Kind):
    """A list of sensitivity parameter names or prefixes (descent_opt.sensitivity)."""

    allowed = (
        "a list of sensitivity parameters: names or their prefixes, e.g. scenario, faults, "
        "scenario.nav_altitude_sigma_m, faults.latency_s, 'faults.latency_s[high]', vehicle, "
        "success (README, Sensitivities, lists them)"
    )

    def check(self, key, v):
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) == 0:
            raise ConfigError(key, self.allowed, v)
        if any(not isinstance(n, str) for n in v) or len(set(v)) != len(v):
            raise ConfigError(key, self.allowed + " (no repeats)", list(v))
        try:
            select(tuple(v))
        except ValueError as error:
            raise ConfigError(key, self.allowed + f"; {error}", list(v)) from None
        return tuple(v)


class _Grid(Kind):
    allowed = "a non-empty list of finite numbers"

    def check(self, key, v):
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) == 0:
            raise ConfigError(key, self.allowed, v)
        return Vector(len(v)).check(key, v)


class _Horizon(Kind):
    allowed = "a number <= 100000.0 (and >= sim.duration_s), auto or null"

    def check(self, key, v):
        return v if v is None or v == "auto" else Number(hi=100_000.0).check(key, v)


class _Breakpoints(Kind):
    allowed = "a list of at least 2 increasing altitudes, starting at 0"

    def check(self, key, v):
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) < 2:
            raise ConfigError(key, "a list of at least 2 increasing altitudes", v)
        values = Vector(len(v), lo=0.0).check(key, v)
        if values[0] != 0.0 or any(b >= a for a, b in zip(values[1:], values[:-1])):
            raise ConfigError(key, "increasing and starting at 0", list(values))
        return values


def _fields(cls, kinds: dict[str, Kind], docs: dict[str, str] | None = None) -> tuple[Key, ...]:
    """Keys named as ``cls``'s fields, with their defaults read off ``cls``."""
    docs = docs or {}
    return tuple(Key(k, kind, default_of(cls, k), docs.get(k, "")) for k, kind in kinds.items())


_POSITIVE = Number(lo=0.0, lo_open=True)
_NONNEGATIVE = Number(lo=0.0)
_RATE = Number(lo=0.0, hi=1.0)
_COUNT = Number(lo=1, integer=True)
_GAIN_NAMES = SCHEDULED_COLUMNS + SCALAR_GAINS + NAV_GAINS

GROUPS: dict[str, Group] = {
    g.name: g
    for g in (
        Group("", (
            Key("experiment", Kind(), None, "the job, set by +experiment=NAME (conf/experiment/)"),
            Key("seed", Number(lo=0, integer=True), 0, "every population and tuning key"),
            Key("gains", OrNone(_Paths(), (None, "")), None,
                "a gain table (json, csv or npz) to evaluate or replay; envelope: a list"),
            Key("progress", Flag(), True, "progress bars"),
            Key("precision", Choice(PRECISIONS), "float32", "float64 for validation runs"),
            Key("compile_cache_dir", _Text("a directory path or null"), None,
                "JAX's persistent compilation cache (later runs and sweep jobs load compiled "
                "programs instead of compiling); null: off"),
            Key("resume", Flag(), False, "continue tuning from the run directory's checkpoint"),
        )),
        Group("vehicle", (
            Key("name", Kind(), "custom"),
            Key("note", Kind(), ""),
            *_fields(Vehicle, {
                "mass_initial_kg": _POSITIVE, "mass_dry_kg": _POSITIVE, "thrust_max_n": _POSITIVE,
                "thrust_min_n": _NONNEGATIVE, "isp_s": _POSITIVE,
                "max_tilt_deg": Number(lo=0.0, hi=80.0),
                "thrust_time_constant_s": _POSITIVE, "tilt_rate_max_deg_s": _POSITIVE,
            }, {"max_tilt_deg": "thrust pointing limit from vertical"}),
        ), "the lander (an option of conf/vehicle/)"),
        Group("moon", (Key("gravity_mps2", _POSITIVE, default_of(SimSpec, "gravity_mps2")),)),
        Group("scenario", _fields(ScenarioSpec, {
            "r0_m": Vector(), "v0_mps": Vector(),
            "position_sigma_m": Vector(lo=0.0), "velocity_sigma_mps": Vector(lo=0.0),
            "mass_sigma_kg": _NONNEGATIVE, "nav_altitude_sigma_m": _POSITIVE,
            "nav_horizontal_sigma_m": _NONNEGATIVE, "nav_velocity_sigma_mps": _POSITIVE,
            "imu_bias_sigma_mps2": _POSITIVE,
        }, {
            "r0_m": "nominal start of terminal descent (x, y, altitude)",
            "position_sigma_m": "1-sigma dispersion of the start",
            "nav_altitude_sigma_m": "initial altitude knowledge (orbit determination + map)",
        })),
        Group("terrain", _fields(TerrainSpec, {
            "kind": Choice(TERRAIN_KINDS), "slope_deg": Number(lo=0.0, hi=30.0),
            "slope_azimuth_deg": Number(), "crater_center_m": Vector(2),
            "crater_radius_m": _POSITIVE, "crater_depth_m": _NONNEGATIVE,
            "crater_rim_m": _NONNEGATIVE, "field_n_craters": Number(lo=1, hi=64, integer=True),
            "field_extent_m": _POSITIVE, "field_radius_m": Range(lo=1.0),
            "field_depth_to_diameter": Number(lo=0.0, hi=0.5), "field_keep_out_m": _NONNEGATIVE,
        }), "the ground under the approach (an option of conf/terrain/)"),
        Group("faults", (
            Key("name", Kind(), "custom"),
            *_fields(FaultCatalog, {
                "late_acquisition_rate": _RATE, "acquisition_range_m": Range(lo=1.0),
                "latency_rate": _RATE, "latency_s": Range(hi=5.0),
                "dropout_rate": _RATE, "dropout_prob": Range(hi=1.0),
                "bias_sigma_m": _NONNEGATIVE, "scale_factor_sigma": Number(lo=0.0, hi=0.2),
                "dark_terrain_rate": _RATE, "heavy_tail_scale_m": Range(),
                "absent_rate": _RATE, "rim_step_rate": _RATE,
                "rim_step_height_m": Range(), "rim_radius_m": Range(lo=1.0),
            }, {
                "acquisition_range_m": "HAKUTO-R M2: designed 3 km, first valid near 900 m",
                "dark_terrain_rate": "IM-2: heavy-tailed noise over dark terrain",
                "absent_rate": "IM-1: no LRF at all",
                "rim_step_rate": "HAKUTO-R M1: terrain step at a crater rim",
            }),
        ), "altimeter fault catalog: probability per scenario and parameter ranges"),
        Group("sensors", (
            Key("imu_noise_mps2", _NONNEGATIVE, default_of(ImuSpec, "noise_mps2")),
            Key("lrf_noise_m", _NONNEGATIVE, default_of(LrfSpec, "noise_m")),
            Key("lrf_rate_hz", _POSITIVE, default_of(LrfSpec, "rate_hz"),
                "sampled at most once per simulation step"),
            Key("lrf_max_range_m", _POSITIVE, default_of(LrfSpec, "max_range_m"),
                "designed first valid range"),
        )),
        Group("guidance", (
            *_fields(GuidanceSpec, {
                "lrf_expected_altitude_m": _NONNEGATIVE, "lrf_stale_after_s": _POSITIVE,
                "tgo_max_s": Number(lo=1.0),
            }, {"lrf_expected_altitude_m": "below it, a silent LRF triggers the contingency "
                "envelope"}),
            Key("altitude_breakpoints_m", _Breakpoints(), ALTITUDE_BREAKPOINTS_M,
                "altitudes of the gain table's rows"),
        )),
        Group("navigation", (
            Key("reject_policy", Choice(REJECT_POLICIES), default_of(SimSpec, "reject_policy"),
                "latch: HAKUTO-R Mission 1's behaviour"),
        )),
        Group("sim", (
            Key("dt_s", Number(lo=0.0, lo_open=True, hi=2.0), default_of(SimSpec, "dt_s")),
            Key("duration_s", _POSITIVE, default_of(SimSpec, "duration_s"),
                "planned horizon (>= dt_s): tuning flights end here"),
            Key("max_duration_s", _Horizon(), "auto",
                "evaluations fly on until touchdown or this (>= duration_s); auto: a time by "
                "which every flight is down; null: stop at duration_s"),
        )),
        Group("success", _fields(SuccessCriteria, {
            "vertical_speed_max_mps": _POSITIVE, "horizontal_speed_max_mps": _POSITIVE,
            "tilt_max_deg": _POSITIVE, "crash_speed_mps": _POSITIVE,
        })),
        Group("objective", _fields(ObjectiveSpec, {
            "margin": Number(lo=0.0, lo_open=True, hi=1.0), "sharpness": _POSITIVE,
            "miss_scale_m": _POSITIVE, "timeout_scale_m": _POSITIVE,
            "cvar_alpha": Number(lo=0.0, hi=0.999), "cvar_weight": _NONNEGATIVE,
            "fuel_weight": _NONNEGATIVE,
        }, {"cvar_alpha": "CVaR over the worst 1 - alpha of the minibatch's weighted mass"})),
        Group("optimizer", _fields(TrainSpec, {
            "steps": _COUNT, "batch_size": OrNone(_COUNT, ("auto",)),
            "learning_rate": _POSITIVE, "warmup_steps": Number(lo=0, integer=True),
            "clip_norm": _POSITIVE, "gate_softness": _NONNEGATIVE,
            "replay_every": Number(lo=0, integer=True),
            "replay_pool": Number(lo=2, hi=1 << 24, integer=True), "replay_worst": _COUNT,
            "replay_fraction": Number(lo=0.0, lo_open=True, hi=1.0),
            "frozen": Names(_GAIN_NAMES, "gain names"),
            "adversarial_fraction": Number(lo=0.0, hi=1.0, hi_open=True),
            "adversarial_every": _COUNT, "adversarial_steps": _COUNT,
        }, {
            "steps": "each of baseline (nominal sensors) and optimized (faults) tuning",
            "batch_size": "scenarios per step; auto: 128 on the CPU, 8,192 on a GPU",
            "replay_every": "failure replay: steps between pools flown forward (0: off)",
            "replay_worst": "the pool's riskiest members (< replay_pool): one stratum",
            "replay_fraction": "share of each minibatch drawn from them (weighted: unbiased)",
            "frozen": "gains left at their starting values",
            "adversarial_fraction": "share of each minibatch that is worst cases of the "
            "current gains (worst_case's gradient search; 0: off)",
            "adversarial_every": "steps between searches for those worst cases",
            "adversarial_steps": "ascent steps of each search",
        })),
        Group("evaluation", _fields(EvaluationSpec, {
            "n_scenarios": Number(lo=1, hi=MAX_INDEX, integer=True),
            "n_nominal_scenarios": Number(lo=1, hi=MAX_INDEX, integer=True),
            "seed_offset": Number(lo=1, integer=True),
            "chunk_size": OrNone(Number(lo=1, hi=1 << 26, integer=True), (None, "auto")),
            "keep_failures": Number(lo=0, hi=100_000, integer=True),
            "save_scenarios": Flag(), "indices": OrNone(_Indices(), (None, "none")),
        }, {
            "n_scenarios": "held-out faulty population (robust_gains) or Monte Carlo size",
            "n_nominal_scenarios": "robust_gains: the same tables with nominal sensors",
            "seed_offset": "populations drawn from seed + seed_offset; member i from (key, i)",
            "save_scenarios": "scenarios.npz with every scenario's parameters and outcome",
            "indices": "monte_carlo: re-fly exactly these members, with traces",
        })),
        Group("certification", (
            Key("unlandable", Names(tuple(FAULT_CLASSES), "fault classes"), ("lrf_absent",),
                "fault classes the sensor suite cannot land, certified apart (reported, never "
                "dropped). lrf_absent: with no altimeter the only altitude knowledge is the "
                "initial 300 m (1-sigma) estimate, and no gain table brakes for an error of "
                "that size within the propellant"),
        )),
        Group("replay", (
            Key("mission", _Text("the descent's name"), default_of(ReplaySpec, "mission")),
            *_fields(ReplaySpec, {
                "r0_m": OrNone(Vector()), "v0_mps": OrNone(Vector()),
                "altitude_error_m": Number(), "velocity_error_mps": Vector(),
                "imu_bias_mps2": Vector(), "lrf_acquisition_m": OrNone(_POSITIVE),
                "lrf_max_range_m": OrNone(_POSITIVE), "lrf_absent": Flag(),
                "lrf_bias_m": Number(), "heavy_tail_scale_m": _NONNEGATIVE,
                "rim_step_height_m": _NONNEGATIVE, "rim_radius_m": _POSITIVE,
                "slope_deg": Number(lo=0.0, hi=30.0),
                "reject_policy": OrNone(Choice(REJECT_POLICIES)),
                "report_height_m": OrNone(_POSITIVE),
            }, {
                "r0_m": "start (x, y, altitude); null: scenario.r0_m",
                "altitude_error_m": "estimate minus truth at the start (+: believes higher)",
                "velocity_error_mps": "estimate minus truth at the start",
                "imu_bias_mps2": "accelerometer bias the filter is not told of",
                "lrf_acquisition_m": "first valid LRF range below this; null: the design range",
                "lrf_max_range_m": "null: sensors.lrf_max_range_m",
                "heavy_tail_scale_m": "Student-t scale of dark-terrain LRF noise; 0: none",
                "rim_step_height_m": "crater rim under the approach (site on its floor); 0: none",
                "slope_deg": "ground slope at the site",
                "reject_policy": "null: navigation.reject_policy",
                "report_height_m": "the flight is read as it passes this height (e.g. last "
                "telemetry); null: not read",
            }),
        ), "one reported descent as one scenario (an option of conf/replay/); the main job "
           "flies its M2 replay from conf/replay/m2.yaml"),
        Group("envelope", _fields(EnvelopeSpec, {
            "axis": Names(AXES, "fault axes"),
            "values": OrNone(_Grid()),
            "points": Number(lo=2, hi=1000, integer=True),
            "n_scenarios": Number(lo=1, hi=MAX_INDEX, integer=True),
            "required_success": Number(lo=0.0, lo_open=True, hi=1.0),
        }, {
            "axis": "the fault axes flown, each fixed at every value of its grid",
            "values": "an explicit grid (one axis only); null: the axis's default grid",
            "points": "values per axis on the default grid (over and beyond the catalog)",
            "n_scenarios": "scenarios per grid point (member i: seed, axis, value, i)",
            "required_success": "the edge: worst value whose one-sided 95 % lower bound of "
            "success is at least this",
        })),
        Group("rare_event", _fields(RareEventSpec, {
            "method": Choice(RARE_EVENT_METHODS), "event": Choice(EVENTS),
            "threshold_mps": OrNone(_POSITIVE), "n_per_level": Number(lo=100, integer=True),
            "n_final": Number(lo=100, integer=True),
            "max_levels": Number(lo=1, hi=100, integer=True),
            "keep": Number(lo=0, hi=1000, integer=True), "by_fault": Flag(),
        }, {
            "method": "cross_entropy (importance sampling), subset_simulation or monte_carlo",
            "event": "failure (success rules broken) or touchdown_speed (above threshold_mps)",
            "threshold_mps": "touchdown_speed: the speed (> 0)",
            "n_per_level": "flights per level (the budget: n_per_level x levels + n_final)",
            "n_final": "cross_entropy: flights of the final estimate; monte_carlo: every flight",
            "keep": "failures listed by latent vector and re-flown",
            "by_fault": "also the probability given each fault class the catalog draws, "
            "on the catalog conditioned on it (metrics.json by_fault)",
        }), "rare-failure probabilities: +experiment=rare_event"),
        Group("worst_case", _fields(WorstCaseSpec, {
            "sigma_bound": Number(lo=0.0, lo_open=True, hi=10.0),
            "screen": Number(lo=0, hi=MAX_INDEX, integer=True),
            "restarts": Number(lo=1, hi=100_000, integer=True),
            "steps": Number(lo=1, hi=10_000, integer=True),
            "learning_rate": _POSITIVE,
            "mutation": Number(lo=0.0, hi=1.0),
            "seeds": Number(lo=1, hi=1000, integer=True),
            "budget": OrNone(Number(lo=1, hi=MAX_INDEX, integer=True)),
            "reference_samples": Number(lo=0, hi=MAX_INDEX, integer=True),
            "methods": Names(WORST_CASE_METHODS, "search methods"),
            "include_unlandable": Flag(),
            "target": Choice(WORST_CASE_TARGETS),
        }, {
            "sigma_bound": "dispersion and calibration draws searched within +- this many sigmas",
            "screen": "gradient: random points flown first; the restarts are their worst",
            "restarts": "gradient: points ascended at once; cma_es: its population",
            "steps": "gradient steps, each proposal flown with the hard rules",
            "learning_rate": "Adam's step in the logit space of the search cube",
            "mutation": "gradient: Gaussian step of the fault coordinates (in the cube)",
            "target": "gradient: what is ascended, impact_speed or the training loss",
            "seeds": "independent runs of each method (the falsification table's)",
            "budget": "flights per run (a gradient pass costs 3); null: the gradient search's",
            "reference_samples": "plain catalog samples whose worst is the bar; 0: none",
            "methods": "gradient, random and/or cma_es",
            "include_unlandable": "search the fault classes certified apart too",
        }), "worst cases: +experiment=worst_case"),
        Group("sensitivity", _fields(SensitivitySpec, {
            "parameters": OrNone(_Parameters()),
            "n_scenarios": Number(lo=1, hi=MAX_INDEX, integer=True),
            "fd_step": Number(lo=0.0, lo_open=True, hi=1.0),
            "pathwise": Flag(), "sobol": Flag(),
            "sobol_n": Number(lo=2, hi=1 << 16, integer=True),
            "sobol_scenarios": Number(lo=1, hi=1 << 20, integer=True),
        }, {
            "parameters": "which parameters (names or prefixes); null: every one: dispersion "
            "sigmas, fault rates and range ends, thrust bounds, Isp, initial mass, success "
            "limits",
            "n_scenarios": "members of the held-out population every figure is measured on",
            "fd_step": "central differences (thrust bounds, Isp, success verdicts): this "
            "many units each way",
            "pathwise": "also the reverse-mode derivative along the members' paths (one "
            "backward pass; blind to the loop's jumps)",
            "sobol": "also Sobol first-order and total indices (SALib) over the same "
            "parameters, each within +- half its unit",
            "sobol_n": "Sobol base samples, a power of 2: sobol_n (parameters + 2) samples",
            "sobol_scenarios": "members flown per Sobol sample (the same for every sample)",
        }), "sensitivities: +experiment=sensitivity"),
        Group("thrust_schedule", (
            *_fields(ScheduleSpec, {
                "glide_slope_deg": Number(lo=0.0, hi=89.0),
                "n_nodes": Number(lo=2, hi=1000, integer=True),
                "tf_steps": Number(lo=1, hi=100, integer=True),
                "tf_rtol": Number(lo=0.0, lo_open=True, hi=0.5),
                "refine": Number(lo=0, hi=20, integer=True),
                "ipm_iterations": Number(lo=5, hi=500, integer=True),
            }, {
                "glide_slope_deg": "minimum elevation seen from the target; 0 disables",
                "n_nodes": "zero-order-hold intervals",
                "tf_steps": "convex solves of the final-time search (upper limit)",
                "tf_rtol": "stop once the optimal final time is bracketed to this fraction",
                "ipm_iterations": "interior-point iterations per convex solve (upper limit)",
            }),
            Key("batch_size", _COUNT, 64, "problems solved at once"),
        )),
        Group("distributed", (
            Key("enabled", _Enabled(ENABLED), default_of(DistributedSpec, "enabled"),
                "auto: on inside a SLURM step of more than one task"),
            Key("coordinator_address", _Address(), None, "process 0; null: detected"),
            Key("num_processes", OrNone(Number(lo=1, hi=100_000, integer=True)), None),
            Key("process_id", OrNone(Number(lo=0, hi=100_000, integer=True)), None),
        ), "several processes (one per GPU or host) flying one population"),
        Group("checkpoint", (
            Key("every_steps", _COUNT, 10, "tuning state saved every this many steps"),
        )),
    )
}  # fmt: skip


def register_defaults() -> None:
    """Store every declared default in Hydra's ConfigStore as ``descent_opt_defaults``,
    which ``conf/config.yaml`` composes first."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="descent_opt_defaults", node=defaults_tree(GROUPS.values()))


def key_table() -> str:
    """Every key of the configuration (Markdown): default, what it accepts, meaning."""
    return key_reference(GROUPS.values())


def read_config(cfg: Mapping) -> RunConfig:
    """Check a composed configuration (a plain nested mapping) and build the typed one."""
    v = {n: g.read(cfg, () if n else [*GROUPS, "hydra"]) for n, g in GROUPS.items()}
    top, sim, ts = v[""], v["sim"], v["thrust_schedule"]
    vehicle = _vehicle(v["vehicle"], v["moon"]["gravity_mps2"])
    scenario = ScenarioSpec(**v["scenario"])
    if scenario.r0_m[2] <= 0.0:
        raise ConfigError(
            "scenario.r0_m", "a start above the surface (third number > 0)", list(scenario.r0_m)
        )
    if top["gains"] and len(top["gains"]) > 1 and top["experiment"] not in ("envelope",):
        raise ConfigError(
            "gains", "one path (a list is for +experiment=envelope)", list(top["gains"])
        )
    if sim["duration_s"] < sim["dt_s"]:
        raise ConfigError("sim.duration_s", f"a number >= {sim['dt_s']}", sim["duration_s"])
    gravity = v["moon"]["gravity_mps2"]
    longest = sim["max_duration_s"]
    if longest == "auto":
        longest = max(sim["duration_s"], decided_horizon(vehicle, gravity, scenario))
    elif longest is not None and longest < sim["duration_s"]:
        allowed = f"a number >= {sim['duration_s']} and <= 100000.0"
        raise ConfigError("sim.max_duration_s", allowed, longest)
    optimizer = TrainSpec(**v["optimizer"])
    if optimizer.replay_worst >= optimizer.replay_pool:
        raise ConfigError(
            "optimizer.replay_worst", "below optimizer.replay_pool", optimizer.replay_worst
        )
    distributed = DistributedSpec(**v["distributed"])
    if distributed.process_id is not None and distributed.num_processes is not None:
        if distributed.process_id >= distributed.num_processes:
            raise ConfigError(
                "distributed.process_id", "below distributed.num_processes", distributed.process_id
            )
    guidance = dict(v["guidance"])
    breakpoints = guidance.pop("altitude_breakpoints_m")
    se = v["sensors"]
    sim_spec = SimSpec(
        vehicle=vehicle,
        gravity_mps2=gravity,
        imu=ImuSpec(noise_mps2=se["imu_noise_mps2"]),
        lrf=LrfSpec(
            noise_m=se["lrf_noise_m"], rate_hz=se["lrf_rate_hz"], max_range_m=se["lrf_max_range_m"]
        ),
        guidance=GuidanceSpec(**guidance),
        nav_altitude_sigma_m=scenario.nav_altitude_sigma_m,
        nav_velocity_sigma_mps=scenario.nav_velocity_sigma_mps,
        nav_bias_sigma_mps2=scenario.imu_bias_sigma_mps2,
        dt_s=sim["dt_s"],
        duration_s=sim["duration_s"],
        max_duration_s=longest,
        reject_policy=v["navigation"]["reject_policy"],
    )
    shown = {}
    for name, group in GROUPS.items():
        shown.update(group.shown(v[name]))
    return RunConfig(
        experiment=top["experiment"] or None,
        seed=top["seed"],
        gains_path=top["gains"][0] if top["gains"] else None,
        gains_paths=top["gains"] or (),
        vehicle=vehicle,
        sim=sim_spec,
        scenario=scenario,
        terrain=TerrainSpec(**v["terrain"]),
        faults=FaultCatalog(**_without(v["faults"], "name")),
        success=SuccessCriteria(**v["success"]),
        objective=ObjectiveSpec(**v["objective"]),
        optimizer=optimizer,
        evaluation=EvaluationSpec(**v["evaluation"]),
        replay=ReplaySpec(**v["replay"]),
        envelope=_envelope(v["envelope"]),
        sensitivity=_sensitivity(v["sensitivity"]),
        rare_event=_rare_event(v["rare_event"]),
        altitude_breakpoints_m=breakpoints,
        progress=top["progress"],
        precision=top["precision"],
        schedule=ScheduleSpec(vehicle=vehicle, gravity_mps2=gravity, **_without(ts, "batch_size")),
        schedule_batch_size=ts["batch_size"],
        distributed=distributed,
        compile_cache_dir=top["compile_cache_dir"],
        checkpoint_every_steps=v["checkpoint"]["every_steps"],
        resume=top["resume"],
        unlandable=v["certification"]["unlandable"],
        worst_case=_worst_case(v["worst_case"]),
        settings_json=json.dumps(shown, sort_keys=True, default=str),
    )


def _rare_event(values: dict) -> RareEventSpec:
    spec = RareEventSpec(**values)
    if spec.event == "touchdown_speed" and spec.threshold_mps is None:
        raise ConfigError(
            "rare_event.threshold_mps", "a speed > 0 with event touchdown_speed", None
        )
    if spec.method == "subset_simulation" and spec.n_per_level % 10:
        raise ConfigError("rare_event.n_per_level", "a multiple of 10 for subset_simulation",
                          spec.n_per_level)  # fmt: skip
    return spec


def _worst_case(values: dict) -> WorstCaseSpec:
    spec = WorstCaseSpec(**values)
    if not spec.methods:
        raise ConfigError("worst_case.methods", "a non-empty list of search methods", [])
    return spec


def _sensitivity(values: dict) -> SensitivitySpec:
    spec = SensitivitySpec(**values)
    if spec.sobol_n & (spec.sobol_n - 1):
        raise ConfigError("sensitivity.sobol_n", "a power of 2 >= 2", spec.sobol_n)
    return spec


def _envelope(values: dict) -> EnvelopeSpec:
    spec = EnvelopeSpec(**values)
    if not spec.axis:
        raise ConfigError("envelope.axis", "a non-empty list of fault axes", [])
    if spec.values is not None and len(spec.axis) != 1:
        raise ConfigError(
            "envelope.values",
            "a grid for one axis only (set envelope.axis=[NAME])",
            list(spec.values),
        )
    if spec.values is not None:
        (axis,) = spec.axis
        lo, hi = VALUE_BOUNDS[axis]
        if any((lo is not None and v < lo) or (hi is not None and v > hi) for v in spec.values):
            bounds = " and ".join(
                f"{word} {b:g}" for word, b in ((">=", lo), ("<=", hi)) if b is not None
            )
            raise ConfigError("envelope.values", f"values of {axis} {bounds}", list(spec.values))
    return spec


def _without(values: dict, *names: str) -> dict:
    return {k: x for k, x in values.items() if k not in names}


def _vehicle(values: dict, gravity_mps2: float) -> Vehicle:
    v = Vehicle(**_without(values, "name", "note"))
    if v.mass_dry_kg >= v.mass_initial_kg:
        raise ConfigError("vehicle.mass_dry_kg", "below vehicle.mass_initial_kg", v.mass_dry_kg)
    if v.thrust_min_n > v.thrust_max_n:
        raise ConfigError("vehicle.thrust_min_n", "at most vehicle.thrust_max_n", v.thrust_min_n)
    if v.thrust_max_n <= v.mass_initial_kg * gravity_mps2:
        raise ConfigError(
            "vehicle.thrust_max_n",
            "above the initial weight mass_initial_kg * gravity = "
            f"{v.mass_initial_kg * gravity_mps2:.0f} N (the lander could never stop descending)",
            v.thrust_max_n,
        )
    return v


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
