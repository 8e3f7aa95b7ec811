r"""Benchmark: one jitted train step (SPEC 9.1) at batch 8, fp32, for the small and default models.

Measures the median wall time of `train.train_step` (jitted exactly as in training: donated
state, replicated out_shardings, on a 1-D mesh over all local devices) on a synthetic batch,
the peak host memory growth (RSS high-water mark, which on CPU is where the arrays live) and,
where the device reports a peak FLOP rate, the model FLOP utilisation. SPEC 6.6: 69.2 GFLOP
per 128 px forward pass; a train step is ~3x a forward pass (forward + backward).

Command (from the repo root; the glibc settings keep malloc from returning memory between steps,
which otherwise dominates the CPU timings):

  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \
    python benchmarks/train_step.py --configs=small,default --repeats=5
"""

import argparse
import resource
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, ".")  # configs/ lives at the repo root

from bitseg_jax import sharding, train, train_state
from configs import base

FORWARD_GFLOP_128 = 69.2  # SPEC 6.6, default model, one 128 px image.


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _config(name: str):
    config = base.get_config(None if name == "default" else name)
    with config.unlocked():
        config.batch_size = 8
        config.model.dtype = "float32"
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


def bench(name: str, repeats: int, warmup: int) -> dict:
    """Times `repeats` train steps after `warmup` (compile included in the first) steps."""
    config = _config(name)
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
        state, metrics = fns.train(state, batch, rng)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = fns.train(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    s = config.model.image_size
    # SPEC's FLOP count scales with pixels for this all-convolutional model (attention is small).
    spec_gflop = (
        3 * FORWARD_GFLOP_128 * (s / 128) ** 2 * config.batch_size if name == "default" else None
    )
    peak = getattr(jax.devices()[0], "peak_flops", None)  # not reported by CPU devices
    return {
        "config": name,
        "params": train_state.num_params(state.params),
        "batch": config.batch_size,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "compile_s": compile_s,
        "xla_gflop_per_step": flops / 1e9,
        "spec_gflop_per_step": spec_gflop,
        "achieved_gflops": flops / 1e9 / median,
        "mfu": (flops / median / peak) if peak else None,
        "peak_rss_delta_mib": _peak_rss_mib() - rss0,
        "loss": float(metrics["train/loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    for name in args.configs.split(","):
        result = bench(name, args.repeats, args.warmup)
        print(
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
            )
        )


if __name__ == "__main__":
    main()
