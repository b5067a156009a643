"""Models shared by the tests: the default vehicle and a short descent that lands inside a
40-60 s horizon, so closed-loop tests compile once and run fast."""

from descent_opt.dynamics import Vehicle
from descent_opt.scenarios import ScenarioSpec

VEHICLE = Vehicle(480.0, 340.0, 2000.0, 400.0, 320.0, 15.0)

# From 300 m at 20 m/s with a 20 m altitude knowledge error: touchdown after ~30-35 s.
SHORT_DESCENT = ScenarioSpec(
    r0_m=(0.0, 0.0, 300.0),
    v0_mps=(0.0, 0.0, -20.0),
    position_sigma_m=(20.0, 20.0, 20.0),
    velocity_sigma_mps=(0.5, 0.5, 1.0),
    nav_altitude_sigma_m=20.0,
)
