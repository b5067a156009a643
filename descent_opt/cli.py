"""Command line: ``python -m descent_opt +experiment=NAME [overrides]``.

A thin layer: Hydra composes the configuration, :mod:`descent_opt.config` validates it, the
job registry (:mod:`descent_opt.jobs`) finds the job, which does the work, and this module
writes its outputs into Hydra's run directory.
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
    """``conf/``: packaged inside the wheel, or at the top of a source checkout; the
    declared defaults it composes first are registered with Hydra on the way."""
    from descent_opt.config import register_defaults

    register_defaults()
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError("descent_opt: configuration directory conf/ not found")


def fail(message: str, status: int = 2) -> None:
    """One line on stderr and exit: status 2 for bad input, 1 for a run that failed."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


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
    """A :class:`~descent_opt.jobs.Progress` drawing one tqdm bar per phase, and its closer."""
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bars: dict = {}

    def progress(phase, advance, total, unit, info):
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[phase] = tqdm(total=total, desc=phase, unit=unit, file=sys.stderr)
        bar.set_postfix({k: f"{v:.3f}" for k, v in info.items()}, refresh=False)
        bar.update(advance)  # draws the count and figures together

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


def _use_compile_cache(directory: str) -> None:
    """JAX's persistent compilation cache in ``directory`` (created, owner-only: whoever can
    write it can run code through it). Programs compiling faster than 1 s are not cached."""
    import os

    import jax

    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not os.access(path, os.W_OK):
        fail(f"compile_cache_dir: {path} is not writable")
    jax.config.update("jax_compilation_cache_dir", str(path))


def run(cfg) -> None:
    """Hydra task: validate, run the selected job, write its outputs."""
    start = _job_start()
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from descent_opt.config import ConfigError, read_config
    from descent_opt.jobs import JOBS, check_experiment, job

    logging.getLogger("jax").setLevel(logging.WARNING)

    try:
        composed = OmegaConf.to_container(cfg, resolve=True)
        check_experiment(composed.get("experiment"))
        config = read_config(composed)
        if config.experiment is None:
            raise ConfigError(
                "experiment", "chosen with +experiment=NAME, NAME one of " + ", ".join(JOBS)
            )
        from descent_opt.distributed import initialize

        initialize(config.distributed)  # before any JAX computation
        if config.compile_cache_dir:
            _use_compile_cache(config.compile_cache_dir)
        if config.gains_paths:
            from descent_opt.export import load_gains

            for path in config.gains_paths:  # a bad file is reported before any work
                load_gains(path)
    except ConfigError as err:
        fail(str(err))
    except ValueError as err:
        fail(str(err).splitlines()[0])

    import jax

    from descent_opt.checkpoint import CheckpointMismatch, Checkpoints, Interrupted

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    chosen = job(config.experiment)
    checkpoints = Checkpoints(
        out_dir,
        config.settings(),
        config.checkpoint_every_steps,
        write=jax.process_index() == 0,
    )
    extra = {"checkpoints": checkpoints} if chosen.checkpointed else {}
    if extra and config.resume:
        try:
            if not checkpoints.load():
                log.info("resume: no %s yet; starting from the beginning", checkpoints.path)
        except CheckpointMismatch as err:
            fail(str(err))
    progress, close = _make_progress(config.progress)
    try:
        with checkpoints.catch_signals():
            result = chosen.run(config, progress=progress, **extra)
    except Interrupted as err:
        close()
        fail(str(err), status=128 + err.signum)
    except chosen.bad_input as err:
        close()
        fail(str(err))
    except chosen.failures as err:
        close()
        fail(str(err), status=1)
    finally:
        close()

    if jax.process_index() != 0:  # every process has the whole result; one writes it
        return
    chosen.write_outputs(result, config, out_dir, wall_time_s=time.perf_counter() - start)
    print(chosen.summary(result))
    print(f"\nOutputs in {out_dir}")


def _overrides_to_check(argv: list[str]) -> list[str] | None:
    """The overrides of a single run, read as Hydra reads its command line (``--cfg job``,
    ``--package sim``, ``--info`` and the other flags keep their values); None when there is
    nothing to pre-check: a sweep (its values are lists), or help and completion, which
    Hydra answers without composing."""
    import argparse

    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError:
        return None  # Hydra's own parser reports it as Hydra documents
    modes = [m for m in ("run", "multirun", "cfg", "info", "shell_completion") if getattr(args, m)]
    if len(modes) > 1:  # Hydra refuses these together, with a traceback
        shown = ", ".join("--" + m.replace("_", "-") for m in modes)
        hint = (
            ": --cfg shows one run's configuration; drop -m and give one value per swept key"
            if args.multirun and args.cfg
            else ""
        )
        fail(f"{shown}: at most one of them may be given{hint}")
    if unknown or args.multirun or args.help or args.hydra_help or args.shell_completion:
        return None
    return list(args.overrides)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = _overrides_to_check(argv)
    if overrides is not None:
        _precheck(overrides)
    import hydra

    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(run)()
