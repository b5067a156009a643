"""Fault envelopes: a point flies the held-out members with one fault fixed, bit-identical
to ``monte_carlo`` with the equivalent catalog; a table tuned on the fault catalog keeps
landing to a harsher acquisition altitude than one tuned on nominal sensors; the job's
files, and bad input refused in one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from cli_runs import RESULT_FILES, run_cli, run_cli_calls

import descent_opt
from descent_opt import envelope
from descent_opt.config import ConfigError
from descent_opt.export import load_gains, write_gain_table
from descent_opt.faults import FaultCatalog
from descent_opt.guidance import default_gains
from descent_opt.jobs.envelope import CSV_COLUMNS, table_names
from descent_opt.scenarios import ScenarioSpec
from descent_opt.stages import evaluate

# The small main job's flight (tests/cli_runs.py TINY): a short, low descent over flat
# ground, its fault catalog, so that its compiled programs are shared.
FLIGHT = [
    "sim.duration_s=60",
    "scenario.r0_m=[-50.0,0.0,1500.0]",
    "scenario.v0_mps=[0.0,0.0,-35.0]",
    "faults.acquisition_range_m=[700.0,1500.0]",
    "terrain=flat",
]


def _row(value, lower95, rate=None):
    rate = lower95 if rate is None else rate
    return {"value": value, "success_rate": rate, "success_rate_ci95": [lower95, rate],
            "success_rate_lower95": lower95}  # fmt: skip


def test_edge_walks_from_the_benign_end():
    rows = [_row(3000.0, 0.995), _row(2000.0, 0.992), _row(1000.0, 0.95), _row(500.0, 0.999)]
    e = envelope.edge(rows, 0.99)
    assert (e["edge"], e["beyond_grid"], e["first_failing"]) == (2000.0, False, 1000.0)
    assert e["success_rate_lower95"] == 0.992 and e["first_failing_lower95"] == 0.95
    e = envelope.edge(rows, 0.9)  # none fails: the harshest value, the edge beyond the grid
    assert (e["edge"], e["beyond_grid"], e["first_failing"]) == (500.0, True, None)
    e = envelope.edge(rows, 0.996)  # even the first fails
    assert (e["edge"], e["beyond_grid"], e["first_failing"]) == (None, False, 3000.0)
    assert e["success_rate_ci95"] is None


def test_grids_run_from_benign_to_beyond_the_catalog():
    catalog, scenario = FaultCatalog(), ScenarioSpec()
    for axis in envelope.AXES:
        values = envelope.default_grid(axis, catalog, scenario, 12)
        low, high = envelope.catalog_range(axis, catalog, scenario)
        assert len(values) == 12 and len(set(values)) == 12, axis
        harsher = np.diff(values) < 0 if envelope.harsher_lower(axis) else np.diff(values) > 0
        assert harsher.all(), axis
        assert (values[-1] < low) if envelope.harsher_lower(axis) else (values[-1] > high), axis
    assert envelope.default_grid("acquisition_range_m", catalog, scenario, 3).tolist() == [
        3000.0, 1600.0, 200.0,
    ]  # fmt: skip
    # A catalog without the fault gets the library catalog's grid.
    nominal = envelope.default_grid("bias_m", FaultCatalog.nominal(), scenario, 4)
    assert nominal.tolist() == envelope.default_grid("bias_m", catalog, scenario, 4).tolist()
    # An explicit grid is flown from benign to harsh, once per value.
    spec = envelope.EnvelopeSpec(axis=("acquisition_range_m",), values=(700.0, 1500.0, 700.0))
    assert envelope.grid(spec, "acquisition_range_m", catalog, scenario).tolist() == [1500, 700]


def test_explicit_grid_within_the_axis_bounds():
    with pytest.raises(ConfigError, match="envelope.values: must be values of dropout_prob"):
        descent_opt.load_config(["envelope.axis=[dropout_prob]", "envelope.values=[0.5,1.5]"])
    with pytest.raises(ConfigError, match="acquisition_range_m >= 1"):
        descent_opt.load_config(["envelope.axis=[acquisition_range_m]", "envelope.values=[0]"])
    descent_opt.load_config(["envelope.axis=[bias_m]", "envelope.values=[-30,30]"])


def test_table_names_are_stems_made_unique():
    assert table_names(["/r/baseline_gains.json", "/r/gains.json"]) == ["baseline_gains", "gains"]
    assert table_names(["a/gains.json", "b/gains.json"]) == ["a/gains", "b/gains"]
    assert table_names(["a/gains.json", "a/gains.csv"]) == ["gains.json", "gains.csv"]


@pytest.mark.slow
def test_point_is_monte_carlo_with_the_equivalent_catalog():
    """Member by member, bit for bit: a fixed acquisition range (or rim step) is the
    catalog that gives every member that value; every point flies the same dispersions."""
    config = descent_opt.load_config(FLIGHT)
    gains = default_gains(config.altitude_breakpoints_m)
    n = 300

    def point(axis, value):
        return envelope.fly_point(
            config.sim, gains, config.sampler(), config.success, axis, value, n,
            key=config.population_key(), keep_records=True,
        ).records  # fmt: skip

    def monte_carlo(*overrides):
        catalog = descent_opt.load_config([*FLIGHT, f"evaluation.n_scenarios={n}", *overrides])
        return evaluate(catalog, gains).records

    flown = {
        "acquisition": point("acquisition_range_m", 1100.0),
        "rim": point("rim_step_height_m", 300.0),
        "knowledge": point("altitude_knowledge_error_m", 500.0),
    }
    same = {
        "acquisition": monte_carlo(
            "faults.late_acquisition_rate=1", "faults.acquisition_range_m=[1100,1100]"
        ),
        "rim": monte_carlo("faults.rim_step_rate=1", "faults.rim_step_height_m=[300,300]"),
    }
    for name, records in same.items():
        for k in records:
            np.testing.assert_array_equal(flown[name][k], records[k], err_msg=f"{name}: {k}")
    assert (flown["acquisition"]["acquisition_range_m"] == 1100.0).all()
    assert (flown["rim"]["rim_step_height_m"] == 300.0).all()
    knowledge = flown["knowledge"]["nav_position_error_m"]
    assert (knowledge[:, 2] == 500.0).all()
    base = flown["acquisition"]
    np.testing.assert_array_equal(knowledge[:, :2], base["nav_position_error_m"][:, :2])
    for records in flown.values():  # common random numbers
        for k in ("position0_m", "velocity0_mps", "mass0_kg", "bias_m", "latency_s"):
            np.testing.assert_array_equal(records[k], base[k], err_msg=k)
    for k in ("touchdown_time_s", "fuel_kg"):  # and the faults change the flights
        assert not np.array_equal(flown["rim"][k], base[k]), k


@pytest.mark.slow
def test_catalog_tuned_table_lands_to_a_harsher_acquisition_altitude(tiny_main_job):
    """The small main job's two tables along the acquisition axis: the table tuned on the
    fault catalog keeps its lower bound above the requirement to a lower acquisition
    altitude than the table tuned on nominal sensors, and success falls toward the harsh
    end. (At 700 m the optimized table's lower bound is about 0.982 and the baseline's
    0.966, each 3 standard errors from 0.975.)"""
    out = tiny_main_job[0]
    config = descent_opt.load_config(FLIGHT)
    tables = {name: load_gains(out / f"{name}.json") for name in ("baseline_gains", "gains")}
    rows = envelope.fly_axis(
        config.sim, tables, config.sampler(), config.success, "acquisition_range_m",
        [1500.0, 900.0, 700.0, 500.0], 4096, key=config.population_key(),
    )  # fmt: skip
    edges = {name: envelope.edge([r for r in rows if r["table"] == name], 0.975) for name in tables}
    assert edges["gains"]["edge"] == 700.0 and edges["gains"]["first_failing"] == 500.0
    baseline = edges["baseline_gains"]
    assert baseline["first_failing"] == 700.0 and baseline["edge"] > edges["gains"]["edge"]
    for name in tables:
        curve = [r for r in rows if r["table"] == name]
        assert [r["value"] for r in curve] == [1500.0, 900.0, 700.0, 500.0]
        for near, far in zip(curve, curve[1:]):
            assert far["success_rate"] <= near["success_rate_ci95"][1], name
        assert curve[-1]["success_rate_ci95"][1] < curve[0]["success_rate_ci95"][0], name


@pytest.mark.slow
def test_envelope_job_outputs_for_two_tables(tiny_main_job, tmp_path):
    out = tiny_main_job[0]
    run = tmp_path / "run"
    paths = [str(out / "baseline_gains.json"), str(out / "gains.json")]
    proc = run_cli(
        ["+experiment=envelope", f"gains=[{','.join(paths)}]", *FLIGHT, "progress=false",
         "envelope.axis=[acquisition_range_m,latency_s]", "envelope.points=2",
         "envelope.n_scenarios=64", f"hydra.run.dir={run}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run / "envelope.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 * 2 * 2
    assert {r["table"] for r in rows} == {"baseline_gains", "gains"}
    assert [float(r["value"]) for r in rows[:2]] == [1500.0, 200.0]  # benign first
    assert all(int(r["n_scenarios"]) == 64 for r in rows)
    m = json.loads((run / "metrics.json").read_text())
    for key in ("required_success", "n_scenarios", "tables", "edges", "grids", "harsher",
                "catalog_ranges", "wall_time_s"):  # fmt: skip
        assert key in m, key
    assert m["required_success"] == 0.99 and m["n_scenarios"] == 64
    assert m["tables"] == {"baseline_gains": paths[0], "gains": paths[1]}
    assert m["grids"]["latency_s"] == [0.0, 0.9]
    assert m["catalog_ranges"]["acquisition_range_m"] == [700.0, 1500.0]
    for axis in ("acquisition_range_m", "latency_s"):
        assert set(m["edges"][axis]) == {"baseline_gains", "gains"}
        for block in m["edges"][axis].values():
            assert {"edge", "beyond_grid", "success_rate_ci95", "first_failing"} <= set(block)
        assert (run / f"envelope_{axis}.png").stat().st_size > 10_000
    assert "acquisition_range_m" in proc.stdout and "first failing" in proc.stdout


def test_bad_input_is_refused_in_one_line(tmp_path):
    good = tmp_path / "gains.json"
    write_gain_table(default_gains(), tmp_path, {})
    cases = {
        "envelope.axis": ["envelope.axis=[acquisition_range_m,altitude]"],
        "envelope.values": ["envelope.axis=[latency_s]", "envelope.values=[]"],
        "envelope.required_success": ["envelope.required_success=0"],
        "gains": [f"gains=[{good},{tmp_path / 'missing.json'}]"],
    }
    argvs = [["+experiment=envelope", *args, f"hydra.run.dir={tmp_path / key}"]
             for key, args in cases.items()]  # fmt: skip
    argvs.append(["+experiment=envelope", "envelope.required_success=1.5",
                  f"hydra.run.dir={tmp_path / 'above'}"])  # fmt: skip
    results = run_cli_calls(*argvs, cwd=tmp_path)
    for key, (status, stdout, stderr) in zip([*cases, "envelope.required_success"], results):
        lines = stderr.strip().splitlines()
        assert status == 2 and len(lines) == 1, (key, stderr)
        assert lines[0].startswith(f"error: {key}:") and "Traceback" not in stdout, lines
    assert "missing.json" in results[3][2]
    for directory in (*cases, "above"):
        for name in (*RESULT_FILES, "envelope.csv"):
            assert not (tmp_path / directory / name).exists(), (directory, name)
