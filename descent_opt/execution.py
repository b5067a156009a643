"""The execution layer: a batch of any size flown on the local devices in pieces of one
compiled shape, the pieces' results joined or folded in order.

Every population, tuning pool and thrust-schedule batch is flown through here:

- pieces: a batch is cut into pieces of one length, so that one compiled program serves
  every piece; the last is filled up (copies of member 0, or for member indices the members
  that follow) and the filler is dropped from the results. Inside one program
  :func:`map_in_program` does the same with ``lax.map``.
- threads: on a single CPU device one share per usable core, each from its own thread (XLA
  releases the interpreter while a program runs and keeps a simulation step's or an
  interior-point iteration's small kernels on one core, so one share per core is what fills
  the cores); where there are several local devices, one thread per device and piece ``k``
  on device ``k mod count``.
- folding: with ``fold``, the results of each group of pieces are handed to ``fold`` in
  order on one background thread while the next group flies.

A program compiled once and run on any local device is a :class:`DeviceProgram`
(:mod:`descent_opt.device_program`, which falls back on plain ``jax.jit`` where JAX's
private hooks for loading a compiled program onto another device are missing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Int

from descent_opt.device_program import DeviceProgram

__all__ = [
    "DeviceProgram",
    "concurrently",
    "default_workers",
    "fly",
    "fly_batch",
    "following",
    "join",
    "map_in_program",
    "pad",
    "piece_size",
    "pieces",
    "thread_count",
]


def default_workers() -> int:
    """One share per usable CPU core on the CPU backend, else one."""
    if jax.default_backend() != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_count(workers: int | None = None) -> int:
    """Threads that fly pieces: one per local device where there are several, else
    ``workers`` (default :func:`default_workers`)."""
    devices = len(jax.local_devices())
    if devices > 1:
        return devices
    return default_workers() if workers is None else max(1, workers)


def piece_size(n: int, shares: int, *, multiple: int = 1, limit: int | None = None) -> int:
    """Length of the pieces a batch of ``n`` is cut into: at least ``shares`` of them (one
    per thread), each a whole multiple of ``multiple`` and at most ``limit`` long (where
    given), as few and as equal as that allows (the least filler)."""
    units = max(1, -(-n // multiple))
    shares = max(1, min(shares, units))
    per = -(-units // shares)
    if limit is not None:
        count = shares * -(-per // max(1, limit // multiple))
        per = -(-units // count)
    return per * multiple


def _length(batch) -> int:
    if isinstance(batch, range):
        return len(batch)
    return jax.tree.leaves(batch)[0].shape[0]


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


def following(indices: Int[np.ndarray, " n"], k: int) -> Int[np.ndarray, " k"]:
    """Filler for a batch of member indices: the ``k`` members after the largest (a copy of
    one member would fly on as long as it does, ``k`` times over)."""
    return np.max(indices) + 1 + np.arange(k, dtype=np.asarray(indices).dtype)


def _copies_of_first(batch, k: int):
    return jax.tree.map(lambda x: _xp(x).repeat(x[:1], k, axis=0), batch)


def _append(batch, filler):
    return jax.tree.map(lambda x, f: _xp(x).concatenate([x, f]), batch, filler)


def pad(batch, size: int, fill: Callable | None = None):
    """``batch`` (a pytree of arrays with a leading member axis, NumPy or JAX, traced or
    not) filled up to a whole multiple of ``size`` members with ``fill(batch, k)`` (default:
    ``k`` copies of member 0)."""
    k = -_length(batch) % size
    if not k:
        return batch
    return _append(batch, (fill or _copies_of_first)(batch, k))


def pieces(batch, size: int, fill: Callable | None = None) -> Iterator:
    """``batch`` cut into pieces of ``size`` members, lazily, the last filled up as by
    :func:`pad` (its filler drawn from the whole batch). A ``range`` of member indices
    gives NumPy index arrays, the last reaching past the end (the members that follow)."""
    if isinstance(batch, range):
        if batch.step != 1:
            raise ValueError("a range of members must have step 1")
        for first in range(batch.start, batch.stop, size):
            yield np.arange(first, first + size)
        return
    n = _length(batch)
    for first in range(0, n, size):
        part = jax.tree.map(lambda x, first=first: x[first : first + size], batch)
        if first + size > n:
            part = _append(part, (fill or _copies_of_first)(batch, first + size - n))
        yield part


def join(parts: list, n: int | None = None):
    """The results of consecutive pieces (pytrees with a leading member axis) joined in
    order and cut to the first ``n`` members (the filler dropped)."""
    return jax.tree.map(lambda *xs: _xp(xs[0]).concatenate(xs)[:n], *parts)


def map_in_program(fn: Callable, batch, size: int):
    """Inside one program: ``fn`` over pieces of ``size`` members one after another
    (``lax.map``; the last filled up with copies of member 0), results joined and cut to
    the batch's length; ``fn(batch)`` itself when one piece holds the batch."""
    n = _length(batch)
    if size >= n:
        return fn(batch)
    count = -(-n // size)
    split = jax.tree.map(lambda x: x.reshape((count, size) + x.shape[1:]), pad(batch, size))
    out = jax.lax.map(fn, split)
    return jax.tree.map(lambda x: x.reshape((count * size,) + x.shape[2:])[:n], out)


def concurrently(fn: Callable, items: Iterable, workers: int) -> list:
    """``fn`` of each item, from up to ``workers`` threads, results in order (on the
    calling thread with one worker or one item)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def _groups(items: Iterable, size: int) -> Iterator[list]:
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def fly(
    fn: Callable[[Any, Any], Any],
    parts: Iterable,
    *,
    workers: int | None = None,
    fold: Callable[[list], Any] | None = None,
    group: int = 1,
) -> list:
    """``fn(device, piece)`` of each piece of ``parts`` from :func:`thread_count` threads,
    piece ``k`` on local device ``k mod count``.

    Without ``fold``: the results in order. With ``fold``: the results, ``group`` pieces at
    a time, handed to ``fold`` in order on one background thread while the next group
    flies; the values ``fold`` returned, in order."""
    devices = jax.local_devices()
    threads = thread_count(workers)

    def run(job):
        k, piece = job
        return fn(devices[k % len(devices)], piece)

    if fold is None:
        return concurrently(run, enumerate(parts), threads)
    folded = []
    with ThreadPoolExecutor(1) as folder:
        folding = None
        for jobs in _groups(enumerate(parts), max(1, group)):
            results = concurrently(run, jobs, threads)
            if folding is not None:
                folded.append(folding.result())
            folding = folder.submit(fold, results)
        if folding is not None:
            folded.append(folding.result())
    return folded


def fly_batch(
    fn: Callable[[Any, Any], Any],
    batch,
    size: int,
    *,
    workers: int | None = None,
    fill: Callable | None = None,
):
    """``fn(device, piece)`` over ``batch`` cut into pieces of ``size`` members
    (:func:`pieces`, :func:`fly`): the results joined in order, the filler dropped."""
    return join(fly(fn, pieces(batch, size, fill), workers=workers), _length(batch))
