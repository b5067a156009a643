"""Gain tables round-trip exactly through JSON, CSV and NPZ; the C header compiles as C99 and
C++ and its interpolation equals the library's lookup; the export job writes every format
from every input format."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from descent_opt.export import (
    _c_float,
    gains_csv,
    gains_from_dict,
    gains_header,
    gains_to_dict,
    load_gains,
    write_gain_table,
)
from descent_opt.guidance import NAV_GAINS, SCALAR_GAINS, SCHEDULED_COLUMNS, default_gains


def perturbed_gains():
    g = default_gains()
    noise = jax.random.uniform(jax.random.key(3), g.descent_rate_mps.shape, minval=0.9, maxval=1.1)
    return jax.tree.map(lambda x: x * noise if x.shape == noise.shape else x * 1.2345678, g)


@pytest.mark.parametrize("suffix", ["json", "csv", "npz"])
def test_round_trip_is_bit_exact(tmp_path, suffix):
    g = perturbed_gains()
    written = write_gain_table(g, tmp_path, {"seed": 1})
    assert {p.name for p in written} == {"gains.json", "gains.csv", "gains.npz", "gains.h"}
    back = load_gains(tmp_path / f"gains.{suffix}")
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(back)):
        a32, b32 = np.asarray(a, np.float32), np.asarray(b)
        assert b32.dtype == np.float32
        np.testing.assert_array_equal(a32.view(np.uint32), b32.view(np.uint32))
    if suffix != "csv":
        from descent_opt.export import load_provenance

        assert load_provenance(tmp_path / f"gains.{suffix}") == {"seed": 1}


def _library_lookup(gains, column: str, altitudes_m: np.ndarray) -> np.ndarray:
    """The guidance's own reading of a scheduled column (float32)."""
    from descent_opt.guidance import prepare

    schedule = prepare(gains, unrolled=False)
    ramps, _ = schedule.locate(jnp.asarray(altitudes_m, jnp.float32))
    return np.asarray(schedule.columns[column].value(ramps))


C_PROGRAM = """
#include <stdio.h>
#include "gains.h"

static const float altitudes_m[] = {%(altitudes)s};

int main(void)
{
    const float *columns[] = {%(columns)s};
    size_t c, i;
    for (c = 0; c < sizeof columns / sizeof columns[0]; ++c) {
        for (i = 0; i < sizeof altitudes_m / sizeof altitudes_m[0]; ++i) {
            printf("%%.9g\\n", (double)descent_opt_interp(columns[c], altitudes_m[i]));
        }
    }
    return 0;
}
"""


def _compiler(names):
    import shutil

    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None:
        pytest.fail(f"no compiler among {names}: .ci/run installs one")
    return found


@pytest.mark.parametrize("language", ["c99", "c++"])
def test_c_header_interpolation_equals_the_library(tmp_path, language):
    import subprocess

    g = perturbed_gains()
    write_gain_table(g, tmp_path, {"seed": 1, "note": "a */ inside provenance"})
    bp = np.asarray(g.altitude_breakpoints_m, np.float32)
    rng = np.random.default_rng(0)
    altitudes = np.concatenate(
        [
            bp,  # every breakpoint
            0.5 * (bp[1:] + bp[:-1]),  # every midpoint
            [bp[0] - 10.0, -500.0, bp[-1] + 1.0, bp[-1] * 3.0],  # outside, both sides
            rng.uniform(-0.1 * bp[-1], 1.1 * bp[-1], 1000),
        ]
    ).astype(np.float32)
    source = tmp_path / "check.c"
    source.write_text(
        C_PROGRAM
        % {
            "altitudes": ", ".join(_c_float(float(a)) for a in altitudes),
            "columns": ", ".join(f"descent_opt_{c}" for c in SCHEDULED_COLUMNS),
        }
    )
    exe = tmp_path / "check"
    if language == "c99":
        cmd = [_compiler(["cc", "gcc", "clang"]), "-std=c99"]
    else:
        cmd = [_compiler(["c++", "g++", "clang++"]), "-x", "c++", "-std=c++11"]
    cmd += ["-Wall", "-Wextra", "-Werror", "-pedantic", str(source), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    got = np.asarray(ran.stdout.split(), dtype=np.float64).reshape(len(SCHEDULED_COLUMNS), -1)
    for row, column in zip(got, SCHEDULED_COLUMNS):
        want = _library_lookup(g, column, altitudes).astype(np.float64)
        values = np.asarray(getattr(g, column), np.float64)
        # Relative error; for a column that changes sign (the ZEV gain) relative to its
        # largest value, as float32 rounding near the zero crossing is.
        signed = values.min() < 0.0 < values.max()
        scale = np.maximum(np.abs(want), np.abs(values).max() if signed else 1e-30)
        assert np.max(np.abs(row - want) / scale) <= 1e-6, column


@pytest.mark.parametrize("suffix", ["json", "csv", "npz"])
def test_export_job_writes_every_format_from_any_input(tmp_path, suffix):
    import descent_opt
    from descent_opt.jobs import export

    g = perturbed_gains()
    write_gain_table(g, tmp_path, {"seed": 7})
    config = descent_opt.load_config(["+experiment=export", f"gains={tmp_path}/gains.{suffix}"])
    out = tmp_path / "out"
    out.mkdir()
    result = export.run(config)
    written = export.write_outputs(result, config, out, wall_time_s=0.1)
    assert [p.name for p in written][-1] == "metrics.json"
    for name in ("gains.json", "gains.csv", "gains.npz"):
        back = load_gains(out / name)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(back)):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))
    assert "descent_opt_interp" in (out / "gains.h").read_text()
    provenance = json.loads((out / "gains.json").read_text())["provenance"]
    assert provenance["exported_from"].endswith(f"gains.{suffix}")
    if suffix != "csv":
        assert provenance["seed"] == 7


def test_csv_and_header_carry_the_same_float32_values():
    g = perturbed_gains()
    d = gains_to_dict(g)
    rows = [ln for ln in gains_csv(g).splitlines() if not ln.startswith("#")]
    assert rows[0].split(",") == ["altitude_m", *SCHEDULED_COLUMNS]
    table = np.array([[float(x) for x in r.split(",")] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(table[:, 0], np.asarray(d["altitude_breakpoints_m"], np.float32))
    for j, c in enumerate(SCHEDULED_COLUMNS):
        np.testing.assert_array_equal(table[:, j + 1], np.asarray(d["schedule"][c], np.float32))

    header = gains_header(g, {"seed": 1})
    assert "DO NOT EDIT" in header
    for c in SCHEDULED_COLUMNS:
        body = re.search(rf"descent_opt_{c}\[DESCENT_OPT_GAIN_ROWS\] = \{{(.*?)\}};", header).group(
            1
        )
        values = np.array([float(v.strip().rstrip("f")) for v in body.split(",")], dtype=np.float32)
        np.testing.assert_array_equal(values, np.asarray(d["schedule"][c], np.float32))
    for k in SCALAR_GAINS + NAV_GAINS:
        value = float(re.search(rf"descent_opt_{k} = ([^;]+)f;", header).group(1))
        expected = d["scalars"][k] if k in d["scalars"] else d["navigation"][k]
        assert np.float32(value) == np.float32(expected)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d["schedule"]["zem_gain"].pop(), "zem_gain"),
        (lambda d: d["navigation"].update(gate_sigma=float("nan")), "finite"),
        (
            lambda d: d.update(altitude_breakpoints_m=d["altitude_breakpoints_m"][::-1]),
            "increasing",
        ),
    ],
)
def test_malformed_tables_are_refused(mutate, message):
    d = gains_to_dict(default_gains())
    mutate(d)
    with pytest.raises(ValueError, match=message):
        gains_from_dict(d)
