"""Several processes (hosts, or one per GPU) flying one population together.

:func:`initialize` starts ``jax.distributed`` when the configuration or the SLURM step asks
for it; it must run before any JAX computation. Each process then flies its own index
range of a population (:func:`index_range`) and the per-process results are gathered to
every process (:func:`allgather_objects`); only process 0 writes outputs.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Mapping

import numpy as np

ENABLED = ("auto", "true", "false")


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """``enabled``: ``auto`` (on inside a SLURM step of more than one task, or when
    ``num_processes`` > 1), ``true`` or ``false``. Unset addresses and counts are detected
    by ``jax.distributed`` (SLURM and other cluster environments)."""

    enabled: str = "auto"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def slurm_tasks(environ: Mapping[str, str] = os.environ) -> int:
    """Tasks of the current SLURM step (1 outside ``srun``: ``SLURM_STEP_NODELIST`` exists
    only inside a step)."""
    if "SLURM_JOB_ID" not in environ or "SLURM_STEP_NODELIST" not in environ:
        return 1
    try:
        return max(1, int(environ.get("SLURM_NTASKS", "1")))
    except ValueError:
        return 1


def wanted(spec: DistributedSpec, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this run should start ``jax.distributed``."""
    if spec.enabled == "true":
        return True
    if spec.enabled == "false":
        return False
    return slurm_tasks(environ) > 1 or (spec.num_processes or 1) > 1


def initialize(spec: DistributedSpec, environ: Mapping[str, str] = os.environ) -> bool:
    """Start ``jax.distributed`` if :func:`wanted`; returns whether it was started. Call it
    before any JAX computation (it fixes the devices every process sees)."""
    import jax

    if not wanted(spec, environ) or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(
        coordinator_address=spec.coordinator_address,
        num_processes=spec.num_processes,
        process_id=spec.process_id,
    )
    return True


def index_range(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """``(start, count)`` of the members ``0 .. n-1`` that process ``process_index`` flies:
    contiguous ranges, sizes differing by at most one."""
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    return start, base + (1 if process_index < extra else 0)


def allgather_objects(obj) -> list:
    """``obj`` of every process, in process order (pickled; for results, not for large
    per-step data). One process: ``[obj]``."""
    import jax

    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[: data.size] = data
    gathered = multihost_utils.process_allgather(padded)
    return [pickle.loads(gathered[i][: int(sizes[i][0])].tobytes()) for i in range(len(gathered))]
