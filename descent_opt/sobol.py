"""Variance-based sensitivity: Sobol first-order and total indices over the parameters of
:mod:`descent_opt.sensitivity`, by SALib, and how their ranking agrees with the scaled
derivatives'.

Each parameter varies uniformly over its value plus or minus half its unit
(:func:`bounds`), all at once; every sample of parameter values flies the same small
population (common draws), whose mean smoothed risk and mean touchdown speed are the
outputs (:func:`population_figures`). SALib draws Saltelli's ``n (d + 2)`` samples from a
scrambled Sobol sequence (first-order and total indices only) and bootstraps 95 %
intervals. The indices say which parameters drive the risk's variance over those ranges
(interactions included); the derivatives say which move it most at the point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, PRNGKeyArray
from scipy.stats import spearmanr

from descent_opt.guidance import Gains
from descent_opt.objectives import ObjectiveSpec
from descent_opt.scenarios import Latents
from descent_opt.sensitivity import PARAMETERS, Model, smoothed, units, values, with_values


def bounds(model: Model, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Where each parameter varies: its value plus or minus half its unit, kept at or above
    0 (rates and dropout probabilities at or below 1); parameters whose unit is 0 are left
    out."""
    at, unit = values(model, names), units(model, names)
    out = {}
    for n in names:
        if unit[n] > 0.0:
            top = 1.0 if PARAMETERS[n].kind == "rate" or "dropout_prob" in n else math.inf
            out[n] = (max(at[n] - 0.5 * unit[n], 0.0), min(at[n] + 0.5 * unit[n], top))
    return out


def indices(
    f: Callable[[np.ndarray], np.ndarray],
    ranges: dict[str, tuple[float, float]],
    n: int,
    *,
    key: PRNGKeyArray,
    resamples: int = 1000,
) -> list[dict[str, dict]]:
    """Sobol first-order and total indices (SALib: Saltelli's scheme, ``n (d + 2)`` rows;
    Jansen's estimators) of each output of ``f`` (rows of parameter values, each uniform
    within its range, to an ``(rows,)`` or ``(rows, k)`` array), with 95 % bootstrap
    intervals: per output, per parameter ``S1``, ``S1_ci95``, ``ST``, ``ST_ci95``."""
    from SALib.analyze import sobol as analyze
    from SALib.sample import sobol as sample

    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    names = list(ranges)
    problem = {"num_vars": len(names), "names": names, "bounds": [list(ranges[k]) for k in names]}
    x = sample.sample(problem, n, calc_second_order=False, seed=seed)
    y = np.asarray(f(x), dtype=np.float64)
    out = []
    for column in (y[:, None] if y.ndim == 1 else y).T:
        s = analyze.analyze(
            problem, column, calc_second_order=False, num_resamples=resamples, seed=seed
        )
        out.append({k: _index(s, i) for i, k in enumerate(names)})
    return out


def _index(s, i: int) -> dict:
    out = {}
    for name in ("S1", "ST"):
        value, half = float(s[name][i]), float(s[name + "_conf"][i])
        out[name], out[name + "_ci95"] = value, [value - half, value + half]
    return out


def population_figures(
    model: Model,
    gains: Gains,
    objective: ObjectiveSpec,
    z: Latents,
    names: tuple[str, ...],
    batch: int = 16,
) -> Callable[[np.ndarray], Float[np.ndarray, "rows 2"]]:
    """``f(rows)``: for each row of values of ``names``, the mean smoothed risk and mean
    touchdown speed of the members ``z`` in the smoothed loop (``batch`` rows flown at a
    time, one compiled program)."""

    def f(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        out = []
        for first in range(0, len(rows), batch):
            part = rows[first : first + batch]
            padded = np.concatenate([part, np.repeat(part[-1:], batch - len(part), 0)])
            out.append(np.asarray(_rows(model, gains, objective, z, names, jnp.asarray(padded))))
        return np.concatenate(out)[: len(rows)]

    return f


@eqx.filter_jit
def _rows(model, gains, objective, z, names, rows):
    def one(row):
        return jnp.mean(smoothed(with_values(model, dict(zip(names, row))), gains, z, objective), 0)

    return jax.vmap(one)(rows)


def rank_agreement(a: Float[np.ndarray, " p"], b: Float[np.ndarray, " p"]) -> float:
    """Spearman's rank correlation of two scores of the same parameters (e.g. the total
    index and the size of the scaled derivative)."""
    return float(spearmanr(a, b).statistic)
