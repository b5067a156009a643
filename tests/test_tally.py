"""A tally is built from one chunk and combined only by merge, and merging is associative
and commutative: however a population is cut into chunks (evenly, unevenly, with empty
chunks, or not at all) and however the chunks' tallies are grouped and ordered when merged,
every statistic is the same, bit for bit.

The population is synthetic (NumPy rows in the layout of flown records): faults drawn over
the default catalog's ranges, failures that depend on them, ties among the fastest failures
and more diverged flights than a tally lists.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from descent_opt.faults import FAULT_CLASSES, NEVER_LATE_M, FaultCatalog, Faults
from descent_opt.objectives import LandingMetrics
from descent_opt.simulate import Outcome
from descent_opt.tally import (
    DISPERSION_FIELDS,
    EXACT_LIMIT,
    Tally,
    parameter_bins,
    records_from,
)

N = 1200
KEEP = 15
PLANNED_S = 180.0
CATALOG = FaultCatalog()
BINS = parameter_bins(SimpleNamespace(catalog=CATALOG))


def _population(n: int, seed: int) -> dict[str, np.ndarray]:
    """Records of ``n`` members (indices from 10,000 up) with realistic faults and outcomes."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    has = lambda rate: rng.random(n) < rate  # noqa: E731
    span = lambda bounds: rng.uniform(*bounds, n)  # noqa: E731
    c = CATALOG
    faults = Faults(
        acquisition_range_m=f32(np.where(has(0.6), span(c.acquisition_range_m), NEVER_LATE_M)),
        latency_s=f32(np.where(has(c.latency_rate), span(c.latency_s), 0.0)),
        dropout_prob=f32(np.where(has(c.dropout_rate), span(c.dropout_prob), 0.0)),
        bias_m=f32(c.bias_sigma_m * rng.normal(size=n)),
        scale_factor=f32(1.0 + c.scale_factor_sigma * rng.normal(size=n)),
        heavy_tail_scale_m=f32(np.where(has(0.2), span(c.heavy_tail_scale_m), 0.0)),
        absent=has(0.05),
        rim_step_height_m=f32(np.where(has(0.15), span(c.rim_step_height_m), 0.0)),
        rim_radius_m=f32(span(c.rim_radius_m)),
    )
    late, absent = (FAULT_CLASSES[k](faults) for k in ("acquisition_below_1200m", "lrf_absent"))
    hard = late | absent | has(0.02)
    velocity = f32(rng.normal(0.0, 0.3, (n, 3)))
    velocity[:, 2] = -rng.lognormal(np.where(hard, 1.2, -0.5), 0.4)
    velocity[hard & has(0.1)] = [0.0, 0.0, -20.0]  # ties among the fastest failures
    vz, vh = -velocity[:, 2], f32(np.hypot(velocity[:, 0], velocity[:, 1]))
    exhausted = hard & has(0.1)
    landed = (~exhausted | has(0.5)) & ~has(0.01)  # a few neither down nor exhausted
    tilt, fuel = f32(rng.gamma(2.0, 2.0, n)), f32(rng.normal(95.0, 8.0, n))
    fuel[has(0.06)] = np.nan  # diverged flights: more than a tally lists
    tilt[has(0.05)] = np.inf
    success = landed & ~exhausted & (vz <= 2.0) & (vh <= 1.0) & (tilt <= 12.0)
    outcome = Outcome(
        landed=landed,
        touchdown_time_s=f32(rng.normal(PLANNED_S - 20.0, 12.0, n)),
        touchdown_velocity_mps=velocity,
        touchdown_position_m=f32(rng.normal(0.0, 20.0, (n, 3))),
        touchdown_tilt_deg=tilt,
        fuel_kg=fuel,
        exhausted=exhausted,
        final_height_m=f32(np.zeros(n)),
        lrf_first_accept_height_m=f32(np.minimum(faults.acquisition_range_m, 3000.0)),
        lrf_ignored_s=f32(rng.exponential(1.0, n)),
        lrf_locked_out=has(0.03),
    )
    metrics = LandingMetrics(
        vertical_speed_mps=vz,
        horizontal_speed_mps=vh,
        speed_mps=f32(np.linalg.norm(velocity, axis=1)),
        tilt_deg=tilt,
        fuel_kg=fuel,
        miss_distance_m=f32(rng.rayleigh(15.0, n)),
        landed=landed,
        exhausted=exhausted,
        crash=landed & ~success & (vz > 2.0),
        success=success,
    )
    dispersion = tuple(
        f32(rng.normal(size=n if k == "mass0_kg" else (n, 3))) for k in DISPERSION_FIELDS
    )
    return records_from(10_000 + np.arange(n), dispersion, faults, outcome, metrics)


RECORDS = _population(N, seed=11)


def _settings(exact_limit: int) -> dict:
    return dict(
        keep_failures=KEEP,
        exact_limit=exact_limit,
        unlandable=("lrf_absent",),
        planned_duration_s=PLANNED_S,
    )


def _chunks(cuts, exact_limit: int) -> list[Tally]:
    """One tally per chunk of the population cut at ``cuts``."""
    bounds = [0, *cuts, N]
    return [
        Tally.of_records({k: v[lo:hi] for k, v in RECORDS.items()}, BINS, **_settings(exact_limit))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


def _state(tally: Tally) -> dict:
    """Everything a tally reports or keeps, as plain values."""
    return {
        "summary": tally.summary(),
        "failures": tally.failure_list(),
        "counts": tally.counts,
        "landable": tally.landable,
        "by_fault": tally.by_fault,
        "by_fault_landable": tally.by_fault_landable,
        "nonfinite": tally.nonfinite_indices,
        "by_parameter": {
            k: {c: np.asarray(v).tolist() for c, v in e.items()}
            for k, e in tally.by_parameter.items()
        },
        "histograms": {k: h.tolist() for k, h in tally.speed_histograms.items()},
        "quantities": {
            k: (q.method, q.sketch.to_dict(), q.quantile(0.37) if q.count else None)
            for k, q in tally.quantities.items()
        },
    }


WHOLE = {limit: _state(_chunks([], limit)[0]) for limit in (EXACT_LIMIT, 500)}


def test_the_population_exercises_every_statistic():
    whole = _chunks([], EXACT_LIMIT)[0]
    c = whole.counts
    assert c["n"] == N and 100 < c["nonfinite"] and c["late"] > 0 and c["lrf_locked_out"] > 0
    assert 0 < c["success"] < N and c["crash"] > 0 and c["exhausted"] > 0 and c["timeout"] > 0
    assert all(n > 0 for n, _ in whole.by_fault.values())
    assert 0 < whole.landable[0] < N
    assert len(whole.nonfinite_indices) == 100
    speeds = [f["touchdown_speed_mps"] for f in whole.failure_list()]
    assert len(speeds) == KEEP and len(set(speeds)) < KEEP  # ties broken by index
    assert set(whole.by_parameter) == set(BINS)
    assert whole.quantities["fuel_kg"].method == "exact"
    assert _chunks([], 500)[0].quantities["fuel_kg"].method == "sketch"


@pytest.mark.parametrize("exact_limit", [EXACT_LIMIT, 500], ids=["exact", "sketch"])
@pytest.mark.parametrize(
    "cuts",
    [[], [600], [1], [N - 1], [0, 0, 7, 7, 1199], [3, 50, 51, 400, 1000], list(range(40, N, 40))],
    ids=["one", "halves", "first", "last", "empty", "uneven", "thirty"],
)
def test_merged_chunks_equal_the_whole(cuts, exact_limit):
    """Chunks merged left to right, right to left, and into an empty tally."""
    forward = _chunks(cuts, exact_limit)
    total = forward[0]
    for part in forward[1:]:
        total.merge(part)
    assert _state(total) == WHOLE[exact_limit]
    backward = _chunks(cuts, exact_limit)[::-1]
    total = backward[0]
    for part in backward[1:]:
        total = total.merge(part)
    assert _state(total) == WHOLE[exact_limit]
    empty = Tally(**_settings(exact_limit))
    for part in _chunks(cuts, exact_limit):
        empty.merge(part)
    assert _state(empty) == WHOLE[exact_limit]


def _grouped(parts: list[Tally], draw) -> Tally:
    """``parts`` merged in a drawn grouping (a binary tree over them)."""
    if len(parts) == 1:
        return parts[0]
    k = draw(st.integers(1, len(parts) - 1))
    return _grouped(parts[:k], draw).merge(_grouped(parts[k:], draw))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    cuts=st.lists(st.integers(0, N), max_size=10).map(sorted),
    exact_limit=st.sampled_from([EXACT_LIMIT, 500, 900]),
    data=st.data(),
)
def test_any_split_in_any_grouping_and_order_gives_the_same_tally(cuts, exact_limit, data):
    parts = data.draw(st.permutations(_chunks(cuts, exact_limit)))
    total = _grouped(parts, data.draw)
    if exact_limit in WHOLE:
        assert _state(total) == WHOLE[exact_limit]
    else:
        assert _state(total) == _state(_chunks([], exact_limit)[0])


def test_tallies_built_differently_do_not_merge():
    a, b = _chunks([600], EXACT_LIMIT)
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(Tally.of_records(RECORDS, BINS, **{**_settings(EXACT_LIMIT), "keep_failures": 3}))
    assert _state(a.merge(b)) == WHOLE[EXACT_LIMIT]
