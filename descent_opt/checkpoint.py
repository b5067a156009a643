"""Tuning checkpoints: a stopped run loses at most ``checkpoint.every_steps`` steps.

Every tuning phase of a job saves its :class:`~descent_opt.optimize.gains.TrainState`
(parameters, optimiser state, averaged parameters, PRNG key, step, history, replay ranking)
to ``checkpoint.npz`` in the run directory every ``checkpoint.every_steps`` steps, at the end
of the phase, and when SIGTERM (SLURM pre-emption, ``scancel``) or SIGINT (Ctrl-C) arrives;
the run then stops with status 128 + the signal number and no result files. Running the
same command with the same ``hydra.run.dir`` and ``resume=true`` continues from the
checkpoint and ends with the gains of an uninterrupted run, bit for bit on the CPU. The
checkpoint holds the run's configuration: one written under different settings is refused,
naming the first key that differs. The state is written as a pytree by
:func:`tree_arrays` (each leaf under its path, ``baseline/opt_state/1/0/mu/zem_gain``) and
read back by :func:`tree_from_arrays` against the state before the first step, which
gives the structure and checks every leaf's shape and dtype.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import jax
import numpy as np
from jaxtyping import PyTree

from descent_opt.optimize.gains import TrainState
from descent_opt.rundir import save_npz_atomic

log = logging.getLogger("descent_opt")

FILE_NAME = "checkpoint.npz"
# Keys that change how a run is carried out, not what it computes: free to differ on resume.
OPERATIONAL = ("resume", "checkpoint.", "progress", "compile_cache_dir", "distributed.")


class Interrupted(Exception):
    """A signal stopped the run (after saving the checkpoint, when one was being kept)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class CheckpointMismatch(ValueError):
    """A checkpoint written by another configuration, or not a checkpoint of this job."""


def _computed(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if not k.startswith(OPERATIONAL)}


def _first_difference(saved: dict, current: dict) -> str | None:
    for key in sorted(set(saved) | set(current)):
        if saved.get(key, "<unset>") != current.get(key, "<unset>"):
            return key
    return None


class Checkpoints:
    """The checkpoint of one run directory: the phases saved so far, saving on schedule or
    on request, and the signal handling that requests it."""

    def __init__(self, directory: str | Path, settings: dict, every_steps: int, *, write=True):
        self.path = Path(directory) / FILE_NAME
        self.settings = _computed(settings)
        self.every_steps = every_steps
        self.write = write  # only one process of a multi-process run writes
        self.phases: dict[str, dict[str, np.ndarray]] = {}
        self.stop = threading.Event()
        self.signum: int | None = None
        self.tuning = 0  # tuning phases running now (they may run side by side)
        self._lock = threading.Lock()  # one phase's save at a time

    def load(self) -> bool:
        """Read the checkpoint of the run directory, if there is one; refuse one written
        under other settings (:class:`CheckpointMismatch`). True when one was read."""
        if not self.path.exists():
            return False
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            saved = json.loads(str(arrays.pop("settings_json")))
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointMismatch(f"resume: {self.path} is not a readable checkpoint ({err})")
        key = _first_difference(saved, self.settings)
        if key is not None:
            raise CheckpointMismatch(
                f"resume: {self.path} was written with {key}={saved.get(key, '<unset>')}, "
                f"this run has {key}={self.settings.get(key, '<unset>')}; use the same "
                "settings, another hydra.run.dir, or resume=false"
            )
        for name, value in arrays.items():
            phase, _, entry = name.partition("/")
            self.phases.setdefault(phase, {})[entry] = value
        return True

    def state(self, phase: str, template: TrainState) -> TrainState | None:
        """The saved state of ``phase``, shaped like ``template`` (the state before its
        first step), or None when the phase was not reached."""
        arrays = self.phases.get(phase)
        if arrays is None:
            return None
        # The records (history, replay ranking) grow with the steps: read as saved.
        records = {
            "history": _subtree(arrays, "history"),
            "replay_worst": arrays.get("replay_worst"),
            "adversarial_rows": arrays.get("adversarial_rows"),
        }
        try:
            tree = tree_from_arrays(arrays, _as_tree(template) | records)
        except ValueError as err:
            raise CheckpointMismatch(f"resume: {self.path} holds a {phase} state {err}")
        if not np.array_equal(jax.random.key_data(tree["key"]), jax.random.key_data(template.key)):
            raise CheckpointMismatch(f"resume: {self.path} holds another {phase} PRNG key")
        return TrainState(
            int(tree["step"]),
            tree["params"],
            tree["opt_state"],
            tree["mean"],
            tree["key"],
            {name: [float(x) for x in values] for name, values in tree["history"].items()},
            tree["replay_worst"],
            tree["adversarial_rows"],
        )

    def saver(self, phase: str, steps: int) -> Callable[[TrainState], None]:
        """``on_step`` for :func:`~descent_opt.optimize.gains.tune_gains`: saves every
        ``every_steps`` steps and after the last, and stops the run (:class:`Interrupted`)
        once a signal has asked for it, after saving."""

        def on_step(state: TrainState) -> None:
            stopping = self.stop.is_set()
            if stopping or state.step % self.every_steps == 0 or state.step == steps:
                self.save(phase, state)
            if stopping:
                name = signal.Signals(self.signum).name
                raise Interrupted(
                    f"{name}: stopped after step {state.step} of {steps} of {phase} tuning; "
                    f"state saved to {self.path}; run the same command with resume=true to "
                    "continue",
                    self.signum,
                )

        return on_step

    def save(self, phase: str, state: TrainState) -> None:
        """Keep ``state`` as the state of ``phase`` and write the checkpoint (every phase's
        latest state)."""
        arrays = tree_arrays(_as_tree(state))
        with self._lock:
            self.phases[phase] = arrays
            if not self.write:
                return
            flat = {f"{p}/{k}": v for p, e in self.phases.items() for k, v in e.items()}
            flat["settings_json"] = np.asarray(json.dumps(self.settings, sort_keys=True))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_npz_atomic(self.path, flat)

    @contextlib.contextmanager
    def tuning_phase(self) -> Iterator[None]:
        """While tuning, a signal is answered at the end of the current step (after saving);
        outside it, at once."""
        with self._lock:
            self.tuning += 1
        try:
            yield
        finally:
            with self._lock:
                self.tuning -= 1

    @contextlib.contextmanager
    def catch_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT ask the run to stop (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self.signum = signum
            self.stop.set()
            if not self.tuning:
                raise Interrupted(f"{signal.Signals(signum).name}: stopped", signum)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _as_tree(state: TrainState) -> dict:
    """``state`` as the pytree a checkpoint holds: host records as NumPy arrays."""
    worst, rows = state.replay_worst, state.adversarial_rows
    return {
        "step": np.asarray(state.step, np.int64),
        "params": state.params,
        "opt_state": state.opt_state,
        "mean": state.mean,
        "key": state.key,
        "history": {name: np.asarray(v, np.float64) for name, v in state.history.items()},
        "replay_worst": None if worst is None else np.asarray(worst, np.int64),
        "adversarial_rows": None if rows is None else np.asarray(rows, np.float64),
    }


def _subtree(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {
        name.removeprefix(prefix + "/"): value
        for name, value in arrays.items()
        if name.startswith(prefix + "/")
    }


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _host(leaf) -> np.ndarray:
    return np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)


def _name(path) -> str:
    def part(entry) -> str:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            return entry.name
        if isinstance(entry, jax.tree_util.SequenceKey):
            return str(entry.idx)
        return str(entry.key)  # DictKey, FlattenedIndexKey

    return "/".join(part(entry) for entry in path)


def tree_arrays(tree: PyTree) -> dict[str, np.ndarray]:
    """Every leaf of ``tree`` as a NumPy array named by its path (``opt_state/1/0/mu``:
    dictionary keys, attribute names and positions joined by ``/``); a typed PRNG key as its
    key data. Inverse: :func:`tree_from_arrays`."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_name(path): _host(leaf) for path, leaf in flat}


def tree_from_arrays(arrays: Mapping[str, np.ndarray], like: PyTree) -> PyTree:
    """The pytree of structure ``like`` whose leaves are ``arrays`` (as written by
    :func:`tree_arrays`), bit for bit: a leaf of ``like`` that is a JAX array comes back as
    one, a typed PRNG key with ``like``'s implementation. Raises ``ValueError`` (one line)
    naming the first entry missing, left over, or of another shape or dtype than ``like``'s.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [_name(path) for path, _ in flat]
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise ValueError(f"with an entry {extra[0]!r} this run does not have")
    leaves = []
    for name, (_, leaf) in zip(names, flat):
        saved, expected = arrays.get(name), _host(leaf)
        if saved is None or saved.shape != expected.shape or saved.dtype != expected.dtype:
            got = "none" if saved is None else f"{saved.dtype}{list(saved.shape)}"
            raise ValueError(
                f"of another shape: {name} is {got}, expected "
                f"{expected.dtype}{list(expected.shape)}"
            )
        if _is_key(leaf):
            leaves.append(jax.random.wrap_key_data(saved, impl=jax.random.key_impl(leaf)))
        else:
            leaves.append(jax.numpy.asarray(saved) if isinstance(leaf, jax.Array) else saved)
    return jax.tree_util.tree_unflatten(treedef, leaves)
