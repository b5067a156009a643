"""Rare-event probabilities ``p = P[g(z) >= threshold]`` for standard-normal latents ``z``.

``g`` is a costly black box on batches: host NumPy ``(n, d) -> (n,)``, so any batch runner
(a population of closed-loop flights scored by touchdown speed or a failure margin) fits.
Plain Monte Carlo needs about ``1 / (p CoV^2)`` runs; the two adaptive methods reach the
same CoV with far fewer when ``p`` is small. All three return a :class:`RareEventEstimate`.

* :func:`monte_carlo`: the reference. Cost ``(1 - p) / (p CoV^2)``; exact Clopper-Pearson
  interval, no assumption on ``g``.
* :func:`cross_entropy`: multilevel cross-entropy importance sampling (Rubinstein; Rubinstein
  and Kroese, *The Cross-Entropy Method*). A Gaussian proposal ``N(mu, diag(sigma^2))`` is
  moved level by level, each level the ``1 - rho`` quantile of ``g``, until the threshold is
  reached; a final stage of fresh samples then gives the estimate, so the adaptation samples
  never enter it and its variance is that of plain importance sampling. Cost: a few levels
  (about ``log(1/p) / log(1/rho)``) plus a final stage whose size grows only slowly with
  ``log 1/p`` when one Gaussian fits the failure region. Its weak spot is a failure region one
  Gaussian fits badly. Two opposite lobes along a latent axis (``|z0| >= t``) are covered
  through the scale alone (``sigma_0`` widened to the clip, the mean staying near 0); along
  any other direction a diagonal sigma cannot widen, the levels stall at the ``1 - rho``
  quantile of the nominal density, ``converged`` is False and the final stage's estimate is
  noisy with a CoV that leans low (use subset simulation there). A mean drawn toward one
  lobe would miss the other without the weights showing it. In many dimensions an ill-fitted
  sigma degrades the likelihood ratio; ``adapt_scale=False`` keeps sigma at 1 (mean shift).
* :func:`subset_simulation`: subset simulation (Au and Beck 2001) writes ``p`` as a product
  of conditional probabilities of about ``p0``, each level sampled by Markov chains started
  from the previous level's failures, with a per-coordinate conditional-normal
  (preconditioned Crank-Nicolson) proposal whose spread adapts toward an acceptance rate of
  0.44 (Papaioannou, Betz, Zwirglmaier and Straub 2015). Cost ``N (1 + (m - 1)(1 - p0))``
  for ``m ~ log(1/p) / log(1/p0)`` levels of ``N`` samples, and ``CoV^2 ~ m / N`` times the
  chains' correlation: runs for a given CoV grow like ``(log 1/p)^2``. It fits no density to
  the failure region (the chains only need to reach each part of it from some level's
  seeds), so it copes with regions one Gaussian fits badly. Its CoV is
  Au and Beck's: per level ``(1 - p_i) / (N p_i) (1 + gamma_i)`` with ``gamma_i`` from the
  chains' lag correlations of the level indicator, summed over levels as if the levels were
  uncorrelated (they are positively correlated, so this leans low; the tests check the
  interval's coverage). Its interval is log-normal (the estimate is a product).

Randomness comes from an explicit ``key``: an int seed or a ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from descent_opt.statistics import clopper_pearson

__all__ = ["RareEventEstimate", "cross_entropy", "monte_carlo", "subset_simulation"]

LimitState = Callable[[np.ndarray], np.ndarray]
Key = int | np.random.Generator
_Z95 = 1.959963984540054


@dataclass(frozen=True, eq=False)
class RareEventEstimate:
    """An estimate of ``P[g(z) >= threshold]`` and what it cost.

    ``cov``: estimated coefficient of variation of ``probability`` (inf with no failure seen).
    ``ci95``: 95 % interval (Clopper-Pearson for Monte Carlo, normal clipped at 0 for
    cross-entropy, log-normal for subset simulation; ``(0, 1)`` with no failure seen).
    ``effective_sample_size``: independent failure samples the last factor of the estimate is
    worth (Kish's ``(sum w)^2 / sum w^2`` over the final failures' weights; the failure count
    for Monte Carlo; hits over ``1 + gamma`` for subset simulation).
    ``n_simulations``: every ``g`` evaluation, all stages. ``n_failures``: final-stage samples
    with ``g >= threshold`` (repeats included for subset simulation's chains). ``levels``: the
    intermediate thresholds.
    ``converged``: the levels reached ``threshold`` within ``max_levels`` (False: the estimate
    is still valid in expectation, but its ``cov`` is less trustworthy).
    ``failures_z`` ``(k, d)``, ``failures_g`` ``(k,)``: distinct final-stage samples with
    ``g >= threshold``, largest ``g`` first, at most ``keep``. ``proposal_mean`` and
    ``proposal_std`` ``(d,)``: the final sampling density (nominal for Monte Carlo, None for
    subset simulation, whose samples come from Markov chains).
    """

    method: str
    probability: float
    cov: float
    ci95: tuple[float, float]
    effective_sample_size: float
    n_simulations: int
    n_failures: int
    levels: tuple[float, ...]
    converged: bool
    failures_z: np.ndarray
    failures_g: np.ndarray
    proposal_mean: np.ndarray | None
    proposal_std: np.ndarray | None

    @property
    def std_error(self) -> float:
        return self.cov * self.probability

    @property
    def equivalent_mc_runs(self) -> float:
        """Plain Monte Carlo runs that would give the same CoV: ``(1 - p) / (p CoV^2)``."""
        if not self.probability or not math.isfinite(self.cov) or self.cov == 0:
            return math.nan
        return (1.0 - self.probability) / (self.probability * self.cov**2)


def _evaluate(g: LimitState, z: np.ndarray, batch: int | None) -> np.ndarray:
    """``g`` on the rows of ``z`` in chunks of ``batch`` (one call when None), checked."""
    step = len(z) if batch is None else int(batch)
    if step < 1:
        raise ValueError(f"batch must be positive, got {batch!r}")
    parts = []
    for start in range(0, len(z), step):
        chunk = z[start : start + step]
        y = np.asarray(g(chunk), dtype=np.float64)
        if y.shape != (len(chunk),):
            raise ValueError(f"g must return shape ({len(chunk)},), got {y.shape}")
        if np.isnan(y).any():
            raise ValueError("g returned NaN")
        parts.append(y)
    return np.concatenate(parts) if parts else np.zeros(0)


def _worst(z: np.ndarray, y: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``z`` and their ``y``, largest ``y`` first, at most ``keep``."""
    z, index = np.unique(z, axis=0, return_index=True) if len(z) else (z, np.zeros(0, int))
    y = y[index]
    order = np.argsort(-y, kind="stable")[:keep]
    return z[order], y[order]


def _check(dim: int, threshold: float, keep: int) -> None:
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep!r}")


def _normal_ci(p: float, se: float) -> tuple[float, float]:
    if p == 0:
        return 0.0, 1.0
    return max(p - _Z95 * se, 0.0), p + _Z95 * se


def monte_carlo(
    g: LimitState,
    dim: int,
    threshold: float,
    *,
    key: Key,
    n: int,
    batch: int = 100_000,
    keep: int = 100,
) -> RareEventEstimate:
    """Plain Monte Carlo over ``n`` draws of ``z ~ N(0, I_dim)``, ``batch`` per call of ``g``.

    ``cov = sqrt((1 - p) / (n p))``; ``ci95`` is the exact Clopper-Pearson interval."""
    _check(dim, threshold, keep)
    if n < 1:
        raise ValueError(f"n must be positive, got {n!r}")
    rng = np.random.default_rng(key)
    hits = 0
    kept_z, kept_y = np.zeros((0, dim)), np.zeros(0)
    for start in range(0, n, batch):
        z = rng.standard_normal((min(batch, n - start), dim))
        y = _evaluate(g, z, None)
        fail = y >= threshold
        hits += int(fail.sum())
        kept_z, kept_y = _worst(np.vstack([kept_z, z[fail]]), np.r_[kept_y, y[fail]], keep)
    p = hits / n
    return RareEventEstimate(
        method="monte_carlo",
        probability=p,
        cov=math.sqrt((1 - p) / (n * p)) if hits else math.inf,
        ci95=clopper_pearson(hits, n),
        effective_sample_size=float(hits),
        n_simulations=n,
        n_failures=hits,
        levels=(),
        converged=True,
        failures_z=kept_z,
        failures_g=kept_y,
        proposal_mean=np.zeros(dim),
        proposal_std=np.ones(dim),
    )


def _log_ratio(z: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``log N(z; 0, I) - log N(z; mu, diag sigma^2)`` per row of ``z`` ``(n, d)``."""
    u = (z - mu) / sigma
    return 0.5 * np.sum(u * u - z * z, axis=1) + np.sum(np.log(sigma))


def cross_entropy(
    g: LimitState,
    dim: int,
    threshold: float,
    *,
    key: Key,
    n_per_level: int = 2_000,
    rho: float = 0.1,
    max_levels: int = 30,
    n_final: int = 10_000,
    smoothing: float = 0.7,
    sigma_bounds: tuple[float, float] = (0.3, 3.0),
    adapt_scale: bool = True,
    batch: int | None = None,
    keep: int = 100,
) -> RareEventEstimate:
    """Multilevel cross-entropy importance sampling with a Gaussian ``N(mu, diag sigma^2)``.

    Each level draws ``n_per_level`` from the proposal, sets the level at the ``1 - rho``
    quantile of ``g`` (capped at ``threshold``) and refits ``mu`` and ``sigma`` to the samples
    above it, weighted by their likelihood ratio to the nominal density; the fit is blended
    with the previous one (``smoothing`` of the new) and ``sigma`` clipped to
    ``sigma_bounds``. Once a level reaches ``threshold`` (or after ``max_levels``, the
    estimate then still unbiased but noisy, as ``cov`` says), ``n_final`` fresh draws give
    ``p = mean(1[g >= threshold] w)``, ``w`` the likelihood ratio (log space), and ``cov``
    from their sample variance.
    """
    _check(dim, threshold, keep)
    if not 0 < rho < 1 or not 0 < smoothing <= 1:
        raise ValueError(f"need 0 < rho < 1 and 0 < smoothing <= 1, got {rho!r}, {smoothing!r}")
    if n_per_level * rho < 1 or n_final < 2:
        raise ValueError("need n_per_level * rho >= 1 and n_final >= 2")
    rng = np.random.default_rng(key)
    mu, sigma = np.zeros(dim), np.ones(dim)
    levels: list[float] = []
    n_sim, converged = 0, False
    for _ in range(max_levels):
        z = mu + sigma * rng.standard_normal((n_per_level, dim))
        y = _evaluate(g, z, batch)
        n_sim += n_per_level
        level = min(float(np.quantile(y, 1.0 - rho, method="higher")), threshold)
        elite = y >= level
        log_w = _log_ratio(z[elite], mu, sigma)
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        mu_new = w @ z[elite]
        mu = smoothing * mu_new + (1 - smoothing) * mu
        if adapt_scale:
            sigma_new = np.sqrt(w @ (z[elite] - mu_new) ** 2)
            sigma = np.clip(smoothing * sigma_new + (1 - smoothing) * sigma, *sigma_bounds)
        if level >= threshold:
            converged = True
            break
        levels.append(level)
    z = mu + sigma * rng.standard_normal((n_final, dim))
    y = _evaluate(g, z, batch)
    n_sim += n_final
    fail = y >= threshold
    hits = int(fail.sum())
    if hits:
        log_w = _log_ratio(z[fail], mu, sigma)
        shift = log_w.max()
        w = np.exp(log_w - shift)  # the failures' weights over exp(shift)
        mean = w.sum() / n_final
        var = max((w @ w / n_final - mean**2) * n_final / (n_final - 1), 0.0) / n_final
        p, se = math.exp(shift) * mean, math.exp(shift) * math.sqrt(var)
        cov, ess = se / p, float(w.sum() ** 2 / (w @ w))
    else:
        p, se, cov, ess = 0.0, 0.0, math.inf, 0.0
    failures_z, failures_g = _worst(z[fail], y[fail], keep)
    return RareEventEstimate(
        method="cross_entropy",
        probability=p,
        cov=cov,
        ci95=_normal_ci(p, se),
        effective_sample_size=ess,
        n_simulations=n_sim,
        n_failures=hits,
        levels=tuple(levels),
        converged=converged,
        failures_z=failures_z,
        failures_g=failures_g,
        proposal_mean=mu,
        proposal_std=sigma,
    )


def _chain_gamma(indicator: np.ndarray) -> float:
    """Au and Beck's ``gamma`` for an indicator on parallel chains ``(steps, chains)``:
    ``2 sum_k (1 - k / steps) r(k)``, ``r(k)`` its lag-``k`` correlation pooled over chains."""
    steps = indicator.shape[0]
    x = indicator.astype(np.float64)
    p = x.mean()
    var = p * (1 - p)
    if steps < 2 or var == 0:
        return 0.0
    gamma = 0.0
    for k in range(1, steps):
        r = (np.mean(x[:-k] * x[k:]) - p * p) / var
        gamma += 2 * (1 - k / steps) * r
    return max(gamma, 0.0)


def subset_simulation(
    g: LimitState,
    dim: int,
    threshold: float,
    *,
    key: Key,
    n_per_level: int = 2_000,
    p0: float = 0.1,
    max_levels: int = 30,
    target_acceptance: float = 0.44,
    initial_spread: float = 0.6,
    batch: int | None = None,
    keep: int = 100,
) -> RareEventEstimate:
    """Subset simulation: ``p = prod_i P[g >= b_i | g >= b_{i-1}] * P[g >= threshold | ...]``.

    Level 0 is ``n_per_level`` nominal draws. Each level's ``b_i`` is the
    ``n_per_level * p0``-th largest ``g``; that many samples with ``g >= b_i`` seed as many
    chains of ``1 / p0`` states (seed included) that sample ``z`` given ``g >= b_i``: a
    candidate ``rho_j z_j + s_j xi_j`` per coordinate (``s_j = min(lambda * std of the seeds'
    z_j, 1)``, ``rho_j = sqrt(1 - s_j^2)``; reversible for ``N(0, 1)``, so a candidate is
    accepted iff ``g >= b_i``), all chains one step per call of ``g``. ``lambda`` starts at
    ``initial_spread`` and moves after every step by ``exp((acceptance - target) / sqrt(k))``.
    The seeds' own ``g`` is reused, so a level after the first costs
    ``n_per_level * (1 - p0)`` evaluations. Stops when ``b_i >= threshold`` or after
    ``max_levels`` (the estimate then counts the last level's samples above ``threshold``).
    """
    _check(dim, threshold, keep)
    n_chains = int(round(n_per_level * p0))
    if not 0 < p0 < 1 or n_chains < 1 or n_per_level % n_chains:
        raise ValueError("need 0 < p0 < 1 and n_per_level a multiple of n_per_level * p0")
    steps = n_per_level // n_chains
    rng = np.random.default_rng(key)
    z = rng.standard_normal((n_per_level, dim))
    y = _evaluate(g, z, batch)
    n_sim = n_per_level
    shape = None  # (steps, chains) once the samples come from chains
    log_p, delta2, lam = 0.0, 0.0, float(initial_spread)
    levels: list[float] = []
    converged = False
    for _ in range(max_levels):
        level = float(np.sort(y)[-n_chains])
        if level >= threshold:
            converged = True
            break
        above = y >= level
        p_i = above.mean()
        gamma = 0.0 if shape is None else _chain_gamma(above.reshape(shape))
        log_p += math.log(p_i)
        delta2 += (1 - p_i) / (n_per_level * p_i) * (1 + gamma)
        levels.append(level)
        seeds = rng.choice(np.flatnonzero(above), n_chains, replace=False)
        cur_z, cur_y = z[seeds], y[seeds]
        spread = cur_z.std(axis=0)
        chain_z, chain_y = [cur_z], [cur_y]
        for k in range(1, steps):
            s = np.minimum(lam * spread, 1.0)
            cand = np.sqrt(1 - s * s) * cur_z + s * rng.standard_normal(cur_z.shape)
            cand_y = _evaluate(g, cand, batch)
            n_sim += n_chains
            accept = cand_y >= level
            cur_z = np.where(accept[:, None], cand, cur_z)
            cur_y = np.where(accept, cand_y, cur_y)
            lam = min(lam * math.exp((accept.mean() - target_acceptance) / math.sqrt(k)), 10.0)
            chain_z.append(cur_z)
            chain_y.append(cur_y)
        z, y = np.concatenate(chain_z), np.concatenate(chain_y)
        shape = (steps, n_chains)
    fail = y >= threshold
    hits = int(fail.sum())
    p_last = hits / n_per_level
    if hits:
        gamma = 0.0 if shape is None else _chain_gamma(fail.reshape(shape))
        delta2 += (1 - p_last) / (n_per_level * p_last) * (1 + gamma)
        p, cov = math.exp(log_p) * p_last, math.sqrt(delta2)
        spread_log = math.sqrt(math.log1p(delta2))
        ci95 = (p * math.exp(-_Z95 * spread_log), p * math.exp(_Z95 * spread_log))
        ess = hits / (1 + gamma)
    else:
        p, cov, ci95, ess = 0.0, math.inf, (0.0, 1.0), 0.0
    failures_z, failures_g = _worst(z[fail], y[fail], keep)
    return RareEventEstimate(
        method="subset_simulation",
        probability=p,
        cov=cov,
        ci95=ci95,
        effective_sample_size=ess,
        n_simulations=n_sim,
        n_failures=hits,
        levels=tuple(levels),
        converged=converged,
        failures_z=failures_z,
        failures_g=failures_g,
        proposal_mean=None,
        proposal_std=None,
    )
