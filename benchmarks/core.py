r"""Benchmark: host-side palette assignment and batched segmentation metrics (SPEC 4.2, 8).

Measures, in one process:
  * `palette.assign` throughput (maps/s) on 128 x 128 instance maps with ~30 segments (sparse
    uint8-style ids, as in the raw masks), mode `similar` (the default), plus `different`, `none`
    and a 100-segment map that goes through excess merging. NumPy is single-threaded, so this
    is the per-core rate inside tf.data. Target: >= 2,000 maps/s.
  * `metrics.segmentation_metrics` throughput (images/s) on a batch of 64 images x 3 samples at
    128 x 128 with <= 64 segments per map (labels < 64, as after the palette and the sampler;
    the right 43 columns are padding outside `valid`), plus the same maps with sparse 8-bit ids
    (the host compaction path) and with ids up to 64,000 (np.unique per map). Target: >= 1,000
    images/s for the first.
Every figure is the median over `--repeats` timed runs after one warm-up run (the jit compile),
as wall-clock throughput and as throughput per CPU-second of this process (all its threads).

Command (from the repo root; the glibc settings keep malloc from returning memory between runs):

  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \
    python benchmarks/core.py --repeats=7
"""

import argparse
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, ".")  # run from the repo root without installing.

from bitseg_jax import metrics, palette

SIZE = 128


def voronoi_maps(rng: np.random.Generator, count: int, num_segments: int) -> np.ndarray:
    """[count, SIZE, SIZE] int64 maps of `num_segments` Voronoi cells with ids 0..n-1."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    maps = []
    for _ in range(count):
        centres = rng.uniform(0, SIZE, (num_segments, 2))
        dist = (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
        maps.append(dist.argmin(-1))
    return np.stack(maps)


def time_median(fn, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of `fn()` over `repeats` runs after one warm-up.

    On a shared machine the wall time includes waiting for a core; the CPU time (all threads of
    this process) does not, so it is the better estimate of the uncontended cost.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def bench_palette(repeats: int) -> None:
    rng = np.random.default_rng(0)
    # Sparse ids as in the raw 8-bit instance masks: 30 distinct values out of 0..255.
    ids = np.stack([rng.permutation(256)[:30] for _ in range(64)])
    maps30 = np.take_along_axis(ids, voronoi_maps(rng, 64, 30).reshape(64, -1), axis=1)
    maps30 = maps30.reshape(64, SIZE, SIZE).astype(np.uint8)
    maps100 = voronoi_maps(rng, 64, 100).astype(np.uint8)
    relabel_rng = np.random.default_rng(1)
    cases = [
        ("similar, 30 segments", maps30, "similar"),
        ("different, 30 segments", maps30, "different"),
        ("none, 30 segments", maps30, "none"),
        ("similar, 100 segments (merged to 64)", maps100, "similar"),
    ]
    for name, maps, mode in cases:

        def run(maps=maps, mode=mode):
            for m in maps:
                palette.assign(m, mode=mode, num_bits=6, rng=relabel_rng)

        wall, cpu = time_median(run, repeats)
        print(
            f"palette.assign {name:37s} {len(maps) / wall:7.0f} maps/s wall, "
            f"{len(maps) / cpu:7.0f} maps/CPU-s"
        )


def bench_metrics(repeats: int, num_images: int, num_samples: int) -> None:
    rng = np.random.default_rng(0)
    gt = voronoi_maps(rng, num_images, 64).astype(np.int32)
    pred = voronoi_maps(rng, num_images * num_samples, 40).astype(np.int32)
    pred = pred.reshape(num_images, num_samples, SIZE, SIZE)
    valid = np.zeros(gt.shape, bool)
    valid[:, :, :85] = True  # a 451 x 300 image resized: 128 x 85 valid (SPEC 12).
    cases = [
        ("labels < 64", gt, pred),
        ("ids < 256 (compacted)", gt * 4 + 1, pred * 6),
        ("ids < 64,000 (np.unique per map)", gt * 1000, pred * 997 + 5),
    ]
    for name, g, p in cases:
        wall, cpu = time_median(lambda g=g, p=p: metrics.segmentation_metrics(g, p, valid), repeats)
        print(
            f"segmentation_metrics {num_images}x{num_samples}, {name:32s} "
            f"{num_images / wall:7.0f} images/s wall ({num_images * num_samples / wall:.0f} "
            f"pairs/s), {num_images / cpu:7.0f} images/CPU-s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=3)
    args = parser.parse_args()
    bench_palette(args.repeats)
    bench_metrics(args.repeats, args.num_images, args.num_samples)


if __name__ == "__main__":
    main()
