"""The product's claim as a test: gains tuned on the fault catalog land more of a held-out
faulty population than gains tuned on nominal sensors, by more than the sampling error,
the tuning lowers its objective, and the Mission 2 replay (first valid range at 900 m, the
altitude estimate 600 m high) lands safely only with the fault-tuned table.

A small main job (fixed seed, default descent and catalog over flat ground, 30 steps of
32): about a minute on a 2-core CPU. With the tuning broken (a learning rate of 1e-12, the
tables stay at the starting design) the held-out intervals overlap and the test fails.
"""

from __future__ import annotations

import numpy as np
import pytest

import descent_opt

SMALL = [
    "+experiment=robust_gains",
    "optimizer.steps=30",
    "optimizer.batch_size=32",
    "optimizer.replay_pool=1024",
    "optimizer.replay_worst=64",
    "evaluation.n_scenarios=4096",
    "evaluation.n_nominal_scenarios=256",
    "terrain=flat",
    "progress=false",
]


@pytest.mark.slow
def test_fault_tuned_gains_beat_the_nominal_tuned_baseline():
    result = descent_opt.run_robust_gains(descent_opt.load_config(SMALL))
    base, tuned = result.metrics["baseline"], result.metrics["optimized"]
    assert base["n_scenarios"] == tuned["n_scenarios"] == 4096
    # Non-overlapping two-sided 95 % intervals of the held-out success rates.
    assert tuned["success_rate_ci95"][0] > base["success_rate_ci95"][1], (base, tuned)
    assert tuned["crash_rate"] < base["crash_rate"]
    # The fault-tuned objective falls: its last steps average below its first.
    objective = np.asarray(result.history["optimized"]["objective"])
    assert objective[-10:].mean() < objective[:5].mean(), objective
    replay = result.metrics["m2_replay"]
    assert replay["optimized"]["success"] and not replay["baseline"]["success"], replay
    assert replay["optimized"]["touchdown_speed_mps"] < replay["baseline"]["touchdown_speed_mps"]
