"""Fault envelopes: how a gain table's success rate falls as one fault grows.

Each axis is one fault parameter held at a fixed value in every scenario of a population
(the rest dispersed as configured); the envelope is the success rate with its confidence
band along a grid of values over and beyond the catalog's range, and its edge the worst
value at which the one-sided 95 % lower bound still meets ``required_success``.
"""

from __future__ import annotations

import dataclasses

# The fault axes, each named by the parameter it fixes.
AXES = (
    "acquisition_range_m",
    "latency_s",
    "dropout_prob",
    "bias_m",
    "scale_factor",
    "heavy_tail_scale_m",
    "rim_step_height_m",
    "altitude_knowledge_error_m",
)


@dataclasses.dataclass(frozen=True)
class EnvelopeSpec:
    """Which axes, which grid, how many scenarios per point and the success required."""

    axis: tuple[str, ...] = AXES
    values: tuple[float, ...] | None = None  # an explicit grid (one axis only); None: default
    points: int = 12  # values per axis on the default grid
    n_scenarios: int = 4096  # scenarios per point
    required_success: float = 0.99  # the edge: one-sided 95 % lower bound at least this
