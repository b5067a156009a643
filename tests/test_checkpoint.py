"""Runs that survive interruption: a real robust_gains run stopped by SIGTERM mid-tuning
resumes from its checkpoint and ends with the gains of an uninterrupted run, bit for bit;
a checkpoint from other settings is refused naming the key."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from cli_runs import TINY, run_cli

from descent_opt.checkpoint import CheckpointMismatch
from descent_opt.export import load_gains

pytestmark = pytest.mark.slow  # end to end: see pyproject.toml

STEPS = 40
assert f"optimizer.steps={STEPS}" in TINY and "checkpoint.every_steps=4" in TINY


# Session-scoped: this module's tests share an xdist worker with other users of the tiny
# main job, and pytest rebuilds a module-scoped fixture each time the order comes back to
# the module (two interrupted-and-resumed runs instead of one).
@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_main_job):
    root = tmp_path_factory.mktemp("checkpoint")
    whole, done = tiny_main_job[:2]  # the same settings, never interrupted
    assert done.returncode == 0, done.stderr[-2000:]

    stopped = root / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "descent_opt", *TINY, f"hydra.run.dir={stopped}"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = stopped / "checkpoint.npz"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # mid-way through the baseline tuning
    _, stderr = proc.communicate(timeout=300)
    interrupted = {"status": proc.returncode, "stderr": stderr}
    with np.load(checkpoint) as data:
        interrupted["saved"] = {k: data[k] for k in data.files}
    interrupted["files"] = sorted(p.name for p in stopped.iterdir())

    resumed = run_cli([*TINY, f"hydra.run.dir={stopped}", "resume=true"], root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    interrupted["resumed_log"] = resumed.stdout + resumed.stderr
    return whole, stopped, interrupted


def test_sigterm_saves_and_stops_without_results(runs):
    _, _, interrupted = runs
    assert interrupted["status"] == 128 + signal.SIGTERM
    lines = interrupted["stderr"].strip().splitlines()
    assert lines[-1].startswith("error: SIGTERM: stopped after step"), lines[-3:]
    assert "resume=true" in lines[-1]
    saved = interrupted["saved"]
    step = int(saved["baseline/step"])
    # stopped mid-tuning and saved where it stopped: the file appears at the first periodic
    # save of either tuning, so the baseline may be short of its own first one
    assert 1 <= step < STEPS
    assert len(saved["baseline/history/objective"]) == step
    # the two tunings run side by side (one device): the other one stops at the end of its
    # current step and is saved as far as it got, unfinished
    assert len(saved["optimized/history/objective"]) == int(saved["optimized/step"]) < STEPS
    assert "metrics.json" not in interrupted["files"]
    assert not any(name.startswith("gains") for name in interrupted["files"])
    assert not any(".tmp" in name for name in interrupted["files"])  # no half-written file


def test_resumed_run_ends_with_the_uninterrupted_gains(runs):
    whole, stopped, interrupted = runs
    step = int(interrupted["saved"]["baseline/step"])
    assert f"resuming baseline tuning after step {step} of {STEPS}" in interrupted["resumed_log"]
    for name in ("gains.json", "baseline_gains.json"):
        a, b = (
            jax.tree.leaves(load_gains(whole / name)),
            jax.tree.leaves(load_gains(stopped / name)),
        )
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    m1 = json.loads((whole / "metrics.json").read_text())
    m2 = json.loads((stopped / "metrics.json").read_text())
    assert m1["training"] == m2["training"]
    assert m1["optimized"]["success_rate"] == m2["optimized"]["success_rate"]


def test_checkpoint_from_other_settings_is_refused(runs, tmp_path):
    _, stopped, _ = runs
    done = run_cli(
        [*TINY, "optimizer.learning_rate=0.03", f"hydra.run.dir={stopped}", "resume=true"], tmp_path
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer.learning_rate" in lines[0], lines


def _state(steps: int = 6):
    from descent_opt.guidance import default_gains
    from descent_opt.optimize.gains import TrainSpec, initial_state

    return initial_state(default_gains(), TrainSpec(steps=steps), key=jax.random.key(7))


def test_state_round_trips_exactly(tmp_path):
    from descent_opt.checkpoint import Checkpoints

    start = _state()
    state = dataclasses.replace(
        start,
        step=3,
        params=jax.tree.map(lambda x: x * 1.37 + 0.1, start.params),
        history={"objective": [0.1, 0.2, 1 / 3]},
        adversarial_rows=np.linspace(-3.0, 3.0, 60).reshape(2, 30) / 7.0,
    )
    Checkpoints(tmp_path, {"seed": 0}, 2).save("baseline", state)
    reader = Checkpoints(tmp_path, {"seed": 0, "progress": False}, 5)  # operational key
    assert reader.load()
    back = reader.state("baseline", start)
    assert back.step == 3 and back.history == state.history
    np.testing.assert_array_equal(back.adversarial_rows, state.adversarial_rows)
    assert reader.state("optimized", start) is None
    for part in ("params", "opt_state", "mean"):
        for x, y in zip(
            jax.tree.leaves(getattr(state, part)), jax.tree.leaves(getattr(back, part))
        ):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(CheckpointMismatch, match="seed=0, this run has seed=1"):
        Checkpoints(tmp_path, {"seed": 1}, 2).load()
    other_key = dataclasses.replace(start, key=jax.random.key(8))
    with pytest.raises(CheckpointMismatch, match="PRNG key"):
        reader.state("baseline", other_key)


def test_signal_stops_after_saving_in_tuning_and_at_once_outside(tmp_path):
    from descent_opt.checkpoint import Checkpoints, Interrupted

    checkpoints = Checkpoints(tmp_path, {}, 100)
    on_step = checkpoints.saver("baseline", 6)
    state = dataclasses.replace(_state(), step=2)
    with checkpoints.catch_signals():
        with checkpoints.tuning_phase():
            os.kill(os.getpid(), signal.SIGINT)  # answered at the end of the step
            with pytest.raises(Interrupted, match="SIGINT: stopped after step 2 of 6"):
                on_step(state)
        assert checkpoints.load() and checkpoints.state("baseline", _state()).step == 2
        with pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted long before this ends
        assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
