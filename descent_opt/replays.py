"""Mission replays: one reported descent as one scenario, flown with any gain table."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ReplaySpec:
    """One descent as reported: where it starts, what navigation believes, what the
    altimeter does and the ground below. The defaults fly the nominal descent with nominal
    sensors (the options of ``conf/replay/`` set each mission's departures)."""

    mission: str = "nominal descent"
    r0_m: tuple[float, float, float] | None = None  # None: scenario.r0_m
    v0_mps: tuple[float, float, float] | None = None  # None: scenario.v0_mps
    altitude_error_m: float = 0.0  # estimate minus truth at the start (+: believes higher)
    velocity_error_mps: tuple[float, float, float] = (0.0, 0.0, 0.0)  # estimate minus truth
    imu_bias_mps2: tuple[float, float, float] = (0.0, 0.0, 0.0)  # accelerometer bias
    lrf_acquisition_m: float | None = None  # first valid range below this; None: design range
    lrf_max_range_m: float | None = None  # None: sensors.lrf_max_range_m
    lrf_absent: bool = False
    lrf_bias_m: float = 0.0
    heavy_tail_scale_m: float = 0.0  # Student-t scale of dark-terrain noise; 0: none
    rim_step_height_m: float = 0.0  # crater rim under the approach; 0: none
    rim_radius_m: float = 1000.0
    slope_deg: float = 0.0  # ground slope at the site (downhill along +x)
    reject_policy: str | None = None  # None: navigation.reject_policy
