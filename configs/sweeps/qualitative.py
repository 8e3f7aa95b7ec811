"""SPEC 10 "no-tanh / eps-pred qualitative" (paper Fig. 8): models that leave noisy patches."""

BASE_CONFIG = "configs/base.py"


def get_sweep() -> list[dict]:
    return [
        {"model.final_activation": "none"},  # x-prediction without tanh
        {"diffusion.predict": "eps", "model.final_activation": "none"},
    ]
