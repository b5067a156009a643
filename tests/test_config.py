"""Configuration: conf/ composes into a valid typed config; bad values name their key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import descent_opt
from descent_opt.config import ConfigError
from descent_opt.optimize.gains import resolved


def test_default_config_matches_contract_keys():
    config = descent_opt.load_config([])
    assert config.vehicle.mass_initial_kg == 480.0 and config.vehicle.mass_dry_kg == 340.0
    assert config.scenario.r0_m == (-300.0, 0.0, 5000.0)
    assert config.evaluation.n_scenarios >= 2000
    assert config.faults.acquisition_range_m == (700.0, 3000.0)


def test_decided_horizon_and_verdict_defaults():
    """Evaluations fly until every flight is down (the upward-burn bound, well past the
    planned 180 s), on 100,000 held-out members and 16,384 with nominal sensors; the
    LRF-absent class is certified apart; tuning minibatches are 128 on the CPU."""
    config = descent_opt.load_config([])
    assert config.sim.duration_s == 180.0 and config.sim.max_duration_s > 1000.0
    assert config.evaluation.n_scenarios == 100_000
    assert config.evaluation.n_nominal_scenarios == 16_384
    assert config.unlandable == ("lrf_absent",)
    assert config.optimizer.batch_size is None  # auto: chosen once JAX has started
    assert resolved(config.optimizer).batch_size == 128  # the tests run on the CPU
    assert descent_opt.load_config(["sim.max_duration_s=null"]).sim.max_duration_s is None
    frozen = descent_opt.load_config(["optimizer.frozen=[heavy_tail_weight,zem_gain]"])
    assert frozen.optimizer.frozen == ("heavy_tail_weight", "zem_gain")


def test_overrides_reach_the_typed_config():
    config = descent_opt.load_config(
        ["vehicle.thrust_min_n=0", "optimizer.steps=7", "seed=5", "moon.gravity_mps2=1.6"]
    )
    assert config.vehicle.thrust_min_n == 0.0
    assert config.optimizer.steps == 7 and config.seed == 5
    assert config.sim.gravity_mps2 == 1.6


@pytest.mark.parametrize(
    "override,key",
    [
        ("vehicle.mass_dry_kg=480", "vehicle.mass_dry_kg"),
        ("vehicle.thrust_min_n=3000", "vehicle.thrust_min_n"),
        ("vehicle.max_tilt_deg=-1", "vehicle.max_tilt_deg"),
        ("scenario.v0_mps=[0,0]", "scenario.v0_mps"),
        ("scenario.r0_m=[0,0,-5]", "scenario.r0_m"),
        ("sim.dt_s=0", "sim.dt_s"),
        ("faults.acquisition_range_m=[3000,700]", "faults.acquisition_range_m"),
        ("guidance.altitude_breakpoints_m=[0,100,50]", "guidance.altitude_breakpoints_m"),
        ("+optimizer.momentum=0.9", "optimizer.momentum"),
        ("objective.cvar_alpha=1.5", "objective.cvar_alpha"),
        ("sim.max_duration_s=10", "sim.max_duration_s"),
        ("certification.unlandable=[lrf_missing]", "certification.unlandable"),
        ("certification.unlandable=lrf_absent", "certification.unlandable"),
        ("evaluation.n_nominal_scenarios=0", "evaluation.n_nominal_scenarios"),
        ("optimizer.batch_size=automatic", "optimizer.batch_size"),
        ("optimizer.replay_worst=5000", "optimizer.replay_worst"),
        ("optimizer.replay_fraction=0", "optimizer.replay_fraction"),
        ("optimizer.frozen=[gate]", "optimizer.frozen"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as info:
        descent_opt.load_config([override])
    assert str(info.value).startswith(key + ":")
    assert "\n" not in str(info.value)


def _fields(spec) -> dict:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def test_library_defaults_are_the_command_lines():
    """A Python user who builds a spec with its defaults gets the model the command line
    flies: every default field of the library's specs equals the composed configuration's.
    Left out, with the reason: ``max_duration_s``, which the configuration derives from the
    vehicle and the dispersion, and what a spec takes from other groups (the vehicle,
    gravity, the sensors, guidance, and the navigation priors of ``scenario``)."""
    from descent_opt.faults import FaultCatalog
    from descent_opt.guidance import GuidanceSpec, default_gains
    from descent_opt.objectives import ObjectiveSpec, SuccessCriteria
    from descent_opt.optimize.gains import TrainSpec
    from descent_opt.scenarios import ScenarioSpec, TerrainSpec
    from descent_opt.sensors import ImuSpec, LrfSpec
    from descent_opt.simulate import SimSpec

    config = descent_opt.load_config([])
    library = {
        "faults": (FaultCatalog(), config.faults),
        "objective": (ObjectiveSpec(), config.objective),
        "success": (SuccessCriteria(), config.success),
        "optimizer": (TrainSpec(), config.optimizer),
        "scenario": (ScenarioSpec(), config.scenario),
        "terrain": (TerrainSpec(), config.terrain),
        "sensors.imu": (ImuSpec(), config.sim.imu),
        "sensors.lrf": (LrfSpec(), config.sim.lrf),
        "guidance": (GuidanceSpec(), config.sim.guidance),
        "sim": (SimSpec(vehicle=config.vehicle), config.sim),
    }
    derived = {"max_duration_s", "vehicle", "gravity_mps2", "imu", "lrf"}
    derived |= {"guidance", "nav_altitude_sigma_m", "nav_velocity_sigma_mps"}
    derived |= {"nav_bias_sigma_mps2"}
    compared = 0
    for group, (default, composed) in library.items():
        for name, value in _fields(default).items():
            if name in derived:
                continue
            expected = getattr(composed, name)
            same = np.array_equal(np.asarray(value), np.asarray(expected))
            assert same, f"{group}.{name}: library {value!r}, command line {expected!r}"
            compared += 1
    assert compared > 60
    assert tuple(default_gains().altitude_breakpoints_m.tolist()) == config.altitude_breakpoints_m


def test_every_key_is_declared_once_and_documented():
    """The composed configuration holds exactly the declared keys (no key lives only in a
    YAML file), its values are the declared defaults unless a group option chose others,
    and conf/keys.md is the reference generated from the declarations."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from descent_opt.cli import config_dir
    from descent_opt.config import GROUPS, key_table

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        composed = OmegaConf.to_container(compose("config"), resolve=False)
    GlobalHydra.instance().clear()
    composed.pop("hydra", None)
    declared = {g.key(k.name) for g in GROUPS.values() for k in g.keys}
    flat = {}
    for name, body in composed.items():
        if isinstance(body, dict):
            flat.update({f"{name}.{k}": v for k, v in body.items()})
        else:
            flat[name] = body
    assert set(flat) == declared
    settings = descent_opt.load_config([]).settings()
    assert set(settings) == declared
    chosen = {"faults.name", "vehicle.name", "vehicle.note"}  # the group options' names
    # The default replay option (conf/replay/m2.yaml): Mission 2's departures from the
    # nominal descent that the library's ReplaySpec() flies.
    chosen |= {"replay.mission", "replay.lrf_acquisition_m", "replay.altitude_error_m"}
    chosen |= {"replay.report_height_m"}
    for group in GROUPS.values():
        for key, value in group.defaults().items():
            name = group.key(key)
            if name not in chosen and name in flat:
                assert flat[name] == value, name
    reference = (Path(config_dir()) / "keys.md").read_text()
    assert key_table() in reference, "conf/keys.md is stale: regenerate it (see its header)"
