"""SPEC 10 input-scale study (paper Fig. 9): input scale b without LAP; 1.0 = no scaling.

The paper gives no b values (SPEC A3); these bracket the default 0.1 on a log-like grid.
"""

BASE_CONFIG = "configs/base.py"


def get_sweep() -> list[dict]:
    return [
        {"diffusion.input_scale": b, "data.lap_mode": "none"}
        for b in (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    ]
