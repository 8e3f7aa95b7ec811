r"""Benchmark: guided sampling throughput (SPEC 7.1), images/s, for the default and small models.

Times the jitted sampler the Evaluator and the Segmenter use (`evaluation.get_sample_fn`:
`diffusion.sample` driving `models.apply_unet`), 8 DDPM steps with guidance weight 1.0 (so every
step runs the U-Net on a batch of 2 x 8: conditional and unconditional halves) at batch 8, fp32,
on one device. Compilation (AOT `lower().compile()`) is timed separately; the reported number is
the median over repeats of whole-batch wall time, as images per second. Random weights: the
time does not depend on their values. FLOPs are XLA's count of one U-Net forward pass (67.9
GFLOP per 128 px image for the default model, SPEC 6.6 says 69.2): one default batch is
8 steps x 16 images x 67.9 = 8.7 TFLOP. On GPU/TPU the MFU and the device's peak memory are
reported too (benchmarks/flops.py).

Commands (from the repo root; the glibc settings keep malloc from returning memory between
calls):

  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \
    python benchmarks/sampling.py --configs=small --repeats=3
  (same prefix) python benchmarks/sampling.py --configs=default --repeats=2 --warmup=0
  # GPU or TPU:
  python benchmarks/sampling.py --configs=default --dtype=bfloat16 --repeats=10
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import flops as flops_lib
from bitseg_jax import evaluation, models
from configs import base


def _config(name: str, dtype: str):
    config = base.get_config(None if name == "default" else name)
    with config.unlocked():
        config.model.dtype = dtype
    return config


def bench(
    name: str,
    *,
    batch: int,
    steps: int,
    guidance: float,
    sampler: str,
    repeats: int,
    warmup: int,
    dtype: str = "float32",
    peak: float | None = None,
):
    """Compiles once, runs `warmup` untimed batches, then times `repeats` sampling runs."""
    config = _config(name, dtype)
    size = config.model.image_size
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda p: jax.device_put(0.02 * rng.normal(size=p.shape).astype(np.float32)),
        models.abstract_params(config.model),
    )
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    image = jax.device_put(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
    valid = jax.device_put(np.ones((batch, size, size), bool))
    fn = evaluation.get_sample_fn(
        config, num_steps=steps, guidance_weight=guidance, sampler=sampler
    )
    start = time.perf_counter()
    compiled = fn.lower(params, jax.random.key(0), image, valid).compile()
    compile_s = time.perf_counter() - start
    passes = batch * (2 if guidance != 0 else 1)  # U-Net batch per step (guidance doubles it)
    step_gflop = flops_lib.forward_gflop(config.model, passes)
    for _ in range(warmup):
        compiled(params, jax.random.key(0), image, valid).block_until_ready()
    times, cpu_times = [], []
    for i in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        compiled(params, jax.random.key(i + 1), image, valid).block_until_ready()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    median = statistics.median(times)
    cpu_median = statistics.median(cpu_times)
    gflop = steps * step_gflop
    peak = flops_lib.peak_tflops(jax.devices()[0], dtype, peak)
    return {
        "config": name,
        "dtype": dtype,
        "device": jax.devices()[0].device_kind,
        "image_size": size,
        "params": num_params,
        "batch": batch,
        "steps": steps,
        "guidance": guidance,
        "sampler": sampler,
        "compile_s": round(compile_s, 2),
        "batch_s_median": round(median, 3),
        "batch_s_all": [round(t, 3) for t in times],
        "images_per_s": round(batch / median, 3),
        # CPU seconds of this process (all threads) per batch: excludes time spent waiting for
        # a core on a shared machine; cpu_s / cores estimates the uncontended wall time.
        "batch_cpu_s_median": round(cpu_median, 3),
        "images_per_cpu_s": round(batch / cpu_median, 4),
        "gflop_per_forward_image": round(step_gflop / passes, 2),
        "gflop_per_batch": round(gflop, 1),
        "gflop_per_s": round(gflop / median, 1),
        "mfu": round(gflop / 1e3 / median / peak, 4) if peak else None,
        "peak_device_mib": flops_lib.peak_device_memory_mib(jax.devices()[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,default")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs after compiling")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="dense peak of the device, for the MFU"
    )
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    for name in args.configs.split(","):
        result = bench(
            name,
            batch=args.batch,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            repeats=args.repeats,
            warmup=args.warmup,
            dtype=args.dtype,
            peak=args.peak_tflops,
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
