"""SPEC 10 / paper Table 1: analog bits, one-hot and RGB, each with its LAP and without ("none").

Each entry spells out the encoding's settings, so they all apply to configs/base.py.
"""

BASE_CONFIG = "configs/base.py"

ENCODINGS = {
    # encoding: (final activation, LAP mode used "with LAP")
    "analog_bits": ("tanh", "similar"),
    "onehot": ("none", "random"),
    "rgb": ("none", "random"),
}


def get_sweep() -> list[dict]:
    return [
        {"model.encoding": enc, "model.final_activation": act, "data.lap_mode": lap}
        for enc, (act, lap_mode) in ENCODINGS.items()
        for lap in (lap_mode, "none")
    ]
