"""Writing a job's run directory: every file through a temporary name and a rename, so a
reader (or a run that died) never leaves half a file under a final name, and
``metrics.json`` last, so its presence means the run finished."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` via a temporary file and rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` of ``arrays`` via a temporary file and rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    tmp.replace(path)
    return path


def save_figure_atomic(fig, path: Path) -> Path:
    """``fig.savefig`` via a temporary file (same format, from ``path``'s suffix) and rename."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def write_columns_csv(path: Path, columns: dict[str, np.ndarray]) -> Path:
    """A CSV of equal-length columns (a header of their names), written atomically."""
    names = list(columns)
    table = np.column_stack([np.asarray(columns[n], dtype=float) for n in names])
    lines = [",".join(names)] + [",".join(f"{v:.9g}" for v in row) for row in table]
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def write_metrics(directory: Path, metrics: dict) -> Path:
    """``metrics.json``: the last file a job writes."""
    path = Path(directory) / "metrics.json"
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")
    return path
