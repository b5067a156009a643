"""Mission replays: the four reported descents flown with the main job's baseline end as
reported (in kind and magnitude), the main job's Mission 2 block is the replay_m2 job's,
and a replay refuses a missing table before any work."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from cli_runs import TINY, run_cli, run_cli_calls

import descent_opt
from descent_opt.guidance import default_gains
from descent_opt.replays import ReplaySpec, replay_scenario
from descent_opt.stages import replay, tune, tunings

MISSIONS = ("m1", "m2", "im1", "im2")


@pytest.fixture(scope="module")
def flown():
    """Each replay flown with the main job's baseline, tuned from the default seed exactly
    as the main job tunes it."""
    config = descent_opt.load_config([])
    catalog, key = tunings(config)["baseline"]
    baseline, _ = tune(config, default_gains(config.altitude_breakpoints_m), catalog,
                       key=key, phase="baseline")  # fmt: skip
    out = {}
    for mission in MISSIONS:
        blocks, traces = replay(descent_opt.load_config([f"replay={mission}"]), {"b": baseline})
        out[mission] = (blocks["b"], traces["b"])
    return out


@pytest.mark.slow
def test_mission_1_hovers_kilometres_up_and_falls(flown):
    """Reported: rim about 3 km high, every later range rejected, target speed about 5 km
    up, slow descent until the propellant ran out, impact above 100 m/s."""
    m1, trace = flown["m1"]
    assert m1["exhausted"] and not m1["success"]
    assert m1["propellant_out_height_m"] > 3000.0
    assert m1["touchdown_speed_mps"] > 100.0
    assert m1["target_speed_height_m"] > 2000.0  # slowed under 1 m/s kilometres up
    assert m1["min_altitude_error_m"] < -4000.0  # believed itself kilometres lower
    # The ranges were valid all the way down, and the filter turned them away after the rim.
    assert m1["lrf_valid_readings"] > 5 * m1["lrf_accepted_readings"]
    last_accepted = np.flatnonzero(trace.lrf_accepted)[-1]
    assert trace.time_s[last_accepted] < 120.0 < m1["touchdown_time_s"]


@pytest.mark.slow
def test_mission_2_crashes_at_tens_of_metres_per_second(flown):
    """Reported: first valid range below about 900 m, about 42 m/s (up to 66) at 192 m,
    impact well before the planned landing time."""
    m2, _ = flown["m2"]
    assert 10.0 < m2["touchdown_speed_mps"] < 100.0 and not m2["success"]
    assert 800.0 < m2["lrf_first_valid_height_m"] <= 900.0
    assert 30.0 < m2["at_report_height"]["descent_rate_mps"] < 70.0
    assert m2["early_by_s"] > 10.0


@pytest.mark.slow
def test_intuitive_machines_replays_end_outside_the_limits(flown):
    """IM-1 (no range at all, 100 m high, 1.5 m/s lateral knowledge error on a 12 degree
    slope) and IM-2 (heavy-tailed noisy ranges to touchdown) touch down outside the
    success limits; IM-1 never has a range."""
    im1, _ = flown["im1"]
    im2, _ = flown["im2"]
    assert im1["landed"] and not im1["success"] and im1["failure"]
    assert im1["lrf_valid_readings"] == 0 and im1["lrf_first_valid_s"] is None
    assert im1["max_altitude_error_m"] == pytest.approx(100.0, abs=5.0)
    assert im2["landed"] and not im2["success"] and im2["failure"]
    assert im2["lrf_valid_readings"] > 100


def test_replay_scenario_applies_every_departure():
    """Each departure of a replay reaches the scenario it flies (read back), and the
    planned descent keeps the start and ground only."""
    config = descent_opt.load_config([])
    spec = ReplaySpec(
        r0_m=(-10.0, 5.0, 4000.0), v0_mps=(1.0, 2.0, -40.0), altitude_error_m=-30.0,
        velocity_error_mps=(0.5, 0.0, 0.0), imu_bias_mps2=(0.0, 0.0, 0.01),
        lrf_acquisition_m=700.0, lrf_absent=True, lrf_bias_m=4.0, heavy_tail_scale_m=9.0,
        rim_step_height_m=300.0, rim_radius_m=500.0, slope_deg=3.0,
    )  # fmt: skip
    args = (config.scenario, config.vehicle.mass_initial_kg, 3000.0)
    s = jax.tree.map(lambda x: x[0], replay_scenario(spec, *args, key=jax.random.key(1)))
    np.testing.assert_allclose(s.position0_m, spec.r0_m)
    np.testing.assert_allclose(s.velocity0_mps, spec.v0_mps)
    np.testing.assert_allclose(s.nav_position_error_m, [0.0, 0.0, -30.0])
    np.testing.assert_allclose(s.nav_velocity_error_mps, spec.velocity_error_mps)
    np.testing.assert_allclose(s.imu_bias_mps2, spec.imu_bias_mps2)
    f = s.faults
    assert (f.acquisition_range_m, f.absent, f.bias_m) == (700.0, True, 4.0)
    assert (f.heavy_tail_scale_m, f.rim_step_height_m, f.rim_radius_m) == (9.0, 300.0, 500.0)
    assert float(s.terrain.offset_m) == pytest.approx(300.0)  # the site on the crater floor
    p = jax.tree.map(lambda x: x[0], replay_scenario(spec.nominal(), *args, key=jax.random.key(1)))
    np.testing.assert_allclose(p.position0_m, spec.r0_m)
    assert p.faults.rim_step_height_m == 0.0 and not p.faults.absent
    np.testing.assert_allclose(p.nav_position_error_m, 0.0)


@pytest.mark.slow
def test_main_job_m2_block_is_the_replay_job(tiny_main_job, tmp_path):
    """One definition: the replay_m2 job flying the main job's baseline table gives the
    main job's m2_replay block, figure for figure; its outputs are written."""
    out, proc, *_ = tiny_main_job
    assert proc.returncode == 0, proc.stderr[-2000:]
    main = json.loads((out / "metrics.json").read_text())["m2_replay"]["baseline"]
    flight = [a for a in TINY if a.split("=")[0] not in ("+experiment", "checkpoint.every_steps")]
    run = tmp_path / "replay"
    args = ["+experiment=replay_m2", f"gains={out / 'baseline_gains.json'}", *flight]
    proc = run_cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mission"] == "HAKUTO-R Mission 2"
    assert metrics["gains"] == main
    assert (run / "replay.png").stat().st_size > 10_000


def test_replay_with_a_missing_table_is_refused(tmp_path):
    """One line naming the key, exit 2, nothing written."""
    ((status, _, err),) = run_cli_calls(
        ["+experiment=replay_m1", f"gains={tmp_path / 'none.json'}", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
    )
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: gains:"), err
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "replay.png").exists()
