"""SPEC 10 `analog_bits[pred_loss_weights_sweep]` (paper Fig. 7): prediction x loss weighting.

Not decoupled (the bare weight functions); tanh only for x-prediction (SPEC 5.4 `tanh_if_x`).
The config inherits LAP `similar` although the paper's text says "no LAP" (SPEC A3); add
`--config.data.lap_mode=none` to follow the text.
"""

BASE_CONFIG = "configs/base.py"
PREDICTIONS = ("x", "v", "eps")
WEIGHTINGS = ("SNR", "SNR_plus1", "SNR_trunc", "uniform")


def get_sweep() -> list[dict]:
    return [
        {
            "diffusion.predict": predict,
            "diffusion.weighting": weighting,
            "diffusion.decoupled": False,
            "model.final_activation": "tanh" if predict == "x" else "none",
        }
        for predict in PREDICTIONS
        for weighting in WEIGHTINGS
    ]
