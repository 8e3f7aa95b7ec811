"""SPEC 10 `analog_bits[sigmoid_sweep]`: the bias of the decoupled sigmoid loss weight."""

BASE_CONFIG = "configs/base.py"


def get_sweep() -> list[dict]:
    return [{"diffusion.weighting": f"sigmoid_{bias}"} for bias in (-6, -4, -2, 0, 2)]
