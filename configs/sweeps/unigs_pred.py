"""SPEC 10 `unigs[pred_sweep]`: x / v / eps prediction of the RGB (UniGS) model."""

BASE_CONFIG = "configs/base.py:unigs"


def get_sweep() -> list[dict]:
    return [
        {"diffusion.predict": predict, "model.final_activation": "none"}
        for predict in ("x", "v", "eps")
    ]
