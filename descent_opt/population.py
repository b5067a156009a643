"""Populations of any size, flown in chunks with streaming statistics.

Every evaluation of a gain table goes through :func:`fly_population`: members ``0 .. n-1`` of
the population of a key (member ``i`` a pure function of the key and ``i``, see
:mod:`descent_opt.scenarios`) are drawn and flown one chunk at a time and folded into a
:class:`Tally`: exact counts, percentiles exact up to a million values and from a mergeable
relative-error sketch beyond (:mod:`descent_opt.statistics`), success per fault class and
per bin of each fault parameter, touchdown-speed histograms and the worst failures. Unless
per-scenario records are asked for, each piece is folded on the device that flew it
(:mod:`descent_opt.device_statistics`) and memory does not grow with ``n``. Each piece or
chunk gives a tally of its own, merged into the population's (:mod:`descent_opt.tally`),
so a population can also be split over processes.

:func:`fly_members` re-flies chosen members by index, with their per-step traces; their
outcomes are bit-identical to the population run's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Int, PRNGKeyArray

from descent_opt import device_statistics, execution
from descent_opt.device_statistics import QUANTITIES
from descent_opt.distributed import allgather_objects, index_range
from descent_opt.guidance import Gains
from descent_opt.objectives import LandingMetrics, SuccessCriteria, landing_metrics
from descent_opt.scenarios import Scenario, ScenarioSampler
from descent_opt.simulate import SimSpec, Trace, simulate, simulate_traces
from descent_opt.tally import (
    DISPERSION_FIELDS,
    EXACT_LIMIT,
    SPEED_EDGES_MPS,
    Tally,
    parameter_bins,
    records_from,
)


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
    return records_from(indices, _dispersion(scenarios), scenarios.faults, outcome, metrics)


@eqx.filter_jit
def _draw(sampler: ScenarioSampler, key: PRNGKeyArray, indices) -> Scenario:
    return sampler.members(key, indices)


def _simulate_members(spec: SimSpec, gains: Gains, scenarios: Scenario, criteria):
    # The landing metrics inside the program: computed outside, their operations would
    # be compiled again, one by one, for every device.
    outcome = simulate(spec, gains, scenarios)
    return outcome, landing_metrics(outcome, criteria)


# Every piece of every population is flown by this program, compiled once and loaded onto
# each local device (:mod:`descent_opt.device_program`); scenarios are drawn on the first
# device (a small fraction of the work: not worth a copy of the program per device).
_fly = execution.DeviceProgram(_simulate_members)


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


def _flight(
    spec: SimSpec,
    gains: Gains,
    sampler: ScenarioSampler,
    criteria: SuccessCriteria,
    key: PRNGKeyArray,
    piece: int,
    finish: Callable | None = None,
) -> Callable:
    """How one piece of members (an index array, ``piece`` long) is flown on a
    device (:func:`descent_opt.execution.fly`): drawn, flown, then ``finish(device,
    indices, scenarios, outcome, metrics)`` of it (default: its records). Every piece runs
    the same single-device program: a program partitioned over devices (SPMD) rounds
    differently in the last bit for a few percent of members, which could flip a
    borderline landing; the program is compiled once and loaded onto the other devices
    (:class:`~descent_opt.execution.DeviceProgram`)."""
    spec = eqx.tree_at(lambda s: s.numerics.chunk_size, spec, piece, is_leaf=lambda x: x is None)

    def fly(device, indices: np.ndarray):
        # Waiting for each program keeps the threads' flights from queueing behind each
        # other's on one device (measured: a quarter slower without).
        scenarios = jax.block_until_ready(_draw(sampler, key, np.asarray(indices, np.uint32)))
        outcome, metrics = jax.block_until_ready(_fly(device, spec, gains, scenarios, criteria))
        if finish is None:
            return records_of(indices, scenarios, outcome, criteria, metrics)
        return finish(device, indices, scenarios, outcome, metrics)

    return fly


class _DeviceFold:
    """Folds each flown piece on its device (:mod:`descent_opt.device_statistics`) and
    merges the piece's tally, built from that summary, into ``tally`` on the host."""

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
        """Merge the pieces' tallies into the tally; the members counted."""
        done = 0
        settings = self.tally.settings
        for first, n_valid, piece in folded:
            self.tally.merge(Tally.of_folded(piece, first, self.bins, **settings))
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
                self.tally.merge(Tally.of_sketch_counts(piece["flushed"], {}, {}, **settings))
            done += n_valid
        return done

    def finish(self) -> None:
        """Merge the tally of the sketch counts left on the devices, with the sums and
        extremes, into the tally."""
        if self.spec.exact:
            return
        q, n = len(QUANTITIES), self.sketches.n_buckets
        total = [np.zeros((q, n), np.int64), np.zeros((q, n), np.int64), np.zeros(q, np.int64)]
        for counts in self.sketches.drain():
            for t, c in zip(total, counts):
                t += c
        self.tally.merge(
            Tally.of_sketch_counts(total, self.sums, self.extremes, **self.tally.settings)
        )


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
    workers: int | None = None,
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
    members and sketched beyond. ``workers``: pieces flown at a time on a single CPU device
    (default: one per core; :func:`descent_opt.execution.thread_count`)."""
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
        """Fold one chunk's pieces into the tally, then report it (a process's bar runs to
        the population's size)."""
        nonlocal done, reported
        if device_fold is not None:
            done += device_fold.add(parts)
        else:
            records = execution.join(parts)
            valid = records["index"] < end
            if not valid.all():
                records = {k: v[valid] for k, v in records.items()}
            tally.merge(Tally.of_records(records, bins, **tally.settings))
            if keep_records:
                kept.append(records)
            done += int(valid.sum())
        if progress is not None:
            share = done * total // n
            progress(share - reported, tally)
            reported = share

    if progress is not None:
        progress(0, tally)  # starts the clock of a progress bar before the first compile
    # Each chunk is folded into the statistics on one background thread, in order, while the
    # next chunk flies: on a GPU the host fold of records takes longer than the flight (the
    # device fold leaves only the summaries to add here).
    execution.fly(
        _flight(spec, gains, sampler, criteria, key, piece, device_fold),
        execution.pieces(range(start, end), piece),
        workers=workers,
        fold=fold,
        group=size // piece,
    )
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
        records = execution.join(kept)
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
    # The last piece is filled up with the members that follow the last one asked for.
    records = execution.fly_batch(
        _flight(spec, gains, sampler, criteria, key, piece),
        indices,
        piece,
        fill=execution.following,
    )
    scenarios = _draw(sampler, key, indices.astype(np.uint32))
    _, traces = simulate_traces(spec, gains, scenarios)
    return records, jax.tree.map(np.asarray, traces)
