"""Monte Carlo statistics folded on the device that flew the members.

Folding a flown piece of a population on the host means copying every member's record
(dozens of numbers) off the device and reducing it with NumPy; on a GPU that takes longer
than the flight. :func:`fold_piece` reduces the piece where it lies into what
:class:`descent_opt.tally.Tally` keeps: outcome counts, per-class and per-bin tallies,
touchdown-speed histograms, the worst failures (``lax.top_k``) and the first diverged
members, and for the percentiles either the raw values (while percentiles are exact) or the
quantile sketch's bucket counts, which stay on the device from piece to piece
(:class:`SketchAccumulator`), with exact sums and the extremes. A few kilobytes per piece
reach the host.

The result is bit-identical to folding the same members' records on the host: every
comparison with a float64 edge (sketch buckets, histogram and parameter bins) is made
against the edge rounded to the values' precision in the direction that keeps the
comparison exact; comparisons, extremes and the ranking of failures work on the values'
bits (:func:`_order_key`), which devices that flush subnormal floats to zero do not
alter; and sums are exact integers (:func:`descent_opt.statistics.fixed_point_sum`).
"""

from __future__ import annotations

import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from descent_opt.device_program import DeviceProgram
from descent_opt.faults import FAULT_CLASSES, FAULT_PARAMETERS
from descent_opt.statistics import FIXED_POINT_BITS, QuantileSketch

# Per-scenario quantities whose percentiles are reported (descent-positive speeds).
QUANTITIES = (
    "fuel_kg",
    "touchdown_time_s",
    "touchdown_speed_mps",
    "touchdown_vz_mps",
    "touchdown_vh_mps",
    "tilt_deg",
    "miss_distance_m",
)
SPEED_HISTOGRAMS = ("touchdown_vz_mps", "touchdown_vh_mps")
COUNTS = (
    "n",
    "success",
    "crash",
    "exhausted",
    "landed",
    "timeout",
    "late",
    "lrf_locked_out",
    "lrf_locked_out_success",
    "nonfinite",
)
KEEP_NONFINITE = 100  # diverged members listed (the lowest indices)
# IEEE layout per value dtype: unsigned view, exponent bits, fraction bits, and the parts
# a mantissa is summed in (each part's sum over a piece must fit the accumulator).
_LAYOUT = {
    np.dtype(np.float32): (jnp.uint32, 8, 23, 12, 2),
    np.dtype(np.float64): (jnp.uint64, 11, 52, 18, 3),
}
MAX_PIECE = 1 << 18  # float32 mantissa parts of 12 bits: sums below 2^30 in int32


def quantity_values(outcome, metrics) -> dict[str, Array]:
    """The percentile quantities of flown members, by name (:data:`QUANTITIES`)."""
    return {
        "fuel_kg": metrics.fuel_kg,
        "touchdown_time_s": outcome.touchdown_time_s,
        "touchdown_speed_mps": metrics.speed_mps,
        "touchdown_vz_mps": metrics.vertical_speed_mps,
        "touchdown_vh_mps": metrics.horizontal_speed_mps,
        "tilt_deg": metrics.tilt_deg,
        "miss_distance_m": metrics.miss_distance_m,
    }


def _rounded(edges, dtype, up: bool) -> np.ndarray:
    """float64 ``edges`` in ``dtype``: the nearest value not below (``up``) or not above
    them, so that for any value ``x`` of that dtype ``edge <= x`` (up) or ``x <= edge``
    (down) holds exactly when it holds for the float64 edge."""
    edges = np.asarray(edges, np.float64)
    out = edges.astype(dtype)
    wrong = out.astype(np.float64) < edges if up else out.astype(np.float64) > edges
    out[wrong] = np.nextafter(out[wrong], np.array(np.inf if up else -np.inf, dtype))
    return out


class FoldTables(eqx.Module):
    """The edges a piece is folded against, in the values' precision (see :func:`_rounded`)."""

    sketch_upper: Float[Array, " b"]  # bucket upper edges, rounded down
    sketch_min_magnitude: Float[Array, ""]  # rounded up
    speed_edges_mps: Float[Array, " e"]  # rounded up
    parameter_edges: tuple[Float[Array, " p"], ...]  # rounded up
    planned_duration_s: Float[Array, ""]  # the values' dtype, as NumPy compares them


class FoldSpec(eqx.Module):
    """What a fold keeps (static: one compiled program per combination)."""

    keep_failures: int
    unlandable: tuple[str, ...]
    parameters: tuple[str, ...]  # fault parameters binned, in the order of the edges
    exact: bool  # raw quantities back (exact percentiles) instead of sketch counts


def fold_tables(
    sketch: QuantileSketch,
    speed_edges_mps: np.ndarray,
    parameter_edges: dict[str, np.ndarray],
    planned_duration_s: float,
    dtype,
) -> FoldTables:
    """The tables for values of ``dtype`` (float32, or float64 under ``precision=float64``)."""
    dtype = np.dtype(dtype)
    return FoldTables(
        sketch_upper=jnp.asarray(_rounded(sketch.upper_bounds, dtype, up=False)),
        sketch_min_magnitude=jnp.asarray(_rounded([sketch.min_magnitude], dtype, up=True)[0]),
        speed_edges_mps=jnp.asarray(_rounded(speed_edges_mps, dtype, up=True)),
        parameter_edges=tuple(
            jnp.asarray(_rounded(e, dtype, up=True)) for e in parameter_edges.values()
        ),
        planned_duration_s=jnp.asarray(np.asarray(planned_duration_s, dtype)),
    )


def _order_key(x: Array) -> Int[Array, "..."]:
    """Integers in the order of the float values ``x`` (-0 and +0 equal; NaN not ordered):
    comparisons of the keys are those of the values, exactly, also for subnormals."""
    signed = jnp.int32 if x.dtype == jnp.float32 else jnp.int64
    bits = jax.lax.bitcast_convert_type(x, signed)
    return jnp.where(bits >= 0, bits, jnp.iinfo(signed).min - bits)


def _from_order_key(key: Array, dtype) -> Array:
    """The value of an :func:`_order_key` (+0 for either zero)."""
    bits = jnp.where(key >= 0, key, jnp.iinfo(key.dtype).min - key)
    return jax.lax.bitcast_convert_type(bits, dtype)


def _exact_sum_parts(x: Array, kept: Bool[Array, " n"]) -> Int[Array, "parts groups"]:
    """Sums of the kept values' signed mantissa parts per binary exponent: with
    :func:`fixed_point_parts` on the host, the exact sum of the kept values."""
    unsigned, exponent_bits, fraction_bits, part_bits, n_parts = _LAYOUT[np.dtype(x.dtype)]
    accumulator = jnp.int32 if x.dtype == jnp.float32 else jnp.int64
    bits = jax.lax.bitcast_convert_type(x, unsigned)
    exponent = (bits >> fraction_bits) & ((1 << exponent_bits) - 1)
    mantissa = (bits & ((1 << fraction_bits) - 1)) | (
        (exponent > 0).astype(unsigned) << fraction_bits
    )
    group = jnp.maximum(exponent, 1).astype(jnp.int32)
    negative = (bits >> (exponent_bits + fraction_bits)) == 1
    sign = jnp.where(kept, jnp.where(negative, -1, 1), 0).astype(accumulator)
    parts = [
        jax.ops.segment_sum(
            sign * ((mantissa >> (k * part_bits)) & ((1 << part_bits) - 1)).astype(accumulator),
            group,
            num_segments=1 << exponent_bits,
        )
        for k in range(n_parts)
    ]
    return jnp.stack(parts)


def fixed_point_parts(parts: np.ndarray, dtype) -> int:
    """The exact sum (units of 2^-FIXED_POINT_BITS) from :func:`_exact_sum_parts`."""
    _, exponent_bits, fraction_bits, part_bits, _ = _LAYOUT[np.dtype(dtype)]
    bias = (1 << (exponent_bits - 1)) - 1
    total = 0
    for k, sums in enumerate(np.asarray(parts)):
        for g in np.flatnonzero(sums):
            shift = int(g) - bias - fraction_bits + FIXED_POINT_BITS + k * part_bits
            total += int(sums[g]) << shift
    return total


def _sketch_counts(x, kept, tables: FoldTables):
    """Positive and negative bucket counts and the zero bucket's count of the kept values."""
    n_buckets = tables.sketch_upper.shape[0]
    magnitude = _order_key(jnp.abs(x))
    big = kept & (magnitude >= _order_key(tables.sketch_min_magnitude))
    position = jnp.minimum(
        jnp.searchsorted(_order_key(tables.sketch_upper), magnitude, side="left"), n_buckets - 1
    )
    count = lambda mask: jax.ops.segment_sum(  # noqa: E731
        mask.astype(jnp.int32), position, num_segments=n_buckets
    )
    key = _order_key(x)
    return count(big & (key > 0)), count(big & (key < 0)), jnp.sum(kept & ~big, dtype=jnp.int32)


def _fold_piece(spec: FoldSpec, tables: FoldTables, n_valid, rows, sketch):
    """The piece's statistics; ``rows`` = (dispersion, faults, outcome, metrics) of its
    members in index order, the first ``n_valid`` of them in the population; the worst
    failures' rows come back whole."""
    _, faults, outcome, metrics = rows
    size = metrics.success.shape[0]
    position = jnp.arange(size)
    valid = position < n_valid
    total = lambda mask: jnp.sum(mask & valid, dtype=jnp.int32)  # noqa: E731
    success = metrics.success & valid
    values = quantity_values(outcome, metrics)
    finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in values.values()]), axis=0)
    kept = valid & finite
    locked = outcome.lrf_locked_out
    counts = {
        "n": total(valid),
        "success": total(success),
        "crash": total(metrics.crash),
        "exhausted": total(outcome.exhausted),
        "landed": total(outcome.landed),
        "timeout": total(~outcome.landed & ~outcome.exhausted),
        "late": total(_order_key(outcome.touchdown_time_s) > _order_key(tables.planned_duration_s)),
        "lrf_locked_out": total(locked),
        "lrf_locked_out_success": total(locked & success),
        "nonfinite": total(~finite),
    }
    classes = {name: member(faults) & valid for name, member in FAULT_CLASSES.items()}
    landable = valid
    for name in spec.unlandable:
        landable = landable & ~classes[name]
    tally = lambda mask: jnp.stack([total(mask), total(mask & success)])  # noqa: E731
    parameters = {}
    for name, edges in zip(spec.parameters, tables.parameter_edges):
        carrier = FAULT_PARAMETERS[name][1](faults) & valid
        value = _order_key(getattr(faults, name))
        where = jnp.clip(
            jnp.searchsorted(_order_key(edges), value, side="right") - 1, 0, edges.size - 2
        )
        parameters[name] = jnp.stack(
            [
                jax.ops.segment_sum(m.astype(jnp.int32), where, num_segments=edges.size - 1)
                for m in (carrier, carrier & success)
            ]
        )
    histograms = {
        name: jax.ops.segment_sum(
            kept.astype(jnp.int32),
            jnp.searchsorted(
                _order_key(tables.speed_edges_mps), _order_key(values[name]), side="right"
            ),
            num_segments=tables.speed_edges_mps.size + 1,
        )
        for name in SPEED_HISTOGRAMS
    }
    # Fastest touchdown first; top_k puts the lower position (index) first among equals.
    candidate = kept & ~success
    speed = _order_key(values["touchdown_speed_mps"])
    _, worst = jax.lax.top_k(
        jnp.where(candidate, speed, jnp.iinfo(speed.dtype).min), min(spec.keep_failures, size) or 1
    )
    diverged = valid & ~finite
    _, first_diverged = jax.lax.top_k(
        jnp.where(diverged, size - position, 0), min(KEEP_NONFINITE, size)
    )
    out = {
        "counts": jnp.stack([counts[k] for k in COUNTS]),
        "landable": tally(landable),
        "by_fault": jnp.stack([tally(m) for m in classes.values()]),
        "by_fault_landable": jnp.stack([tally(m & landable) for m in classes.values()]),
        "parameters": parameters,
        "histograms": histograms,
        "failure_positions": worst,
        "failure_ok": candidate[worst],
        "failure_rows": jax.tree.map(lambda x: x[worst], rows),
        "nonfinite_positions": first_diverged,
        "nonfinite_ok": diverged[first_diverged],
    }
    if spec.exact:
        out["values"] = values
        out["kept"] = kept
        return out, sketch
    out["sums"] = {k: _exact_sum_parts(v, kept) for k, v in values.items()}
    for name, pick, empty in (("min", jnp.min, jnp.inf), ("max", jnp.max, -jnp.inf)):
        out[name] = {}
        for k, v in values.items():
            none = _order_key(jnp.asarray(empty, v.dtype))
            out[name][k] = _from_order_key(pick(jnp.where(kept, _order_key(v), none)), v.dtype)
    positive, negative, zero = zip(*(_sketch_counts(v, kept, tables) for v in values.values()))
    sketch = (
        sketch[0] + jnp.stack(positive),
        sketch[1] + jnp.stack(negative),
        sketch[2] + jnp.stack(zero),
    )
    return out, sketch


# Compiled once and loaded onto every local device, as the flight program is.
_fold = DeviceProgram(_fold_piece)


class SketchAccumulator:
    """Sketch bucket counts of every quantity, kept on each device across pieces (int32,
    handed to the host before they could overflow)."""

    def __init__(self, n_buckets: int):
        self.n_buckets = n_buckets
        self._lock = threading.Lock()
        self._state: dict = {}  # device -> [counts, members folded]

    def _empty(self, device):
        shape = (len(QUANTITIES), self.n_buckets)
        zeros = lambda s: jax.device_put(np.zeros(s, np.int32), device)  # noqa: E731
        return (zeros(shape), zeros(shape), zeros(len(QUANTITIES)))

    def fold(self, device, spec, tables, n_valid, rows, flush):
        """Fold one piece flown on ``device``; ``flush(counts)`` takes the device's counts
        (as NumPy) when they near the int32 range."""
        with self._lock:
            entry = self._state.setdefault(device, [self._empty(device), 0])
            out, entry[0] = _fold(device, spec, tables, n_valid, rows, entry[0])
            entry[1] += int(n_valid)
            if entry[1] > (1 << 30):
                flush(jax.tree.map(np.asarray, entry[0]))
                self._state[device] = [self._empty(device), 0]
        return out

    def drain(self) -> list:
        """Every device's counts (NumPy), resetting them."""
        with self._lock:
            out = [jax.tree.map(np.asarray, counts) for counts, _ in self._state.values()]
            self._state.clear()
        return out


def fold_piece(
    device, spec: FoldSpec, tables: FoldTables, n_valid: int, rows, sketches: SketchAccumulator
) -> dict:
    """Fold a flown piece on ``device``; the summary comes back as NumPy (the sketch counts,
    outside exact mode, stay in ``sketches``)."""
    n_valid = np.asarray(n_valid, np.int32)  # an array: traced, not a compile-time constant
    if spec.exact:
        out, _ = _fold(device, spec, tables, n_valid, rows, None)
    else:
        flushed = []
        out = sketches.fold(device, spec, tables, n_valid, rows, flushed.append)
        if flushed:
            out = dict(out, flushed=flushed[0])
    return jax.tree.map(np.asarray, out)
