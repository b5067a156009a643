"""Batches cut into one share per CPU core, each run from its own thread.

XLA releases the Python interpreter while a program runs, and on the CPU it keeps the small
kernels of a simulation step or an interior-point iteration on one core; running one share
per core concurrently is what fills the cores. On accelerators one program already fills the
device, so there is one share.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp


def default_workers() -> int:
    """One share per usable CPU core on the CPU backend, else one."""
    if jax.default_backend() != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def map_shares(fn: Callable, batch, workers: int, multiple: int = 1):
    """``fn`` over ``workers`` equal contiguous shares of ``batch`` (a pytree with a leading
    batch axis), each from its own thread, results concatenated in order. Shares are whole
    multiples of ``multiple`` long, the last filled up with copies of member 0 (dropped from
    the result), so one compiled program serves every share."""
    n = jax.tree.leaves(batch)[0].shape[0]
    units = -(-n // multiple)
    workers = max(1, min(workers, units))
    share = -(-units // workers) * multiple
    pad = share * workers - n
    if pad:
        batch = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]), batch)

    def run(i):
        return jax.block_until_ready(
            fn(jax.tree.map(lambda x: x[i * share : (i + 1) * share], batch))
        )

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(run, range(workers)))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:n], *parts)


def map_pieces(fn: Callable, pieces: list, workers: int) -> list:
    """``fn`` of each piece, ``workers`` pieces at a time from as many threads, results in
    order. For work whose pieces must all have the same shape (one compiled program)."""
    if workers <= 1 or len(pieces) == 1:
        return [fn(p) for p in pieces]
    with ThreadPoolExecutor(min(workers, len(pieces))) as pool:
        return list(pool.map(fn, pieces))
