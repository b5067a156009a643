"""The command line as a user meets it: bad input fails cleanly, and the main job runs end
to end from an installed wheel in another directory, writing the contract's outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cli_runs import RESULT_FILES, TINY, run_cli, run_cli_calls

BAD_INPUTS = [
    ("vehicle.mass_dry_kg=600", "vehicle.mass_dry_kg"),
    ("scenario.r0_m=[1.0,2.0]", "scenario.r0_m"),
    ("terrain=moonscape", "terrain"),
    ("vehicle.isp_s=nan", "vehicle.isp_s"),
    ("vehicle.thrust_max_n=500", "vehicle.thrust_max_n"),
    ("navigation.reject_policy=sometimes", "navigation.reject_policy"),
    ("vehicle.colour=red", "vehicle.colour"),
    ("gains=/no/such/gains.json", "gains"),
    ("checkpoint.every_steps=0", "checkpoint.every_steps"),
    ("resume=maybe", "resume"),
]


# The monte_carlo job's keys.
BAD_MONTE_CARLO = [
    ("evaluation.n_scenarios=0", "evaluation.n_scenarios"),
    ("evaluation.n_scenarios=2.5", "evaluation.n_scenarios"),
    ("evaluation.n_scenarios=10000000000", "evaluation.n_scenarios"),
    ("evaluation.chunk_size=0", "evaluation.chunk_size"),
    ("evaluation.chunk_size=many", "evaluation.chunk_size"),
    ("evaluation.keep_failures=-1", "evaluation.keep_failures"),
    ("evaluation.save_scenarios=maybe", "evaluation.save_scenarios"),
    ("evaluation.indices=[-1]", "evaluation.indices"),
    ("evaluation.indices=[3,3]", "evaluation.indices"),
    ("evaluation.indices=[]", "evaluation.indices"),
    ("evaluation.indices=7", "evaluation.indices"),
    ("evaluation.indices=[1.5]", "evaluation.indices"),
    ("evaluation.seed_offset=0", "evaluation.seed_offset"),
    ("gains=/no/such/gains.json", "gains"),
    ("distributed.enabled=maybe", "distributed.enabled"),
    ("distributed.coordinator_address=nohost", "distributed.coordinator_address"),
    ("distributed.num_processes=0", "distributed.num_processes"),
    ("distributed.process_id=-1", "distributed.process_id"),
    ("compile_cache_dir=''", "compile_cache_dir"),
]


def _check_refused(status, stderr, stdout, key, out):
    assert status == 2
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {key}"), lines[0]
    assert "Traceback" not in stderr + stdout
    for name in RESULT_FILES:
        assert not (out / name).exists()


@pytest.mark.parametrize(
    "experiment,override,key",
    [("robust_gains", *BAD_INPUTS[0]), ("monte_carlo", *BAD_MONTE_CARLO[0])],
)
def test_bad_input_is_one_line_and_leaves_no_result(tmp_path, experiment, override, key):
    """As a user meets it: a process of its own."""
    out = tmp_path / "run"
    proc = run_cli([f"+experiment={experiment}", override, f"hydra.run.dir={out}"], cwd=tmp_path)
    _check_refused(proc.returncode, proc.stderr, proc.stdout, key, out)


@pytest.mark.slow
def test_every_bad_input_is_one_line_and_leaves_no_result(tmp_path):
    """Every case of both jobs, one command line after another in one process."""
    cases = [("robust_gains", *c) for c in BAD_INPUTS] + [
        ("monte_carlo", *c) for c in BAD_MONTE_CARLO
    ]
    runs = [tmp_path / f"run{i}" for i in range(len(cases))]
    results = run_cli_calls(
        *[[f"+experiment={e}", o, f"hydra.run.dir={r}"] for (e, o, _), r in zip(cases, runs)],
        cwd=tmp_path,
    )
    for (status, stdout, stderr), (_, override, key), out in zip(results, cases, runs):
        _check_refused(status, stderr, stdout, key, out)


def test_missing_experiment_is_reported(tmp_path):
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: experiment:")


@pytest.mark.slow
def test_wheel_runs_main_job_from_another_directory(tiny_main_job):
    """conf/ ships inside the wheel and is found from any working directory; the job writes
    every output the public contract lists."""
    out, proc, wheel_site, elsewhere, env = tiny_main_job
    assert (wheel_site / "descent_opt" / "conf" / "config.yaml").is_file()
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = subprocess.run(
        [sys.executable, "-c", "import descent_opt, sys; print(descent_opt.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(wheel_site) in probe.stdout  # the wheel's copy ran, not the checkout

    for name in (
        "metrics.json",
        "gains.json",
        "gains.csv",
        "gains.h",
        ".hydra/config.yaml",
        "touchdown_speed.png",
        "success_vs_acquisition.png",
        "m2_replay.png",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for block in ("baseline", "optimized"):
        for k in (
            "success_rate",
            "fuel_kg_mean",
            "touchdown_vz_mps_p99",
            "touchdown_vh_mps_p99",
            "n_scenarios",
        ):
            assert np.isfinite(metrics[block][k]), (block, k)
        assert metrics[block]["n_scenarios"] == 64
        assert 0.0 <= metrics[block]["success_rate"] <= 1.0
    for block in ("baseline", "optimized"):
        m2 = metrics["m2_replay"][block]
        assert set(m2) >= {"touchdown_speed_mps", "fuel_kg", "success"}
        assert isinstance(m2["success"], bool)
    assert metrics["wall_time_s"] > 0.0
    assert "Held-out population" in proc.stdout  # the summary table


@pytest.mark.slow
def test_python_api_matches_contract_without_hydra_app(tmp_path, tiny_main_job):
    """The library runs the same job from Python and writes the same files (after the
    command line's run of it, whose programs it loads from the shared compilation cache)."""
    import descent_opt

    config = descent_opt.load_config([o for o in TINY if not o.startswith("+experiment")])
    done, totals = {}, {}

    def progress(phase, advance, total, unit, info):
        done[phase] = done.get(phase, 0) + advance
        totals[phase] = (total, unit)

    result = descent_opt.run_robust_gains(config, progress=progress)
    # One bar per phase, each run exactly to its total: both tunings, and each gain table
    # over the held-out population with its faults and with nominal sensors.
    assert {p: done[p] for p in done} == {p: t for p, (t, _) in totals.items()}
    evaluations = [p for p, (_, unit) in totals.items() if unit == "scenario"]
    assert len(evaluations) == 4 and all(totals[p][0] == 64 for p in evaluations)
    written = descent_opt.write_outputs(result, config, tmp_path, wall_time_s=1.0)
    assert {p.name for p in written} >= {"metrics.json", "gains.json", "gains.csv", "gains.h"}
    loaded = descent_opt.load_gains(tmp_path / "gains.json")
    np.testing.assert_array_equal(
        np.asarray(loaded.descent_rate_mps),
        np.asarray(result.optimized.descent_rate_mps, dtype=np.float32),
    )
    # monte_carlo flies the main job's held-out population: the saved table over the same
    # members gives the optimized block exactly.
    from descent_opt.jobs import monte_carlo

    check = descent_opt.load_config(
        ["+experiment=monte_carlo", f"gains={tmp_path / 'gains.json'}"]
        + [o for o in TINY if not o.startswith("+experiment")]
    )
    again = monte_carlo.run(check).metrics
    optimized = result.metrics["optimized"]
    assert {k: again[k] for k in optimized} == optimized
