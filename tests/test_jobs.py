"""Jobs through their registry: every name resolves to a job whose groups the configuration
has, and an experiment that names no job is refused with one line; the tuning state
round-trips bit for bit through the checkpoint's pytree writer."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from cli_runs import run_cli_calls

from descent_opt.checkpoint import Checkpoints, tree_arrays, tree_from_arrays
from descent_opt.cli import config_dir
from descent_opt.config import ConfigError
from descent_opt.jobs import JOBS, Job, check_experiment, job

UNKNOWN = (
    "error: experiment: must be one of robust_gains, monte_carlo, thrust_schedule, export, "
    "replay, envelope, rare_event, worst_case, sensitivity"
)


@pytest.fixture(scope="module")
def config_groups() -> set[str]:
    """The groups of ``conf/config.yaml`` as composed (with its defaults list)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            composed = compose("config")
    finally:
        GlobalHydra.instance().clear()
    return {name for name, value in composed.items() if hasattr(value, "keys")} - {"hydra"}


@pytest.mark.parametrize("name", JOBS)
def test_every_name_resolves_to_a_job_reading_groups_the_configuration_has(name, config_groups):
    found = job(name)
    assert isinstance(found, Job) and found.name == name
    assert set(found.groups) <= config_groups, set(found.groups) - config_groups
    assert len(set(found.groups)) == len(found.groups)
    for declared in (found.bad_input, found.failures):
        assert all(issubclass(e, Exception) for e in declared)
    assert found.checkpointed == (name == "robust_gains")


def test_unknown_experiment_is_refused_naming_the_jobs():
    for name in (None, "", *JOBS):
        check_experiment(name)
    with pytest.raises(ConfigError) as refused:
        check_experiment("robust")
    assert str(refused.value) == UNKNOWN.removeprefix("error: ") + " (got 'robust')"
    with pytest.raises(KeyError):
        job("robust")


def test_command_line_refuses_an_experiment_naming_no_job_in_one_line(tmp_path):
    """A user's experiment file (found on Hydra's search path) that names no job."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nexperiment: mine\n")
    out = tmp_path / "run"
    ((status, stdout, stderr),) = run_cli_calls(
        [f"hydra.searchpath=[file://{tmp_path}]", "+experiment=mine", f"hydra.run.dir={out}"]
    )
    assert status == 2 and "Traceback" not in stdout + stderr
    assert stderr.strip().splitlines() == [UNKNOWN + " (got 'mine')"]
    assert not (out / "metrics.json").exists()


def _moved_state(impl: str | None = None):
    """A tuning state part-way: parameters, Adam's moments and count, history and replay
    ranking all away from their starting values."""
    from descent_opt.guidance import default_gains
    from descent_opt.optimize.gains import TrainSpec, initial_state

    start = initial_state(default_gains(), TrainSpec(steps=6), key=jax.random.key(7, impl=impl))
    moved = jax.tree.map(
        lambda x: x + 3 if x.dtype.kind == "i" else x * 1.37 + 0.1, start.opt_state
    )
    state = dataclasses.replace(
        start,
        step=3,
        params=jax.tree.map(lambda x: x * 0.9 - 0.2, start.params),
        opt_state=moved,
        mean=jax.tree.map(lambda x: x / 3, start.params),
        history={"objective": [0.1, 0.2, 1 / 3], "nonfinite_grad": [0.0, 1.0, 0.0]},
        replay_worst=np.array([5, 2, 9], np.int64),
    )
    return start, state


def _assert_same(a, b):
    flat_a, tree_a = jax.tree.flatten(a)
    flat_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("impl", [None, "rbg"])
def test_tree_writer_round_trips_a_tuning_state_bit_for_bit(tmp_path, impl):
    """Through an .npz file and back against another tree of the same structure: every
    leaf, the optax state and the typed PRNG key (its implementation kept) identical."""
    start, state = _moved_state(impl)
    tree = (state.params, state.opt_state, state.mean, state.key)
    np.savez(tmp_path / "tree.npz", **tree_arrays(tree))
    with np.load(tmp_path / "tree.npz") as data:
        arrays = {k: data[k] for k in data.files}
    assert "1/1/0/mu/descent_rate_mps" in arrays  # named by path: opt_state/adam/mu/...
    like = (start.params, start.opt_state, start.mean, start.key)
    _assert_same(tree_from_arrays(arrays, like), tree)

    short = dict(arrays, **{"0/descent_rate_mps": arrays["0/descent_rate_mps"][:-1]})
    with pytest.raises(ValueError, match="0/descent_rate_mps is float32\\[12\\]"):
        tree_from_arrays(short, like)
    with pytest.raises(ValueError, match="'9/extra'"):
        tree_from_arrays(dict(arrays, **{"9/extra": np.zeros(1)}), like)


def test_checkpoint_restores_the_whole_tuning_state(tmp_path):
    start, state = _moved_state()
    Checkpoints(tmp_path, {"seed": 0}, 2).save("optimized", state)
    reader = Checkpoints(tmp_path, {"seed": 0}, 2)
    assert reader.load()
    back = reader.state("optimized", start)
    assert back.step == 3 and back.history == state.history
    np.testing.assert_array_equal(back.replay_worst, state.replay_worst)
    for part in ("params", "opt_state", "mean", "key"):
        _assert_same(getattr(back, part), getattr(state, part))
