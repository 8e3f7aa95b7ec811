r"""Input-pipeline throughput: train images/s at 128 px with augmentation and palette.

Reads prepared TFDS records (undecoded until after shuffling, as in training) of

* `dead_leaves` at 128 px (a 1,000-example train split made with a custom `DeadLeavesConfig`,
  prepared once into --data_dir; about two minutes of generation on 2 cores), and
* `bsds500` (200 train photographs of 481 x 321 with 4-9 annotators, from the manual-download
  folder ../shared/data, also prepared into --data_dir),

and, as an upper bound without decoding, the same dead_leaves examples cached decoded in memory.
Each case runs `input_pipeline.train_dataset` with the paper's defaults (`analog_bits`, 6 bits,
LAP `similar`, SPEC 2.3 augmentations) and reports the median over --repeats of images/s over
--batches batches after a warm-up, plus the process CPU time per image (less sensitive to other
processes sharing the CPU). Command (from the repo root):

  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \
    python benchmarks/input_pipeline.py --data_dir=/tmp/bitseg_bench_tfds
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tensorflow as tf
import tensorflow_datasets as tfds

tf.config.set_visible_devices([], "GPU")

from bitseg_jax import input_pipeline
from bitseg_jax.datasets import dead_leaves
from configs import base

MANUAL_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def dead_leaves_source(data_dir: str) -> input_pipeline.RawSource:
    config = dead_leaves.DeadLeavesConfig(
        name="bench128",
        description="128 px, 3-30 shapes; 1,000 train (benchmark).",
        image_size=128,
        num_train=1_000,
        num_validation=16,
    )
    builder = dead_leaves.DeadLeaves(config=config, data_dir=data_dir)
    builder.download_and_prepare()
    return input_pipeline.source_from_builder(builder, "train")


def bsds500_source(data_dir: str) -> input_pipeline.RawSource:
    return input_pipeline.source_from_tfds(
        "bsds500", "train", data_dir=data_dir, manual_dir=str(MANUAL_DIR)
    )


def in_memory_source(source: input_pipeline.RawSource) -> input_pipeline.RawSource:
    """The same examples decoded once and cached in memory (no decoding in the loop)."""
    decoded = source.read(0, source.num_examples).map(source.decode).cache()
    for _ in decoded:  # fill the cache
        pass
    return input_pipeline.source_from_dataset(decoded, f"{source.name} (decoded, in memory)")


def measure(source, config, *, batches: int, repeats: int) -> tuple[float, float]:
    """(median images/s, median CPU ms per image) over `repeats` runs of `batches` batches."""
    iterator = input_pipeline.train_dataset([source], config).as_numpy_iterator()
    for _ in range(5):  # warm-up: tracing, shuffle buffer, autotuning.
        next(iterator)
    rates, cpu = [], []
    for _ in range(repeats):
        wall, proc = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(iterator)
        n = batches * config.batch_size
        rates.append(n / (time.perf_counter() - wall))
        cpu.append(1e3 * (time.process_time() - proc) / n)
    return statistics.median(rates), statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="/tmp/bitseg_bench_tfds")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = base.get_config()
    config.batch_size = args.batch_size
    config.data.shuffle_buffer = 1_000
    tfds.disable_progress_bar()
    leaves = dead_leaves_source(args.data_dir)
    cases = [("dead_leaves 128 px, TFDS records", leaves)]
    if MANUAL_DIR.joinpath("BSDS500").is_dir():
        cases.append(("bsds500 train, TFDS records", bsds500_source(args.data_dir)))
    cases.append(("dead_leaves 128 px, decoded in memory", in_memory_source(leaves)))

    print(f"load average before: {os.getloadavg()}")
    print(f"| source | augment | images/s (median of {args.repeats}) | CPU ms / image |")
    print("|---|---|---|---|")
    for name, source in cases:
        for augment in (True, False):
            config.data.augment = augment
            rate, cpu = measure(source, config, batches=args.batches, repeats=args.repeats)
            print(f"| {name} | {'on' if augment else 'off'} | {rate:.0f} | {cpu:.2f} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
