r"""BSDS500 (natural photographs, 4-9 human segmentations per image) at CPU size.

Command (from the repo root; reads the publisher's layout from ../shared/data, see
../shared/data/README.md; the TFDS data set is built on the first run):

  python -m bitseg_jax.main --config=configs/bsds_cpu.py --workdir=workdirs/bsds_cpu

Mix in DSB2018 (microscopy) with equal weight:

  python -m bitseg_jax.main --config=configs/bsds_cpu.py --workdir=workdirs/bsds_dsb \
    --config.data.datasets="('bsds500', 'dsb2018')" --config.data.weights="(0.5, 0.5)"

Elsewhere, point `--config.data.manual_dir` at the folder that holds `BSDS500/` (and
`dsb2018/`).

Hardware and runtime: a 2-core CPU, roughly 1 s per step at 64 px with this model, so the
default 3,000 steps take about an hour (eval of 64 validation images x 3 samples every 1,000
steps included). BSDS500 has 200 training images only: this config demonstrates the pipeline on
real data and supports small-scale comparisons; it does not reach paper-level numbers (human
annotators agree with each other at ARI ~0.68 on the validation split at 128 px). The metric to
watch is `eval/max_ari` (best of 3 samples; the best checkpoint is kept by it). The real-data
reproduction will refine this config.
"""

import os

import ml_collections

from configs import base

# ../shared/data next to the repository (the development machine's layout).
SHARED_DATA = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def get_config() -> ml_collections.ConfigDict:
    """The BSDS500 CPU config (see module docstring)."""
    config = base.get_config("small")  # 64 px, 32 channels, (1, 2, 3, 4)
    config.total_steps = 2000
    config.batch_size = 8
    config.log_every_steps = 50
    config.vali_loss_every_steps = 500
    config.num_vali_batches = 4
    config.eval_every_steps = 1000
    config.ckpt_every_steps = 500

    config.model.num_res_blocks = 2

    d = config.data
    d.datasets = ("bsds500", "dsb2018")  # eval and best checkpoint: the first, BSDS500
    d.weights = (0.75, 0.25)
    d.manual_dir = SHARED_DATA
    d.shuffle_buffer = 1000

    o = config.optim
    o.lr = 4e-4  # the quickstart found small models on short budgets need more than 1e-4
    o.warmup_steps = 200
    o.decay_steps = 700

    e = config.eval
    e.num_images = 64
    e.num_samples = 3
    return config
