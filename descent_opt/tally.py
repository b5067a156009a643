"""Statistics of a flown population as a mergeable value.

A :class:`Tally` is built from one chunk of a population, either from the chunk's
per-scenario records (:meth:`Tally.of_records`, rows as :func:`records_from` lays them out)
or from the summary its device folded (:meth:`Tally.of_folded`,
:mod:`descent_opt.device_statistics`), and tallies are combined only by :meth:`Tally.merge`.
Merging is associative and commutative, so a population's tally does not depend on how it
was cut into chunks, pieces or processes, nor on the order they were merged in: counts add,
percentiles merge exactly (:mod:`descent_opt.statistics`), and the kept failures are the
worst of the union in an order fixed by speed and index.

Fault classes and the fault parameters binned come from the one table in
:mod:`descent_opt.faults`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from descent_opt.certification import certify
from descent_opt.device_statistics import COUNTS, KEEP_NONFINITE, QUANTITIES, SPEED_HISTOGRAMS
from descent_opt.faults import FAULT_CLASSES, FAULT_FIELDS, FAULT_PARAMETERS, Faults, faults_of
from descent_opt.statistics import ExactOrSketch, clopper_pearson, clopper_pearson_lower

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
SETTINGS = ("keep_failures", "exact_limit", "unlandable", "planned_duration_s")


def parameter_bins(sampler) -> dict[str, tuple[np.ndarray, Callable]]:
    """Bin edges of each fault parameter (over its configured range in ``sampler.catalog``)
    and which scenarios carry that fault; parameters whose range is a single value are left
    out."""
    catalog = jax.tree.map(np.asarray, sampler.catalog)
    out = {}
    for name, (span, carrier) in FAULT_PARAMETERS.items():
        lo, hi = (float(x) for x in span(catalog))
        if hi > lo:
            out[name] = (np.linspace(lo, hi, N_PARAMETER_BINS + 1), carrier)
    return out


def records_from(indices, dispersion: tuple, faults: Faults, outcome, metrics) -> dict:
    """Per-scenario rows as NumPy arrays: the members' indices, dispersed initial conditions
    (in the order of ``DISPERSION_FIELDS``), fault parameters, outcome and landing metrics."""
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


def _worst(failures: dict[str, np.ndarray], keep: int) -> dict[str, np.ndarray]:
    """The ``keep`` worst failures: fastest touchdown first, ties by index, so the order
    never depends on how the population was cut."""
    order = np.lexsort((failures["index"], -failures["touchdown_speed_mps"]))
    return {k: v[order[:keep]] for k, v in failures.items()}


def _first_nonfinite(*indices) -> list[int]:
    return sorted({int(i) for part in indices for i in part})[:KEEP_NONFINITE]


def _pair(mask: np.ndarray, success: np.ndarray) -> list[int]:
    """[flights, successes] among ``mask``."""
    return [int(mask.sum()), int(success[mask].sum())]


def _method(q: ExactOrSketch) -> str:
    if q.method == "exact":
        return "exact (linear interpolation between order statistics)"
    return f"sketch: log buckets, relative error <= {q.sketch.relative_accuracy:g}"


@dataclasses.dataclass
class Tally:
    """Statistics of a set of scenarios flown with one gain table: built from one chunk
    (:meth:`of_records`, :meth:`of_folded`, :meth:`of_sketch_counts`; ``Tally(...)`` is the
    empty one) and combined with others only by :meth:`merge`."""

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
        self.unlandable = tuple(self.unlandable)
        for name in COUNTS:
            self.counts.setdefault(name, 0)
        for name in QUANTITIES:
            self.quantities.setdefault(name, ExactOrSketch(exact_limit=self.exact_limit))
        for name in FAULT_CLASSES:
            self.by_fault.setdefault(name, [0, 0])
            self.by_fault_landable.setdefault(name, [0, 0])
        for name in SPEED_HISTOGRAMS:
            self.speed_histograms.setdefault(name, np.zeros(len(SPEED_EDGES_MPS) + 1, np.int64))

    @property
    def settings(self) -> dict:
        """What a tally is built with; tallies merge only with equal settings."""
        return {k: getattr(self, k) for k in SETTINGS}

    @classmethod
    def of_records(cls, records: dict[str, np.ndarray], bins: dict, **settings) -> Tally:
        """The tally of some scenarios' records (:func:`records_from`); ``bins``:
        :func:`parameter_bins`. A diverged flight (non-finite outcome) is a failure, counted
        and listed, and kept out of the percentiles, histograms and the failure ranking."""
        tally = cls(**settings)
        success = records["success"]
        faults = faults_of(records)
        finite = np.logical_and.reduce([np.isfinite(records[q]) for q in QUANTITIES])
        kept = records if finite.all() else {k: v[finite] for k, v in records.items()}
        locked = records["lrf_locked_out"]
        tally.counts.update(
            n=success.size,
            success=int(success.sum()),
            crash=int(records["crash"].sum()),
            exhausted=int(records["exhausted"].sum()),
            landed=int(records["landed"].sum()),
            timeout=int((~records["landed"] & ~records["exhausted"]).sum()),
            late=int((records["touchdown_time_s"] > tally.planned_duration_s).sum()),
            lrf_locked_out=int(locked.sum()),
            lrf_locked_out_success=int((locked & success).sum()),
            nonfinite=int((~finite).sum()),
        )
        tally.nonfinite_indices = _first_nonfinite(records["index"][~finite])
        for name in QUANTITIES:
            tally.quantities[name].add(kept[name])
        members = {name: np.asarray(member(faults)) for name, member in FAULT_CLASSES.items()}
        landable = np.ones_like(success)
        for name in tally.unlandable:
            landable &= ~members[name]
        tally.landable = _pair(landable, success)
        tally.by_fault = {name: _pair(mask, success) for name, mask in members.items()}
        tally.by_fault_landable = {
            name: _pair(m & landable, success) for name, m in members.items()
        }
        for name, (edges, carrier) in bins.items():
            mask = carrier(faults)
            where = np.clip(
                np.searchsorted(edges, records[name][mask], "right") - 1, 0, len(edges) - 2
            )
            tally.by_parameter[name] = {
                "edges": edges,
                "n": np.bincount(where, minlength=len(edges) - 1),
                "success": np.bincount(where[success[mask]], minlength=len(edges) - 1),
            }
        for name in SPEED_HISTOGRAMS:
            where = np.searchsorted(SPEED_EDGES_MPS, kept[name], "right")
            tally.speed_histograms[name] = np.bincount(where, minlength=len(SPEED_EDGES_MPS) + 1)
        failed = np.flatnonzero(~kept["success"])
        if tally.keep_failures and failed.size:
            tally.failures = _worst({k: v[failed] for k, v in kept.items()}, tally.keep_failures)
        return tally

    @classmethod
    def of_folded(cls, piece: dict, first: int, bins: dict, **settings) -> Tally:
        """The tally of a piece folded on its device (:func:`device_statistics.fold_piece`),
        whose position ``p`` is member ``first + p``: :meth:`of_records` of the piece's
        records, bit for bit. Outside exact mode the quantities' sketch counts arrive apart
        (:meth:`of_sketch_counts`)."""
        diverged = piece["nonfinite_positions"][piece["nonfinite_ok"]]
        classes = lambda key: {  # noqa: E731
            name: [int(v) for v in piece[key][k]] for k, name in enumerate(FAULT_CLASSES)
        }
        tally = cls(
            **settings,
            counts={name: int(v) for name, v in zip(COUNTS, piece["counts"])},
            landable=[int(v) for v in piece["landable"]],
            by_fault=classes("by_fault"),
            by_fault_landable=classes("by_fault_landable"),
            by_parameter={
                name: {
                    "edges": edges,
                    "n": piece["parameters"][name][0].astype(np.int64),
                    "success": piece["parameters"][name][1].astype(np.int64),
                }
                for name, (edges, _) in bins.items()
            },
            speed_histograms={k: piece["histograms"][k].astype(np.int64) for k in SPEED_HISTOGRAMS},
            nonfinite_indices=_first_nonfinite(first + diverged.astype(np.int64)),
        )
        if "values" in piece:
            for name in QUANTITIES:
                tally.quantities[name].add(piece["values"][name][piece["kept"]])
        ok = piece["failure_ok"]
        if tally.keep_failures and ok.any():
            rows = jax.tree.map(lambda x: x[ok], piece["failure_rows"])
            positions = piece["failure_positions"][ok].astype(np.int64)
            tally.failures = _worst(records_from(first + positions, *rows), tally.keep_failures)
        return tally

    @classmethod
    def of_sketch_counts(cls, counts, sums: dict, extremes: dict, **settings) -> Tally:
        """The quantities of values bucketed on a device: sketch counts (positive, negative,
        zero) per quantity, with their exact sums (:func:`statistics.fixed_point_sum` units)
        and extremes (each ``(min, max)``) by name. Percentiles of a tally it is merged into
        come from the sketch."""
        tally = cls(**settings)
        positive, negative, zero = counts
        for k, name in enumerate(QUANTITIES):
            low, high = extremes.get(name, (np.inf, -np.inf))
            tally.quantities[name].add_counts(
                positive[k], negative[k], int(zero[k]), sums.get(name, 0), low, high
            )
        return tally

    def merge(self, other: Tally) -> Tally:
        """Fold in, in place, the tally of another, disjoint set of scenarios; returns this
        tally. Associative and commutative: the result does not depend on how a population
        was split nor on the order its parts are merged in."""
        if other.settings != self.settings:
            raise ValueError(
                f"cannot merge tallies built with {other.settings} into {self.settings}"
            )
        self.nonfinite_indices = _first_nonfinite(self.nonfinite_indices, other.nonfinite_indices)
        for k, v in other.counts.items():
            self.counts[k] += v
        for k, q in other.quantities.items():
            self.quantities[k].merge(q)
        for mine, theirs in (
            (self.by_fault, other.by_fault),
            (self.by_fault_landable, other.by_fault_landable),
        ):
            for k, (n, s) in theirs.items():
                mine[k] = [mine[k][0] + n, mine[k][1] + s]
        self.landable = [self.landable[0] + other.landable[0], self.landable[1] + other.landable[1]]
        for k, entry in other.by_parameter.items():
            mine = self.by_parameter.get(k, {"edges": entry["edges"], "n": 0, "success": 0})
            self.by_parameter[k] = {
                "edges": mine["edges"],
                **{c: mine[c] + entry[c] for c in ("n", "success")},
            }
        for k, h in other.speed_histograms.items():
            self.speed_histograms[k] = self.speed_histograms[k] + h
        if other.failures is not None:
            both = other.failures
            if self.failures is not None:
                both = {k: np.concatenate([self.failures[k], v]) for k, v in both.items()}
            self.failures = _worst(both, self.keep_failures)
        return self

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

        return {
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
                    **{
                        k: float(f[k][i])
                        for k in (
                            "touchdown_speed_mps",
                            "touchdown_vz_mps",
                            "touchdown_vh_mps",
                            "tilt_deg",
                            "fuel_kg",
                            "touchdown_time_s",
                        )
                    },
                    "lrf_locked_out": bool(f["lrf_locked_out"][i]),
                    "lrf_ignored_s": float(f["lrf_ignored_s"][i]),
                    "lrf_first_accept_height_m": float(f["lrf_first_accept_height_m"][i]),
                    "faults": {k: f[k][i].item() for k in FAULT_FIELDS},
                    "dispersion": {k: f[k][i].tolist() for k in DISPERSION_FIELDS},
                }
            )
        return out
