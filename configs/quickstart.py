r"""Quickstart: a small analog-bits model on the locally generated dead_leaves data (no downloads).

Command (from the repo root):

  python -m bitseg_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart

Hardware and runtime: made for a laptop-class CPU: 15 minutes on a 2-core CPU (about 6 steps/s;
the dead_leaves/small data set, 2,000 + 200 images of 64 px, is generated on the first run, in
seconds, and cached in the TFDS data dir). Measured result (2026-12-03, 2-core CPU, this
config): final eval on 32 validation images x 2 samples ARI 0.396 (best of 2: 0.439), IoU
0.267. The model gets the large regions right; small shapes are merged into their
neighbours or fragmented, with some speckle (see benchmarks/RESULTS.md). For a 10-minute run
add `--config.total_steps=3000 --config.optim.decay_steps=1000` (ARI about 0.30); 6,000 steps
reached 0.415.

Everything else is the paper's recipe (configs/base.py): x-prediction with tanh, cosine
schedule with input scale 0.1, sigmoid(-4) decoupled loss weights, LAP `similar`, 6 analog bits,
CFG image dropout 5%, DDPM sampling with 8 steps and guidance weight 1.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """The quickstart config (see module docstring)."""
    config = base.get_config()
    config.total_steps = 5000
    config.batch_size = 8
    config.log_every_steps = 50
    config.vali_loss_every_steps = 1000
    config.num_vali_batches = 2
    config.eval_every_steps = 5000  # once, at the end
    config.ckpt_every_steps = 1000

    m = config.model
    m.image_size = 32
    m.num_channels = 32
    m.channel_multiplier = (1, 2, 2)
    m.num_res_blocks = 1
    m.num_middle_res_blocks = 2
    m.attention_levels = (-1,)  # attention at the 8 x 8 level and in the middle

    config.data.datasets = ("dead_leaves/small",)
    config.data.shuffle_buffer = 2000

    o = config.optim
    o.lr = 5e-4  # a small model and few steps tolerate (and need) a larger LR than the paper's
    o.warmup_steps = 100
    o.decay_steps = 1700

    e = config.eval
    e.batch_size = 16
    e.num_images = 32
    e.num_samples = 2
    return config
