"""Gradients of the training objective (population risk) with respect to the gains.

1. Reverse-mode directional derivatives agree with central finite differences, in float64,
   on a short flat-ground descent that reaches touchdown.
2. On a full-size population with realistic faults (plus edge cases: no LRF, a start below
   ground, an empty tank, a large rim step, a late LRF with a large altitude error) the raw
   gradient is finite: the training step's NaN filter should never be needed.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from shared_models import SHORT_DESCENT, VEHICLE

from descent_opt.faults import FaultCatalog
from descent_opt.guidance import default_gains
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria
from descent_opt.optimize.gains import population_risk, to_params
from descent_opt.scenarios import ScenarioSpec, TerrainSpec, replace_member, sample_scenarios
from descent_opt.simulate import Numerics, SimSpec, Smoothing, simulate

CRITERIA = SuccessCriteria()
OBJECTIVE = ObjectiveSpec()
COMPACT, SOFT = Numerics(unrolled=False), Smoothing(gate_softness=1.0)  # as tuning flies


def test_gradient_matches_central_differences_float64():
    """d/de risk(params + e d) at e = 0 for three random unit directions d and the gradient
    direction itself, from the reverse-mode gradient (g . d) and from central differences.

    8 scenarios from 300 m at 20 m/s over flat ground with nominal sensors: touchdown at
    ~30-35 s, inside the 40 s horizon (asserted); the 20 m altitude knowledge error is well
    inside the 4-sigma gate, so the soft gate weight stays ~1 - 1e-7. The contingency flag
    is only up on the first step (no reading yet), independently of the gains.

    eps = 1e-4 in log-gain units (a 0.01 % change of every gain): the truncation error
    (eps^2 f''' / 6) and float64 rounding (~1e-16 |f| / eps) are both < 1e-8 relative here,
    while crossing one of the loop's hard switches (touchdown step, thrust clip, LRF
    validity) inside +-eps would give an O(1) mismatch. rtol = 1e-3 separates the two with
    a wide margin (agreement observed is ~1e-7)."""
    with jax.enable_x64(True):
        # The compact layout, as gain tuning differentiates it.
        spec = SimSpec(
            vehicle=VEHICLE, dt_s=0.25, duration_s=40.0, numerics=COMPACT, smoothing=SOFT
        )
        gains = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), default_gains())
        scenario_spec = SHORT_DESCENT
        pop = sample_scenarios(
            scenario_spec,
            TerrainSpec(kind="flat"),
            FaultCatalog.nominal(),
            480.0,
            8,
            key=jax.random.key(0),
        )
        assert pop.position0_m.dtype == jnp.float64
        breakpoints = gains.altitude_breakpoints_m
        params = to_params(gains)
        flat, unravel = ravel_pytree(params)
        assert flat.dtype == jnp.float64

        def risk_flat(x):
            return population_risk(unravel(x), breakpoints, spec, pop, CRITERIA, OBJECTIVE)[0]

        outcome = simulate(spec, gains, pop)
        assert np.all(np.asarray(outcome.landed))
        assert np.all(np.asarray(outcome.touchdown_time_s) < spec.duration_s - 2.0)

        value_and_grad = jax.jit(jax.value_and_grad(risk_flat))
        value, grad = value_and_grad(flat)
        grad = np.asarray(grad)
        assert np.isfinite(float(value)) and np.all(np.isfinite(grad))

        def risk(x):  # the differences from the same program's value: one compilation
            return value_and_grad(x)[0]

        g_norm = np.linalg.norm(grad)
        assert g_norm > 1e-3  # the check below is not vacuous

        rng = np.random.default_rng(0)
        directions = [d / np.linalg.norm(d) for d in rng.normal(size=(3, flat.size))]
        directions.append(grad / g_norm)
        eps = 1e-4
        for d in directions:
            d = jnp.asarray(d)
            analytic = float(grad @ np.asarray(d))
            numeric = (float(risk(flat + eps * d)) - float(risk(flat - eps * d))) / (2 * eps)
            np.testing.assert_allclose(numeric, analytic, rtol=1e-3, atol=1e-6 * g_norm)


@pytest.mark.slow
def test_gradient_finite_on_full_population_with_faults():
    """32 scenarios of the default dispersion from 5 km over a crater field with the shipped
    fault catalog, the configured 180 s horizon at dt 0.25, soft gate as in training; five
    members replaced by edge cases. Value and every gradient leaf must be finite, and the
    gradient non-zero."""
    spec = SimSpec(vehicle=VEHICLE, dt_s=0.25, duration_s=180.0, numerics=COMPACT, smoothing=SOFT)
    gains = default_gains()
    pop = sample_scenarios(
        ScenarioSpec(), TerrainSpec(), FaultCatalog(), 480.0, 32, key=jax.random.key(1)
    )
    pop = replace_member(pop, 0, **{"faults.absent": True})
    pop = replace_member(pop, 1, position0_m=jnp.array([0.0, 0.0, -5.0]))
    pop = replace_member(pop, 2, mass0_kg=VEHICLE.mass_dry_kg + 1.0)
    pop = replace_member(
        pop, 3, **{"faults.rim_step_height_m": 800.0, "faults.rim_radius_m": 300.0}
    )
    pop = replace_member(
        pop,
        4,
        **{
            "faults.acquisition_range_m": 700.0,
            "nav_position_error_m": jnp.array([0.0, 0.0, 600.0]),
        },
    )
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(population_risk, has_aux=True))
    (value, parts), grads = value_and_grad(
        to_params(gains), gains.altitude_breakpoints_m, spec, pop, CRITERIA, OBJECTIVE
    )
    assert np.isfinite(float(value))
    assert all(np.isfinite(float(v)) for v in parts.values())
    leaves = jax.tree.leaves(grads)
    assert leaves
    for leaf in leaves:
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert float(ravel_pytree(grads)[0] @ ravel_pytree(grads)[0]) > 0.0


@pytest.mark.slow
def test_unrolled_and_compact_layouts_agree_float64():
    """The simulator's two layouts (crater slots and schedule segments as scalars, or as
    short vectors: see Numerics.unrolled) fly the same function: 16 dispersed short descents
    over a crater field with the shipped faults, two of them with a rim step, in float64,
    agree to 1e-9 relative in every outcome (only the order of floating-point sums
    differs). The finite-difference check above runs on the compact layout, which tuning
    differentiates."""
    with jax.enable_x64(True):
        gains = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), default_gains())
        pop = sample_scenarios(
            SHORT_DESCENT, TerrainSpec(), FaultCatalog(), 480.0, 16, key=jax.random.key(4)
        )
        for i in (0, 1):
            pop = replace_member(
                pop, i, **{"faults.rim_step_height_m": 200.0, "faults.rim_radius_m": 150.0}
            )
        outcomes = [
            simulate(
                SimSpec(vehicle=VEHICLE, duration_s=60.0, numerics=Numerics(unrolled=unrolled)),
                gains,
                pop,
            )
            for unrolled in (True, False)
        ]
    assert np.all(np.asarray(outcomes[0].landed))
    for a, b in zip(jax.tree.leaves(outcomes[0]), jax.tree.leaves(outcomes[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9)
