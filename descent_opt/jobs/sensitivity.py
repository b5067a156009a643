"""The sensitivity job: which parameters a gain table's risk depends on most.

``+experiment=sensitivity gains=PATH`` (none: the built-in design) flies
``sensitivity.n_scenarios`` members of the held-out population and, for every parameter
of :data:`descent_opt.sensitivity.PARAMETERS` (or those ``sensitivity.parameters`` names),
reports the derivatives of the smoothed risk, the mean touchdown speed and the hard success
rate scaled by the parameter's unit, each with its standard error, ranked by the first
(:mod:`descent_opt.sensitivity` says which estimator each kind of parameter gets and why),
with the pathwise reverse-mode derivatives beside them (``sensitivity.pathwise``). With
``sensitivity.sobol=true`` it adds Sobol first-order and total indices over the same
parameters (:mod:`descent_opt.sobol`), the rank agreement of the total index with the
scaled derivative, and both rankings' top three side by side. Writes
``sensitivity.csv``, ``sensitivity.md``, ``sensitivity.png`` and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from descent_opt import report, sobol
from descent_opt.config import RunConfig
from descent_opt.jobs import FLIGHT_GROUPS, Job, Progress, starting_gains, use_precision
from descent_opt.optimize.gains import tuning_sim
from descent_opt.rundir import write_metrics, write_text_atomic
from descent_opt.sensitivity import ESTIMATORS, FIGURES, Model, select, sensitivities

PATHWISE_CHUNK = 1024  # members per reverse pass
TOP = 3  # the Sobol and derivative rankings' heads shown side by side


@dataclasses.dataclass
class SensitivityResult:
    rows: list[dict]  # ranked, largest scaled risk derivative first
    metrics: dict


def run(config: RunConfig, *, progress: Progress | None = None) -> SensitivityResult:
    """Every figure of every selected parameter, ranked; Sobol indices when asked."""
    import jax

    start = time.perf_counter()
    gains, source = starting_gains(config, use_precision(config))
    spec = config.sensitivity
    names = select(spec.parameters)
    model = Model.of(
        config.scenario, config.terrain, config.faults,
        tuning_sim(config.sim, config.optimizer.gate_softness), config.sim, config.success,
    )  # fmt: skip
    key = config.population_key()
    advance = None
    if progress is not None:

        def advance(done):
            progress("sensitivity", done, len(names), "parameter", {})

    result = sensitivities(
        model, gains, config.objective, names, spec.n_scenarios, key=key,
        fd_step=spec.fd_step, pathwise_chunk=PATHWISE_CHUNK if spec.pathwise else None,
        progress=advance,
    )  # fmt: skip
    rows = result.ranked()
    metrics = {
        "n_scenarios": spec.n_scenarios,
        "fd_step": spec.fd_step,
        "flights": result.flights,
        "units": "sigma or rate: itself; range end: the range's width; vehicle figure: 5 %; "
        "success limit: 10 %",
        "estimators": ESTIMATORS,
        "parameters": rows,
    }
    if spec.sobol:
        from descent_opt.scenarios import population_latents

        z = population_latents(key, np.arange(spec.sobol_scenarios, dtype=np.uint32))
        metrics["sobol"] = _sobol(config, model, gains, z, rows, jax.random.fold_in(key, 1))
    metrics.update(gains=source, seed=config.seed, job_time_s=time.perf_counter() - start)
    return SensitivityResult(rows, metrics)


def _sobol(config: RunConfig, model: Model, gains, z, rows: list[dict], key) -> dict:
    """Sobol indices of the mean smoothed risk and touchdown speed of ``z`` over the
    parameters with a unit, their rank agreement with the scaled risk derivatives, and
    both rankings' top three."""
    spec = config.sensitivity
    ranges = sobol.bounds(model, tuple(r["parameter"] for r in rows))
    names = tuple(ranges)
    f = sobol.population_figures(model, gains, config.objective, z, names)
    risk, speed = sobol.indices(f, ranges, spec.sobol_n, key=key)
    derivative = {r["parameter"]: abs(r["risk"]) for r in rows}
    total = np.asarray([risk[k]["ST"] for k in names])
    by_total = [names[i] for i in np.argsort(-total, kind="stable")[:TOP]]
    by_derivative = sorted(names, key=lambda k: -derivative[k])[:TOP]
    return {
        "n": spec.sobol_n,
        "n_samples": spec.sobol_n * (len(names) + 2),
        "scenarios_per_sample": spec.sobol_scenarios,
        "ranges": {k: list(v) for k, v in ranges.items()},
        "risk": risk,
        "touchdown_speed_mps": speed,
        "rank_agreement": sobol.rank_agreement(total, [derivative[k] for k in names]),
        "top": [
            {
                "rank": i + 1,
                "by_total_index": a,
                "total_index": risk[a]["ST"],
                "by_scaled_derivative": b,
                "scaled_risk_derivative": derivative[b],
            }
            for i, (a, b) in enumerate(zip(by_total, by_derivative))
        ],  # fmt: skip
    }


def _columns(rows: list[dict], metrics: dict) -> dict[str, list]:
    numbers = ["value", "unit"] + [f + s for f in FIGURES for s in ("", "_se")]
    numbers += ["pathwise_risk", "pathwise_touchdown_speed_mps"]
    columns = {k: [r[k] for r in rows] for k in numbers}
    risk = metrics.get("sobol", {}).get("risk", {})
    for index in ("S1", "ST") if risk else ():
        columns["sobol_" + index] = [risk.get(r["parameter"], {}).get(index, np.nan) for r in rows]
    return columns


def markdown(result: SensitivityResult) -> str:
    """The ranked table (and the Sobol comparison) as Markdown."""
    m = result.metrics
    lines = [
        f"Sensitivities on {m['n_scenarios']:,} members (per parameter unit: {m['units']}; "
        "+- one standard error)",
        "",
        "| rank | parameter | value | unit | smoothed risk | touchdown speed (m/s) | "
        "success rate | pathwise risk |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result.rows, 1):
        cells = [f"{r[f]:+.3g} +- {r[f + '_se']:.2g}" for f in FIGURES]
        lines.append(
            f"| {i} | `{r['parameter']}` | {r['value']:.4g} | {r['unit']:.4g} | "
            + " | ".join(cells)
            + f" | {r['pathwise_risk']:+.3g} |"
        )
    lines += ["", "Estimators:", *(f"- {k}: {v}" for k, v in m["estimators"].items())]
    if "sobol" in m:
        s = m["sobol"]
        lines += [
            "",
            f"Sobol indices of the smoothed risk ({s['n_samples']:,} samples of "
            f"{s['scenarios_per_sample']} members; Spearman rank agreement of the total index "
            f"with the scaled derivative: {s['rank_agreement']:.2f})",
            "",
            "| rank | by total index | total index | by scaled derivative | scaled derivative |",
            "|---|---|---|---|---|",
            *(
                f"| {t['rank']} | `{t['by_total_index']}` | {t['total_index']:.3f} | "
                f"`{t['by_scaled_derivative']}` | {t['scaled_risk_derivative']:.3g} |"
                for t in s["top"]
            ),
        ]
    return "\n".join(lines) + "\n"


def write_outputs(
    result: SensitivityResult, config: RunConfig, directory: str | Path, wall_time_s: float
) -> list[Path]:
    """``sensitivity.csv`` (rank, parameter, kind and the rows' numbers; with Sobol, each
    parameter's indices of the risk), ``sensitivity.md``, ``sensitivity.png``,
    ``metrics.json`` last."""
    directory = Path(directory)
    csv_path = directory / "sensitivity.csv"
    columns = _columns(result.rows, result.metrics)
    lines = [",".join(["rank", "parameter", "kind", *columns])] + [
        ",".join(
            [str(i + 1), r["parameter"], r["kind"], *(f"{columns[k][i]:.9g}" for k in columns)]
        )
        for i, r in enumerate(result.rows)
    ]
    write_text_atomic(csv_path, "\n".join(lines) + "\n")
    md_path = directory / "sensitivity.md"
    write_text_atomic(md_path, markdown(result))
    png_path = directory / "sensitivity.png"
    report.plot_sensitivities(result.rows, png_path)
    metrics = write_metrics(directory, dict(result.metrics, wall_time_s=wall_time_s))
    return [csv_path, md_path, png_path, metrics]


def summary(result: SensitivityResult) -> str:
    """The ten largest entries, and the Sobol comparison."""
    lines = [f"{'parameter':36s}{'risk/unit':>12s}{'speed/unit':>12s}{'success/unit':>14s}"]
    for r in result.rows[:10]:
        lines.append(
            f"{r['parameter']:36s}{r['risk']:+12.4g}{r['touchdown_speed_mps']:+12.4g}"
            f"{r['success_rate']:+14.4g}"
        )
    s = result.metrics.get("sobol")
    if s:
        lines.append(f"Sobol (total index) against scaled derivative, rank agreement "
                     f"{s['rank_agreement']:.2f}:")  # fmt: skip
        for t in s["top"]:
            lines.append(f"  {t['rank']}. {t['by_total_index']} | {t['by_scaled_derivative']}")
    return "\n".join(lines)


JOB = Job(
    name="sensitivity",
    groups=(*FLIGHT_GROUPS, "evaluation", "objective", "optimizer", "sensitivity"),
    run=run,
    write_outputs=write_outputs,
    summary=summary,
)
