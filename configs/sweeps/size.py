"""SPEC 10 `analog_bits[size_sweep]` (paper Fig. 3): number of analog bits (4 to 1024 classes).

Unlike the reference (bug B8), 10 bits really gives 1024 classes here.
"""

BASE_CONFIG = "configs/base.py"


def get_sweep() -> list[dict]:
    return [{"model.num_bits": k} for k in (2, 4, 6, 8, 10)]
