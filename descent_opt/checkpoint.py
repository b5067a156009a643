"""Tuning checkpoints: a stopped run loses at most ``checkpoint.every_steps`` steps.

Every tuning phase of a job saves its :class:`~descent_opt.optimize.gains.TrainState`
(parameters, optimiser state, averaged parameters, PRNG key, step, history) to
``checkpoint.npz`` in the run directory every ``checkpoint.every_steps`` steps, at the end
of the phase, and when SIGTERM (SLURM pre-emption, ``scancel``) or SIGINT (Ctrl-C) arrives;
the run then stops with status 128 + the signal number and no result files. Running the
same command with the same ``hydra.run.dir`` and ``resume=true`` continues from the
checkpoint and ends with the gains of an uninterrupted run, bit for bit on the CPU. The
checkpoint holds the run's configuration: one written under different settings is refused,
naming the first key that differs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np

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
        restored = {}
        for part in ("params", "opt_state", "mean"):
            leaves, tree = jax.tree.flatten(getattr(template, part))
            saved = [arrays.get(f"{part}/{i}") for i in range(len(leaves))]
            if (
                any(
                    s is None or np.shape(s) != np.shape(x) or s.dtype != np.asarray(x).dtype
                    for s, x in zip(saved, leaves)
                )
                or f"{part}/{len(leaves)}" in arrays
            ):
                raise CheckpointMismatch(
                    f"resume: {self.path} holds a {phase} {part} of another shape"
                )
            restored[part] = jax.tree.unflatten(tree, [jax.numpy.asarray(s) for s in saved])
        history = {
            name.removeprefix("history/"): [float(x) for x in values]
            for name, values in arrays.items()
            if name.startswith("history/")
        }
        key = jax.random.wrap_key_data(arrays["key"], impl=jax.random.key_impl(template.key))
        if not np.array_equal(arrays["key"], jax.random.key_data(template.key)):
            raise CheckpointMismatch(f"resume: {self.path} holds another {phase} PRNG key")
        worst = arrays.get("replay_worst")
        return TrainState(
            int(arrays["step"]), **restored, key=key, history=history, replay_worst=worst
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
        arrays = {"step": np.asarray(state.step), "key": np.asarray(jax.random.key_data(state.key))}
        for part in ("params", "opt_state", "mean"):
            for i, leaf in enumerate(jax.tree.leaves(getattr(state, part))):
                arrays[f"{part}/{i}"] = np.asarray(leaf)
        for name, values in state.history.items():
            arrays[f"history/{name}"] = np.asarray(values, np.float64)
        if state.replay_worst is not None:
            arrays["replay_worst"] = np.asarray(state.replay_worst, np.int64)
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
