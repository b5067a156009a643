"""Inputs that cannot hurt: property-based checks of the configuration reader (every valid
value is accepted, every invalid one is refused with the key named) and malformed gain
files through the command line (one line naming the file's problem, exit 2, no result)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_runs import RESULT_FILES, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import descent_opt
from descent_opt.config import ConfigError, read_config
from descent_opt.export import write_gain_table
from descent_opt.guidance import default_gains

BASE = None


def _base() -> dict:
    """The default configuration as a plain mapping (composed once)."""
    global BASE
    if BASE is None:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        from descent_opt.cli import config_dir

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            BASE = OmegaConf.to_container(compose("config"), resolve=False)
        GlobalHydra.instance().clear()
        BASE.pop("hydra", None)
    return json.loads(json.dumps(BASE))


def _with(values: dict) -> dict:
    """The default configuration with ``values`` (by dotted key) set."""
    cfg = _base()
    for name, value in values.items():
        group, key = name.split(".")
        cfg[group][key] = value
    return cfg


EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# (group, key, strategy of valid values)
VALID = [
    ("evaluation", "n_scenarios", st.integers(1, 10**9)),
    ("evaluation", "chunk_size", st.one_of(st.none(), st.integers(1, 1 << 26))),
    ("evaluation", "keep_failures", st.integers(0, 100_000)),
    ("faults", "latency_rate", st.floats(0.0, 1.0)),
    ("faults", "dropout_prob", st.tuples(st.floats(0, 0.5), st.floats(0.5, 1.0)).map(list)),
    ("optimizer", "learning_rate", st.floats(1e-6, 10.0)),
    ("sim", "dt_s", st.floats(0.01, 2.0)),
    ("scenario", "mass_sigma_kg", st.floats(0.0, 50.0)),
]
# (group, key, strategy of invalid values)
INVALID = [
    ("evaluation", "n_scenarios", st.one_of(st.integers(max_value=0), st.just(2.5))),
    ("evaluation", "keep_failures", st.integers(max_value=-1)),
    ("faults", "latency_rate", st.one_of(st.floats(1.0001, 1e6), st.floats(-1e6, -1e-6))),
    ("faults", "acquisition_range_m", st.tuples(st.floats(2000, 3000),
                                                st.floats(700, 1999)).map(list)),  # reversed
    ("optimizer", "learning_rate", st.floats(-1e3, 0.0)),
    ("optimizer", "batch_size", st.integers(max_value=0)),
    ("sim", "dt_s", st.one_of(st.floats(-10, 0), st.just(math.nan), st.just(math.inf))),
    ("vehicle", "isp_s", st.one_of(st.just(math.nan), st.just(-math.inf), st.floats(-1e3, 0))),
    ("checkpoint", "every_steps", st.one_of(st.integers(max_value=0), st.just(1.5))),
]  # fmt: skip


@pytest.mark.parametrize("group,key,values", VALID, ids=[f"{g}.{k}" for g, k, _ in VALID])
def test_valid_values_are_accepted(group, key, values):
    @EXAMPLES
    @given(values)
    def check(value):
        config = read_config(_with({f"{group}.{key}": value}))
        config.sampler()  # the model objects build without error

    check()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({f"{g}.{k}": values for g, k, values in VALID}), st.booleans())
@pytest.mark.slow
def test_valid_configs_build_what_jobs_build_before_compiling(values, resume):
    """Every valid key at once: the configuration, the sampler, the first members of the
    held-out population, the starting gains and the tuning state all build, finite."""
    import jax
    import jax.numpy as jnp

    from descent_opt.jobs import starting_gains
    from descent_opt.optimize.gains import initial_state

    config = read_config(dict(_with(values), resume=resume))
    members = config.sampler().members(config.population_key(), jnp.arange(3, dtype=jnp.uint32))
    for leaf in jax.tree.leaves(members):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert bool(jnp.isfinite(leaf).all())
    gains, _ = starting_gains(config)
    state = initial_state(gains, config.optimizer, key=jax.random.key(config.seed))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize("group,key,values", INVALID, ids=[f"{g}.{k}" for g, k, _ in INVALID])
def test_invalid_values_name_their_key(group, key, values):
    @EXAMPLES
    @given(values)
    def check(value):
        with pytest.raises(ConfigError) as err:
            read_config(_with({f"{group}.{key}": value}))
        assert err.value.key == f"{group}.{key}"
        assert len(str(err.value).splitlines()) == 1

    check()


def _bad_files(tmp_path) -> dict[str, tuple[str, str]]:
    """Malformed gain files, each with the words its error line must hold."""
    write_gain_table(default_gains(), tmp_path, {})
    good = json.loads((tmp_path / "gains.json").read_text())
    files = {}

    def variant(name, data):
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return str(path)

    missing = json.loads(json.dumps(good))
    del missing["schedule"]["zev_gain"]
    files["missing column"] = (variant("missing.json", missing), "zev_gain")
    nan = json.loads(json.dumps(good))
    nan["schedule"]["descent_rate_mps"][2] = float("nan")
    files["nan"] = (variant("nan.json", nan), "finite")
    short = json.loads(json.dumps(good))
    short["schedule"]["descent_rate_mps"] = short["schedule"]["descent_rate_mps"][:-1]
    files["row count"] = (variant("short.json", short), "one value per breakpoint")
    (tmp_path / "text.json").write_text("not json at all")
    files["not json"] = (str(tmp_path / "text.json"), "not JSON")
    (tmp_path / "table.xlsx").write_text("")
    files["unknown format"] = (str(tmp_path / "table.xlsx"), ".json, .csv or .npz")
    csv = (tmp_path / "gains.csv").read_text().replace("contingency_descent_rate_mps", "x")
    (tmp_path / "nocol.csv").write_text(csv)
    files["csv column"] = (str(tmp_path / "nocol.csv"), "contingency_descent_rate_mps")
    arrays = dict(np.load(tmp_path / "gains.npz"))
    del arrays["gate_sigma"]
    np.savez(tmp_path / "partial.npz", **arrays)
    files["npz entry"] = (str(tmp_path / "partial.npz"), "gate_sigma")
    return files


@pytest.mark.slow
def test_malformed_gain_files_fail_cleanly(tmp_path):
    for case, (path, words) in _bad_files(tmp_path).items():
        with pytest.raises(ValueError, match=words):
            descent_opt.load_gains(path)
        out = tmp_path / f"run_{case.replace(' ', '_')}"
        proc = run_cli(["+experiment=monte_carlo", f"gains={path}", f"hydra.run.dir={out}"],
                       cwd=tmp_path)  # fmt: skip
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, (case, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: gains:"), (case, lines)
        assert not any((out / name).exists() for name in RESULT_FILES), case
