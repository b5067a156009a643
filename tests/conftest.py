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
    """Command-line runs started by the tests share one persistent compilation cache, so a
    program compiled by one run is loaded by the next (JAX in the test process itself was
    imported at collection and is unaffected). Tests of the cache or of compiling without
    it pass their own ``compile_cache_dir`` or remove the variable."""
    previous = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    yield
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
