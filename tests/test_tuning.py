"""Gain tuning compiles its training step once per setting, not once per call or per step."""

from __future__ import annotations

import jax
from shared_models import SHORT_DESCENT, VEHICLE

from descent_opt.faults import FaultCatalog
from descent_opt.guidance import default_gains
from descent_opt.objectives import ObjectiveSpec, SuccessCriteria
from descent_opt.optimize import gains as tuning
from descent_opt.scenarios import ScenarioSampler, TerrainSpec
from descent_opt.simulate import SimSpec


def test_training_step_traced_once_across_steps_and_catalogs(monkeypatch):
    """Count traces of the objective inside the jitted training step: the first call traces
    it once (not twice: weakly typed gains would be re-traced after Adam's first update),
    and a second call with another fault catalog (array leaves of the sampler) reuses it."""
    traces = []
    original = tuning.population_risk

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tuning, "population_risk", counting)
    spec = SimSpec(vehicle=VEHICLE, dt_s=0.5, duration_s=30.0)
    train = tuning.TrainSpec(steps=3, batch_size=6, warmup_steps=1)  # unique static setting

    def tune(catalog, seed):
        sampler = ScenarioSampler(SHORT_DESCENT, TerrainSpec(kind="flat"), catalog, 480.0)
        return tuning.tune_gains(
            spec,
            default_gains(),
            sampler,
            SuccessCriteria(),
            ObjectiveSpec(),
            train,
            key=jax.random.key(seed),
        )

    _, history = tune(FaultCatalog.nominal(), 0)
    assert len(history["objective"]) == 3
    assert len(traces) == 1
    tune(FaultCatalog(), 1)
    assert len(traces) == 1
