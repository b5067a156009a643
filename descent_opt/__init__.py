"""descent_opt: GPU-ready batch optimisation of lunar terminal descent in JAX.

Library first: build a :class:`~descent_opt.config.RunConfig` (``load_config`` composes
``conf/`` with overrides; ``read_config`` takes a plain dict), then call
:func:`run_robust_gains`. The command line ``python -m descent_opt +experiment=robust_gains``
does the same through Hydra and writes the outputs.
"""

from descent_opt._version import __version__
from descent_opt.config import ConfigError, RunConfig, read_config
from descent_opt.export import load_gains, write_gain_table
from descent_opt.guidance import Gains, default_gains
from descent_opt.jobs.robust_gains import RobustGainsResult, run_robust_gains, write_outputs
from descent_opt.simulate import SimSpec


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose ``conf/`` with Hydra-style ``overrides`` (e.g. ``["optimizer.steps=10"]``)
    and validate it, without starting a Hydra application."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from descent_opt.cli import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    return read_config(data)


__all__ = [
    "ConfigError",
    "Gains",
    "RobustGainsResult",
    "RunConfig",
    "SimSpec",
    "__version__",
    "default_gains",
    "load_config",
    "load_gains",
    "read_config",
    "run_robust_gains",
    "write_gain_table",
    "write_outputs",
]
