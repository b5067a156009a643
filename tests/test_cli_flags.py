"""Hydra's own flags work as in any Hydra app (``--help`` with the app's name and jobs,
``--cfg``, ``--package``, ``--resolve``, ``--info``), and flags Hydra refuses together get
one line instead of a traceback."""

from __future__ import annotations

import pytest
from cli_runs import run_cli_calls


@pytest.fixture(scope="module")
def flag_calls():
    """Hydra's flags that answer without running a job, all in one process."""
    return run_cli_calls(
        ["--help"],
        ["+experiment=monte_carlo", "--cfg", "job"],
        ["evaluation.n_scenarios=7", "--cfg", "job", "--package", "evaluation"],
        ["--cfg", "all", "--package", "hydra.run"],
        ["--cfg", "all", "--package", "hydra.run", "--resolve"],
        # a sweep's launcher, inspected before submitting it (one value per swept key)
        ["hydra/launcher=slurm_gpu", "--cfg", "hydra", "-p", "hydra.launcher"],
        ["--info", "defaults"],
        ["-m", "seed=0,1", "hydra/launcher=slurm_gpu", "--cfg", "hydra"],
        ["evaluation.nope=1", "--cfg", "job"],
    )


def test_help_names_the_app_and_its_jobs(flag_calls):
    status, out, _ = flag_calls[0]
    assert status == 0 and out.startswith("descent_opt:")
    for job in (
        "robust_gains",
        "monte_carlo",
        "thrust_schedule",
        "export",
        "envelope",
        "rare_event",
        "worst_case",
        "sensitivity",
        "replay_m1,",
    ):
        assert f"\n  {job} " in out
    assert "terrain: crater, crater_field, flat, slope" in out
    assert "powered by Hydra" not in out and "mass_dry_kg" not in out  # no config dump


def test_hydra_inspection_flags_behave_as_in_any_hydra_app(flag_calls):
    import yaml

    job, package, unresolved, resolved, launcher, info = flag_calls[1:7]
    for status, _, err in flag_calls[1:7]:
        assert status == 0, err
    composed = yaml.safe_load(job[1])
    assert composed["experiment"] == "monte_carlo" and "hydra" not in composed
    assert composed["evaluation"]["n_scenarios"] == 100_000
    assert package[1].startswith("# @package evaluation")
    assert yaml.safe_load(package[1])["n_scenarios"] == 7
    assert "${now:" in unresolved[1]  # unresolved unless asked
    assert "${" not in resolved[1] and "outputs/" in resolved[1]
    slurm = yaml.safe_load(launcher[1])
    assert slurm["gpus_per_node"] == 1 and slurm["_target_"].endswith("SlurmLauncher")
    assert "Defaults List" in info[1] and "terrain/crater_field" in info[1]


def test_flags_hydra_refuses_together_get_one_line(flag_calls):
    status, out, err = flag_calls[7]
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--multirun, --cfg" in lines[0] and "drop -m" in lines[0]
    status, _, err = flag_calls[8]  # a bad override under --cfg is still one line
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: evaluation.nope: not a known key")
