"""Shared fixtures. Tests run on CPU in float32 unless a test says otherwise."""

import os

import pytest

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
