"""Command-line runs for the tests: the small main job they share, and how they start
the command line."""

from __future__ import annotations

import json
import subprocess
import sys

# A run small enough for a test: a few optimisation steps on a short, low descent (enough
# steps for test_checkpoint to stop it mid-tuning, with a checkpoint every 4; the tests'
# runs share its programs).
TINY = [
    "+experiment=robust_gains",
    "optimizer.steps=40",
    "optimizer.batch_size=16",
    "evaluation.n_scenarios=64",
    "evaluation.n_nominal_scenarios=64",
    "optimizer.replay_pool=512",  # failure replay exercised on small pools
    "optimizer.replay_worst=32",
    "sim.duration_s=60",
    "scenario.r0_m=[-50.0,0.0,1500.0]",
    "scenario.v0_mps=[0.0,0.0,-35.0]",
    "faults.acquisition_range_m=[700.0,1500.0]",
    "replay.altitude_error_m=200.0",
    "terrain=flat",  # compiles faster than the crater field
    "progress=false",
    "checkpoint.every_steps=4",
]


def run_cli(args, cwd, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "descent_opt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# What a job may write: none of it may exist after a run refused for bad input.
RESULT_FILES = (
    "metrics.json", "gains.json", "gains.csv", "gains.h", "scenarios.npz", "traces.npz",
    "touchdown_speed.png", "success_vs_faults.png", "sensitivity.csv", "sensitivity.md",
    "sensitivity.png", "worst_case.png", "search_progress.png", "worst_case_trace.csv",
)  # fmt: skip


CALLS = """
import contextlib, io, json, sys
from descent_opt import cli
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(argv)
            status = 0
        except SystemExit as end:
            status = end.code
    results.append([status, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_cli_calls(*argvs, cwd=None):
    """(status, stdout, stderr) of each command line, run one after another in one fresh
    process: many short command lines (bad input, Hydra's flags) without a Python and JAX
    start each. Hydra configures logging in the process it runs in, hence not this one."""
    proc = subprocess.run(
        [sys.executable, "-c", CALLS, json.dumps([list(a) for a in argvs])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_refused(experiment: str, base: list[str], bad: dict[str, str], tmp_path) -> None:
    """Each override of ``bad`` (override -> the key its error must name) on top of
    ``base``: one line on stderr naming the key, exit 2, and no result file written."""
    calls = [[f"+experiment={experiment}", *base, o, f"hydra.run.dir={tmp_path / str(i)}"]
             for i, o in enumerate(bad)]  # fmt: skip
    for (status, _, err), (override, key) in zip(run_cli_calls(*calls, cwd=tmp_path), bad.items()):
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key}:"), (
            override, err,
        )  # fmt: skip
    for i in range(len(bad)):
        assert not any((tmp_path / str(i) / name).exists() for name in RESULT_FILES)
