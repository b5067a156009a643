"""Shared fixtures. Tests run on CPU in float32 unless a test says otherwise."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cli_runs import TINY, run_cli

os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session", autouse=True)
def shared_compile_cache(tmp_path_factory):
    """The tests' processes (every pytest-xdist worker and every command-line run they
    start) share one persistent compilation cache, so a program compiled by one is loaded by
    the next. Tests of the cache or of compiling without it pass their own
    ``compile_cache_dir`` or remove the variable."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
    path.mkdir(exist_ok=True)
    previous = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    jax.config.update("jax_compilation_cache_dir", str(path))
    compilation_cache.reset_cache()  # in case a program was compiled before it was set
    yield
    jax.config.update("jax_compilation_cache_dir", previous)
    compilation_cache.reset_cache()
    if previous is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_main_job(tmp_path_factory):
    """The small main job (:data:`cli_runs.TINY`) run once from the package built as a wheel
    and unpacked into a site directory of its own, in another working directory: its run
    directory, the finished process, the site, that directory and the environment."""
    build = tmp_path_factory.mktemp("wheel")
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "-q", "-w", str(build)],
        check=True,
        timeout=300,
    )
    (wheel,) = build.glob("descent_opt-*.whl")
    site = build / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = elsewhere / "out"
    proc = run_cli([*TINY, f"hydra.run.dir={out}"], cwd=elsewhere, env=env)
    return out, proc, site, elsewhere, env


# The longest groups (measured on a 2-core CPU, longest first): handed out first, so that
# the workers finish together instead of one flying a long group alone at the end.
LONGEST_FIRST = (
    "test_scale_out.py", "tiny_main_job", "test_gradients.py", "test_thrust_schedule.py",
    "test_science.py", "test_replay.py",
    "test_monte_carlo.py", "test_tuning.py", "test_guards.py", "test_decided.py",
    "test_distributed.py", "test_numpy_peer.py", "test_inputs.py", "test_determinism.py",
)  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``) each test file runs on one worker, so its
    module fixtures are built once, and the tests that share the small main job run on one
    worker, so it is flown once. The command-line tests of test_cli.py that do not need it
    (each starts its own process) go to whichever worker is free, last. Groups are handed
    out in the order of the items: the longest first."""
    groups = {}
    for item in items:
        name = item.path.name
        if "tiny_main_job" in item.fixturenames or name == "test_checkpoint.py":
            groups[item] = "tiny_main_job"
        elif name != "test_cli.py":
            groups[item] = name
        if item in groups:
            item.add_marker(pytest.mark.xdist_group(groups[item]))

    def rank(item):
        group = groups.get(item)
        if group in LONGEST_FIRST:
            return LONGEST_FIRST.index(group)
        return len(LONGEST_FIRST) + (group is None)

    items.sort(key=rank)  # stable: a group's tests keep their order


def pytest_xdist_node_collection_finished(node, ids):
    """Stops the run when pytest-xdist's groups did not reach the node ids (pytest 9.2 with
    pytest-xdist 3.8): each test would then be scheduled alone, and each worker would build
    the module fixtures and the small main job again, a silent doubling of the suite time."""
    if node.config.getvalue("dist") == "loadgroup" and ids and not any("@" in i for i in ids):
        pytest.exit(
            f"pytest-xdist did not group the tests (pytest {pytest.__version__}): install the "
            "test extras with -c constraints.txt",
            returncode=4,
        )
