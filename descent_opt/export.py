"""Gain tables on disk: JSON (the source of truth, with provenance), CSV, NPZ and a C99
header for flight software. :func:`load_gains` reads JSON, CSV and NPZ back bit for bit
(float32); the header says not to edit it by hand and carries the interpolation itself.

The guidance interpolates every scheduled column linearly between altitude breakpoints and
holds the end values outside them; a flight implementation of the same interpolation over
these float32 values reproduces the tuned law exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from descent_opt.guidance import NAV_GAINS, NAV_GAINS_ADDED, SCALAR_GAINS, SCHEDULED_COLUMNS, Gains
from descent_opt.navigation import NavParams
from descent_opt.rundir import save_npz_atomic, write_text_atomic

FORMAT = "descent_opt.gains/1"


def gains_to_dict(gains: Gains, provenance: dict | None = None) -> dict:
    """Plain-Python form of a gain table (float32 values as Python floats)."""
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    out = {
        "format": FORMAT,
        "provenance": dict(provenance or {}),
        "altitude_breakpoints_m": f32(gains.altitude_breakpoints_m).tolist(),
        "schedule": {c: f32(getattr(gains, c)).tolist() for c in SCHEDULED_COLUMNS},
        "scalars": {s: float(f32(getattr(gains, s))) for s in SCALAR_GAINS},
        "navigation": {n: float(f32(getattr(gains.nav, n))) for n in NAV_GAINS},
    }
    for group in ("schedule", "scalars", "navigation"):
        for name, value in out[group].items():
            if not np.all(np.isfinite(value)):
                raise ValueError(f"gains: {group}.{name} is not finite; not written")
    return out


def gains_from_dict(data: dict) -> Gains:
    """Inverse of :func:`gains_to_dict`; raises ``ValueError`` naming what is wrong."""
    if data.get("format") != FORMAT:
        raise ValueError(f"gains: format must be {FORMAT!r} (got {data.get('format')!r})")
    try:
        bp = np.asarray(data["altitude_breakpoints_m"], dtype=np.float32)
        cols = {c: np.asarray(data["schedule"][c], dtype=np.float32) for c in SCHEDULED_COLUMNS}
        scalars = {s: np.float32(data["scalars"][s]) for s in SCALAR_GAINS}
        given = {**NAV_GAINS_ADDED, **data["navigation"]}
        nav = {n: np.float32(given[n]) for n in NAV_GAINS}
    except (KeyError, TypeError) as err:
        raise ValueError(f"gains: missing or malformed entry {err}") from None
    if bp.ndim != 1 or bp.size < 2 or np.any(np.diff(bp) <= 0):
        raise ValueError("gains: altitude_breakpoints_m must be an increasing list")
    for name, col in cols.items():
        if col.shape != bp.shape:
            raise ValueError(f"gains: schedule.{name} must have one value per breakpoint")
    values = list(cols.values()) + list(scalars.values()) + list(nav.values())
    if not all(np.all(np.isfinite(v)) for v in values):
        raise ValueError("gains: every value must be finite")
    return Gains(
        altitude_breakpoints_m=jnp.asarray(bp),
        **{c: jnp.asarray(v) for c, v in cols.items()},
        **{s: jnp.asarray(v) for s, v in scalars.items()},
        nav=NavParams(**{n: jnp.asarray(v) for n, v in nav.items()}),
    )


def load_gains(path: str | Path) -> Gains:
    """Read a gain table written by :func:`write_gain_table`: ``.json``, ``.csv`` or ``.npz``
    (float32 values exactly as written). Raises ``ValueError`` naming the file's problem."""
    path = Path(path)
    readers = {".json": _read_json, ".csv": _read_csv, ".npz": _read_npz}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"gains: {str(path)!r} is not a gain table (.json, .csv or .npz expected)")
    if not path.is_file():
        raise ValueError(f"gains: no such file {str(path)!r}")
    return gains_from_dict(reader(path))


def load_provenance(path: str | Path) -> dict:
    """The provenance stored with a gain table (empty for CSV, which holds none)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return dict(_read_json(path).get("provenance") or {})
    if path.suffix.lower() == ".npz":
        return dict(_read_npz(path).get("provenance") or {})
    return {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"gains: {str(path)!r} is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"gains: {str(path)!r} does not hold a gain table object")
    return data


def _read_csv(path: Path) -> dict:
    """The CSV of :func:`gains_csv`: ``# name = value`` lines, a header, one row per
    breakpoint."""
    scalars, navigation, rows = {}, {}, []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"gains: {str(path)!r} is not a CSV gain table") from None
    body = []
    for line in lines:
        if line.startswith("#"):
            name, _, value = line[1:].partition("=")
            name = name.strip()
            target = navigation if name in NAV_GAINS else scalars
            try:
                target[name] = float(value)
            except ValueError:
                raise ValueError(f"gains: {str(path)!r}: {name} is not a number") from None
        elif line.strip():
            body.append(line)
    reader = csv.reader(body)
    header = next(reader, None)
    if header is None or header[0] != "altitude_m":
        raise ValueError(f"gains: {str(path)!r}: header row altitude_m,... missing")
    missing = [c for c in SCHEDULED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"gains: {str(path)!r}: column {missing[0]} missing")
    for number, row in enumerate(reader, start=2):
        try:
            rows.append([float(x) for x in row])
        except ValueError:
            raise ValueError(f"gains: {str(path)!r}: row {number} is not numbers") from None
        if len(row) != len(header):
            raise ValueError(f"gains: {str(path)!r}: row {number} has {len(row)} values")
    table = np.asarray(rows, dtype=np.float64).reshape(-1, len(header))
    return {
        "format": FORMAT,
        "altitude_breakpoints_m": table[:, 0].tolist(),
        "schedule": {c: table[:, header.index(c)].tolist() for c in SCHEDULED_COLUMNS},
        "scalars": scalars,
        "navigation": navigation,
    }


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"gains: {str(path)!r} is not an NPZ gain table ({err})") from None

    def get(name):
        if name not in arrays:
            raise ValueError(f"gains: {str(path)!r}: entry {name} missing")
        return arrays[name]

    return {
        "format": str(get("format")),
        "provenance": json.loads(str(arrays["provenance"])) if "provenance" in arrays else {},
        "altitude_breakpoints_m": get("altitude_breakpoints_m"),
        "schedule": {c: get(c) for c in SCHEDULED_COLUMNS},
        "scalars": {n: get(n) for n in SCALAR_GAINS},
        "navigation": {n: get(n) for n in NAV_GAINS if n in arrays or n not in NAV_GAINS_ADDED},
    }


def gains_npz(gains: Gains, provenance: dict | None = None) -> dict[str, np.ndarray]:
    """The arrays of the NPZ form: float32 breakpoints, columns and scalars, the format tag
    and the provenance as JSON text."""
    d = gains_to_dict(gains, provenance)
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    return {
        "format": np.asarray(FORMAT),
        "provenance": np.asarray(json.dumps(d["provenance"], sort_keys=True)),
        "altitude_breakpoints_m": f32(d["altitude_breakpoints_m"]),
        **{c: f32(v) for c, v in d["schedule"].items()},
        **{k: f32(v) for k, v in d["scalars"].items()},
        **{k: f32(v) for k, v in d["navigation"].items()},
    }


def provenance(config, **extra) -> dict:
    """Where a gain table comes from: package version, git commit of the source tree when
    known, a hash of the whole run configuration, the seed, the creation time (UTC), and
    ``extra`` (training steps, held-out metrics, ...)."""
    import hashlib
    import subprocess
    import time

    from descent_opt._version import __version__

    commit = None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        commit = done.stdout.strip() or None if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "generator": "descent_opt",
        "version": __version__,
        "git_commit": commit,
        "config_sha256": hashlib.sha256(repr(config).encode()).hexdigest(),
        "seed": config.seed,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def gains_csv(gains: Gains) -> str:
    """One row per altitude breakpoint; scalar and navigation gains as comment lines."""
    d = gains_to_dict(gains)
    buf = io.StringIO()
    for group in ("scalars", "navigation"):
        for k, v in d[group].items():
            buf.write(f"# {k} = {v:.9g}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["altitude_m", *SCHEDULED_COLUMNS])
    for i, h in enumerate(d["altitude_breakpoints_m"]):
        writer.writerow([f"{h:.9g}"] + [f"{d['schedule'][c][i]:.9g}" for c in SCHEDULED_COLUMNS])
    return buf.getvalue()


def _c_float(x: float) -> str:
    if not math.isfinite(x):
        raise ValueError("gains: non-finite value cannot be exported")
    return f"{x:.9g}f" if ("." in f"{x:.9g}" or "e" in f"{x:.9g}") else f"{x:.9g}.0f"


_UNITS = (
    ("_per_s", "1/s"),
    ("_mps2", "m/s^2"),
    ("_mps", "m/s"),
    ("_m", "m"),
    ("_s", "s"),
    ("_sigma", "standard deviations"),
)


def _unit(name: str) -> str:
    return next((unit for suffix, unit in _UNITS if name.endswith(suffix)), "dimensionless")


_C_INTERP = """/* A scheduled column at an altitude (m): linear between breakpoints, held at the end
   values below the first and above the last breakpoint (the library's rule). */
static inline float descent_opt_interp(const float column[DESCENT_OPT_GAIN_ROWS],
                                       float altitude_m)
{
    const float *b = descent_opt_altitude_breakpoints_m;
    int i;
    if (altitude_m <= b[0]) {
        return column[0];
    }
    for (i = 0; i < DESCENT_OPT_GAIN_ROWS - 1; ++i) {
        if (altitude_m < b[i + 1]) {
            const float t = (altitude_m - b[i]) / (b[i + 1] - b[i]);
            return column[i] + t * (column[i + 1] - column[i]);
        }
    }
    return column[DESCENT_OPT_GAIN_ROWS - 1];
}"""


def gains_header(gains: Gains, provenance: dict | None = None) -> str:
    """C99 header: breakpoints, one array per scheduled column (units in the names),
    scalar constants, and ``descent_opt_interp``."""
    d = gains_to_dict(gains, provenance)
    n = len(d["altitude_breakpoints_m"])
    lines = [
        "/* Generated by descent_opt. DO NOT EDIT: regenerate from gains.json. */",
        "/* Provenance: "
        + json.dumps(d["provenance"], sort_keys=True).replace("*/", "* /")
        + " */",
        "/* Columns are interpolated linearly in estimated altitude between breakpoints and",
        "   held constant outside them. Units are in the names (SI). */",
        "#ifndef DESCENT_OPT_GAINS_H",
        "#define DESCENT_OPT_GAINS_H",
        "",
        f"#define DESCENT_OPT_GAIN_ROWS {n}",
        "",
        "/* altitude_breakpoints_m: m (estimated altitude), increasing */",
        "static const float descent_opt_altitude_breakpoints_m[DESCENT_OPT_GAIN_ROWS] = {"
        + ", ".join(_c_float(x) for x in d["altitude_breakpoints_m"])
        + "};",
    ]
    for c in SCHEDULED_COLUMNS:
        lines.append(f"/* {c}: {_unit(c)} at each breakpoint */")
        lines.append(
            f"static const float descent_opt_{c}[DESCENT_OPT_GAIN_ROWS] = {{"
            + ", ".join(_c_float(x) for x in d["schedule"][c])
            + "};"
        )
    lines.append("")
    for group in ("scalars", "navigation"):
        for k, v in d[group].items():
            lines.append(f"static const float descent_opt_{k} = {_c_float(v)}; /* {_unit(k)} */")
    lines += ["", *_C_INTERP.splitlines(), "", "#endif /* DESCENT_OPT_GAINS_H */", ""]
    return "\n".join(lines)


def write_gain_table(
    gains: Gains, directory: str | Path, provenance: dict, stem: str = "gains"
) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.csv``, ``<stem>.npz`` and ``<stem>.h`` into
    ``directory``, each through a temporary file."""
    directory = Path(directory)
    files = {
        directory / f"{stem}.json": json.dumps(gains_to_dict(gains, provenance), indent=2) + "\n",
        directory / f"{stem}.csv": gains_csv(gains),
        directory / f"{stem}.h": gains_header(gains, provenance),
    }
    for path, text in files.items():
        write_text_atomic(path, text)
    npz = save_npz_atomic(directory / f"{stem}.npz", gains_npz(gains, provenance))
    return [*files, npz]
