"""SPEC 10 `onehot[pred_sweep]`: x / v / eps prediction of the one-hot model (no activation)."""

BASE_CONFIG = "configs/base.py:onehot"


def get_sweep() -> list[dict]:
    return [
        {"diffusion.predict": predict, "model.final_activation": "none"}
        for predict in ("x", "v", "eps")
    ]
