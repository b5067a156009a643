"""Tests for descent_opt.statistics: Clopper-Pearson bounds and the quantile sketch.

The Clopper-Pearson reference is independent of SciPy: it solves the binomial tail equations
in mpmath at 30+ digits, summing the binomial terms directly when the tail is short and
using mpmath's own regularised incomplete beta otherwise.
"""

from __future__ import annotations

import functools
import json
import math

import mpmath
import numpy as np
import pytest

from descent_opt.statistics import (
    ExactOrSketch,
    QuantileSketch,
    clopper_pearson,
    clopper_pearson_lower,
    quantile_rank,
)

# ---------------------------------------------------------------------------------------------
# Clopper-Pearson: independent mpmath reference
# ---------------------------------------------------------------------------------------------

_DPS = 32
_DIRECT_TERMS = 64  # sum the binomial pmf directly when the shorter tail has at most this many


def _pmf(n: int, j: int, p: mpmath.mpf) -> mpmath.mpf:
    return mpmath.binomial(n, j) * p**j * (1 - p) ** (n - j)


def _upper_tail(k: int, n: int, p: mpmath.mpf) -> mpmath.mpf:
    """P(X >= k) for X ~ Binomial(n, p), 1 <= k <= n."""
    if min(k, n - k + 1) <= _DIRECT_TERMS:
        if k <= n - k + 1:
            return 1 - mpmath.fsum(_pmf(n, j, p) for j in range(k))
        return mpmath.fsum(_pmf(n, j, p) for j in range(k, n + 1))
    return mpmath.betainc(k, n - k + 1, 0, p, regularized=True)


def _solve_tail(m: int, n: int, target: mpmath.mpf) -> float:
    """p with P(X >= m | p) = target, 1 <= m <= n, by safeguarded Newton in logit space.

    In t = log(p / (1 - p)) the tail is increasing with derivative
    m C(n, m) p^m (1 - p)^(n - m + 1). Starting from p = m / (n + 1), Newton steps are capped
    at 1 in t and replaced by bisection when they leave the sign-change bracket [lo, hi]
    (initially [-90, 90]); a step below 1e-16 in t stops it, which gives p to about 1e-16
    relative, plenty for 1e-9 comparisons even at p ~ 1e-8.
    """
    coef = m * mpmath.binomial(n, m)
    lo, hi = mpmath.mpf(-90), mpmath.mpf(90)
    t = mpmath.log(mpmath.mpf(m) / (n + 1 - m))
    for _ in range(300):
        p = 1 / (1 + mpmath.exp(-t))
        g = _upper_tail(m, n, p) - target
        if g < 0:
            lo = t
        else:
            hi = t
        slope = coef * p**m * (1 - p) ** (n - m + 1)
        step = g / slope if slope > 0 else mpmath.sign(g)
        t_new = t - max(-1, min(1, step))
        if not lo < t_new < hi:
            t_new = (lo + hi) / 2
        if abs(t_new - t) < mpmath.mpf("1e-16"):
            return float(1 / (1 + mpmath.exp(-t_new)))
        t = t_new
    raise RuntimeError("reference root finder did not converge")


@functools.lru_cache(maxsize=None)
def _ref_lower(k: int, n: int, tail: str) -> float:
    """p with P(X >= k | p) = tail, i.e. the lower Clopper-Pearson end at tail probability."""
    if k == 0:
        return 0.0
    with mpmath.workdps(_DPS):
        return _solve_tail(k, n, mpmath.mpf(tail))


@functools.lru_cache(maxsize=None)
def _ref_upper(k: int, n: int, tail: str) -> float:
    """p with P(X <= k | p) = tail, i.e. the upper Clopper-Pearson end at tail probability."""
    if k == n:
        return 1.0
    with mpmath.workdps(_DPS):
        # P(X <= k) = 1 - P(X >= k + 1) decreases in p; solve P(X >= k + 1) = 1 - tail.
        return _solve_tail(k + 1, n, 1 - mpmath.mpf(tail))


# alpha / 2 as exact decimal strings, so the reference sees no float rounding of alpha.
_HALF_ALPHA = {"0.9": "0.05", "0.95": "0.025", "0.99": "0.005"}


def _assert_close(value: float, ref: float) -> None:
    """Absolute error <= 1e-9 and, separately, relative error <= 1e-9 (bounds near 0 matter)."""
    assert abs(value - ref) <= 1e-9, (value, ref)
    assert abs(value - ref) <= 1e-9 * abs(ref), (value, ref)


_CP_CASES = [
    (0, 1),
    (1, 1),
    (0, 10),
    (1, 10),
    (5, 10),
    (9, 10),
    (10, 10),
    (0, 852),
    (1, 852),
    (426, 852),
    (850, 852),
    (851, 852),
    (852, 852),
    (1, 1440),
    (700, 1440),
    (1437, 1440),
    (1438, 1440),
    (1439, 1440),
    (1440, 1440),
    (0, 10**6),
    (1, 10**6),
    (10, 10**6),
    (100, 10**6),
    (10**6 - 100, 10**6),
    (10**6 - 3, 10**6),
    (10**6 - 1, 10**6),
    (10**6, 10**6),
]


def test_reference_tail_matches_incomplete_beta():
    """The direct binomial sum and mpmath's incomplete beta agree (guards the reference)."""
    with mpmath.workdps(_DPS):
        for k, n, p in [(3, 10, "0.2"), (40, 100, "0.37"), (1439, 1440, "0.998")]:
            p = mpmath.mpf(p)
            direct = mpmath.fsum(_pmf(n, j, p) for j in range(k, n + 1))
            beta = mpmath.betainc(k, n - k + 1, 0, p, regularized=True)
            assert abs(direct - beta) < mpmath.mpf("1e-25")


@pytest.mark.parametrize("confidence", ["0.9", "0.95", "0.99"])
@pytest.mark.parametrize(("k", "n"), _CP_CASES)
def test_clopper_pearson_matches_mpmath(k: int, n: int, confidence: str):
    tail = _HALF_ALPHA[confidence]
    lower, upper = clopper_pearson(k, n, float(confidence))
    ref_lo, ref_hi = _ref_lower(k, n, tail), _ref_upper(k, n, tail)
    _assert_close(lower, ref_lo)
    _assert_close(upper, ref_hi)
    assert 0.0 <= lower <= k / n <= upper <= 1.0


@pytest.mark.parametrize("confidence", ["0.9", "0.95", "0.99"])
@pytest.mark.parametrize(("k", "n"), [(1, 10), (9, 10), (851, 852), (1439, 1440), (100, 10**6)])
def test_one_sided_lower_matches_mpmath(k: int, n: int, confidence: str):
    tail = str(1 - mpmath.mpf(confidence))
    ref = _ref_lower(k, n, tail)
    _assert_close(clopper_pearson_lower(k, n, float(confidence)), ref)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [1, 2, 10, 852, 1440, 10**6])
def test_clopper_pearson_closed_forms(n: int, confidence: float):
    half_alpha = 0.5 * (1.0 - confidence)
    lo0, hi0 = clopper_pearson(0, n, confidence)
    assert lo0 == 0.0
    assert hi0 == pytest.approx(1.0 - half_alpha ** (1.0 / n), rel=1e-12, abs=1e-15)
    lon, hin = clopper_pearson(n, n, confidence)
    assert hin == 1.0
    assert lon == pytest.approx(half_alpha ** (1.0 / n), rel=1e-12)
    # One-sided, zero failures: (1 - c) ** (1 / n).
    assert clopper_pearson_lower(n, n, confidence) == pytest.approx(
        (1.0 - confidence) ** (1.0 / n), rel=1e-12
    )
    assert clopper_pearson_lower(0, n, confidence) == 0.0


def test_one_sided_is_two_sided_lower_at_doubled_alpha():
    for k, n in [(3, 10), (851, 852), (1438, 1440), (999_990, 10**6)]:
        for c in (0.9, 0.95):
            assert clopper_pearson_lower(k, n, c) == pytest.approx(
                clopper_pearson(k, n, 2 * c - 1)[0], rel=1e-13
            )


# (demonstrated success rate, confidence, allowed failures, minimal number of runs)
_MIN_RUNS = [
    (0.9973, 0.90, 0, 852),
    (0.9973, 0.90, 1, 1440),
    (0.9973, 0.90, 2, 1970),
    (0.99, 0.90, 0, 230),
    (0.99, 0.90, 1, 388),
    (0.9973, 0.95, 0, 1109),
    (0.9973, 0.95, 1, 1756),
    (0.99865, 0.90, 0, 1705),
    (0.99865, 0.90, 1, 2880),
    (0.99865, 0.90, 2, 3941),
]


@pytest.mark.parametrize(("rate", "confidence", "failures", "n"), _MIN_RUNS)
def test_minimal_runs_table(rate: float, confidence: float, failures: int, n: int):
    """n runs with at most `failures` failures demonstrate `rate`; n - 1 runs do not."""
    assert clopper_pearson_lower(n - failures, n, confidence) >= rate
    assert clopper_pearson_lower(n - 1 - failures, n - 1, confidence) < rate


def test_clopper_pearson_edge_cases_and_validation():
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    assert clopper_pearson_lower(0, 0) == 0.0
    for bad in [(-1, 5), (6, 5), (1, -1)]:
        with pytest.raises(ValueError):
            clopper_pearson(*bad)
        with pytest.raises(ValueError):
            clopper_pearson_lower(*bad)
    for conf in (0.0, 1.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError):
            clopper_pearson(3, 10, conf)
        with pytest.raises(ValueError):
            clopper_pearson_lower(3, 10, conf)
    with pytest.raises(ValueError):
        clopper_pearson(2.5, 10)


# ---------------------------------------------------------------------------------------------
# QuantileSketch
# ---------------------------------------------------------------------------------------------

_QS = (0.001, 0.01, 0.5, 0.9, 0.99, 0.999)
# Rounding slack on the relative-error bound: bucket edges are computed in float64.
_SLACK = 1e-9


def _assert_within_accuracy(sketch: QuantileSketch, x: np.ndarray, qs=_QS) -> None:
    xs = np.sort(np.asarray(x, dtype=np.float64))
    a = sketch.relative_accuracy
    for q in qs:
        r = math.ceil(q * (xs.size - 1))  # the documented rank definition
        assert r == quantile_rank(q, xs.size)
        exact = xs[r]
        est = sketch.quantile(q)
        assert abs(est - exact) <= a * (1 + _SLACK) * abs(exact), (q, est, exact)


def _mixed_sample(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal values, negative lognormals and exact zeros; no nonzero |x| < 1e-6."""
    parts = [
        rng.normal(0.0, 5.0, n),
        -rng.lognormal(0.0, 1.5, n // 2),
        np.zeros(n // 5),
    ]
    x = np.concatenate(parts)
    x = x[(x == 0) | (np.abs(x) >= 1e-6)]
    rng.shuffle(x)
    return x


@pytest.mark.parametrize("accuracy", [1e-3, 1e-2])
@pytest.mark.parametrize("dist", ["lognormal", "exponential", "mixed"])
def test_sketch_relative_accuracy(dist: str, accuracy: float):
    rng = np.random.default_rng(1234)
    x = {
        "lognormal": lambda: rng.lognormal(0.0, 2.0, 200_000),
        "exponential": lambda: rng.exponential(3.0, 200_000),
        "mixed": lambda: _mixed_sample(rng, 100_000),
    }[dist]()
    sketch = QuantileSketch(relative_accuracy=accuracy)
    for chunk in np.array_split(x, 7):
        sketch.add(chunk)
    _assert_within_accuracy(sketch, x, _QS + (0.05, 0.25, 0.75))
    assert sketch.quantile(0.0) == x.min()
    assert sketch.quantile(1.0) == x.max()


def test_sketch_million_values_accurate():
    rng = np.random.default_rng(7)
    x = rng.lognormal(1.0, 1.5, 10**6)
    x[::10] *= -1.0
    sketch = QuantileSketch()
    sketch.add(x)
    _assert_within_accuracy(sketch, x)
    assert sketch.count == x.size


def test_sketch_exact_summaries():
    rng = np.random.default_rng(3)
    chunks = [rng.normal(2.0, 3.0, 1000).astype(np.float32), rng.exponential(1.0, 5000), [0, 4]]
    sketch = QuantileSketch()
    for c in chunks:
        sketch.add(np.asarray(c))
    x = np.concatenate([np.asarray(c, dtype=np.float64) for c in chunks])
    assert sketch.count == x.size
    assert sketch.min == x.min()
    assert sketch.max == x.max()
    assert sketch.sum == pytest.approx(x.sum(), rel=1e-12)
    assert sketch.mean == pytest.approx(x.mean(), rel=1e-12)


def test_sketch_merge_equals_concatenation():
    rng = np.random.default_rng(11)
    x = _mixed_sample(rng, 60_000)
    whole = QuantileSketch()
    whole.add(x)
    parts = [QuantileSketch() for _ in range(3)]
    for part, chunk in zip(parts, np.array_split(x, 3)):
        part.add(chunk)
    merged = parts[0]
    merged.merge(parts[1])
    merged.merge(parts[2])
    a, b = merged.to_dict(), whole.to_dict()
    assert a.pop("sum") == pytest.approx(b.pop("sum"), rel=1e-12)
    assert a == b  # identical bucket counts, count, min and max
    for q in np.linspace(0.0, 1.0, 101):
        assert merged.quantile(q) == whole.quantile(q)


def test_sketch_merge_rejects_other_layout():
    s = QuantileSketch()
    for other in (
        QuantileSketch(relative_accuracy=2e-3),
        QuantileSketch(min_magnitude=1e-5),
        QuantileSketch(max_magnitude=1e8),
    ):
        with pytest.raises(ValueError):
            s.merge(other)
    with pytest.raises(TypeError):
        s.merge(ExactOrSketch())


def test_sketch_dict_round_trip():
    rng = np.random.default_rng(5)
    sketch = QuantileSketch(relative_accuracy=5e-3)
    sketch.add(_mixed_sample(rng, 20_000))
    data = json.loads(json.dumps(sketch.to_dict()))
    back = QuantileSketch.from_dict(data)
    assert back.to_dict() == sketch.to_dict()
    for q in np.linspace(0.0, 1.0, 51):
        assert back.quantile(q) == sketch.quantile(q)
    empty = QuantileSketch.from_dict(json.loads(json.dumps(QuantileSketch().to_dict())))
    assert empty.count == 0 and math.isnan(empty.min)
    bad = sketch.to_dict()
    bad["count"] += 1
    with pytest.raises(ValueError):
        QuantileSketch.from_dict(bad)


def test_sketch_rejects_nonfinite_atomically():
    sketch = QuantileSketch()
    sketch.add(np.array([1.0, 2.0]))
    for bad in ([1.0, math.nan], [math.inf], [-math.inf, 3.0]):
        with pytest.raises(ValueError):
            sketch.add(np.array(bad))
    assert sketch.count == 2 and sketch.sum == 3.0 and sketch.max == 2.0


def test_sketch_small_and_out_of_range_magnitudes():
    # Below min_magnitude: zero bucket, absolute error < min_magnitude.
    sketch = QuantileSketch(min_magnitude=1e-6)
    x = np.array([1e-9, 2e-9, 3e-9, 5.0])
    sketch.add(x)
    assert abs(sketch.quantile(1 / 3) - 2e-9) < 1e-6
    # Above max_magnitude: clamped into the last bucket, result still within [min, max].
    sketch = QuantileSketch(max_magnitude=10.0)
    sketch.add(np.array([100.0, 200.0, 300.0]))
    assert 100.0 <= sketch.quantile(0.5) <= 300.0
    assert sketch.quantile(0.0) == 100.0 and sketch.quantile(1.0) == 300.0


def test_sketch_validation():
    with pytest.raises(ValueError):
        QuantileSketch().quantile(0.5)  # empty
    sketch = QuantileSketch()
    sketch.add(np.arange(1.0, 10.0))
    for q in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError):
            sketch.quantile(q)
    for args in [(0.0,), (1.0,), (1e-3, 0.0), (1e-3, 1.0, 0.5), (1e-3, 1e-6, math.inf)]:
        with pytest.raises(ValueError):
            QuantileSketch(*args)
    single = QuantileSketch()
    single.add(np.array([4.2]))
    assert single.quantile(0.5) == 4.2


# ---------------------------------------------------------------------------------------------
# ExactOrSketch
# ---------------------------------------------------------------------------------------------


def test_exact_or_sketch_exact_below_limit():
    rng = np.random.default_rng(21)
    chunks = [rng.lognormal(0.0, 1.0, 3000).astype(np.float32), rng.normal(0.0, 1.0, 4000)]
    est = ExactOrSketch(exact_limit=10_000)
    for c in chunks:
        est.add(c)
    assert est.method == "exact"
    whole = np.concatenate(chunks)
    for q in (0.0, 0.001, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert est.quantile(q) == float(np.percentile(whole, q * 100))
    assert est.count == whole.size
    assert est.min == whole.min() and est.max == whole.max()
    assert est.mean == pytest.approx(whole.mean(), rel=1e-12)


def test_exact_or_sketch_switches_above_limit():
    rng = np.random.default_rng(22)
    chunks = [rng.exponential(2.0, 5000) for _ in range(4)]
    est = ExactOrSketch(exact_limit=10_000)
    est.add(chunks[0])
    est.add(chunks[1])
    assert est.method == "exact"  # exactly at the limit
    est.add(chunks[2])
    assert est.method == "sketch"
    est.add(chunks[3])
    assert est.method == "sketch"  # dropped for good
    whole = np.concatenate(chunks)
    _assert_within_accuracy(est.sketch, whole)
    for q in _QS:
        assert est.quantile(q) == est.sketch.quantile(q)
    assert est.mean == pytest.approx(whole.mean(), rel=1e-12)
    assert est.min == whole.min() and est.max == whole.max()


def test_exact_or_sketch_merge():
    rng = np.random.default_rng(23)
    x = rng.normal(10.0, 2.0, 8000)
    a, b = ExactOrSketch(exact_limit=10_000), ExactOrSketch(exact_limit=10_000)
    a.add(x[:5000])
    b.add(x[5000:])
    a.merge(b)
    assert a.method == "exact"
    for q in (0.0, 0.01, 0.5, 0.99, 1.0):
        assert a.quantile(q) == float(np.percentile(x, q * 100))
    # Combined count over the limit: sketch.
    c = ExactOrSketch(exact_limit=10_000)
    c.add(rng.normal(size=6000))
    c.merge(a)
    assert c.method == "sketch" and c.count == 14_000
    # Exact merged with a sketch: sketch.
    d = ExactOrSketch(exact_limit=10_000)
    d.add(x[:10])
    d.merge(c)
    assert d.method == "sketch" and d.count == 14_010


def test_exact_or_sketch_rejects_nan():
    est = ExactOrSketch()
    with pytest.raises(ValueError):
        est.add(np.array([1.0, math.nan]))
    assert est.count == 0 and est.method == "exact"
