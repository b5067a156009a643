"""Gain tables round-trip exactly through JSON, CSV and the C header."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from descent_opt.export import (
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


def test_json_round_trip_is_exact(tmp_path):
    g = perturbed_gains()
    write_gain_table(g, tmp_path, {"seed": 1})
    back = load_gains(tmp_path / "gains.json")
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))
    assert json.loads((tmp_path / "gains.json").read_text())["provenance"] == {"seed": 1}


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
