"""SPEC 10 `analog_bits[pred_sweep]` (paper Fig. 7, sigmoid column): x / v / eps prediction.

sigmoid(-4) decoupled weighting (the default); tanh only for x-prediction.
"""

BASE_CONFIG = "configs/base.py"


def get_sweep() -> list[dict]:
    return [
        {
            "diffusion.predict": predict,
            "diffusion.weighting": "sigmoid_-4",
            "diffusion.decoupled": True,
            "model.final_activation": "tanh" if predict == "x" else "none",
        }
        for predict in ("x", "v", "eps")
    ]
