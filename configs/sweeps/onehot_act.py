"""SPEC 10 `onehot[act_sweep]`: final activation sigmoid / softmax of the one-hot x-predictor."""

BASE_CONFIG = "configs/base.py:onehot"


def get_sweep() -> list[dict]:
    return [
        {"diffusion.predict": "x", "model.final_activation": act} for act in ("sigmoid", "softmax")
    ]
