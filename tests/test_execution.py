"""The execution layer: a batch cut into pieces of one shape gives the same results for any
piece length and thread count (fewer members than one piece, a length no multiple of the
piece's); the fold sees the pieces in order on one background thread; without JAX's private
program-loading hooks, programs run by plain ``jax.jit`` and fly the same outcomes."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_models import SHORT_DESCENT, VEHICLE

from descent_opt import device_program, execution
from descent_opt.faults import FaultCatalog
from descent_opt.guidance import default_gains
from descent_opt.scenarios import TerrainSpec, sample_scenarios
from descent_opt.simulate import SimSpec, simulate, simulate_population


def _batch(n: int) -> dict:
    """A pytree batch of ``n`` members: JAX and NumPy leaves, a trailing axis."""
    x = jnp.linspace(-2.0, 3.0, n, dtype=jnp.float32)
    return {"x": x, "pair": np.arange(2 * n, dtype=np.int64).reshape(n, 2)}


_wobble = jax.jit(lambda b: {"x": jnp.sin(3.0 * b["x"]) * jnp.exp(b["x"]), "pair": b["pair"] * 2})


@pytest.mark.parametrize("n", [1, 5, 16, 37])
@pytest.mark.parametrize("size", [1, 4, 16, 64])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_pieces_give_the_results_of_the_whole_batch(n, size, workers):
    whole = _wobble(_batch(n))
    seen = []

    def fly(device, piece):
        seen.append(piece["x"].shape[0])
        return _wobble(piece)

    out = execution.fly_batch(fly, _batch(n), size, workers=workers)
    assert set(seen) == {size}  # one shape: the last piece filled up
    assert len(seen) == -(-n // size)
    for k in whole:
        assert out[k].shape == whole[k].shape
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(whole[k]), err_msg=k)


def test_filler_copies_member_zero_or_the_members_that_follow():
    batch = _batch(5)
    last = list(execution.pieces(batch, 4))[-1]
    np.testing.assert_array_equal(
        np.asarray(last["x"]), np.repeat(np.asarray(batch["x"])[[4, 0]], [1, 3])
    )
    indices = np.array([7, 3, 9])
    assert [p.tolist() for p in execution.pieces(indices, 2, execution.following)] == [
        [7, 3],
        [9, 10],
    ]
    # A range of members is cut lazily, the last piece reaching past the end.
    assert [p.tolist() for p in execution.pieces(range(5, 11), 4)] == [
        [5, 6, 7, 8],
        [9, 10, 11, 12],
    ]


@pytest.mark.parametrize("n", [1, 5, 16, 37])
@pytest.mark.parametrize("size", [1, 4, 16, 64])
def test_pieces_inside_one_program_give_the_results_of_the_whole_batch(n, size):
    batch = _batch(n)
    chunked = jax.jit(lambda b: execution.map_in_program(_wobble, b, size))(batch)
    whole = _wobble(batch)
    for k in whole:
        np.testing.assert_array_equal(np.asarray(chunked[k]), np.asarray(whole[k]), err_msg=k)


@pytest.mark.parametrize(
    ("n", "shares", "multiple", "limit", "size"),
    [
        (4096, 2, 1, 4096, 2048),  # one share per core
        (65536, 2, 1, 4096, 4096),  # shares of several pieces at most the limit
        (5000, 1, 1, 4096, 2500),  # equal pieces: the least filler
        (3, 8, 1, 4096, 1),  # never more shares than members
        (6, 2, 4, None, 4),  # whole multiples (thrust-schedule chunks)
    ],
)
def test_piece_size(n, shares, multiple, limit, size):
    got = execution.piece_size(n, shares, multiple=multiple, limit=limit)
    assert got == size
    assert got % multiple == 0 and (limit is None or got <= limit)
    assert -(-n // got) >= min(shares, -(-n // multiple))


def test_fold_sees_the_pieces_in_order_on_one_background_thread():
    caller = threading.get_ident()
    folded, threads = [], set()

    def fold(results):
        threads.add(threading.get_ident())
        folded.append(results)
        return sum(results)

    def fly(device, piece):
        return int(piece[0])

    sums = execution.fly(fly, execution.pieces(range(0, 23), 2), workers=3, fold=fold, group=4)
    assert folded == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 20, 22]]
    assert sums == [12, 44, 76]
    assert len(threads) == 1 and caller not in threads


def test_concurrently_keeps_the_order():
    assert execution.concurrently(lambda x: x * x, range(7), 3) == [x * x for x in range(7)]
    assert execution.concurrently(lambda x: x, [], 3) == []


def _wobble_fn(x, scale):
    for _ in range(10):
        x = jnp.sin(x * scale) + jnp.exp(-x * x) * jnp.log1p(jnp.abs(x))
    return x


def test_device_program_without_private_hooks_runs_plain_jit(monkeypatch):
    x = jnp.linspace(-3.0, 3.0, 1001, dtype=jnp.float32)
    device = jax.local_devices()[0]
    normal = device_program.DeviceProgram(_wobble_fn)(device, x, np.float32(1.7))
    monkeypatch.setattr(device_program, "_PRIVATE", None)
    with pytest.raises(AttributeError):
        device_program.relocate(None, device)
    program = device_program.DeviceProgram(_wobble_fn)
    fallback = program(device, x, np.float32(1.7))
    assert not program._slots  # no compiled copy kept: jax.jit's own
    np.testing.assert_array_equal(np.asarray(fallback), np.asarray(normal))


def test_population_flown_without_private_hooks_lands_the_same(monkeypatch):
    """Forced onto plain ``jax.jit`` (the private hooks taken away), a population's pieces
    fly to the same outcomes bit for bit; and those of the one jitted program."""
    spec = SimSpec(vehicle=VEHICLE, dt_s=0.25, duration_s=40.0)
    pop = sample_scenarios(
        SHORT_DESCENT, TerrainSpec(kind="flat"), FaultCatalog(), 480.0, 600, key=jax.random.key(5)
    )
    gains = default_gains()
    normal = simulate_population(spec, gains, pop, workers=2)
    monkeypatch.setattr(device_program, "_PRIVATE", None)
    fallback = simulate_population(spec, gains, pop, workers=2)
    whole = simulate(spec, gains, pop)
    for a, b, c in zip(jax.tree.leaves(normal), jax.tree.leaves(fallback), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert np.asarray(normal.landed).mean() > 0.5  # flights, not a degenerate batch
