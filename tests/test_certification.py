"""Certification levels from exact one-sided bounds; landable and unlandable classes counted
apart and merged like every other statistic."""

from __future__ import annotations

import numpy as np
import pytest

from descent_opt import certification
from descent_opt.faults import FAULT_CLASSES, FAULT_FIELDS, faults_of
from descent_opt.statistics import clopper_pearson_lower
from descent_opt.tally import Tally


@pytest.mark.parametrize(
    "lower,level",
    [
        (0.98, None),
        (0.99, 0.99),
        (0.9972, 0.995),
        (0.9973, 0.9973),
        (0.99989, 0.999),
        (1.0, 0.9999),
    ],
)
def test_certified_at_is_the_largest_level_reached(lower, level):
    assert certification.certified_at(lower) == level


def test_zero_failure_runs_needed_for_three_sigma():
    """0.9973 at 95 % needs 1,109 flights without a failure (ln 0.05 / ln 0.9973), not 1,108."""
    assert certification.entry(1109, 1109)["certified_at"] == 0.9973
    assert certification.entry(1108, 1108)["certified_at"] == 0.995
    assert clopper_pearson_lower(1109, 1109, 0.95) == pytest.approx(0.05 ** (1 / 1109))


def _records(n, seed):
    """Random per-scenario rows with the fields a tally reads."""
    rng = np.random.default_rng(seed)
    absent = rng.random(n) < 0.05
    dark = rng.random(n) < 0.2
    success = rng.random(n) < np.where(absent, 0.3, np.where(dark, 0.97, 0.999))
    zeros = np.zeros(n)
    return {
        "index": np.arange(n) + 1000 * seed,
        "success": success,
        "crash": ~success & (rng.random(n) < 0.5),
        "exhausted": np.zeros(n, bool),
        "landed": np.ones(n, bool),
        "lrf_locked_out": rng.random(n) < 0.01,
        "touchdown_time_s": rng.uniform(80.0, 400.0, n),
        "acquisition_range_m": rng.uniform(700, 3000, n),
        "latency_s": zeros,
        "dropout_prob": zeros,
        "bias_m": zeros,
        "scale_factor": zeros + 1.0,
        "heavy_tail_scale_m": np.where(dark, 5.0, 0.0),
        "absent": absent,
        "rim_step_height_m": zeros,
        "rim_radius_m": zeros + 200.0,
        **{q: rng.random(n) for q in ("fuel_kg", "touchdown_speed_mps", "touchdown_vz_mps",
                                      "touchdown_vh_mps", "tilt_deg", "miss_distance_m")},
        **{k: rng.random((n, 3)) for k in ("position0_m", "velocity0_mps",
                                           "nav_position_error_m", "nav_velocity_error_mps",
                                           "imu_bias_mps2")},
        "mass0_kg": zeros + 480.0,
        "lrf_ignored_s": zeros,
        "lrf_first_accept_height_m": zeros,
    }  # fmt: skip


def test_landable_classes_counted_apart_and_merged_in_any_split():
    rows = [_records(3000, s) for s in range(3)]
    settings = dict(unlandable=("lrf_absent",), planned_duration_s=180.0)
    whole = Tally.of_records(
        {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}, {}, **settings
    )
    parts = [Tally.of_records(r, {}, **settings) for r in rows]
    merged = parts[2]
    merged.merge(parts[0])
    merged.merge(parts[1])
    cert = whole.summary()["certification"]
    assert merged.summary()["certification"] == cert

    success = np.concatenate([r["success"] for r in rows])
    absent = np.concatenate([r["absent"] for r in rows])
    columns = {k: np.concatenate([r[k] for r in rows]) for k in FAULT_FIELDS}
    dark = FAULT_CLASSES["dark_terrain"](faults_of(columns))
    landable = cert["overall"]
    assert landable["n_scenarios"] == int((~absent).sum())
    assert landable["success_rate"] == pytest.approx(success[~absent].mean())
    assert cert["unlandable"] == ["lrf_absent"] and "lrf_absent" not in cert["classes"]
    assert cert["unlandable_classes"]["lrf_absent"]["n_scenarios"] == int(absent.sum())
    assert cert["classes"]["dark_terrain"]["n_scenarios"] == int((dark & ~absent).sum())
    assert cert["all_scenarios"]["n_scenarios"] == success.size
    assert set(cert["classes"]) == set(FAULT_CLASSES) - {"lrf_absent"}
    assert cert["weakest_class"] == "dark_terrain"
    lowers = [cert["overall"]["certified_at"]] + [
        c["certified_at"] for c in cert["classes"].values() if c["n_scenarios"]
    ]
    assert cert["certified_at"] == (None if None in lowers else min(lowers))
    late = np.concatenate([r["touchdown_time_s"] for r in rows]) > 180.0
    assert whole.summary()["touchdown_time_s"]["late_rate"] == pytest.approx(late.mean())


def test_certification_lines_print_every_class():
    block = certification.certify(
        (1000, 990), (990, 985), {"rim_step": (100, 100), "lrf_absent": (0, 0)},
        {"rim_step": (100, 100), "lrf_absent": (10, 5)}, ("lrf_absent",),
    )  # fmt: skip
    text = "\n".join(certification.lines(block))
    assert "rim_step" in text and "lrf_absent (unlandable)" in text and "landable" in text
