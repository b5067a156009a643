"""Gradient tuning of guidance and navigation gains through the closed loop.

The optimiser works on unconstrained parameters: the logarithm of every positive gain, the
signed ZEV gain as is; altitude breakpoints are fixed. Each step draws a fresh scenario
minibatch from its own key, flies it with a softened innovation gate, and follows the
gradient of the population risk with Adam (warm-up then cosine decay, global-norm clipping).
The returned gains are an exponential moving average of the iterates (Polyak averaging),
which removes most of the minibatch noise of the last steps. Non-finite gradient entries are
zeroed and counted per step (``nonfinite_grad`` in the history); a step whose objective or
whole gradient is not finite, or gains that stop being finite, ends tuning with
:class:`NonFiniteTraining`.

Over 400 lines because the tuning step, the failure-replay strata that feed it and the
resumable state it advances are one algorithm; split, each part would expose the others'
private layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PRNGKeyArray

from descent_opt import execution
from descent_opt.guidance import NAV_GAINS, Gains
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria, risk, scenario_loss
from descent_opt.scenarios import (
    LATENT_NAMES,
    Scenario,
    ScenarioSampler,
    population_latents,
    with_normal,
)
from descent_opt.simulate import SimSpec, simulate, simulate_population
from descent_opt.worst_case import WorstCaseSpec, ascend, latent_rows

Sampler = Callable[[PRNGKeyArray, int], Scenario]


class NonFiniteTraining(RuntimeError):
    """Tuning met a gradient with no finite entry, or gains that are no longer finite."""


class TrainSpec(eqx.Module):
    steps: int = 100
    batch_size: int | None = None  # None: :func:`auto_batch_size` (128 on the CPU)
    learning_rate: float = 0.02
    warmup_steps: int = 10
    clip_norm: float = 1.0
    gate_softness: float = 1.0  # squared-sigma scale of the sigmoid gate while training
    average_decay: float = 0.9  # returned gains: exponential moving average of the iterates
    # Failure replay (0: off): every ``replay_every`` steps a pool of ``replay_pool``
    # scenarios is flown forward with the current gains; its ``replay_worst`` riskiest
    # members are one stratum, the rest another, and each minibatch draws
    # ``replay_fraction`` of its members from the first. Weights (the strata's shares of
    # the pool over their draws) keep the risk an unbiased estimate of the catalog's.
    replay_every: int = 10
    replay_pool: int = 4096
    replay_worst: int = 256
    replay_fraction: float = 0.5
    frozen: tuple[str, ...] = ()  # gains left at their starting values (names)
    # Adversarial tuning (0: off): every ``adversarial_every`` steps, worst cases of the
    # current gains are searched for (:func:`~descent_opt.worst_case.ascend`,
    # ``adversarial_steps`` Adam steps up the smoothed loss from random points of the
    # catalog's support); they are ``adversarial_fraction`` of each minibatch's members and
    # weigh that share of its risk, the catalog's members the rest.
    adversarial_fraction: float = 0.0
    adversarial_every: int = 10
    adversarial_steps: int = 5


def auto_batch_size() -> int:
    """Minibatch of ``optimizer.batch_size: auto``: 128 scenarios on the CPU (one minibatch
    keeps a core busy), 8,192 on an accelerator (a small minibatch leaves it idle, each
    step bound by kernel launches)."""
    return 128 if jax.default_backend() == "cpu" else 8192


def resolved(train: TrainSpec) -> TrainSpec:
    """``train`` with an automatic minibatch size chosen for the backend."""
    if train.batch_size is not None:
        return train
    return eqx.tree_at(
        lambda t: t.batch_size, train, auto_batch_size(), is_leaf=lambda x: x is None
    )


def _signed(path) -> bool:
    return any(getattr(p, "name", None) == "zev_gain" for p in path)


def _frozen_part(gains: Gains, frozen: tuple[str, ...]) -> Gains:
    """The leaves of ``gains`` tuning leaves alone: the breakpoints and the ``frozen``
    gains (by name: a scheduled column, a scalar or a navigation gain); None elsewhere."""
    keep = jax.tree.map(lambda _: False, gains)
    keep = eqx.tree_at(lambda g: g.altitude_breakpoints_m, keep, True)
    for name in frozen:
        where = (
            (lambda g, n=name: getattr(g.nav, n))
            if name in NAV_GAINS
            else (lambda g, n=name: getattr(g, n))
        )
        keep = eqx.tree_at(where, keep, True)
    return eqx.filter(gains, keep)


def to_params(gains: Gains, frozen: tuple[str, ...] = ()):
    """Unconstrained parameters of ``gains`` (breakpoints and ``frozen`` gains replaced by
    ``None``)."""
    fixed = _frozen_part(gains, frozen)
    tuned = jax.tree.map(
        lambda g, f: None if f is not None else g, gains, fixed, is_leaf=lambda x: x is None
    )
    # Strongly typed leaves: a weakly typed scalar (``jnp.asarray(1.0)``) would become float32
    # after Adam's first update and the training step would be traced a second time.
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(x if _signed(p) else jnp.log(x), dtype=float), tuned
    )


def from_params(params, fixed) -> Gains:
    """Gains from unconstrained ``params`` and what tuning leaves alone: ``fixed`` is the
    altitude breakpoints, or a :class:`Gains` holding the breakpoints and frozen gains
    (None elsewhere)."""
    gains = jax.tree_util.tree_map_with_path(lambda p, x: x if _signed(p) else jnp.exp(x), params)
    if not isinstance(fixed, Gains):
        fixed = eqx.tree_at(
            lambda g: g.altitude_breakpoints_m,
            jax.tree.map(lambda _: None, gains),
            fixed,
            is_leaf=lambda x: x is None,
        )
    return eqx.combine(gains, fixed, is_leaf=lambda x: x is None)


def _optimizer(train: TrainSpec) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        train.learning_rate,
        train.warmup_steps,
        max(train.steps, train.warmup_steps + 1),
        0.1 * train.learning_rate,
    )
    return optax.chain(optax.clip_by_global_norm(train.clip_norm), optax.adam(schedule))


def population_risk(
    params,
    breakpoints_m,
    spec: SimSpec,
    scenarios: Scenario,
    criteria,
    objective,
    count=None,
    mesh: Mesh | None = None,
    weights=None,
):
    """Risk of the gains given by unconstrained ``params`` over a population (its first
    ``count`` members; default all; or weighted by ``weights``, see
    :func:`~descent_opt.objectives.risk`). With ``mesh`` (one axis, ``"scenario"``) each
    device flies its share of the members and the risk is taken over all of them."""
    propellant = spec.vehicle.mass_initial_kg - spec.vehicle.mass_dry_kg
    gains = from_params(params, breakpoints_m)
    if mesh is None:
        outcome = simulate(spec, gains, scenarios)
    else:
        dynamic, static = eqx.partition(spec, eqx.is_array)

        def fly_share(d, g, s):
            # Varying from the start: otherwise each use of the replicated settings and gains
            # inside the time loop is cast to varying there, and reverse mode sums the
            # devices' cotangents at every step of the loop instead of once at the end.
            d, g = jax.lax.pcast((d, g), "scenario", to="varying")
            return simulate(eqx.combine(d, static), g, s)

        outcome = jax.shard_map(
            fly_share,
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec("scenario")),
            out_specs=PartitionSpec("scenario"),
        )(dynamic, gains, scenarios)
    return risk(outcome, criteria, objective, propellant, count, weights)


def tuning_sim(spec: SimSpec, gate_softness: float) -> SimSpec:
    """The closed loop that gradients are taken through: flown to the planned horizon (a
    flight still up there is penalised for the height it has left), with the soft gate
    and the compact layout."""
    return eqx.tree_at(
        lambda s: (s.smoothing.gate_softness, s.numerics.unrolled, s.max_duration_s),
        spec,
        (gate_softness, False, None),
        is_leaf=lambda x: x is None,
    )


def _scenario_mesh(devices) -> Mesh:
    """The tuning devices on one axis, ``scenario``, over which minibatches are shared."""
    return Mesh(np.asarray(devices), ("scenario",))


@eqx.filter_jit
def _train_step(
    train,
    spec,
    criteria,
    objective,
    sampler,
    breakpoints_m,
    params,
    opt_state,
    mean,
    key,
    devices,
    indices=None,
    weights=None,
    adversarial=None,
):
    # Module-level and keyed only on static settings: tuning runs that differ in their
    # fault catalog (array leaves of the sampler) share one compilation.
    # The minibatch: members 0 .. batch-1 of the population of ``key``, or (failure replay)
    # members ``indices`` of it with ``weights``.
    # With ``adversarial`` (a key and latent rows): those scenarios follow the members, the
    # last of ``weights`` theirs.
    batch = train.batch_size if indices is None else indices.shape[0]
    if indices is None:
        indices = jnp.arange(batch, dtype=jnp.uint32)
    if adversarial is not None:
        weights, adversarial_weights = weights[:batch], weights[batch:]
    mesh = None
    if len(devices) > 1:
        # Data-parallel: the minibatch, padded to a multiple of the device count, is
        # sharded over the devices, each flies its share; the padding is masked out of the
        # risk (or weighs 0), and the gradient is summed over the devices.
        shares = len(devices)
        following = lambda x, k: jnp.arange(batch, batch + k, dtype=x.dtype)  # noqa: E731
        nothing = lambda w, k: jnp.zeros((k, *w.shape[1:]), w.dtype)  # noqa: E731
        indices = execution.pad(indices, shares, following)
        if weights is not None:
            weights = execution.pad(weights, shares, nothing)
        if adversarial is not None:
            adversarial = (adversarial[0], execution.pad(adversarial[1], shares, nothing))
            adversarial_weights = execution.pad(adversarial_weights, shares, nothing)
        mesh = _scenario_mesh(devices)
    scenarios = sampler.members(key, indices)
    if adversarial is not None:
        adversarial_key, rows = adversarial
        found = population_latents(adversarial_key, jnp.arange(rows.shape[0], dtype=jnp.uint32))
        worst = sampler.from_latents(with_normal(found, rows.astype(found.position.dtype)))
        scenarios = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), scenarios, worst)
        weights = jnp.concatenate([weights, adversarial_weights])
    if mesh is not None:
        scenarios = jax.lax.with_sharding_constraint(
            scenarios, NamedSharding(mesh, PartitionSpec("scenario"))
        )
    count = batch if weights is None else None
    (value, parts), grads = eqx.filter_value_and_grad(population_risk, has_aux=True)(
        params, breakpoints_m, spec, scenarios, criteria, objective, count, mesh, weights
    )
    nonfinite = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(grads))
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grads)
    updates, opt_state = _optimizer(train).update(grads, opt_state, params)
    params = eqx.apply_updates(params, updates)
    decay = train.average_decay
    mean = jax.tree.map(lambda m, p: decay * m + (1.0 - decay) * p, mean, params)
    parts = dict(
        parts,
        objective=value,
        grad_norm=jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))),
        nonfinite_grad=nonfinite,
        params_finite=jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(mean)])
        ),
    )
    return params, opt_state, mean, parts


def _pool_key(key: PRNGKeyArray, refresh: int) -> PRNGKeyArray:
    """Key of the failure-replay pool of refresh ``refresh`` (apart from the step keys)."""
    return jax.random.fold_in(jax.random.fold_in(key, 0x5EED), refresh)


@eqx.filter_jit
def _draw_pool(sampler, key, n):
    return sampler(key, n)


_pool_losses = eqx.filter_jit(scenario_loss)


def riskiest_members(
    spec: SimSpec,
    gains: Gains,
    sampler,
    criteria: SuccessCriteria,
    objective: ObjectiveSpec,
    pool: int,
    worst: int,
    *,
    key: PRNGKeyArray,
) -> np.ndarray:
    """Indices of the ``worst`` members of the first ``pool`` of the population of ``key``
    with the largest smooth loss under ``gains`` (ties by index)."""
    # On the host first: gains replicated over several tuning devices would make each
    # share a program over all of them, and shares run concurrently (one per core).
    gains = jax.device_get(gains)
    outcome = simulate_population(spec, gains, _draw_pool(sampler, key, pool))
    losses = np.asarray(_pool_losses(outcome, criteria, objective))
    order = np.lexsort((np.arange(pool), -np.nan_to_num(losses, nan=np.inf)))
    return np.sort(order[:worst])


def replay_minibatch(
    worst: np.ndarray, pool: int, batch: int, fraction: float, *, key: PRNGKeyArray
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified minibatch of a pool of ``pool`` members: ``round(fraction * batch)``
    drawn (with replacement) from the riskiest members ``worst``, the rest from the others;
    each weighs its stratum's share of the pool over its stratum's draws, so the weighted
    risk is an unbiased estimate of the pool's (and so of the catalog's)."""
    k_worst, k_rest = jax.random.split(key)
    m = len(worst)
    from_worst = min(batch - 1, max(1, round(fraction * batch)))
    rest = np.setdiff1d(np.arange(pool), worst)
    picks_worst = worst[np.asarray(jax.random.randint(k_worst, (from_worst,), 0, m))]
    picks_rest = rest[np.asarray(jax.random.randint(k_rest, (batch - from_worst,), 0, len(rest)))]
    weights = np.concatenate(
        [
            np.full(from_worst, m / pool / from_worst),
            np.full(batch - from_worst, (pool - m) / pool / (batch - from_worst)),
        ]
    )
    indices = np.concatenate([picks_worst, picks_rest]).astype(np.uint32)
    return indices, weights.astype(np.float32)


@dataclasses.dataclass
class TrainState:
    """Where a tuning run stands after ``step`` steps: everything the next step needs."""

    step: int
    params: Any  # unconstrained parameters (:func:`to_params`)
    opt_state: Any  # the optimiser's state
    mean: Any  # exponential moving average of the iterates (the gains returned)
    key: PRNGKeyArray  # the run's key; step ``i`` uses ``split(key, steps)[i]``
    history: dict[str, list[float]]
    # Failure replay: the pool's riskiest members (indices), as ranked at the last refresh.
    replay_worst: np.ndarray | None = None
    # Adversarial tuning: the worst cases' latent rows, as found at the last refresh.
    adversarial_rows: np.ndarray | None = None


def adversarial_count(train: TrainSpec) -> int:
    """Members of each minibatch that are worst cases (0: adversarial tuning is off)."""
    if train.adversarial_fraction <= 0.0:
        return 0
    return min(train.batch_size - 1, max(1, round(train.adversarial_fraction * train.batch_size)))


def _adversary_key(key: PRNGKeyArray, refresh: int) -> PRNGKeyArray:
    """Key of the worst cases of refresh ``refresh`` (apart from the step and pool keys)."""
    return jax.random.fold_in(jax.random.fold_in(key, 0xAD5), refresh)


def worst_cases(
    spec: SimSpec,
    gains: Gains,
    sampler: ScenarioSampler,
    criteria: SuccessCriteria,
    objective: ObjectiveSpec,
    n: int,
    steps: int,
    *,
    key: PRNGKeyArray,
) -> np.ndarray:
    """Latent rows of ``n`` worst cases of ``gains``: uniform points of the catalog's
    support (:mod:`~descent_opt.worst_case`'s cube, drawn from ``key``) ascended ``steps``
    Adam steps up the smoothed loss, flown as members of the population of ``key``."""
    search = WorstCaseSpec()
    gains = jax.device_get(gains)
    y0 = np.asarray(jax.random.uniform(key, (n, len(LATENT_NAMES))), dtype=np.float64)
    y = ascend(spec, gains, sampler, criteria, objective, y0, key=key, steps=steps,
               learning_rate=search.learning_rate, sigma_bound=search.sigma_bound)  # fmt: skip
    return np.asarray(latent_rows(jnp.asarray(y), sampler.catalog, search.sigma_bound))


def initial_state(initial: Gains, train: TrainSpec, *, key: PRNGKeyArray) -> TrainState:
    """The state before the first step of tuning from ``initial``."""
    params = to_params(initial, train.frozen)
    return TrainState(0, params, _optimizer(train).init(params), params, key, {})


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
    devices=None,
    start: TrainState | None = None,
    on_step: Callable[[TrainState], None] | None = None,
    adversary_sampler: ScenarioSampler | None = None,
) -> tuple[Gains, dict[str, np.ndarray]]:
    """Minimise the population risk over the gains; returns the tuned (averaged) gains and
    the per-step history of the objective and its parts. Each minibatch is shared over
    ``devices`` (default: every local device; under ``jax.distributed`` each process
    tunes on its own devices, with the same arguments and the same result).
    ``start`` continues a run from a saved :class:`TrainState` (same arguments; the result
    is bit-identical to an uninterrupted run's); ``on_step`` is given the state after every
    step (to checkpoint it). Adversarial tuning searches the support of
    ``adversary_sampler`` (default ``sampler``)."""
    devices = tuple(jax.local_devices() if devices is None else devices)
    train = resolved(train)
    spec = tuning_sim(spec, train.gate_softness)
    breakpoints = _frozen_part(initial, train.frozen)  # and the frozen gains
    state = start if start is not None else initial_state(initial, train, key=key)
    params, opt_state, mean = state.params, state.opt_state, state.mean
    history = {k: list(v) for k, v in state.history.items()}
    step_keys = jax.random.split(state.key, train.steps)
    if len(devices) > 1:
        # Replicated from the start, as the steps return them: the step is compiled once.
        replicated = NamedSharding(_scenario_mesh(devices), PartitionSpec())
        params, opt_state, mean, step_keys = jax.device_put(
            (params, opt_state, mean, step_keys), replicated
        )
    worst, rows = state.replay_worst, state.adversarial_rows
    n_adversarial = adversarial_count(train)
    n_members = train.batch_size - n_adversarial
    for i in range(state.step, train.steps):
        draw_key, indices, weights, adversarial = step_keys[i], None, None, None
        if train.replay_every > 0:
            pool_key = _pool_key(state.key, i // train.replay_every)
            if i % train.replay_every == 0 or worst is None:
                worst = riskiest_members(
                    spec,
                    from_params(params, breakpoints),
                    sampler,
                    criteria,
                    objective,
                    train.replay_pool,
                    min(train.replay_worst, train.replay_pool - 1),
                    key=pool_key,
                )
            draw_key = pool_key
            indices, weights = replay_minibatch(
                worst, train.replay_pool, n_members, train.replay_fraction, key=step_keys[i]
            )
        if n_adversarial:
            adversary_key = _adversary_key(state.key, i // train.adversarial_every)
            if i % train.adversarial_every == 0 or rows is None:
                rows = worst_cases(
                    spec, from_params(params, breakpoints), adversary_sampler or sampler,
                    criteria, objective, n_adversarial, train.adversarial_steps,
                    key=adversary_key,
                )  # fmt: skip
            if indices is None:
                indices = np.arange(n_members, dtype=np.uint32)
                weights = np.full(n_members, 1.0 / n_members)
            share = train.adversarial_fraction
            weights = np.concatenate(
                [(1.0 - share) * weights, np.full(n_adversarial, share / n_adversarial)]
            )
            adversarial = (adversary_key, jnp.asarray(rows))
        params, opt_state, mean, parts = _train_step(
            train,
            spec,
            criteria,
            objective,
            sampler,
            breakpoints,
            params,
            opt_state,
            mean,
            draw_key,
            devices,
            indices,
            None if weights is None else jnp.asarray(weights, dtype=float),
            adversarial,
        )
        parts = {k: float(v) for k, v in parts.items()}
        entries = sum(int(np.size(p)) for p in jax.tree.leaves(params))
        diverged = parts["nonfinite_grad"] >= entries or not np.isfinite(parts["objective"])
        if diverged or not parts["params_finite"]:
            what = (
                f"objective {parts['objective']:g}, {parts['nonfinite_grad']:.0f} of the "
                f"{entries} gradient entries non-finite"
                if diverged
                else "the gains became non-finite"
            )
            raise NonFiniteTraining(
                f"tuning stopped at step {i}: {what}; no gain table is returned"
            )
        for k, v in parts.items():
            history.setdefault(k, []).append(v)
        if progress is not None:
            progress(i, parts)
        if on_step is not None:
            on_step(TrainState(i + 1, params, opt_state, mean, state.key, history, worst, rows))
    return from_params(mean, breakpoints), {k: np.asarray(v) for k, v in history.items()}
