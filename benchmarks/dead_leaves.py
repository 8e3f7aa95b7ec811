r"""Benchmark: dead_leaves generation rate and TFDS preparation time per config.

Command (from the repo root):

  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \
    python benchmarks/dead_leaves.py --configs=tiny,small,default

Prints, per config, the median images/s of `dead_leaves.sample` (numpy generation only, over
`--repeats` runs of `--num_images` images) and the wall time of one
`download_and_prepare` into a fresh temporary data dir (generation + PNG encoding + TFDS
writing and shuffling of both splits).
"""

import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags

from bitseg_jax.datasets import dead_leaves

_CONFIGS = flags.DEFINE_list("configs", ["tiny", "small", "default"], "dead_leaves configs.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 200, "Images per generation timing run.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Generation timing runs (median reported).")
_PREPARE = flags.DEFINE_bool("prepare", True, "Also time download_and_prepare.")


def main(argv):
    del argv
    tfds.disable_progress_bar()
    dead_leaves._texture_pyramids()  # loaded once per process; not part of the rate
    configs = {c.name: c for c in dead_leaves.DeadLeaves.BUILDER_CONFIGS}
    for name in _CONFIGS.value:
        cfg = configs[name]
        rates = []
        for r in range(_REPEATS.value):
            start = time.perf_counter()
            for i in range(_NUM_IMAGES.value):
                rng = np.random.default_rng([cfg.seed, 0, r * _NUM_IMAGES.value + i])
                dead_leaves.sample(
                    rng,
                    image_size=cfg.image_size,
                    min_layers=cfg.min_layers,
                    max_layers=cfg.max_layers,
                )
            rates.append(_NUM_IMAGES.value / (time.perf_counter() - start))
        line = f"{name}: {cfg.image_size} px, generation median {np.median(rates):.0f} images/s"
        if _PREPARE.value:
            with tempfile.TemporaryDirectory() as data_dir:
                start = time.perf_counter()
                tfds.builder(f"dead_leaves/{name}", data_dir=data_dir).download_and_prepare()
                seconds = time.perf_counter() - start
            total = cfg.num_train + cfg.num_validation
            line += (
                f"; prepare {total} examples: {seconds:.1f} s ({total / seconds:.0f} examples/s)"
            )
        print(line, flush=True)


if __name__ == "__main__":
    app.run(main)
