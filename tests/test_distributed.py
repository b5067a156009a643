"""Several processes: the SLURM-detected start of ``jax.distributed`` (network mocked at
the runtime client), index ranges that cover a population once, and two local processes
(CPU collectives, coordinator on localhost) writing the metrics of one process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from descent_opt.distributed import DistributedSpec, index_range, slurm_tasks, wanted

SLURM_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "gpu[017-018]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


def test_auto_starts_only_inside_a_multi_task_slurm_step():
    auto = DistributedSpec()
    assert wanted(auto, SLURM_STEP) and slurm_tasks(SLURM_STEP) == 2
    outside_step = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}
    assert not wanted(auto, outside_step)  # sbatch script before srun
    assert not wanted(auto, dict(SLURM_STEP, SLURM_NTASKS="1"))
    assert not wanted(auto, {})
    assert not wanted(DistributedSpec(enabled="false"), SLURM_STEP)
    assert wanted(DistributedSpec(enabled="true"), {})
    assert wanted(DistributedSpec(num_processes=2), {})


@pytest.mark.parametrize("n", [0, 1, 7, 4096, 1_000_003])
@pytest.mark.parametrize("processes", [1, 2, 3, 8])
def test_index_ranges_cover_the_population_once(n, processes):
    ranges = [index_range(n, p, processes) for p in range(processes)]
    covered = (
        [i for start, count in ranges for i in range(start, start + count)] if n < 10_000 else None
    )
    if covered is not None:
        assert covered == list(range(n))
    assert sum(c for _, c in ranges) == n
    assert all(ranges[p][0] + ranges[p][1] == ranges[p + 1][0] for p in range(processes - 1))
    assert max(c for _, c in ranges) - min(c for _, c in ranges) <= 1


def test_slurm_step_initialises_jax_distributed_with_detected_values():
    """The real ``jax.distributed.initialize`` with SLURM auto-detection; only the runtime
    client and service (the network) are replaced by recorders."""
    script = textwrap.dedent(
        f"""
        import json, os
        os.environ.update({SLURM_STEP!r})
        import jax
        from jax._src import distributed as jd
        calls = {{}}

        class Client:
            def __init__(self, address, process_id, **kw):
                calls["client"] = [address, process_id]
            def connect(self):
                calls["connected"] = True
            def shutdown(self):
                pass

        def service(*args, **kw):
            calls["service"] = list(args)

        jd._jax.get_distributed_runtime_client = Client
        jd._jax.get_distributed_runtime_service = service
        jax.config.update("jax_enable_preemption_service", False)
        from descent_opt.distributed import DistributedSpec, initialize
        started = initialize(DistributedSpec())
        state = jd.global_state
        calls.update(started=started, process_id=state.process_id,
                     num_processes=state.num_processes)
        print(json.dumps(calls))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = json.loads(proc.stdout.strip().splitlines()[-1])
    port = 4242 % 2**12 + 65535 - 2**12 + 1
    assert calls["started"] and calls["connected"]
    assert calls["client"] == [f"gpu017:{port}", 1]
    assert calls["process_id"] == 1 and calls["num_processes"] == 2
    assert "service" not in calls  # process 1 does not host the coordinator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_the_metrics_of_one(tmp_path):
    common = [
        "+experiment=monte_carlo",
        "evaluation.n_scenarios=2000",
        "evaluation.chunk_size=1024",  # two pieces
        "terrain=flat",
        "progress=false",
        f"compile_cache_dir={tmp_path / 'cache'}",  # the single-process run compiles nothing
    ]

    def cli(args):
        return subprocess.Popen(
            [sys.executable, "-m", "descent_opt", *common, *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    port = _free_port()
    group = [
        "distributed.enabled=true",
        f"distributed.coordinator_address=localhost:{port}",
        "distributed.num_processes=2",
    ]
    procs = [
        cli([*group, f"distributed.process_id={p}", f"hydra.run.dir={tmp_path / f'p{p}'}"])
        for p in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    single = cli([f"hydra.run.dir={tmp_path / 'single'}"])
    _, err = single.communicate(timeout=600)
    assert single.returncode == 0, err[-3000:]
    assert not (tmp_path / "p1" / "metrics.json").exists()  # only process 0 writes
    two = json.loads((tmp_path / "p0" / "metrics.json").read_text())
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for key in ("scenarios_per_s", "wall_time_s", "job_time_s"):
        two.pop(key), one.pop(key)
    assert two == one
    assert one["n_scenarios"] == 2000 and one["failures"]
