"""Landing metrics, success rules, smooth per-scenario penalties and population risk.

Evaluation uses the hard rules (:func:`landing_metrics`); optimisation uses
smooth penalties with the same limits (:func:`scenario_loss`) and a risk measure over the
population: mean plus CVaR of the per-scenario loss, plus a propellant weight.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from descent_opt.dynamics import safe_norm
from descent_opt.simulate import Outcome


class SuccessCriteria(eqx.Module):
    vertical_speed_max_mps: float = 2.0
    horizontal_speed_max_mps: float = 1.0
    tilt_max_deg: float = 12.0
    crash_speed_mps: float = 5.0  # touchdown faster than this counts as a crash


class ObjectiveSpec(eqx.Module):
    """Weights of the training objective."""

    margin: float = 0.7  # penalties start at this fraction of each limit
    sharpness: float = 8.0  # softplus sharpness, per unit of a limit
    miss_scale_m: float = 1000.0  # miss distance weight: 1 per this distance
    timeout_scale_m: float = 100.0  # not down at the horizon: 1 per this height left
    cvar_alpha: float = 0.99  # CVaR over the worst (1 - alpha) of the population
    cvar_weight: float = 1.0
    fuel_weight: float = 1.0  # per unit of propellant fraction burnt


class LandingMetrics(eqx.Module):
    vertical_speed_mps: Float[Array, "*batch"]
    horizontal_speed_mps: Float[Array, "*batch"]
    speed_mps: Float[Array, "*batch"]
    tilt_deg: Float[Array, "*batch"]
    fuel_kg: Float[Array, "*batch"]
    miss_distance_m: Float[Array, "*batch"]
    landed: Bool[Array, "*batch"]
    exhausted: Bool[Array, "*batch"]
    crash: Bool[Array, "*batch"]
    success: Bool[Array, "*batch"]


def landing_metrics(outcome: Outcome, criteria: SuccessCriteria) -> LandingMetrics:
    """Touchdown speeds (descent positive), tilt, fuel, miss distance and the hard rules."""
    v = outcome.touchdown_velocity_mps
    vz = -v[..., 2]
    vh = safe_norm(v[..., :2])
    speed = safe_norm(v)
    landed = outcome.landed
    success = (
        landed
        & (vz <= criteria.vertical_speed_max_mps)
        & (vh <= criteria.horizontal_speed_max_mps)
        & (outcome.touchdown_tilt_deg <= criteria.tilt_max_deg)
        & ~outcome.exhausted
    )
    return LandingMetrics(
        vertical_speed_mps=vz,
        horizontal_speed_mps=vh,
        speed_mps=speed,
        tilt_deg=outcome.touchdown_tilt_deg,
        fuel_kg=outcome.fuel_kg,
        miss_distance_m=safe_norm(outcome.touchdown_position_m[..., :2]),
        landed=landed,
        exhausted=outcome.exhausted,
        crash=(landed & (speed > criteria.crash_speed_mps)) | outcome.exhausted,
        success=success,
    )


def scenario_loss(
    outcome: Outcome, criteria: SuccessCriteria, spec: ObjectiveSpec
) -> Float[Array, "*batch"]:
    """Smooth safety penalty of each scenario: softplus of each touchdown quantity past
    ``margin`` of its limit (so gradients keep pushing inside the limits), height left at
    the horizon, and a small miss-distance term; compressed logarithmically above 1."""
    m = landing_metrics(outcome, criteria)

    def excess(value, limit):
        x = spec.sharpness * (value / limit - spec.margin)
        return jax.nn.softplus(x) / spec.sharpness

    safety = (
        excess(m.vertical_speed_mps, criteria.vertical_speed_max_mps)
        + excess(m.horizontal_speed_mps, criteria.horizontal_speed_max_mps)
        + excess(m.tilt_deg, criteria.tilt_max_deg)
    )
    raw = (
        safety
        + outcome.final_height_m / spec.timeout_scale_m
        + m.miss_distance_m / spec.miss_scale_m
        + m.exhausted.astype(safety.dtype)
    )
    # Logarithmic growth past 1: a hopeless crash should not drown every other gradient.
    return jnp.where(raw < 1.0, raw, 1.0 + jnp.log(jnp.maximum(raw, 1.0)))


def cvar(losses: Float[Array, " n"], alpha: float, count: int | None = None) -> Float[Array, ""]:
    """Conditional value at risk: mean of the worst ``ceil((1 - alpha) m)`` of the first
    ``m = count`` losses (default: all; the rest is padding)."""
    m = losses.shape[0] if count is None else count
    if m < losses.shape[0]:
        losses = jnp.where(jnp.arange(losses.shape[0]) < m, losses, -jnp.inf)
    k = max(1, int(np.ceil((1.0 - alpha) * m)))
    return jnp.mean(jax.lax.top_k(losses, k)[0])


def weighted_cvar(
    losses: Float[Array, " n"], weights: Float[Array, " n"], alpha: float
) -> Float[Array, ""]:
    """Conditional value at risk of a weighted sample (weights summing to 1, e.g.
    likelihood ratios of an importance-sampled minibatch): the mean of the worst
    ``1 - alpha`` of the probability mass, the boundary member counted in part."""
    tail = 1.0 - alpha
    order = jnp.argsort(-losses)
    w, x = weights[order], losses[order]
    before = jnp.cumsum(w) - w
    share = jnp.clip(tail - before, 0.0, w)
    return jnp.sum(share * x) / tail


def _mean(x: Float[Array, " n"], count: int | None) -> Float[Array, ""]:
    if count is None or count >= x.shape[0]:
        return jnp.mean(x)
    return jnp.sum(jnp.where(jnp.arange(x.shape[0]) < count, x, 0.0)) / count


def risk(
    outcome: Outcome,
    criteria: SuccessCriteria,
    spec: ObjectiveSpec,
    propellant_kg: float,
    count: int | None = None,
    weights: Float[Array, " n"] | None = None,
) -> tuple[Float[Array, ""], dict]:
    """Population objective ``mean + w_cvar CVaR + w_fuel mean(fuel) / propellant`` over
    the first ``count`` members (default: all; members past it are padding), or, with
    ``weights`` (summing to 1; 0 for padding), their weighted mean and CVaR: an unbiased
    estimate of the catalog's risk from a minibatch that over-samples its tail."""
    losses = scenario_loss(outcome, criteria, spec)
    if weights is None:
        fuel = _mean(outcome.fuel_kg, count) / propellant_kg
        tail = cvar(losses, spec.cvar_alpha, count)
        mean = _mean(losses, count)
    else:
        fuel = jnp.sum(weights * outcome.fuel_kg) / propellant_kg
        tail = weighted_cvar(losses, weights, spec.cvar_alpha)
        mean = jnp.sum(weights * losses)
    total = mean + spec.cvar_weight * tail + spec.fuel_weight * fuel
    return total, {"loss_mean": mean, "loss_cvar": tail, "fuel_fraction": fuel}
