r"""BSDS500 (photographs, 4-9 human segmentations each) + DSB2018 (nuclei) at CPU size.

Command (from the repo root; reads the publisher's layout from ../shared/data, see
../shared/data/README.md; the TFDS data set is built on the first run):

  python -m bitseg_jax.main --config=configs/bsds_cpu.py --workdir=workdirs/bsds_cpu

BSDS500 only: add `--config.data.datasets="('bsds500',)" --config.data.weights="(1.0,)"`.
Elsewhere, point `--config.data.manual_dir` at the folder that holds `BSDS500/` and
`dsb2018/`.

Data: a 3:1 mixture of BSDS500 train (200 photographs; each of their 4-9 annotations is a
target) and DSB2018 train (496 microscopy images); evaluation and the best checkpoint use the
first, BSDS500 validation (`eval/max_ari`, 64 images x 3 samples every 1,000 steps). The model
runs at 64 px; evaluation scores at 128 px (`eval.image_size`: samples nearest-upsampled to
the annotations' size, as the classical baselines of docs/results_bsds.md are scored).

Hardware and runtime (measured 2026-12-03): 0.49-0.52 steps/s pinned to one core of a 2-core
CPU, so the 2,000 steps take 66-81 minutes with the two periodic evaluations. Result, two
seeds: BSDS500 validation ARI 0.119 / 0.141 (mean over annotators, `--eval_setup=vali8`), far
below the classical Felzenszwalb (0.402) and the annotators (0.683): this config shows the
method learning on real data within a CPU budget, not paper-level numbers
(docs/results_real_data.md).
"""

import os

import ml_collections

from configs import base

# ../shared/data next to the repository (the development machine's layout).
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


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
    e.image_size = 128  # scored at 128 px: samples nearest-upsampled to the annotations.
    return config
