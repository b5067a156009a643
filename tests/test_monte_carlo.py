"""Monte Carlo: a scenario is a pure function of (seed, index), whatever the population size
or chunking; failures re-fly by index to the same numbers; every dispersion and fault
parameter of the configuration reaches the scenarios that are flown; the streamed statistics
equal those of the whole population at once."""

from __future__ import annotations

import json
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

import descent_opt
from descent_opt.faults import FAULT_CLASSES, late_acquisition
from descent_opt.guidance import default_gains
from descent_opt.jobs import monte_carlo
from descent_opt.population import (
    EXACT_LIMIT,
    _draw,
    flight_size,
    fly_members,
    fly_population,
    records_of,
)
from descent_opt.simulate import simulate

pytestmark = pytest.mark.slow  # end to end: see pyproject.toml

SMALL = ["evaluation.keep_failures=50"]
OUTCOME_KEYS = (
    "touchdown_time_s",
    "touchdown_velocity_mps",
    "touchdown_position_m",
    "fuel_kg",
    "tilt_deg",
    "landed",
    "exhausted",
    "success",
    "lrf_first_accept_height_m",
)


def _fly(config, n, chunk_size, *, start=0, progress=None, **options):
    return fly_population(
        config.sim,
        default_gains(config.altitude_breakpoints_m),
        config.sampler(),
        config.success,
        n,
        key=config.population_key(),
        start=start,
        chunk_size=chunk_size,
        keep_failures=config.evaluation.keep_failures,
        keep_records=True,
        progress=progress,
        **options,
    )


@pytest.fixture(scope="module")
def config():
    return descent_opt.load_config(SMALL)


@pytest.fixture(scope="module")
def runs(config):
    return {
        "n1000_chunk100": _fly(config, 1000, 100),
        "n1000_chunk1000": _fly(config, 1000, 1000),
        "n5000": _fly(config, 5000, None),
    }


def test_member_outcome_independent_of_chunk_size_and_population_size(runs):
    a, b, c = (runs[k].records for k in ("n1000_chunk100", "n1000_chunk1000", "n5000"))
    np.testing.assert_array_equal(a["index"], np.arange(1000))
    np.testing.assert_array_equal(c["index"], np.arange(5000))
    for k in OUTCOME_KEYS + ("position0_m", "acquisition_range_m", "rim_step_height_m"):
        assert np.array_equal(a[k], b[k]), k
        assert np.array_equal(a[k], c[k][:1000]), k
    # The population is not degenerate: outcomes differ between members.
    assert np.unique(a["fuel_kg"]).size > 900
    assert 0 < int((~a["success"]).sum()) < 1000


def test_refly_of_listed_failures_reproduces_them_exactly(config, runs):
    metrics = runs["n5000"].tally.failure_list()
    assert len(metrics) >= 5
    indices = [f["index"] for f in metrics]
    records, traces = fly_members(
        config.sim,
        default_gains(config.altitude_breakpoints_m),
        config.sampler(),
        config.success,
        indices,
        key=config.population_key(),
    )
    for i, failure in enumerate(metrics):
        assert records["index"][i] == failure["index"]
        assert records["touchdown_speed_mps"][i] == failure["touchdown_speed_mps"]
        assert records["touchdown_vz_mps"][i] == failure["touchdown_vz_mps"]
        assert records["fuel_kg"][i] == failure["fuel_kg"]
        assert not records["success"][i]
    whole = runs["n5000"].records
    for k in OUTCOME_KEYS:
        assert np.array_equal(records[k], whole[k][indices]), k
    # The traces are the same flights: they end where the population run's touched down.
    for i, index in enumerate(indices):
        if whole["landed"][index]:
            touchdown = whole["touchdown_time_s"][index]
            first_down = traces.time_s[i][np.argmax(traces.height_m[i] <= 0.0)]
            assert touchdown <= first_down + 1e-5 and touchdown > first_down - config.sim.dt_s


def test_failures_are_the_worst_and_sorted(runs):
    records = runs["n5000"].records
    failures = runs["n5000"].tally.failure_list()
    failed_speeds = np.sort(records["touchdown_speed_mps"][~records["success"]])[::-1]
    got = np.array([f["touchdown_speed_mps"] for f in failures])
    np.testing.assert_array_equal(got, failed_speeds[: got.size])


def test_streamed_statistics_equal_whole_population(runs):
    run = runs["n5000"]
    r = run.records
    s = run.tally.summary()
    assert s["n_scenarios"] == 5000
    assert s["success_rate"] == r["success"].mean()
    assert s["crash_rate"] == r["crash"].mean()
    assert s["timeout_rate"] == (~r["landed"] & ~r["exhausted"]).mean()
    exact_sum = sum(Fraction(float(v)) for v in r["fuel_kg"])
    assert s["fuel_kg_mean"] == float(exact_sum / r["fuel_kg"].size)  # correctly rounded
    assert s["fuel_kg_p99"] == pytest.approx(np.percentile(r["fuel_kg"], 99), rel=1e-6)
    assert s["touchdown_vz_mps_max"] == r["touchdown_vz_mps"].max()
    assert s["touchdown_vz_mps_p99"] == pytest.approx(np.percentile(r["touchdown_vz_mps"], 99))
    low, high = s["success_rate_ci95"]
    assert low < s["success_rate"] < high and s["success_rate_lower95"] > low
    rim = r["rim_step_height_m"] > 0.0
    block = s["by_fault"]["rim_step"]
    assert block["n_scenarios"] == rim.sum()
    assert block["success_rate"] == pytest.approx(r["success"][rim].mean())
    # Tallies of disjoint index ranges merge into the tally of the union.
    chunked = runs["n1000_chunk100"].tally.summary()
    one = runs["n1000_chunk1000"].tally.summary()
    assert chunked == one


def test_split_index_ranges_merge_to_the_whole(config, runs):
    first = _fly(config, 600, 300)
    second = _fly(config, 400, 400, start=600)
    first.tally.merge(second.tally)
    whole = runs["n1000_chunk1000"].tally
    assert first.tally.summary() == whole.summary()
    assert [f["index"] for f in first.tally.failure_list()] == [
        f["index"] for f in whole.failure_list()
    ]


def test_chunks_folded_while_the_next_flies_equal_one_chunk(config):
    """Chunks are folded into the statistics on a background thread while the next one
    flies: in order, each progress report counting exactly the members folded so far."""
    piece = flight_size()
    n = 3 * piece - 5  # the last piece reaches past the end
    reports = []

    def progress(step, tally):
        reports.append((step, tally.counts["n"]))

    chunked = _fly(config, n, piece, progress=progress)
    whole = _fly(config, n, None)
    assert [step for step, _ in reports] == [0, piece, piece, piece - 5]
    assert [counted for _, counted in reports] == [0, piece, 2 * piece, n]
    for k, v in whole.records.items():
        np.testing.assert_array_equal(chunked.records[k], v, err_msg=k)
    assert chunked.tally.failure_list() == whole.tally.failure_list()
    assert chunked.tally.summary() == whole.tally.summary()  # means too: sums are exact


@pytest.mark.parametrize("exact_limit", [EXACT_LIMIT, 3000], ids=["exact", "sketch"])
def test_device_fold_equals_host_fold_of_a_flown_population(config, runs, exact_limit):
    """Folded on the device that flew them or from their records on the host, the same
    members give the same tally bit for bit, percentiles exact or sketched."""
    host = runs["n5000"]
    if exact_limit != EXACT_LIMIT:
        host = _fly(config, 5000, None, exact_limit=exact_limit, fold_on_device=False)
    device = _fly(config, 5000, None, exact_limit=exact_limit, fold_on_device=True)
    assert device.records is None  # nothing but the statistics came back
    assert device.tally.quantities["fuel_kg"].method == host.tally.quantities["fuel_kg"].method
    assert device.tally.summary() == host.tally.summary()
    assert device.tally.failure_list() == host.tally.failure_list()
    for name, hist in host.tally.speed_histograms.items():
        np.testing.assert_array_equal(device.tally.speed_histograms[name], hist)


# Each configuration key of a dispersion or fault, how to read it back from the scenarios
# flown, the value that turns it off and a large value, and the spread that large value
# must give ("std" of a normal, "uniform" over a range, "rate" of occurrence).
N_DISPERSION = 4000
DISPERSIONS = [
    ("scenario.position_sigma_m", lambda s: s.position0_m, "[0,0,0]", "[40,50,60]", (40, 50, 60)),
    ("scenario.velocity_sigma_mps", lambda s: s.velocity0_mps, "[0,0,0]", "[2,3,4]", (2, 3, 4)),
    ("scenario.mass_sigma_kg", lambda s: s.mass0_kg, "0", "7", 7.0),
    (
        "scenario.nav_horizontal_sigma_m",
        lambda s: s.nav_position_error_m[:, :2],
        "0",
        "33",
        (33, 33),
    ),
    ("faults.bias_sigma_m", lambda s: s.faults.bias_m, "0", "9", 9.0),
    ("faults.scale_factor_sigma", lambda s: s.faults.scale_factor, "0", "0.05", 0.05),
]
SIGMA_ONLY = [  # keys that must stay > 0: a small and a large value
    ("scenario.nav_altitude_sigma_m", lambda s: s.nav_position_error_m[:, 2], 1.0, 500.0),
    ("scenario.nav_velocity_sigma_mps", lambda s: s.nav_velocity_error_mps, 0.01, 2.0),
    ("scenario.imu_bias_sigma_mps2", lambda s: s.imu_bias_mps2, 1e-5, 0.02),
]
FAULT_RATES = [  # rate key, range key, range, value read back, fault present
    ("late_acquisition_rate", "acquisition_range_m", (800.0, 1600.0), "acquisition_range_m",
     late_acquisition),
    ("latency_rate", "latency_s", (0.1, 0.9), "latency_s", FAULT_CLASSES["latency"]),
    ("dropout_rate", "dropout_prob", (0.2, 0.4), "dropout_prob", FAULT_CLASSES["dropouts"]),
    ("dark_terrain_rate", "heavy_tail_scale_m", (4.0, 40.0), "heavy_tail_scale_m",
     FAULT_CLASSES["dark_terrain"]),
    ("rim_step_rate", "rim_step_height_m", (200.0, 300.0), "rim_step_height_m",
     FAULT_CLASSES["rim_step"]),
    ("absent_rate", None, None, None, FAULT_CLASSES["lrf_absent"]),
]  # fmt: skip


def _population(overrides):
    config = descent_opt.load_config(overrides)
    indices = jnp.arange(N_DISPERSION, dtype=jnp.uint32)
    return _draw(config.sampler(), config.population_key(), indices)


def _std(x):
    return np.std(np.asarray(x, dtype=float), axis=0)


@pytest.mark.parametrize("key,read,off,on,sigma", DISPERSIONS, ids=[d[0] for d in DISPERSIONS])
def test_dispersion_reaches_the_scenarios(key, read, off, on, sigma):
    np.testing.assert_array_equal(_std(read(_population([f"{key}={off}"]))), 0.0)
    got = _std(read(_population([f"{key}={on}"])))
    # Sample standard deviation of 4,000 normals: within 5 % (4.5 sigma).
    np.testing.assert_allclose(got, np.broadcast_to(sigma, got.shape), rtol=0.05)


@pytest.mark.parametrize("key,read,small,large", SIGMA_ONLY, ids=[d[0] for d in SIGMA_ONLY])
def test_knowledge_sigma_reaches_the_scenarios(key, read, small, large):
    for value in (small, large):
        got = _std(read(_population([f"{key}={value}"])))
        np.testing.assert_allclose(got, np.broadcast_to(value, got.shape), rtol=0.05)


@pytest.mark.parametrize(
    "rate,span,bounds,field,present", FAULT_RATES, ids=[f[0] for f in FAULT_RATES]
)
def test_fault_rate_and_range_reach_the_scenarios(rate, span, bounds, field, present):
    extra = [f"faults.{span}=[{bounds[0]},{bounds[1]}]"] if span else []
    off = _population([f"faults.{rate}=0.0", *extra])
    assert not np.asarray(present(off.faults)).any()
    on = _population([f"faults.{rate}=1.0", *extra])
    assert np.asarray(present(on.faults)).all()
    half = _population([f"faults.{rate}=0.3", *extra])
    assert np.mean(np.asarray(present(half.faults))) == pytest.approx(0.3, abs=0.03)
    if field is not None:
        values = np.asarray(getattr(on.faults, field), dtype=float)
        lo, hi = bounds
        assert values.min() >= lo and values.max() <= hi
        assert values.min() < lo + 0.01 * (hi - lo) and values.max() > hi - 0.01 * (hi - lo)
        assert np.std(values) == pytest.approx((hi - lo) / np.sqrt(12.0), rel=0.05)


def test_faults_act_on_the_flight():
    """Fault parameters change what is flown, not only what is recorded: with the LRF
    absent nothing is ever accepted; with acquisition at 800 m no reading is accepted above
    it; with no faults most units are accepted near their 3 km design range."""
    gains = default_gains()

    def first_accept(overrides, n=256):
        config = descent_opt.load_config(["terrain=flat", *overrides])
        indices = np.arange(n)
        scenarios = _draw(config.sampler(), config.population_key(), jnp.asarray(indices))
        outcome = simulate(config.sim, gains, scenarios)
        return records_of(indices, scenarios, outcome, config.success)["lrf_first_accept_height_m"]

    assert (first_accept(["faults.absent_rate=1.0"]) < 0.0).all()
    late = first_accept(["faults=nominal", "faults.late_acquisition_rate=1.0",
                         "faults.acquisition_range_m=[800.0,800.0]"])  # fmt: skip
    accepted = late > 0.0  # the gate may still reject every reading of a unit
    assert accepted.mean() > 0.8 and (late[accepted] <= 800.0 + 1.0).all()
    clean = first_accept(["faults=nominal"])
    assert (clean > 2500.0).mean() > 0.8


def test_monte_carlo_job_outputs(tmp_path):
    """The job through the library: metrics keys of the contract, scenarios.npz holding
    every member's parameters and outcome, and a re-fly of its failures by index."""
    config = descent_opt.load_config(
        ["+experiment=monte_carlo", "evaluation.n_scenarios=3000", "evaluation.chunk_size=1000",
         "evaluation.save_scenarios=true", "evaluation.keep_failures=5"]
    )  # fmt: skip
    result = monte_carlo.run(config)
    written = monte_carlo.write_outputs(result, config, tmp_path, wall_time_s=1.0)
    assert written[-1].name == "metrics.json"
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "n_scenarios", "success_rate", "success_rate_ci95", "success_rate_lower95", "crash_rate",
        "exhausted_rate", "timeout_rate", "fuel_kg_mean", "fuel_kg_p99", "touchdown_vz_mps_p50",
        "touchdown_vz_mps_p99", "touchdown_vz_mps_max", "touchdown_vh_mps_p99", "tilt_deg_p99",
        "miss_distance_m_p99", "by_fault", "failures", "scenarios_per_s", "wall_time_s",
    ):  # fmt: skip
        assert key in m, key
    assert m["n_scenarios"] == 3000 and len(m["failures"]) == 5
    for name in ("touchdown_speed.png", "success_vs_faults.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    saved = np.load(tmp_path / "scenarios.npz")
    np.testing.assert_array_equal(saved["index"], np.arange(3000))
    assert saved["success"].mean() == m["success_rate"]
    assert saved["position0_m"].shape == (3000, 3)

    indices = [f["index"] for f in m["failures"]]
    refly = descent_opt.load_config(
        ["+experiment=monte_carlo", f"evaluation.indices=[{','.join(map(str, indices))}]"]
    )
    again = monte_carlo.run(refly)
    out = tmp_path / "refly"
    out.mkdir()
    monte_carlo.write_outputs(again, refly, out, wall_time_s=1.0)
    blocks = json.loads((out / "metrics.json").read_text())["scenarios"]
    for block, failure in zip(blocks, m["failures"]):
        assert block["index"] == failure["index"]
        assert block["touchdown_speed_mps"] == failure["touchdown_speed_mps"]
        assert block["fuel_kg"] == failure["fuel_kg"]
        assert block["touchdown_vz_mps"] == saved["touchdown_vz_mps"][block["index"]]
    traces = np.load(out / "traces.npz")
    assert traces["trace_altitude_m"].shape[0] == len(indices)
    for index in indices:
        assert (out / f"scenario_{index}.png").stat().st_size > 10_000
