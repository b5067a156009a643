"""Statistics folded on the device equal the host fold of the same records, bit for bit.

The pieces here are synthetic rows built to sit on every edge the fold compares against:
values one float32 step either side of sketch-bucket, histogram and parameter-bin edges,
ties among the fastest failures, non-finite outcomes, zeros, negatives, subnormals and
values past the sketch's range, and a last piece that reaches past the population's end.
A flown population is compared end to end in test_monte_carlo-style with real flights.
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import jax
import numpy as np
import pytest

import descent_opt
from descent_opt import population as P
from descent_opt.device_statistics import fixed_point_parts
from descent_opt.faults import FAULT_FIELDS, NEVER_LATE_M, Faults
from descent_opt.objectives import LandingMetrics
from descent_opt.simulate import Outcome
from descent_opt.statistics import FIXED_POINT_BITS, QuantileSketch, fixed_point_sum
from descent_opt.tally import DISPERSION_FIELDS, SPEED_EDGES_MPS, Tally, parameter_bins

PIECE = 512
PLANNED_S = 180.0


def _neighbours(edges, dtype, rng, size):
    """Values at, just below and just above randomly chosen float64 edges, in ``dtype``."""
    pick = np.asarray(edges, np.float64)[rng.integers(0, len(edges), size)].astype(dtype)
    step = rng.integers(-1, 2, size)
    out = pick.copy()
    out[step < 0] = np.nextafter(pick[step < 0], np.array(-np.inf, dtype))
    out[step > 0] = np.nextafter(pick[step > 0], np.array(np.inf, dtype))
    return out


def _mixed(rng, dtype, size, edges):
    """Positive values spread over many magnitudes, a third on or next to ``edges``."""
    x = (rng.lognormal(0.0, 3.0, size)).astype(dtype)
    on_edge = rng.random(size) < 0.35
    x[on_edge] = _neighbours(edges, dtype, rng, int(on_edge.sum()))
    special = rng.random(size)
    x[special < 0.02] = 0.0
    tiny = np.finfo(dtype).smallest_subnormal
    x[(special >= 0.02) & (special < 0.03)] = tiny * 7
    x[(special >= 0.03) & (special < 0.04)] = dtype(3e7)  # past the sketch's max magnitude
    return x


def _rows(rng, n, bins, dtype=np.float32):
    """Synthetic (dispersion, faults, outcome, metrics) of ``n`` members."""
    sketch_edges = QuantileSketch().upper_bounds
    f = lambda a: np.asarray(a, dtype)  # noqa: E731
    boolean = lambda p: rng.random(n) < p  # noqa: E731
    speed = _mixed(rng, dtype, n, SPEED_EDGES_MPS)
    speed[rng.random(n) < 0.2] = dtype(3.25)  # ties among the fastest failures
    vz = _mixed(rng, dtype, n, SPEED_EDGES_MPS) * np.where(boolean(0.1), -1, 1).astype(dtype)
    time = _mixed(rng, dtype, n, sketch_edges)
    time[boolean(0.1)] = _neighbours([PLANNED_S], dtype, rng, 1)[0]
    fuel = _mixed(rng, dtype, n, sketch_edges)
    fuel[boolean(0.01)] = np.nan
    tilt = _mixed(rng, dtype, n, sketch_edges)
    tilt[boolean(0.005)] = np.inf
    faults = {}
    for name in FAULT_FIELDS:
        if name == "absent":
            faults[name] = boolean(0.05)
        elif name in bins:
            value = _neighbours(bins[name][0], dtype, rng, n)
            value[boolean(0.3)] = 0.0 if name != "acquisition_range_m" else NEVER_LATE_M
            faults[name] = value
        else:
            faults[name] = f(rng.normal(size=n))
    landed, exhausted = boolean(0.97), boolean(0.02)
    outcome = Outcome(
        landed=landed,
        touchdown_time_s=time,
        touchdown_velocity_mps=f(rng.normal(size=(n, 3))),
        touchdown_position_m=f(rng.normal(size=(n, 3))),
        touchdown_tilt_deg=tilt,
        fuel_kg=fuel,
        exhausted=exhausted,
        final_height_m=f(np.zeros(n)),
        lrf_first_accept_height_m=f(rng.uniform(0, 3000, n)),
        lrf_ignored_s=f(rng.exponential(1.0, n)),
        lrf_locked_out=boolean(0.05),
    )
    metrics = LandingMetrics(
        vertical_speed_mps=vz,
        horizontal_speed_mps=_mixed(rng, dtype, n, SPEED_EDGES_MPS),
        speed_mps=speed,
        tilt_deg=tilt,
        fuel_kg=fuel,
        miss_distance_m=_mixed(rng, dtype, n, sketch_edges),
        landed=landed,
        exhausted=exhausted,
        crash=boolean(0.05),
        success=boolean(0.8),
    )
    dispersion = SimpleNamespace(
        **{k: f(rng.normal(size=(n, 3) if k != "mass0_kg" else n)) for k in DISPERSION_FIELDS},
        faults=Faults(**faults),
    )
    return dispersion, outcome, metrics


def _take(tree, lo, hi):
    return jax.tree.map(lambda x: x[lo:hi], tree)


def _fold_both(rng, n_pieces, end, exact_limit, dtype=np.float32, keep_failures=25):
    """Host and device tallies of the first ``end`` members of ``n_pieces`` pieces."""
    catalog = descent_opt.load_config([]).sampler().catalog
    bins = parameter_bins(SimpleNamespace(catalog=catalog))
    scen, outcome, metrics = _rows(rng, n_pieces * PIECE, bins, dtype)
    common = dict(
        keep_failures=keep_failures,
        exact_limit=exact_limit,
        unlandable=("lrf_absent",),
        planned_duration_s=PLANNED_S,
    )
    host, device = Tally(**common), Tally(**common)
    fold = P._DeviceFold(device, bins, PLANNED_S, end, exact=end <= exact_limit)
    dev = jax.local_devices()[0]
    for k in range(n_pieces):
        lo, hi = k * PIECE, (k + 1) * PIECE
        indices = np.arange(lo, hi)
        piece = SimpleNamespace(
            **{name: getattr(scen, name)[lo:hi] for name in DISPERSION_FIELDS},
            faults=_take(scen.faults, lo, hi),
        )
        o, m = _take(outcome, lo, hi), _take(metrics, lo, hi)
        fold.add([fold(dev, indices, piece, o, m)])
        records = P.records_of(indices, piece, o, None, m)
        valid = records["index"] < end
        host.merge(Tally.of_records({key: v[valid] for key, v in records.items()}, bins, **common))
    fold.finish()
    return host, device


def _assert_same(host, device):
    assert host.summary() == device.summary()
    assert host.failure_list() == device.failure_list()
    assert host.counts == device.counts
    assert host.nonfinite_indices == device.nonfinite_indices
    for name, entry in host.by_parameter.items():
        np.testing.assert_array_equal(entry["n"], device.by_parameter[name]["n"], err_msg=name)
        np.testing.assert_array_equal(entry["success"], device.by_parameter[name]["success"])
    for name, hist in host.speed_histograms.items():
        np.testing.assert_array_equal(hist, device.speed_histograms[name], err_msg=name)
    for name, q in host.quantities.items():
        assert q.method == device.quantities[name].method, name
        assert q.sketch.to_dict() == device.quantities[name].sketch.to_dict(), name
        assert q.mean == device.quantities[name].mean, name


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "sketch"])
def test_device_fold_equals_host_fold(exact):
    rng = np.random.default_rng(7)
    end = 3 * PIECE - 77  # the last piece reaches past the end
    host, device = _fold_both(rng, 3, end, exact_limit=10**6 if exact else 100)
    assert host.counts["n"] == end
    # The rows exercise what they are meant to: failures, divergences, every class.
    assert 0 < host.counts["nonfinite"] and len(host.failure_list()) == 25
    assert all(n > 0 for n, _ in host.by_fault.values())
    assert device.quantities["fuel_kg"].method == ("exact" if exact else "sketch")
    _assert_same(host, device)


def test_device_fold_in_float64_equals_host_fold():
    """Under ``precision=float64`` values are float64: the same tally in either place."""
    with jax.enable_x64(True):
        host, device = _fold_both(np.random.default_rng(3), 2, 2 * PIECE, 100, np.float64)
    _assert_same(host, device)


def test_fixed_point_sum_is_exact_and_order_free():
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000) * 10.0 ** rng.integers(-300, 300, 2000)
    x[:5] = [5e-324, -5e-324, 1.7e308, -1.7e308, 0.0]
    exact = sum(Fraction(float(v)) for v in x)
    assert Fraction(fixed_point_sum(x), 1 << FIXED_POINT_BITS) == exact
    assert fixed_point_sum(rng.permutation(x)) == fixed_point_sum(x)
    y = rng.normal(size=3000).astype(np.float32) * np.float32(1e3)
    parts = [fixed_point_sum(y[i : i + 700]) for i in range(0, y.size, 700)]
    assert sum(parts) == fixed_point_sum(y) == fixed_point_sum(y[::-1])


def test_device_sum_parts_reassemble_the_exact_sum():
    from descent_opt.device_statistics import _exact_sum_parts

    rng = np.random.default_rng(1)
    x = (rng.normal(size=4096) * 10.0 ** rng.integers(-40, 38, 4096)).astype(np.float32)
    kept = rng.random(4096) < 0.9
    parts = np.asarray(jax.jit(_exact_sum_parts)(x, kept))
    assert fixed_point_parts(parts, np.float32) == fixed_point_sum(x[kept])
