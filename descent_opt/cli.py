"""Command line: ``python -m descent_opt +experiment=NAME [overrides]``.

A thin layer: Hydra composes the configuration, :mod:`descent_opt.config` validates it, the
library does the work, and this module writes the outputs into Hydra's run directory.
Bad input ends with one line on stderr naming the key and what is allowed, exit status 2,
and no result files.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

_START = time.perf_counter()
_jobs_started = 0
log = logging.getLogger("descent_opt")


def config_dir() -> Path:
    """``conf/``: packaged inside the wheel, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError("descent_opt: configuration directory conf/ not found")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _precheck(overrides: list[str]) -> None:
    """Compose once before Hydra's own entry point so that a bad override gets one line
    instead of Hydra's multi-line report."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    message = None
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            try:
                compose("config", overrides=overrides)
            except Exception as err:  # Hydra raises several types; all mean bad input here
                message = _hydra_message(str(err)) or type(err).__name__
                if message.endswith("not a known key"):
                    parent = message.split(":")[0].rpartition(".")[0]
                    node = compose("config").get(parent) if parent else compose("config")
                    if hasattr(node, "keys"):
                        keys = ", ".join(str(k) for k in node.keys() if k != "hydra")
                        message += f"; keys of {parent or 'the top level'}: {keys}"
    finally:
        GlobalHydra.instance().clear()
    if message is not None:
        fail(message)


def _hydra_message(text: str) -> str:
    """One line for a Hydra composition error, naming the key and what is allowed."""
    import re

    missing = re.search(r"Could not find '([\w.-]+)/([^']+)'", text)
    if missing:
        group, name = missing.groups()
        folder = config_dir() / group
        options = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        allowed = ", ".join(options) if options else "none available"
        return f"{group}: {name!r} is not one of {allowed}"
    override = re.search(r"Could not override '([^']+)'", text)
    if override:
        key = override.group(1)
        return f"{key}: not a known key"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[:2])


def _make_progress(enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bars: dict = {}

    def progress(phase, step, total, parts):
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[phase] = tqdm(
                total=total, desc=f"tuning {phase} gains", unit="step", file=sys.stderr
            )
        bar.update(1)
        bar.set_postfix(objective=f"{parts['objective']:.3f}", fuel=f"{parts['fuel_fraction']:.3f}")

    def close():
        for bar in bars.values():
            bar.close()

    return progress, close


def _job_start() -> float:
    """When this job began: process start for the first job (imports count), the task call
    for later jobs of a multirun in the same process."""
    global _jobs_started
    _jobs_started += 1
    return _START if _jobs_started == 1 else time.perf_counter()


def run(cfg) -> None:
    """Hydra task: validate, run the selected experiment, write outputs."""
    start = _job_start()
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from descent_opt.config import EXPERIMENTS, ConfigError, from_mapping

    logging.getLogger("jax").setLevel(logging.WARNING)

    try:
        config = from_mapping(OmegaConf.to_container(cfg, resolve=True))
        if config.experiment is None:
            raise ConfigError(
                "experiment", "chosen with +experiment=NAME, NAME one of " + ", ".join(EXPERIMENTS)
            )
        if config.gains_path:
            from descent_opt.export import load_gains

            initial = load_gains(config.gains_path)
        else:
            initial = None
    except ConfigError as err:
        fail(str(err))
    except ValueError as err:
        fail(str(err).splitlines()[0])

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if config.experiment == "thrust_schedule":
        _run_thrust_schedule(config, out_dir, start)
        return
    from descent_opt import report
    from descent_opt.robust_gains import run_robust_gains, write_outputs

    progress, close = _make_progress(config.progress)
    try:
        result = run_robust_gains(config, progress=progress, initial=initial)
    finally:
        close()
    write_outputs(result, config, out_dir, wall_time_s=time.perf_counter() - start)
    print(report.summary_table(result.metrics))
    print(f"\nOutputs in {out_dir}")


def _run_thrust_schedule(config, out_dir: Path, start: float) -> None:
    from descent_opt.thrust_schedule import InfeasibleProblem, run_thrust_schedule, write_outputs

    try:
        result = run_thrust_schedule(config)
    except InfeasibleProblem as err:
        fail(str(err))
    write_outputs(result, config, out_dir, wall_time_s=time.perf_counter() - start)
    m = result.metrics
    b = m["batch"]
    print(
        f"Nominal: {m['fuel_kg']:.2f} kg in {m['time_of_flight_s']:.1f} s, terminal error "
        f"{m['terminal_position_error_m']:.3f} m / {m['terminal_velocity_error_mps']:.4f} m/s\n"
        f"Batch: {b['n_converged']}/{b['n_problems']} converged, fuel {b['fuel_kg_min']:.2f}-"
        f"{b['fuel_kg_max']:.2f} kg (mean {b['fuel_kg_mean']:.2f})\n\nOutputs in {out_dir}"
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if not multirun:
        _precheck([a for a in argv if not a.startswith("-")])
    import hydra

    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(run)()
