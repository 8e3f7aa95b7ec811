"""Model FLOPs, accelerator peaks and device memory for the benchmarks (MFU and memory columns).

MFU here is model FLOP utilisation: the U-Net's forward FLOPs (XLA's count of one unpartitioned
forward pass) times 3 for a train step (forward + backward) or times the number of U-Net calls
for sampling, divided by wall time and by the summed dense peak of the devices used. The peaks
are the vendors' dense (no sparsity) bfloat16 figures; any other dtype or device needs
`--peak_tflops`.
"""

import jax
import numpy as np

from bitseg_jax import encoding, models

# (substring of `jax.Device.device_kind`, dense bf16 peak TFLOP/s per device); first match wins.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L4", 121.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5", 459.0),  # v5p
    ("TPU v6 lite", 918.0),  # v6e
)


def forward_gflop(model_config, batch: int) -> float:
    """XLA's FLOP count (GFLOP) of one U-Net forward pass on `batch` images, on abstract
    parameters (nothing is allocated), compiled alone: XLA counts a loop body once, so the
    sampler's scan and a sharded step's per-device program do not give this number."""
    size = model_config.image_size
    channels = encoding.num_channels(model_config.encoding, model_config.num_bits)
    forward = jax.jit(lambda p, x, t, i: models.apply_unet(model_config, p, x, t, i))
    cost = forward.lower(
        models.abstract_params(model_config),
        jax.ShapeDtypeStruct((batch, size, size, channels), np.float32),
        jax.ShapeDtypeStruct((batch,), np.float32),
        jax.ShapeDtypeStruct((batch, size, size, 3), np.float32),
    ).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / 1e9


def peak_tflops(device: jax.Device, dtype: str, override: float | None = None) -> float | None:
    """Dense peak TFLOP/s of one device for `dtype`: `override` if given, else the bf16 table
    entry for the device's kind; None where unknown (CPUs, fp32 on accelerators)."""
    if override:
        return override
    if dtype != "bfloat16":
        return None
    kind = getattr(device, "device_kind", "")
    return next((peak for name, peak in BF16_PEAK_TFLOPS if name in kind), None)


def peak_device_memory_mib(device: jax.Device) -> float | None:
    """The device allocator's high-water mark in MiB (GPU, TPU); None where not reported (CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20
