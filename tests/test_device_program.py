"""One compiled program on several devices: compiled once and loaded onto the others, with
results bit-identical to the device it was compiled for (and the first device's copy
standing in while the others load); with JAX's persistent cache in use, compiled per
device through the cache instead; without JAX's private loading hooks (missing on import,
or failing on first use), run by plain ``jax.jit`` with the same results."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # end to end: see pyproject.toml

SCRIPT = r"""
import hashlib, sys
import jax, jax.numpy as jnp, numpy as np
from descent_opt import device_program
from descent_opt.device_program import DeviceProgram

mode = sys.argv[2]
if mode == "missing":
    device_program._PRIVATE = None
elif mode == "broken":  # hooks whose signature changed: found, but failing on first use
    def serialize(compiled):
        raise AttributeError("no such hook")
    device_program._PRIVATE = (device_program._PRIVATE[0], serialize, device_program._PRIVATE[2])
if sys.argv[1] != "none":
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
devices = jax.local_devices()
assert len(devices) == 3

def wobble(x, scale, label):
    # transcendental chains whose last bits depend on how they were compiled
    for _ in range(20):
        x = jnp.sin(x * scale) + jnp.exp(-x * x) * jnp.log1p(jnp.abs(x))
    return {label: x, "sum": jnp.sum(x)}

program = DeviceProgram(wobble)
x = jnp.linspace(-3.0, 3.0, 4099, dtype=jnp.float32)
early = [program(d, x, np.float32(1.7), "y") for d in devices]  # copies still loading
program.wait()
outs = [program(d, x, np.float32(1.7), "y") for d in devices]
for d, out, first in zip(devices, outs, early):
    np.testing.assert_array_equal(np.asarray(first["y"]), np.asarray(out["y"]))
    assert out["y"].devices() == {d}, (out["y"].devices(), d)
    np.testing.assert_array_equal(np.asarray(out["y"]), np.asarray(outs[0]["y"]))
reference = jax.jit(lambda x: wobble(x, np.float32(1.7), "y"))(x)["y"]
np.testing.assert_allclose(np.asarray(outs[0]["y"]), np.asarray(reference), rtol=1e-5, atol=1e-6)
again = program(devices[2], x + 1.0, np.float32(1.7), "y")  # cached program, new values
home = program(devices[0], x + 1.0, np.float32(1.7), "y")
np.testing.assert_array_equal(np.asarray(again["y"]), np.asarray(home["y"]))
other = program(devices[1], x, np.float32(1.7), "z")  # a static argument selects a new program
assert set(other) == {"z", "sum"}
program.wait()
assert (device_program._PRIVATE is None) == (mode != "hooks")
print(hashlib.sha256(np.asarray(outs[0]["y"]).tobytes()).hexdigest(), program.relocated)
"""


def _outputs(cache: str, mode: str = "hooks") -> tuple[str, int]:
    """The hash of the program's outputs and the copies loaded rather than compiled."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the session's shared cache
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, cache, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    digest, relocated = proc.stdout.split()[-2:]
    return digest, int(relocated)


def _run(cache: str) -> int:
    return _outputs(cache)[1]


def test_compiled_once_and_loaded_onto_other_devices():
    # Two programs ("y" and "z" outputs): devices 1 and 2 get the first loaded, device 1
    # the second.
    assert _run("none") == 3


def test_with_persistent_cache_each_device_compiles_through_it(tmp_path):
    assert _run(str(tmp_path / "cache")) == 0
    assert _run(str(tmp_path / "cache")) == 0  # read back from the cache, every device
    # "y" on three devices, "z" on device 1 and on device 0 (always compiled first)
    assert len(list((tmp_path / "cache").glob("jit_wobble-*"))) == 3 + 2


@pytest.mark.parametrize("mode", ["missing", "broken"])
def test_without_private_hooks_plain_jit_gives_the_same_results(mode):
    digest, relocated = _outputs("none")
    assert _outputs("none", mode) == (digest, 0)
