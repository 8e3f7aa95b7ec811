"""SPEC 10 `analog_bits[lap_sweep]` (paper Table 3): the location-aware palette type."""

BASE_CONFIG = "configs/base.py"


def get_sweep() -> list[dict]:
    return [{"data.lap_mode": mode} for mode in ("similar", "random", "different", "none")]
