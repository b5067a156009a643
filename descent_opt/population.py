"""Populations of any size, flown in chunks with streaming statistics.

Every evaluation of a gain table goes through :func:`fly_population`: members ``0 .. n-1`` of
the population of a key (member ``i`` a pure function of the key and ``i``, see
:mod:`descent_opt.scenarios`) are drawn and flown one chunk at a time and folded into a
:class:`Tally`: exact counts, percentiles exact up to a million values and from a mergeable
relative-error sketch beyond (:mod:`descent_opt.statistics`), success per fault class and
per bin of each fault parameter, touchdown-speed histograms and the worst failures. Unless
per-scenario records are asked for, each piece is folded on the device that flew it
(:mod:`descent_opt.device_statistics`) and memory does not grow with ``n``. Tallies of
disjoint index ranges merge, so a population can be split over processes.

:func:`fly_members` re-flies chosen members by index, with their per-step traces; their
outcomes are bit-identical to the population run's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Int, PRNGKeyArray

from descent_opt import device_statistics
from descent_opt.certification import certify
from descent_opt.device_program import DeviceProgram
from descent_opt.device_statistics import COUNTS, QUANTITIES
from descent_opt.distributed import allgather_objects, index_range
from descent_opt.faults import FAULT_CLASSES, FAULT_PARAMETERS, Faults
from descent_opt.guidance import Gains
from descent_opt.objectives import LandingMetrics, SuccessCriteria, landing_metrics
from descent_opt.parallel import default_workers, map_pieces
from descent_opt.scenarios import Scenario, ScenarioSampler
from descent_opt.simulate import SimSpec, Trace, _simulate, simulate_traces
from descent_opt.statistics import ExactOrSketch, clopper_pearson, clopper_pearson_lower

FAULT_FIELDS = tuple(f.name for f in dataclasses.fields(Faults))
DISPERSION_FIELDS = (
    "position0_m",
    "velocity0_mps",
    "mass0_kg",
    "nav_position_error_m",
    "nav_velocity_error_mps",
    "imu_bias_mps2",
)
SPEED_EDGES_MPS = np.logspace(-2, 3, 101)  # touchdown-speed histogram bins
N_PARAMETER_BINS = 12
EXACT_LIMIT = 1_000_000  # percentiles are exact up to this many scenarios
MAX_MEMBER = 2**32 - 1  # members are drawn with fold_in of a 32-bit index


def _method(q: ExactOrSketch) -> str:
    if q.method == "exact":
        return "exact (linear interpolation between order statistics)"
    return f"sketch: log buckets, relative error <= {q.sketch.relative_accuracy:g}"


def parameter_bins(sampler: ScenarioSampler) -> dict[str, tuple[np.ndarray, Callable]]:
    """Bin edges of each fault parameter (over its configured range) and which scenarios
    carry that fault; parameters whose range is a single value are left out."""
    catalog = jax.tree.map(np.asarray, sampler.catalog)
    out = {}
    for name, (span, carrier) in FAULT_PARAMETERS.items():
        lo, hi = (float(x) for x in span(catalog))
        if hi > lo:
            out[name] = (np.linspace(lo, hi, N_PARAMETER_BINS + 1), carrier)
    return out


@dataclasses.dataclass
class Tally:
    """Streaming statistics of one population flown with one gain table."""

    keep_failures: int = 20
    exact_limit: int = EXACT_LIMIT
    unlandable: tuple[str, ...] = ()  # fault classes certified apart
    planned_duration_s: float = float("inf")  # touchdowns after it are counted as late
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    quantities: dict[str, ExactOrSketch] = dataclasses.field(default_factory=dict)
    by_fault: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # [flights, successes] of the scenarios in no unlandable class, and per class among them
    landable: list[int] = dataclasses.field(default_factory=lambda: [0, 0])
    by_fault_landable: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    by_parameter: dict[str, dict] = dataclasses.field(default_factory=dict)
    speed_histograms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    failures: dict[str, np.ndarray] | None = None
    nonfinite_indices: list[int] = dataclasses.field(default_factory=list)  # the first ones

    def __post_init__(self):
        names = ("n", "success", "crash", "exhausted", "timeout", "landed", "nonfinite")
        for name in names + ("late", "lrf_locked_out", "lrf_locked_out_success"):
            self.counts.setdefault(name, 0)
        for name in QUANTITIES:
            self.quantities.setdefault(name, ExactOrSketch(exact_limit=self.exact_limit))
        for name in FAULT_CLASSES:
            self.by_fault.setdefault(name, [0, 0])
            self.by_fault_landable.setdefault(name, [0, 0])
        for name in ("touchdown_vz_mps", "touchdown_vh_mps"):
            self.speed_histograms.setdefault(name, np.zeros(len(SPEED_EDGES_MPS) + 1, np.int64))

    def add(self, records: dict[str, np.ndarray], bins: dict[str, tuple]) -> None:
        """Fold in the records of some scenarios (see :func:`records_of`)."""
        success = records["success"]
        faults = Faults(**{k: records[k] for k in FAULT_FIELDS})
        c = self.counts
        c["n"] += success.size
        c["success"] += int(success.sum())
        c["crash"] += int(records["crash"].sum())
        c["exhausted"] += int(records["exhausted"].sum())
        c["landed"] += int(records["landed"].sum())
        c["timeout"] += int((~records["landed"] & ~records["exhausted"]).sum())
        c["late"] += int((records["touchdown_time_s"] > self.planned_duration_s).sum())
        locked = records["lrf_locked_out"]
        c["lrf_locked_out"] += int(locked.sum())
        c["lrf_locked_out_success"] += int((locked & success).sum())
        # A diverged flight (non-finite outcome) is a failure, counted and listed, and kept
        # out of the percentiles, histograms and the failure ranking.
        finite = np.logical_and.reduce([np.isfinite(records[q]) for q in QUANTITIES])
        kept = records
        if not finite.all():
            c["nonfinite"] += int((~finite).sum())
            self._note_nonfinite(records["index"][~finite])
            kept = {k: v[finite] for k, v in records.items()}
        for name in QUANTITIES:
            self.quantities[name].add(kept[name])
        members = {name: np.asarray(member(faults)) for name, member in FAULT_CLASSES.items()}
        landable = np.ones_like(success)
        for name in self.unlandable:
            landable &= ~members[name]
        self.landable[0] += int(landable.sum())
        self.landable[1] += int(success[landable].sum())
        for name, mask in members.items():
            self.by_fault[name][0] += int(mask.sum())
            self.by_fault[name][1] += int(success[mask].sum())
            self.by_fault_landable[name][0] += int((mask & landable).sum())
            self.by_fault_landable[name][1] += int(success[mask & landable].sum())
        for name, (edges, active) in bins.items():
            zeros = np.zeros(len(edges) - 1, np.int64)
            entry = self.by_parameter.setdefault(
                name, {"edges": edges, "n": zeros, "success": zeros.copy()}
            )
            mask = active(faults)
            where = np.clip(
                np.searchsorted(edges, records[name][mask], "right") - 1, 0, len(edges) - 2
            )
            entry["n"] += np.bincount(where, minlength=len(edges) - 1)
            entry["success"] += np.bincount(where[success[mask]], minlength=len(edges) - 1)
        for name, hist in self.speed_histograms.items():
            hist += np.bincount(
                np.searchsorted(SPEED_EDGES_MPS, kept[name], "right"), minlength=hist.size
            )
        failed = np.flatnonzero(~kept["success"])
        if self.keep_failures and failed.size:
            if failed.size > self.keep_failures:  # only the worst can be kept
                worst = np.lexsort((kept["index"][failed], -kept["touchdown_speed_mps"][failed]))
                failed = failed[worst[: self.keep_failures]]
            self.add_failures({k: v[failed] for k, v in kept.items()})

    def add_folded(self, piece: dict, first: int, bins: dict[str, tuple]) -> None:
        """Fold in a piece folded on its device (:func:`device_statistics.fold_piece`),
        whose position ``p`` is member ``first + p``: the same tally as :meth:`add` of the
        piece's records, bit for bit. Outside exact mode the quantities' sketch counts
        arrive apart (:meth:`add_sketch_counts`)."""
        for name, v in zip(COUNTS, piece["counts"]):
            self.counts[name] += int(v)
        diverged = piece["nonfinite_positions"][piece["nonfinite_ok"]]
        if diverged.size:
            self._note_nonfinite(first + diverged.astype(np.int64))
        for i in (0, 1):
            self.landable[i] += int(piece["landable"][i])
        for k, name in enumerate(FAULT_CLASSES):
            for i in (0, 1):
                self.by_fault[name][i] += int(piece["by_fault"][k, i])
                self.by_fault_landable[name][i] += int(piece["by_fault_landable"][k, i])
        for name, (edges, _) in bins.items():
            zeros = np.zeros(len(edges) - 1, np.int64)
            entry = self.by_parameter.setdefault(
                name, {"edges": edges, "n": zeros, "success": zeros.copy()}
            )
            entry["n"] += piece["parameters"][name][0]
            entry["success"] += piece["parameters"][name][1]
        for name, hist in self.speed_histograms.items():
            hist += piece["histograms"][name]
        if "values" in piece:
            for name in QUANTITIES:
                self.quantities[name].add(piece["values"][name][piece["kept"]])
        ok = piece["failure_ok"]
        if self.keep_failures and ok.any():
            dispersion, faults, outcome, metrics = jax.tree.map(
                lambda x: x[ok], piece["failure_rows"]
            )
            positions = piece["failure_positions"][ok].astype(np.int64)
            self.add_failures(_records(first + positions, dispersion, faults, outcome, metrics))

    def add_sketch_counts(self, counts, sums: dict, extremes: dict) -> None:
        """Fold in the quantities' sketch counts gathered on a device, (positive, negative,
        zero) per quantity, with their exact sums (:func:`statistics.fixed_point_sum`
        units) and extremes (each ``(min, max)``) by name; percentiles come from the sketch
        from here on."""
        positive, negative, zero = counts
        for k, name in enumerate(QUANTITIES):
            low, high = extremes.get(name, (np.inf, -np.inf))
            self.quantities[name].add_counts(
                positive[k],
                negative[k],
                int(zero[k]),
                sums.get(name, 0),
                low,
                high,
            )

    def _note_nonfinite(self, indices) -> None:
        self.nonfinite_indices = sorted({*self.nonfinite_indices, *map(int, indices)})[:100]

    def merge(self, other: "Tally") -> None:
        """Fold in the tally of another, disjoint set of scenarios."""
        self._note_nonfinite(other.nonfinite_indices)
        for k, v in other.counts.items():
            self.counts[k] += v
        for k, q in other.quantities.items():
            self.quantities[k].merge(q)
        for mine, theirs in (
            (self.by_fault, other.by_fault),
            (self.by_fault_landable, other.by_fault_landable),
        ):
            for k, (n, s) in theirs.items():
                mine[k][0] += n
                mine[k][1] += s
        self.landable[0] += other.landable[0]
        self.landable[1] += other.landable[1]
        for k, entry in other.by_parameter.items():
            mine = self.by_parameter.setdefault(
                k, {"edges": entry["edges"], "n": 0 * entry["n"], "success": 0 * entry["n"]}
            )
            mine["n"] = mine["n"] + entry["n"]
            mine["success"] = mine["success"] + entry["success"]
        for k, h in other.speed_histograms.items():
            self.speed_histograms[k] = self.speed_histograms[k] + h
        if other.failures is not None:
            self.add_failures(other.failures)

    def add_failures(self, failures: dict[str, np.ndarray]) -> None:
        """Keep the worst ``keep_failures`` of the kept ones and these: fastest touchdown
        first, ties by index, so the order never depends on how the population was cut."""
        worst = failures
        if self.failures is not None:
            worst = {k: np.concatenate([self.failures[k], failures[k]]) for k in failures}
        order = np.lexsort((worst["index"], -worst["touchdown_speed_mps"]))
        self.failures = {k: v[order[: self.keep_failures]] for k, v in worst.items()}

    def summary(self) -> dict:
        """The population's headline numbers with their confidence intervals (the keys of
        the ``monte_carlo`` metrics contract)."""
        c = self.counts
        n = c["n"]
        rate = lambda k: c[k] / n if n else None  # noqa: E731

        def stat(name: str, p: float | None = None, field: str = "mean"):
            """A percentile (or ``max``, ``mean``) of a quantity; None if no finite value
            was seen (every flight diverged)."""
            q = self.quantities[name]
            if not q.count:
                return None
            return q.quantile(p) if p is not None else getattr(q, field)

        out = {
            "n_scenarios": n,
            "success_rate": rate("success"),
            "success_rate_ci95": list(clopper_pearson(c["success"], n, 0.95)),
            "success_rate_lower95": clopper_pearson_lower(c["success"], n, 0.95),
            "n_failures": n - c["success"],
            "n_nonfinite": c["nonfinite"],  # flights that diverged (counted as failures)
            "nonfinite_indices": self.nonfinite_indices,
            "crash_rate": rate("crash"),
            "exhausted_rate": rate("exhausted"),
            "timeout_rate": rate("timeout"),
            "landed_rate": rate("landed"),
            "fuel_kg_mean": stat("fuel_kg"),
            "fuel_kg_p50": stat("fuel_kg", 0.5),
            "fuel_kg_p99": stat("fuel_kg", 0.99),
            "touchdown_vz_mps_p50": stat("touchdown_vz_mps", 0.5),
            "touchdown_vz_mps_p99": stat("touchdown_vz_mps", 0.99),
            "touchdown_vz_mps_max": stat("touchdown_vz_mps", field="max"),
            "touchdown_vh_mps_p99": stat("touchdown_vh_mps", 0.99),
            "touchdown_speed_mps_p99": stat("touchdown_speed_mps", 0.99),
            "tilt_deg_p99": stat("tilt_deg", 0.99),
            "miss_distance_m_p99": stat("miss_distance_m", 0.99),
            "percentile_method": _method(self.quantities["fuel_kg"]),
            # When flights end (touchdown, or impact after exhaustion): every one is flown
            # until it is down, so a slow descent shows up here, not as a timeout.
            "touchdown_time_s": {
                "p01": stat("touchdown_time_s", 0.01),
                "p50": stat("touchdown_time_s", 0.5),
                "p90": stat("touchdown_time_s", 0.9),
                "p99": stat("touchdown_time_s", 0.99),
                "p999": stat("touchdown_time_s", 0.999),
                "max": stat("touchdown_time_s", field="max"),
                "planned_s": self.planned_duration_s,
                "late_rate": rate("late"),  # down after the planned horizon
            },
            # Flights whose filter was turning valid ranges away at the end (Mission 1).
            "lrf_locked_out_rate": rate("lrf_locked_out"),
            "lrf_locked_out_success_rate": (
                c["lrf_locked_out_success"] / c["lrf_locked_out"] if c["lrf_locked_out"] else None
            ),
            "certification": certify(
                (n, c["success"]),
                tuple(self.landable),
                {k: tuple(v) for k, v in self.by_fault_landable.items()},
                {k: tuple(v) for k, v in self.by_fault.items()},
                self.unlandable,
            ),
            "by_fault": {
                name: {
                    "n_scenarios": m,
                    "success_rate": s / m if m else None,
                    "success_rate_ci95": list(clopper_pearson(s, m, 0.95)),
                }
                for name, (m, s) in self.by_fault.items()
            },
        }
        return out

    def failure_list(self) -> list[dict]:
        """The kept failures, worst first, with their fault parameters."""
        f = self.failures
        if f is None:
            return []
        out = []
        for i in range(f["index"].size):
            kind = (
                "exhausted"
                if f["exhausted"][i]
                else "timeout"
                if not f["landed"][i]
                else "crash"
                if f["crash"][i]
                else "limits"
            )
            out.append(
                {
                    "index": int(f["index"][i]),
                    "failure": kind,
                    "touchdown_speed_mps": float(f["touchdown_speed_mps"][i]),
                    "touchdown_vz_mps": float(f["touchdown_vz_mps"][i]),
                    "touchdown_vh_mps": float(f["touchdown_vh_mps"][i]),
                    "tilt_deg": float(f["tilt_deg"][i]),
                    "fuel_kg": float(f["fuel_kg"][i]),
                    "touchdown_time_s": float(f["touchdown_time_s"][i]),
                    "lrf_locked_out": bool(f["lrf_locked_out"][i]),
                    "lrf_ignored_s": float(f["lrf_ignored_s"][i]),
                    "lrf_first_accept_height_m": float(f["lrf_first_accept_height_m"][i]),
                    "faults": {
                        k: (bool(f[k][i]) if k == "absent" else float(f[k][i]))
                        for k in FAULT_FIELDS
                    },
                    "dispersion": {k: f[k][i].tolist() for k in DISPERSION_FIELDS},
                }
            )
        return out


def _dispersion(scenarios: Scenario) -> tuple:
    """The dispersed initial conditions, in the order of ``DISPERSION_FIELDS``."""
    return tuple(getattr(scenarios, k) for k in DISPERSION_FIELDS)


def records_of(
    indices: np.ndarray,
    scenarios: Scenario,
    outcome,
    criteria: SuccessCriteria,
    metrics: LandingMetrics | None = None,
) -> dict[str, np.ndarray]:
    """Per-scenario dispersed parameters and outcome as NumPy arrays (one row each);
    ``metrics``: the outcome's :func:`landing_metrics` when already computed."""
    if metrics is None:
        metrics = landing_metrics(outcome, criteria)
    return _records(indices, _dispersion(scenarios), scenarios.faults, outcome, metrics)


def _records(indices, dispersion: tuple, faults: Faults, outcome, metrics) -> dict:
    m = jax.tree.map(np.asarray, metrics)
    o = jax.tree.map(np.asarray, outcome)
    return {
        "index": np.asarray(indices, np.int64),
        **{k: np.asarray(v) for k, v in zip(DISPERSION_FIELDS, dispersion)},
        **{k: np.asarray(getattr(faults, k)) for k in FAULT_FIELDS},
        "landed": o.landed,
        "exhausted": o.exhausted,
        "touchdown_time_s": o.touchdown_time_s,
        "touchdown_velocity_mps": o.touchdown_velocity_mps,
        "touchdown_position_m": o.touchdown_position_m,
        "touchdown_speed_mps": m.speed_mps,
        "touchdown_vz_mps": m.vertical_speed_mps,
        "touchdown_vh_mps": m.horizontal_speed_mps,
        "tilt_deg": m.tilt_deg,
        "fuel_kg": m.fuel_kg,
        "miss_distance_m": m.miss_distance_m,
        "lrf_first_accept_height_m": o.lrf_first_accept_height_m,
        "lrf_ignored_s": o.lrf_ignored_s,
        "lrf_locked_out": o.lrf_locked_out,
        "crash": m.crash,
        "success": m.success,
    }


@eqx.filter_jit
def _draw(sampler: ScenarioSampler, key: PRNGKeyArray, indices) -> Scenario:
    return sampler.members(key, indices)


def _simulate_members(spec: SimSpec, gains: Gains, scenarios: Scenario, criteria):
    # The landing metrics inside the program: computed outside, their operations would
    # be compiled again, one by one, for every device.
    outcome = _simulate(spec, gains, scenarios)
    return outcome, landing_metrics(outcome, criteria)


# Every piece of every population is flown by this program, compiled once and loaded onto
# each local device (:mod:`descent_opt.device_program`); scenarios are drawn on the first
# device (a small fraction of the work: not worth a copy of the program per device).
_fly = DeviceProgram(_simulate_members)


def flight_size() -> int:
    """Scenarios per simulator call: every member is flown by the same compiled program,
    whatever the population size, the chunk size or the members asked for, which is what
    makes a member's outcome bit-identical across them. 4,096 on the CPU (one piece per
    core at a time), 2^18 on accelerators."""
    return 4096 if jax.default_backend() == "cpu" else 1 << 18


def default_chunk_size() -> int:
    """Scenarios drawn and folded into the statistics at a time: 16 flight pieces on the
    CPU; one on accelerators, where a piece is already large (and, when records are kept,
    folding it on the host takes about as long as flying it, so the two overlap piece by
    piece)."""
    return (16 if jax.default_backend() == "cpu" else 1) * flight_size()


def _fly_pieces(
    spec: SimSpec,
    gains: Gains,
    sampler: ScenarioSampler,
    criteria: SuccessCriteria,
    key: PRNGKeyArray,
    pieces: list[np.ndarray],
    finish: Callable | None = None,
) -> list:
    """Each piece of members listed in ``pieces`` (each ``flight_size()`` long) drawn and
    flown from threads, and ``finish(device, indices, scenarios, outcome, metrics)`` of it
    (default: its records), in order: one piece per core at a time on a single CPU
    device, one piece per device at a time when there are several local devices (piece
    ``k`` on device ``k mod count``). Every piece runs the same single-device program: a
    program partitioned over devices (SPMD) rounds differently in the last bit for a few
    percent of members, which could flip a borderline landing; the program is compiled once
    and loaded onto the other devices (:class:`DeviceProgram`)."""
    spec = eqx.tree_at(lambda s: s.chunk_size, spec, len(pieces[0]), is_leaf=lambda x: x is None)
    devices = jax.local_devices()

    def fly(job):
        position, indices = job
        device = devices[position % len(devices)]
        # Waiting for each program keeps the threads' flights from queueing behind each
        # other's on one device (measured: a quarter slower without).
        scenarios = jax.block_until_ready(_draw(sampler, key, np.asarray(indices, np.uint32)))
        outcome, metrics = jax.block_until_ready(_fly(device, spec, gains, scenarios, criteria))
        if finish is None:
            return records_of(indices, scenarios, outcome, criteria, metrics)
        return finish(device, indices, scenarios, outcome, metrics)

    workers = len(devices) if len(devices) > 1 else default_workers()
    return map_pieces(fly, list(enumerate(pieces)), workers)


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _DeviceFold:
    """Folds each flown piece on its device (:mod:`descent_opt.device_statistics`) and
    the summaries into a :class:`Tally` on the host."""

    def __init__(self, tally: Tally, bins: dict, planned_duration_s: float, end: int, exact: bool):
        self.tally, self.bins, self.end = tally, bins, end
        sketch = tally.quantities[QUANTITIES[0]].sketch
        self.dtype = np.dtype(jax.dtypes.canonicalize_dtype(np.float64))
        self.tables = device_statistics.fold_tables(
            sketch,
            SPEED_EDGES_MPS,
            {k: edges for k, (edges, _) in bins.items()},
            planned_duration_s,
            self.dtype,
        )
        self.spec = device_statistics.FoldSpec(
            keep_failures=tally.keep_failures,
            unlandable=tuple(tally.unlandable),
            parameters=tuple(bins),
            exact=exact,
        )
        self.sketches = device_statistics.SketchAccumulator(sketch.n_buckets)
        self.sums = dict.fromkeys(QUANTITIES, 0)
        self.extremes = {k: (np.inf, -np.inf) for k in QUANTITIES}

    def __call__(self, device, indices, scenarios, outcome, metrics):
        """The flight threads' ``finish``: (first member, its summary). CPU devices share
        the host's memory: their pieces are all folded by the first one's program (one
        compilation, not one per device)."""
        if device.platform == "cpu":
            device = jax.local_devices(backend="cpu")[0]
        first = int(indices[0])
        n_valid = int(np.clip(self.end - first, 0, len(indices)))
        rows = (_dispersion(scenarios), scenarios.faults, outcome, metrics)
        piece = device_statistics.fold_piece(
            device, self.spec, self.tables, n_valid, rows, self.sketches
        )
        return first, n_valid, piece

    def add(self, folded: list) -> int:
        """Fold the pieces' summaries into the tally; the members counted."""
        done = 0
        for first, n_valid, piece in folded:
            self.tally.add_folded(piece, first, self.bins)
            if "sums" in piece:
                for name in QUANTITIES:
                    self.sums[name] += device_statistics.fixed_point_parts(
                        piece["sums"][name], self.dtype
                    )
                    low, high = self.extremes[name]
                    self.extremes[name] = (
                        min(low, float(piece["min"][name])),
                        max(high, float(piece["max"][name])),
                    )
            if "flushed" in piece:
                self.tally.add_sketch_counts(piece["flushed"], {}, {})
            done += n_valid
        return done

    def finish(self) -> None:
        """Hand the sketch counts left on the devices, with the sums and extremes, to the
        tally."""
        if self.spec.exact:
            return
        q, n = len(QUANTITIES), self.sketches.n_buckets
        total = [np.zeros((q, n), np.int64), np.zeros((q, n), np.int64), np.zeros(q, np.int64)]
        for counts in self.sketches.drain():
            for t, c in zip(total, counts):
                t += c
        self.tally.add_sketch_counts(total, self.sums, self.extremes)


@dataclasses.dataclass
class PopulationResult:
    tally: Tally
    records: dict[str, np.ndarray] | None  # every scenario's row, when asked for
    wall_time_s: float
    chunk_size: int

    @property
    def scenarios_per_s(self) -> float:
        return self.tally.counts["n"] / self.wall_time_s if self.wall_time_s > 0 else 0.0


def fly_population(
    spec: SimSpec,
    gains: Gains,
    sampler: ScenarioSampler,
    criteria: SuccessCriteria,
    n: int,
    *,
    key: PRNGKeyArray,
    start: int = 0,
    chunk_size: int | None = None,
    keep_failures: int = 20,
    keep_records: bool = False,
    unlandable: tuple[str, ...] = (),
    progress: Callable[[int, Tally], None] | None = None,
    fold_on_device: bool | None = None,
    exact_limit: int = EXACT_LIMIT,
) -> PopulationResult:
    """Fly members ``start .. start+n-1`` of the population of ``key`` with ``gains``, about
    ``chunk_size`` at a time (default :func:`default_chunk_size`; rounded up to whole
    flight pieces, :func:`flight_size`); ``progress(done, tally)`` after each chunk. The last
    piece reaches past the end and its extra members are dropped. ``unlandable``: fault
    classes certified apart (:mod:`descent_opt.certification`). Under ``jax.distributed``
    each process flies its own contiguous share of the members and every process returns
    the whole population's tally (and records).

    Each piece is folded into the statistics on the device that flew it
    (``fold_on_device``, the default unless every record is kept) or from its records on
    the host: the same tally bit for bit. Percentiles are exact up to ``exact_limit``
    members and sketched beyond."""
    begin = time.perf_counter()
    processes = jax.process_count()
    total = n
    if processes > 1:  # each process flies its own index range; results gathered below
        offset, n = index_range(n, jax.process_index(), processes)
        start += offset
    piece = flight_size()
    size = max(1, -(-min(chunk_size or default_chunk_size(), n) // piece)) * piece
    bins = parameter_bins(sampler)
    tally = Tally(
        keep_failures=keep_failures,
        exact_limit=exact_limit,
        unlandable=tuple(unlandable),
        planned_duration_s=spec.duration_s,
    )
    kept = []
    end = start + n
    done = reported = 0  # this process's members folded, and the share of ``total`` reported
    if fold_on_device is None:
        fold_on_device = not keep_records
    device_fold = None
    if fold_on_device:
        device_fold = _DeviceFold(tally, bins, spec.duration_s, end, total <= exact_limit)

    def fold(parts: list) -> None:
        nonlocal done
        if device_fold is not None:
            done += device_fold.add(parts)
            return
        records = _concatenate(parts)
        valid = records["index"] < end
        if not valid.all():
            records = {k: v[valid] for k, v in records.items()}
        tally.add(records, bins)
        if keep_records:
            kept.append(records)
        done += int(valid.sum())

    def settle(folding) -> None:
        """Wait for a chunk's folding, then report it (a process's bar runs to the
        population's size)."""
        nonlocal reported
        if folding is None:
            return
        folding.result()
        if progress is not None:
            share = done * total // n
            progress(share - reported, tally)
            reported = share

    if progress is not None:
        progress(0, tally)  # starts the clock of a progress bar before the first compile
    # Each chunk is folded into the statistics on one background thread, in order and chunk
    # by chunk as before, while the next chunk flies: on a GPU the host fold of records takes
    # longer than the flight (the device fold leaves only the summaries to add here).
    with ThreadPoolExecutor(1) as folder:
        folding = None
        for first in range(start, end, size):
            pieces = [np.arange(p, p + piece) for p in range(first, min(first + size, end), piece)]
            parts = _fly_pieces(spec, gains, sampler, criteria, key, pieces, device_fold)
            settle(folding)
            folding = folder.submit(fold, parts)
        settle(folding)
    if device_fold is not None:
        device_fold.finish()
    if processes > 1:
        parts = allgather_objects((tally, kept))
        tally = parts[0][0]
        for other, _ in parts[1:]:
            tally.merge(other)
        kept = [r for _, records in parts for r in records]
    records = None
    if keep_records and kept:
        records = {k: np.concatenate([r[k] for r in kept]) for k in kept[0]}
    return PopulationResult(tally, records, time.perf_counter() - begin, size)


def fly_members(
    spec: SimSpec,
    gains: Gains,
    sampler: ScenarioSampler,
    criteria: SuccessCriteria,
    indices: Int[Array, " k"] | list[int],
    *,
    key: PRNGKeyArray,
) -> tuple[dict[str, np.ndarray], Trace]:
    """Re-fly members ``indices`` of the population of ``key``: their records (bit-identical
    to the population run's) and per-step traces (scenario first)."""
    indices = np.asarray(indices, np.int64)
    piece = flight_size()
    # The piece is filled up with the members that follow the last one asked for (a copy
    # of one member would fly on as long as it does, thousands of times over).
    filler = (indices.max() + 1 + np.arange(-len(indices) % piece)) % (MAX_MEMBER + 1)
    padded = np.concatenate([indices, filler])
    pieces = [padded[p : p + piece] for p in range(0, len(padded), piece)]
    records = _concatenate(_fly_pieces(spec, gains, sampler, criteria, key, pieces))
    records = {k: v[: len(indices)] for k, v in records.items()}
    scenarios = _draw(sampler, key, indices.astype(np.uint32))
    _, traces = simulate_traces(spec, gains, scenarios)
    return records, jax.tree.map(np.asarray, traces)
