"""Gradient tuning of guidance and navigation gains through the closed loop.

The optimiser works on unconstrained parameters: the logarithm of every positive gain, the
signed ZEV gain as is; altitude breakpoints are fixed. Each step draws a fresh scenario
minibatch from its own key, flies it with a softened innovation gate, and follows the
gradient of the population risk with Adam (warm-up then cosine decay, global-norm clipping).
The returned gains are an exponential moving average of the iterates (Polyak averaging),
which removes most of the minibatch noise of the last steps.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from descent_opt.guidance import Gains
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria, risk
from descent_opt.scenarios import Scenario
from descent_opt.simulate import SimSpec, simulate

Sampler = Callable[[PRNGKeyArray, int], Scenario]


class TrainSpec(eqx.Module):
    steps: int = 150
    batch_size: int = 128
    learning_rate: float = 0.02
    warmup_steps: int = 10
    clip_norm: float = 1.0
    gate_softness: float = 1.0  # squared-sigma scale of the sigmoid gate while training
    average_decay: float = 0.9  # returned gains: exponential moving average of the iterates


def _signed(path) -> bool:
    return any(getattr(p, "name", None) == "zev_gain" for p in path)


def to_params(gains: Gains):
    """Unconstrained parameters of ``gains`` (breakpoints replaced by ``None``)."""
    gains = eqx.tree_at(lambda g: g.altitude_breakpoints_m, gains, replace=None, is_leaf=lambda x: x is None)
    return jax.tree_util.tree_map_with_path(lambda p, x: x if _signed(p) else jnp.log(x), gains)


def from_params(params, breakpoints_m) -> Gains:
    gains = jax.tree_util.tree_map_with_path(lambda p, x: x if _signed(p) else jnp.exp(x), params)
    return eqx.tree_at(lambda g: g.altitude_breakpoints_m, gains, breakpoints_m, is_leaf=lambda x: x is None)


def tune_gains(
    spec: SimSpec,
    initial: Gains,
    sampler: Sampler,
    criteria: SuccessCriteria,
    objective: ObjectiveSpec,
    train: TrainSpec,
    *,
    key: PRNGKeyArray,
    progress: Callable[[int, dict], None] | None = None,
) -> tuple[Gains, dict[str, np.ndarray]]:
    """Minimise the population risk over the gains; returns the tuned gains and the
    per-step history (objective and its parts)."""
    spec = eqx.tree_at(lambda s: s.gate_softness, spec, train.gate_softness)
    breakpoints = initial.altitude_breakpoints_m
    propellant = spec.vehicle.mass_initial_kg - spec.vehicle.mass_dry_kg
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, train.warmup_steps, max(train.steps, train.warmup_steps + 1), 0.1 * train.learning_rate
    )
    optimizer = optax.chain(optax.clip_by_global_norm(train.clip_norm), optax.adam(schedule))

    def objective_fn(params, scenarios):
        outcome = simulate(spec, from_params(params, breakpoints), scenarios)
        return risk(outcome, criteria, objective, propellant)

    @eqx.filter_jit
    def update(params, opt_state, step_key):
        scenarios = sampler(step_key, train.batch_size)
        (value, parts), grads = eqx.filter_value_and_grad(objective_fn, has_aux=True)(params, scenarios)
        grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        parts = dict(parts, objective=value, grad_norm=optax.global_norm(grads))
        return params, opt_state, parts

    @eqx.filter_jit
    def average(mean, params):
        return jax.tree.map(lambda m, p: train.average_decay * m + (1.0 - train.average_decay) * p, mean, params)

    params = to_params(initial)
    mean = params
    opt_state = optimizer.init(params)
    history: dict[str, list[float]] = {}
    for i, step_key in enumerate(jax.random.split(key, train.steps)):
        params, opt_state, parts = update(params, opt_state, step_key)
        mean = average(mean, params)
        parts = {k: float(v) for k, v in parts.items()}
        for k, v in parts.items():
            history.setdefault(k, []).append(v)
        if progress is not None:
            progress(i, parts)
    return from_params(mean, breakpoints), {k: np.asarray(v) for k, v in history.items()}
