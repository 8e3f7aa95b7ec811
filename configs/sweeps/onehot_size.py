"""SPEC 10 `onehot[size_sweep]` (paper Fig. 3): 2, 4, 6 bits = 4, 16, 64 one-hot channels."""

BASE_CONFIG = "configs/base.py:onehot"


def get_sweep() -> list[dict]:
    return [{"model.num_bits": k} for k in (2, 4, 6)]
