"""The paper's ablations at small scale (issue "proof on real data"), on configs/ablation_cpu.py.

Each entry changes one thing of the paper's recipe (x-prediction + tanh, sigmoid(-4) decoupled
weighting, input scale 0.1, LAP `similar`, analog bits). Seeds 0 and 1 for the input-scale and
palette comparisons and for uniform weighting (the one row that disagreed with the paper at the
first budget), seed 0 elsewhere. benchmarks/ablations.py runs them and tabulates the
results; `name` there is the workdir and the table's row.
"""

BASE_CONFIG = "configs/ablation_cpu.py"

_OTHER_ENCODING = {"model.final_activation": "none", "data.lap_mode": "random"}

# (row name, overrides of the base config): the comparison each run belongs to is in the name.
ABLATIONS: tuple[tuple[str, dict], ...] = (
    ("paper", {}),  # b 0.1, LAP similar, analog bits, sigmoid weighting, x + tanh
    ("scale_b1.0", {"diffusion.input_scale": 1.0}),  # Fig. 9: no input scaling
    ("lap_none", {"data.lap_mode": "none"}),  # Table 3
    ("lap_random", {"data.lap_mode": "random"}),
    ("lap_different", {"data.lap_mode": "different"}),
    # Table 1; one-hot and RGB as the paper ran them (SPEC 10: final act none, LAP random).
    ("enc_onehot", _OTHER_ENCODING | {"model.encoding": "onehot"}),
    ("enc_rgb", _OTHER_ENCODING | {"model.encoding": "rgb"}),
    # Fig. 7: the bare uniform weight (not decoupled), and eps- instead of x-prediction.
    ("weight_uniform", {"diffusion.weighting": "uniform", "diffusion.decoupled": False}),
    ("pred_eps", {"diffusion.predict": "eps", "model.final_activation": "none"}),
    ("act_none", {"model.final_activation": "none"}),  # tanh vs none
)
TWO_SEEDS = ("paper", "scale_b1.0", "lap_none", "lap_random", "lap_different", "weight_uniform")


def named_runs() -> list[tuple[str, dict]]:
    """(row name, dotted overrides with the run's seed), one per run: seed 0 of every row in
    ABLATIONS order, then the seed-1 runs (a sweep cut short still covers every comparison)."""
    first = [(name, {**overrides, "seed": 0}) for name, overrides in ABLATIONS]
    second = [
        (name, {**overrides, "seed": 1}) for name, overrides in ABLATIONS if name in TWO_SEEDS
    ]
    return first + second


def get_sweep() -> list[dict]:
    """One dict of dotted overrides per run (launch/sweep.sh's interface)."""
    return [overrides for _, overrides in named_runs()]
