r"""The small-scale ablation recipe (paper Figs. 7 and 9, Tables 1 and 3) on BSDS500, CPU-sized.

Every ablation run (configs/sweeps/ablation_cpu.py) is this config plus one change, with the same
data, steps, seed handling and evaluation. Run them all, with the table, by

  python benchmarks/ablations.py --workdir=workdirs/ablations

Model and data: the quickstart's model (32 px, 32 channels, multipliers (1, 2, 2), 6 analog
bits, attention at 8 x 8) on BSDS500 train (200 photographs, each of its 4-9 annotations is a
training target), resized to 32 px. It reads the publisher's files from ../shared/data (point
`--config.data.manual_dir` elsewhere). At this size the model learns the coarse layout of a
photograph only; the comparisons are between runs of equal budget, not paper-level numbers.
"""

import ml_collections

from configs import bsds_cpu, quickstart


def get_config() -> ml_collections.ConfigDict:
    """The ablation base config (see module docstring)."""
    config = quickstart.get_config()
    config.total_steps = 2500  # about 15 min of one core (issue 7 asks about 20 min per run).
    config.vali_loss_every_steps = 500
    config.eval_every_steps = 2500  # once, at the end (the table uses `--mode=eval`).
    config.ckpt_every_steps = 500

    d = config.data
    d.datasets = ("bsds500",)
    d.weights = (1.0,)
    d.manual_dir = bsds_cpu.SHARED_DATA
    d.shuffle_buffer = 1000

    o = config.optim
    o.warmup_steps = 100
    o.decay_steps = 850
    return config
