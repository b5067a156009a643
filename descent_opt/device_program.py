"""One compiled program, run on any local device.

Populations are flown piece by piece, each piece on one local device by the same
single-device program. A program partitioned over a device mesh (SPMD) is compiled
differently from the single-device one and rounds differently in the last bit for many
members (on this project's closed loop: a third of the touchdown velocities of 16,384
members differ between a 1-device and a 2-device mesh), which makes a member's outcome
depend on the device count and can flip a borderline landing. Compiling the single-device
program once per device costs one compilation per device instead; :class:`DeviceProgram`
compiles it once, for the first device it is asked for, and loads that executable onto
the other devices (what JAX itself does when it serves a GPU program from its persistent
cache to another device). Where the loading is refused (a backend that does not support
it) the program is compiled for that device, as jit would; where JAX's private hooks it
needs are missing (another JAX version: an ImportError or AttributeError on import or on
first use) every program is run by plain ``jax.jit`` instead, which compiles it once per
device. Either way the outcomes are the same bit for bit.

Callers reach it through the execution layer (:mod:`descent_opt.execution`).
"""

from __future__ import annotations

import functools
import inspect
import io
import logging
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np

log = logging.getLogger("descent_opt")


def _private_hooks():
    """JAX's private and experimental hooks that load a serialized executable onto another
    device, or None where this JAX version lacks them."""
    try:
        from jax._src.lib import xla_client
        from jax.experimental import serialize_executable
        from jax.extend.backend import get_compile_options

        return xla_client.DeviceList, serialize_executable.serialize, get_compile_options
    except (ImportError, AttributeError) as error:
        log.debug("compiled programs will be compiled per device by jax.jit (%s)", error)
        return None


# Set to None (here, or on the first failed use) to run every program by plain jax.jit.
_PRIVATE = _private_hooks()


class _Relocating(pickle.Unpickler):
    """Reads a serialized single-device executable for another device of the same client."""

    def __init__(self, file, device, device_list, options):
        super().__init__(file)
        self.device, self.device_list, self.options = device, device_list, options

    def persistent_load(self, pid):
        kind = pid[0]
        if kind == "exec":
            return self.device.client.deserialize_executable(
                pid[1], executable_devices=self.device_list, compile_options=self.options
            )
        if kind == "device":
            return self.device
        if kind == "client":
            return self.device.client
        raise pickle.UnpicklingError(f"unexpected entry {kind!r} in a serialized executable")


def relocate(compiled: jax.stages.Compiled, device) -> jax.stages.Compiled:
    """The single-device executable ``compiled`` loaded onto ``device`` (same backend),
    without compiling again (JAX's private hooks: AttributeError where they are missing)."""
    if _PRIVATE is None:
        raise AttributeError("JAX's hooks for loading a compiled program are missing")
    device_list, serialize, get_compile_options = _PRIVATE
    payload, in_tree, out_tree = serialize(compiled)
    options = get_compile_options(
        num_replicas=1, num_partitions=1, device_assignment=np.array([device])
    )
    reader = _Relocating(io.BytesIO(payload), device, device_list((device,)), options)
    unloaded, args_info, no_kwargs = reader.load()
    # As JAX's own deserialize_and_load builds it; newer JAX versions take the program's
    # constants (none in a serialized program) before the argument description.
    constants = ([],) if "const_args" in inspect.signature(jax.stages.Compiled).parameters else ()
    return jax.stages.Compiled(
        unloaded.load(), *constants, in_tree.unflatten(args_info), out_tree, no_kwargs=no_kwargs
    )


def _persistent_cache_in_use() -> bool:
    return bool(jax.config.jax_compilation_cache_dir) and jax.config.jax_enable_compilation_cache


class _Slot:
    def __init__(self):
        self.lock = threading.Lock()
        self.program: jax.stages.Compiled | None = None
        self.loading: threading.Thread | None = None


class DeviceProgram:
    """``fun`` compiled once per argument signature and run on local devices
    (``program(device, *args)``); thread-safe. As with ``equinox.filter_jit``, array leaves
    of the arguments are traced and every other leaf is static (hashable).

    The program is compiled for the backend's first local device, whichever device asks
    first. A call for another device whose copy is not loaded yet runs on the first device
    while the copy loads in the background, so loading never delays a population (the
    result is the same bit for bit on any device); :meth:`wait` waits for the loads.

    With JAX's persistent compilation cache in use, every device's copy is compiled through
    it instead of loaded from the first device's: an executable read back from that cache
    on the CPU cannot be serialized whole again, and each device's copy is then in the cache
    for later runs (on GPUs JAX serves one entry to every device).

    Without JAX's private loading hooks (:data:`_PRIVATE` None) it is plain ``jax.jit``:
    each device compiles its own copy on first use."""

    def __init__(self, fun: Callable, max_programs: int = 64):
        def split_call(dynamic, static):
            return fun(*eqx.combine(dynamic, static))

        split_call.__name__ = split_call.__qualname__ = fun.__name__  # names cache entries
        self._jit = jax.jit(split_call, static_argnums=1)
        self._slots: OrderedDict = OrderedDict()  # (signature, device) -> _Slot
        self._lock = threading.Lock()
        self._max = max_programs
        self.relocated = 0  # executables loaded rather than compiled (for tests)
        functools.update_wrapper(self, fun)

    def __call__(self, device, *args):
        dynamic, static = eqx.partition(args, eqx.is_array)
        if _PRIVATE is None:
            return self._jit(jax.device_put(dynamic, device), static)
        leaves, tree = jax.tree.flatten(dynamic)
        signature = (tree, tuple((x.shape, x.dtype) for x in leaves), static)
        home = jax.local_devices(backend=device.platform)[0]
        first = self._slot(signature, home)
        with first.lock:  # the first device's copy is compiled before anything runs
            if first.program is None:
                first.program = self._jit.lower(jax.device_put(dynamic, home), static).compile()
        program = first.program
        if device != home:
            slot = self._slot(signature, device)
            with self._lock:
                if slot.program is None and slot.loading is None:
                    slot.loading = threading.Thread(
                        target=self._load,
                        args=(slot, first.program, device, dynamic, static),
                        daemon=True,
                    )
                    slot.loading.start()
            if slot.program is not None:
                program = slot.program
            else:
                device = home
        return program(jax.device_put(dynamic, device))

    def wait(self) -> None:
        """Wait until every copy being loaded onto a device is ready."""
        with self._lock:
            threads = [s.loading for s in self._slots.values() if s.loading is not None]
        for thread in threads:
            thread.join()

    def _slot(self, signature, device) -> _Slot:
        with self._lock:
            slot = self._slots.get((signature, device))
            if slot is None:
                slot = self._slots[(signature, device)] = _Slot()
                while len(self._slots) > self._max:
                    self._slots.popitem(last=False)
            return slot

    def _load(self, slot: _Slot, first: jax.stages.Compiled, device, dynamic, static) -> None:
        global _PRIVATE
        program = None
        if not _persistent_cache_in_use():
            try:
                program = relocate(first, device)
                self.relocated += 1
            except (ImportError, AttributeError, TypeError) as error:
                # This JAX version's private API differs: plain jax.jit from now on.
                log.debug("JAX's program-loading hooks failed (%s): using jax.jit", error)
                _PRIVATE = None
            except Exception as error:  # noqa: BLE001 - any other failure: compile instead
                log.debug("loading a compiled program onto %s failed (%s)", device, error)
        if program is None:
            program = self._jit.lower(jax.device_put(dynamic, device), static).compile()
        slot.program = program
