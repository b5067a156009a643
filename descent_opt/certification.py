"""Certification of a gain table's success rate at the levels landing reviews ask for.

A success rate is certified at a level when its exact one-sided 95 % lower bound
(Clopper-Pearson) reaches that level: 0.9973 ("3 sigma") needs at least 1,109 flights
without a failure, and more the more failures there are. Fault classes that the sensor
suite cannot land (``certification.unlandable``; by default the LRF-absent class) are
certified apart, never dropped: every other class, and the population of scenarios in none
of the unlandable classes, carry the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping

from descent_opt.statistics import clopper_pearson, clopper_pearson_lower

LEVELS = (0.99, 0.995, 0.9973, 0.999, 0.9999)
CONFIDENCE = 0.95


def certified_at(lower_bound: float | None) -> float | None:
    """The largest of :data:`LEVELS` that ``lower_bound`` reaches (None: not even the first)."""
    if lower_bound is None:
        return None
    reached = [level for level in LEVELS if lower_bound >= level]
    return max(reached) if reached else None


def entry(n: int, successes: int) -> dict:
    """Success rate of ``n`` flights with its two-sided 95 % interval, one-sided 95 % lower
    bound and the level it certifies."""
    lower = clopper_pearson_lower(successes, n, CONFIDENCE) if n else None
    return {
        "n_scenarios": int(n),
        "n_failures": int(n - successes),
        "success_rate": successes / n if n else None,
        "success_rate_ci95": list(clopper_pearson(successes, n, CONFIDENCE)),
        "success_rate_lower95": lower,
        "certified_at": certified_at(lower),
    }


def certify(
    everyone: tuple[int, int],
    landable: tuple[int, int],
    classes_landable: Mapping[str, tuple[int, int]],
    classes_all: Mapping[str, tuple[int, int]],
    unlandable: tuple[str, ...],
) -> dict:
    """The ``certification`` block from (flights, successes) counts: ``overall`` over the
    scenarios in no unlandable class, each landable class within those scenarios, each
    unlandable class apart, and every scenario together. ``certified_at`` is the table's
    verdict: the lowest level among ``overall`` and the landable classes (None if one of
    them reaches none), and ``weakest_class`` the class that sets it."""
    classes = {
        name: entry(*counts) for name, counts in classes_landable.items() if name not in unlandable
    }
    apart = {name: entry(*classes_all[name]) for name in unlandable if name in classes_all}
    overall = entry(*landable)
    seen = {name: c for name, c in classes.items() if c["n_scenarios"]}
    weakest = min(seen, key=lambda k: seen[k]["success_rate_lower95"], default=None)
    verdicts = [overall["certified_at"]] + [c["certified_at"] for c in seen.values()]
    return {
        "confidence": CONFIDENCE,
        "levels": list(LEVELS),
        "unlandable": list(unlandable),
        "certified_at": None if None in verdicts else min(verdicts),
        "weakest_class": weakest,
        "overall": overall,
        "classes": classes,
        "unlandable_classes": apart,
        "all_scenarios": entry(*everyone),
    }


def lines(block: Mapping) -> list[str]:
    """The block as a few lines of the summary table."""

    def row(name: str, e: Mapping) -> str:
        if not e["n_scenarios"]:
            return f"  {name:28s}{0:>10,d}         -"
        level = "-" if e["certified_at"] is None else f"{e['certified_at']:.2%}"
        return (
            f"  {name:28s}{e['n_scenarios']:>10,d}{e['success_rate']:>10.3%}"
            f"{e['success_rate_lower95']:>12.3%}{level:>12s}"
        )

    verdict = block["certified_at"]
    out = [
        "certified at "
        + ("no level" if verdict is None else f"{verdict:.2%}")
        + f" (one-sided {block['confidence']:.0%} lower bounds; weakest class: "
        + f"{block['weakest_class']})",
        f"  {'':28s}{'scenarios':>10s}{'success':>10s}{'lower 95%':>12s}{'certified':>12s}",
        row("landable scenarios", block["overall"]),
    ]
    out += [row(name, e) for name, e in block["classes"].items()]
    out += [row(f"{name} (unlandable)", e) for name, e in block["unlandable_classes"].items()]
    return out
