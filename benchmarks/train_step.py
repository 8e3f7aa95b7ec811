r"""Benchmark: one jitted train step (SPEC 9.1) at batch 8 for the small and default models.

Measures the median wall time of `train.train_step` (jitted exactly as in training: donated
state, replicated out_shardings, on a 1-D mesh over all local devices) on a synthetic batch,
peak memory (the device allocator's high-water mark on GPU/TPU; on CPU, where the arrays live in
host memory, the growth of the process's RSS high-water mark) and the model FLOP utilisation
where the device's peak is known (benchmarks/flops.py: 3x XLA's count of one forward pass, about
SPEC 6.6's 69.2 GFLOP per 128 px image; bf16 peaks of common GPUs and TPUs, else
`--peak_tflops`).

Commands (from the repo root). CPU, fp32 (the glibc settings keep malloc from returning memory
between steps, which otherwise dominates the CPU timings):

  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \
    python benchmarks/train_step.py --configs=small,default --repeats=5

GPU or TPU, the paper's default model in bfloat16 (issue 3's accelerator measurement):

  python benchmarks/train_step.py --configs=default --dtype=bfloat16 --repeats=20 --warmup=3
"""

import argparse
import os
import resource
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import flops as flops_lib
from bitseg_jax import sharding, train, train_state
from configs import base


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _config(name: str, dtype: str):
    config = base.get_config(None if name == "default" else name)
    with config.unlocked():
        config.batch_size = 8
        config.model.dtype = dtype
    return config


def _batch(config, mesh) -> dict:
    rng = np.random.default_rng(0)
    s, b = config.model.image_size, config.batch_size
    batch = {
        "image": rng.normal(size=(b, s, s, 3)).astype(np.float32),
        "label": rng.integers(0, 2**config.model.num_bits, size=(b, s, s)).astype(np.int32),
        "valid": np.ones((b, s, s), bool),
    }
    return sharding.to_global(batch, mesh)


def bench(
    name: str, repeats: int, warmup: int, dtype: str = "float32", peak: float | None = None
) -> dict:
    """Times `repeats` train steps after `warmup` (compile included in the first) steps."""
    config = _config(name, dtype)
    mesh = sharding.create_mesh()
    rss0 = _peak_rss_mib()
    # Exactly the functions training uses: donated state, replicated out_shardings.
    fns = train.step_functions(train._step_config(config), mesh)
    state = fns.init(jax.random.key(0))
    rng = jax.random.key(1)
    batch = _batch(config, mesh)
    t0 = time.perf_counter()
    compiled = fns.train.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    flops = float(cost.get("flops", 0.0)) if isinstance(cost, dict) else 0.0
    for _ in range(warmup):
        state, _ = fns.train(state, batch, rng)
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = fns.train(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    model_gflop = 3 * flops_lib.forward_gflop(config.model, config.batch_size)
    devices = mesh.devices.size
    peak = flops_lib.peak_tflops(jax.devices()[0], dtype, peak)
    return {
        "config": name,
        "dtype": dtype,
        "device": jax.devices()[0].device_kind,
        "devices": devices,
        "params": train_state.num_params(state.params),
        "batch": config.batch_size,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "compile_s": compile_s,
        "xla_gflop_per_step": flops / 1e9,  # the compiled step's own count (per device)
        "model_gflop_per_step": model_gflop,
        "achieved_gflops": model_gflop / median,
        "mfu": model_gflop / 1e3 / median / (devices * peak) if peak else None,
        "peak_device_mib": flops_lib.peak_device_memory_mib(jax.devices()[0]),
        "peak_rss_delta_mib": _peak_rss_mib() - rss0,
        "loss": float(metrics["train/loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="dense peak per device, for the MFU"
    )
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    for name in args.configs.split(","):
        result = bench(name, args.repeats, args.warmup, args.dtype, args.peak_tflops)
        print(
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
            )
        )


if __name__ == "__main__":
    main()
