"""Statistics for Monte Carlo campaigns: exact binomial confidence bounds and percentiles.

Pure NumPy/SciPy in float64; nothing here needs JAX.

* :func:`clopper_pearson` and :func:`clopper_pearson_lower` bound a success probability from
  ``k`` successes in ``n`` runs without a normal approximation, so they stay honest at the
  0-3 failure counts that high-reliability campaigns produce.
* :class:`QuantileSketch` is a mergeable log-bucket (DDSketch-style) histogram: quantiles with
  bounded *relative* error in fixed memory, and sketches built on different workers or chunks
  merge by adding bucket counts.
* :class:`ExactOrSketch` gives exact percentiles while the sample is small enough to keep and
  falls back to the sketch beyond that.
* :func:`fixed_point_sum` sums floating-point values exactly (an integer count of 2^-1074),
  so a mean does not depend on how a population was cut into chunks, nor on where (host
  or device) its parts were summed.

Over 400 lines because the exact intervals, the mergeable quantile sketch and the switch
between exact and sketched percentiles are the one set of estimators every report uses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import betaincinv

__all__ = [
    "ExactOrSketch",
    "QuantileSketch",
    "clopper_pearson",
    "clopper_pearson_lower",
    "fixed_point_sum",
    "quantile_rank",
]

# Sums are kept as integers in units of 2^-FIXED_POINT_BITS, the smallest float64 step:
# every finite float32 or float64 value is such an integer, so the sum is exact.
FIXED_POINT_BITS = 1074


def _check_counts(successes: int, n: int, confidence: float) -> tuple[int, int, float]:
    """Validate and normalise the arguments shared by the Clopper-Pearson bounds."""
    k, total = int(successes), int(n)
    if k != successes or total != n:
        raise ValueError(f"successes and n must be integers, got {successes!r}, {n!r}")
    if total < 0 or not 0 <= k <= total:
        raise ValueError(f"need 0 <= successes <= n, got successes={k}, n={total}")
    conf = float(confidence)
    if not 0.0 < conf < 1.0:  # also rejects NaN
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    return k, total, conf


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval for a success probability.

    Each tail gets ``alpha / 2`` with ``alpha = 1 - confidence``: the lower end is the
    ``alpha / 2`` quantile of Beta(k, n - k + 1) and the upper end the ``1 - alpha / 2``
    quantile of Beta(k + 1, n - k). The lower end is 0 when ``k == 0`` and the upper end 1 when
    ``k == n``; ``n == 0`` carries no information and gives ``(0.0, 1.0)``.
    """
    k, total, conf = _check_counts(successes, n, confidence)
    if total == 0:
        return 0.0, 1.0
    half_alpha = 0.5 * (1.0 - conf)
    lower = 0.0 if k == 0 else float(betaincinv(k, total - k + 1, half_alpha))
    upper = 1.0 if k == total else float(betaincinv(k + 1, total - k, 1.0 - half_alpha))
    return lower, upper


def clopper_pearson_lower(successes: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact lower confidence bound on a success probability.

    The ``1 - confidence`` quantile of Beta(k, n - k + 1); 0 when ``k == 0`` (also for
    ``n == 0``). This is the bound behind "n runs with at most f failures demonstrate a success
    rate of p at confidence c"; with no failures it reduces to ``(1 - confidence) ** (1 / n)``.
    """
    k, total, conf = _check_counts(successes, n, confidence)
    if k == 0:
        return 0.0
    return float(betaincinv(k, total - k + 1, 1.0 - conf))


def quantile_rank(q: float, count: int) -> int:
    """0-based rank ``r = ceil(q * (count - 1))`` (float64 arithmetic) used by the sketch.

    ``quantile(q)`` estimates the order statistic ``x_(r)`` of the sorted sample
    ``x_(0) <= ... <= x_(count - 1)``. Rounding up is NumPy's ``method="higher"``: for the
    upper-tail percentiles of miss distances and fuel use it never reports a smaller value than
    the linear interpolation of :func:`numpy.percentile` would (up to the sketch's own error).
    """
    qf = float(q)
    if not 0.0 <= qf <= 1.0:  # also rejects NaN
        raise ValueError(f"quantile q must lie in [0, 1], got {q!r}")
    if count <= 0:
        raise ValueError("quantile of an empty sample")
    return min(int(math.ceil(qf * (count - 1))), count - 1)


def fixed_point_sum(values: np.ndarray) -> int:
    """Exact sum of finite float values as an integer in units of ``2**-FIXED_POINT_BITS``.

    Each value is sign x integer mantissa x 2^exponent (its IEEE bits); mantissas are summed
    in 18-bit parts per exponent (exact in the float64 accumulator of ``np.bincount`` for
    fewer than 2^35 values) and shifted into place as Python integers. The result does not
    depend on the order of the values."""
    x = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return 0
    bits = x.view(np.uint64)
    exponent = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
    mantissa = bits & np.uint64((1 << 52) - 1)
    mantissa |= (exponent > 0).astype(np.uint64) << np.uint64(52)
    group = np.maximum(exponent, 1)  # value = mantissa * 2^(group - 1075)
    sign = np.where(bits >> np.uint64(63), -1.0, 1.0)
    total = 0
    for shift in (0, 18, 36):
        part = ((mantissa >> np.uint64(shift)) & np.uint64((1 << 18) - 1)).astype(np.float64)
        sums = np.bincount(group, weights=sign * part, minlength=2048)
        for g in np.flatnonzero(sums):
            total += int(sums[g]) << int(g - 1 + shift)
    return total


def _as_finite_array(values: Any) -> np.ndarray:
    """Flatten ``values`` to a 1-D float array, rejecting NaN and infinities."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"expected a real numeric array, got dtype {arr.dtype}")
    arr = arr.ravel()
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("values must be finite: NaN and +-inf are rejected")
    return arr


class QuantileSketch:
    """Mergeable streaming quantile sketch with bounded relative error.

    Magnitudes fall into logarithmic buckets: with ``gamma = (1 + a) / (1 - a)`` bucket ``i``
    holds ``gamma**(i - 1) < |x| <= gamma**i`` and is represented by ``2 gamma**i / (gamma + 1)``,
    which is within relative error ``a = relative_accuracy`` of every value in it. The bucket
    layout is fixed by the three constructor arguments alone, so sketches built independently
    with the same arguments merge exactly by adding counts.

    * ``|x| < min_magnitude`` goes to a single zero bucket, represented by 0: such values get an
      absolute error below ``min_magnitude`` instead of a relative one.
    * ``|x| > max_magnitude`` is clamped into the largest bucket, so its estimate can be far too
      small in magnitude; the result is still clamped to ``[min, max]``. Choose
      ``max_magnitude`` above anything the metric can reach.
    * Positive and negative values have separate bucket arrays of fixed size.
    * ``count``, ``min``, ``max`` and ``sum`` are kept exactly (``sum`` up to float64 rounding).

    Memory is about ``2 * ln(max_magnitude / min_magnitude) / (2 a)`` int64 counts: 30k buckets
    (240 kB) with the defaults.
    """

    def __init__(
        self,
        relative_accuracy: float = 1e-3,
        min_magnitude: float = 1e-6,
        max_magnitude: float = 1e7,
    ) -> None:
        a, lo, hi = float(relative_accuracy), float(min_magnitude), float(max_magnitude)
        if not 0.0 < a < 1.0:
            raise ValueError(f"relative_accuracy must lie in (0, 1), got {relative_accuracy!r}")
        if not (0.0 < lo < hi < math.inf):
            raise ValueError(
                f"need 0 < min_magnitude < max_magnitude < inf, got {min_magnitude!r}, "
                f"{max_magnitude!r}"
            )
        self._accuracy = a
        self._min_magnitude = lo
        self._max_magnitude = hi
        self._gamma = (1.0 + a) / (1.0 - a)
        self._log_gamma = math.log1p(a) - math.log1p(-a)  # log(gamma) without cancellation
        self._offset = math.ceil(math.log(lo) / self._log_gamma)  # key of the smallest bucket
        n_buckets = math.ceil(math.log(hi) / self._log_gamma) - self._offset + 1
        # Bucket ``pos`` holds gamma**(key - 1) < |x| <= gamma**key, key = pos + offset.
        self._upper = np.exp((np.arange(n_buckets) + self._offset) * self._log_gamma)
        self._positive = np.zeros(n_buckets, dtype=np.int64)
        self._negative = np.zeros(n_buckets, dtype=np.int64)
        self._zero = 0
        self._count = 0
        self._sum_fixed = 0  # exact, in units of 2^-FIXED_POINT_BITS
        self._min = math.inf
        self._max = -math.inf

    # -- layout ---------------------------------------------------------------------------

    @property
    def relative_accuracy(self) -> float:
        return self._accuracy

    @property
    def min_magnitude(self) -> float:
        return self._min_magnitude

    @property
    def max_magnitude(self) -> float:
        return self._max_magnitude

    @property
    def n_buckets(self) -> int:
        """Buckets per sign (the zero bucket not included)."""
        return int(self._positive.size)

    def _layout(self) -> tuple[float, float, float]:
        return self._accuracy, self._min_magnitude, self._max_magnitude

    @property
    def upper_bounds(self) -> np.ndarray:
        """Upper edge of each bucket (float64, increasing): a magnitude goes to the first
        bucket whose edge is not below it, the last one if none is."""
        return self._upper

    def _bucket_index(self, magnitudes: np.ndarray) -> np.ndarray:
        """Array positions for magnitudes >= min_magnitude; above max_magnitude clamps."""
        pos = np.searchsorted(self._upper, magnitudes, side="left")
        return np.minimum(pos, self.n_buckets - 1, out=pos)

    def _representative(self, pos: int) -> float:
        """Value reported for array position ``pos``: 2 gamma**i / (gamma + 1)."""
        key = pos + self._offset
        return 2.0 * math.exp(key * self._log_gamma) / (self._gamma + 1.0)

    # -- exact summaries --------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        """The exact sum, rounded once to float64."""
        return self._sum_fixed / (1 << FIXED_POINT_BITS)

    @property
    def min(self) -> float:
        """Smallest value added (NaN when empty)."""
        return self._min if self._count else math.nan

    @property
    def max(self) -> float:
        """Largest value added (NaN when empty)."""
        return self._max if self._count else math.nan

    @property
    def mean(self) -> float:
        """The exact mean, rounded once to float64 (NaN when empty)."""
        return self._sum_fixed / (self._count << FIXED_POINT_BITS) if self._count else math.nan

    # -- updates ----------------------------------------------------------------------------

    def add(self, values: np.ndarray) -> None:
        """Add a batch of finite values (any shape); NaN or +-inf raise ValueError, and then
        nothing is added."""
        arr = _as_finite_array(values)
        if arr.size == 0:
            return
        x = arr.astype(np.float64, copy=False)
        mag = np.abs(x)
        big = mag >= self._min_magnitude
        pos_mask = big & (x > 0)
        neg_mask = big & (x < 0)
        n_buckets = self.n_buckets
        if pos_mask.any():
            idx = self._bucket_index(mag[pos_mask])
            self._positive += np.bincount(idx, minlength=n_buckets)
        if neg_mask.any():
            idx = self._bucket_index(mag[neg_mask])
            self._negative += np.bincount(idx, minlength=n_buckets)
        self._zero += int(x.size - np.count_nonzero(big))
        self._count += int(x.size)
        self._sum_fixed += fixed_point_sum(x)
        self._min = min(self._min, float(x.min()))
        self._max = max(self._max, float(x.max()))

    def add_counts(
        self,
        positive: np.ndarray,
        negative: np.ndarray,
        zero: int,
        sum_fixed: int,
        minimum: float,
        maximum: float,
    ) -> None:
        """Add values already bucketed elsewhere (on a device) in this layout: the counts
        per bucket of each sign (``n_buckets`` each), the zero bucket's count, the exact
        sum (:func:`fixed_point_sum` units) and the extremes of the values (+inf and -inf
        when there are none)."""
        positive = np.asarray(positive, np.int64)
        negative = np.asarray(negative, np.int64)
        if positive.shape != (self.n_buckets,) or negative.shape != (self.n_buckets,):
            raise ValueError(f"bucket counts must have shape ({self.n_buckets},)")
        count = int(positive.sum() + negative.sum()) + int(zero)
        self._positive += positive
        self._negative += negative
        self._zero += int(zero)
        self._count += count
        self._sum_fixed += int(sum_fixed)
        self._min = min(self._min, float(minimum))
        self._max = max(self._max, float(maximum))

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s contents to this sketch in place; layouts must be identical."""
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"can only merge a QuantileSketch, got {type(other).__name__}")
        if other._layout() != self._layout():
            raise ValueError(
                f"cannot merge sketches with different layouts: {self._layout()} vs "
                f"{other._layout()} (relative_accuracy, min_magnitude, max_magnitude)"
            )
        self._positive += other._positive
        self._negative += other._negative
        self._zero += other._zero
        self._count += other._count
        self._sum_fixed += other._sum_fixed
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def copy(self) -> QuantileSketch:
        """Independent copy (counts not shared)."""
        return QuantileSketch.from_dict(self.to_dict())

    # -- queries ----------------------------------------------------------------------------

    def quantile(self, q: float) -> float:
        """Estimate of the order statistic ``x_(r)``, ``r = quantile_rank(q, count)``.

        ``q = 0`` and ``q = 1`` return the exact min and max. Otherwise the result is the
        representative of the bucket holding ``x_(r)``, clamped to ``[min, max]``; for
        ``min_magnitude <= |x_(r)| <= max_magnitude`` it is within ``relative_accuracy`` of
        ``x_(r)`` (up to float64 rounding at bucket edges). Raises ValueError when empty.
        """
        r = quantile_rank(q, self._count)
        if r == 0:
            return self._min
        if r == self._count - 1:
            return self._max
        n_neg = int(self._negative.sum())
        if r < n_neg:
            # Negative values in increasing order: largest magnitude first.
            cum = np.cumsum(self._negative[::-1])
            pos = self.n_buckets - 1 - int(np.searchsorted(cum, r, side="right"))
            value = -self._representative(pos)
        elif r < n_neg + self._zero:
            value = 0.0
        else:
            cum = np.cumsum(self._positive)
            pos = int(np.searchsorted(cum, r - n_neg - self._zero, side="right"))
            value = self._representative(pos)
        return min(max(value, self._min), self._max)

    # -- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: layout, exact summaries and the nonzero buckets.

        Buckets are stored as lists of bucket keys ``i`` (``gamma**(i-1) < |x| <= gamma**i``)
        and their counts; ``min``/``max`` are None for an empty sketch; ``sum_fixed`` is the
        exact sum (a decimal integer string, units of 2^-1074) and ``sum`` its float.
        """

        def nonzero(counts: np.ndarray) -> dict[str, list[int]]:
            idx = np.flatnonzero(counts)
            return {
                "keys": (idx + self._offset).tolist(),
                "counts": counts[idx].tolist(),
            }

        return {
            "relative_accuracy": self._accuracy,
            "min_magnitude": self._min_magnitude,
            "max_magnitude": self._max_magnitude,
            "count": self._count,
            "sum": self.sum,
            "sum_fixed": str(self._sum_fixed),
            "min": self._min if self._count else None,
            "max": self._max if self._count else None,
            "zero_count": self._zero,
            "positive": nonzero(self._positive),
            "negative": nonzero(self._negative),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantileSketch:
        """Rebuild a sketch from :meth:`to_dict` output, checking it is self-consistent."""
        sketch = cls(data["relative_accuracy"], data["min_magnitude"], data["max_magnitude"])
        for name, counts in (("positive", sketch._positive), ("negative", sketch._negative)):
            keys = np.asarray(data[name]["keys"], dtype=np.int64)
            vals = np.asarray(data[name]["counts"], dtype=np.int64)
            pos = keys - sketch._offset
            if keys.shape != vals.shape or keys.ndim != 1:
                raise ValueError(f"{name}: keys and counts must be equal-length lists")
            if pos.size and (pos.min() < 0 or pos.max() >= sketch.n_buckets):
                raise ValueError(f"{name}: bucket key outside this layout")
            if np.any(vals < 0):
                raise ValueError(f"{name}: negative bucket count")
            np.add.at(counts, pos, vals)
        sketch._zero = int(data["zero_count"])
        sketch._count = int(data["count"])
        if sketch._zero < 0 or sketch._count != (
            sketch._zero + int(sketch._positive.sum()) + int(sketch._negative.sum())
        ):
            raise ValueError("count does not equal the sum of the bucket counts")
        if "sum_fixed" in data:
            sketch._sum_fixed = int(data["sum_fixed"])
        else:  # written before sums were exact: the float sum, exactly as an integer
            numerator, denominator = float(data["sum"]).as_integer_ratio()
            sketch._sum_fixed = (numerator << FIXED_POINT_BITS) // denominator
        if sketch._count:
            sketch._min = float(data["min"])
            sketch._max = float(data["max"])
        return sketch


class ExactOrSketch:
    """Percentiles that are exact while the sample is small, sketched beyond.

    A :class:`QuantileSketch` is always updated; the raw values are also kept while the total
    count stays ``<= exact_limit``. The first time it is exceeded the buffer is dropped for good
    and quantiles come from the sketch. Exact quantiles use :func:`numpy.percentile` with its
    default linear interpolation; sketched ones follow :func:`quantile_rank`.
    """

    def __init__(
        self,
        exact_limit: int = 1_000_000,
        relative_accuracy: float = 1e-3,
        min_magnitude: float = 1e-6,
        max_magnitude: float = 1e7,
    ) -> None:
        if int(exact_limit) != exact_limit or exact_limit < 0:
            raise ValueError(f"exact_limit must be a non-negative integer, got {exact_limit!r}")
        self.exact_limit = int(exact_limit)
        self.sketch = QuantileSketch(relative_accuracy, min_magnitude, max_magnitude)
        self._buffer: list[np.ndarray] | None = []

    @property
    def method(self) -> str:
        """``"exact"`` while the raw values are kept, else ``"sketch"``."""
        return "exact" if self._buffer is not None else "sketch"

    @property
    def count(self) -> int:
        return self.sketch.count

    @property
    def min(self) -> float:
        return self.sketch.min

    @property
    def max(self) -> float:
        return self.sketch.max

    @property
    def mean(self) -> float:
        """sum / count, exact in both modes (NaN when empty)."""
        return self.sketch.mean

    def add(self, values: np.ndarray) -> None:
        """Add a batch of finite values; NaN or +-inf raise ValueError and add nothing."""
        arr = _as_finite_array(values)
        self.sketch.add(arr)
        if self._buffer is None:
            return
        if self.sketch.count > self.exact_limit:
            self._buffer = None
        elif arr.size:
            keep = arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)
            self._buffer.append(keep.copy())

    def add_counts(self, *args, **kwargs) -> None:
        """Add values bucketed elsewhere (:meth:`QuantileSketch.add_counts`); their raw
        values are not known, so quantiles come from the sketch from here on."""
        self.sketch.add_counts(*args, **kwargs)
        self._buffer = None

    def merge(self, other: ExactOrSketch) -> None:
        """Add ``other`` in place; stays exact only if both are exact and the combined count is
        within this object's ``exact_limit``."""
        if not isinstance(other, ExactOrSketch):
            raise TypeError(f"can only merge an ExactOrSketch, got {type(other).__name__}")
        self.sketch.merge(other.sketch)  # validates the layout before anything changes
        if self._buffer is None:
            return
        if other._buffer is None or self.sketch.count > self.exact_limit:
            self._buffer = None
        else:
            self._buffer.extend(other._buffer)  # arrays are never modified in place

    def quantile(self, q: float) -> float:
        """Exact ``np.percentile(values, 100 q)`` while exact, else the sketch estimate."""
        if self._buffer is None:
            return self.sketch.quantile(q)
        quantile_rank(q, self.count)  # same validation as the sketch path
        if len(self._buffer) > 1:
            self._buffer = [np.concatenate(self._buffer)]
        return float(np.percentile(self._buffer[0], float(q) * 100.0))
