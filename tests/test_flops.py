"""benchmarks/flops.py (MFU inputs) and the train-step / sampling benchmarks on the tiny config."""

import types

import pytest

from benchmarks import flops, sampling, train_step
from configs import base


def test_forward_flops_match_spec_and_scale_with_batch():
    model = base.get_config().model
    one = flops.forward_gflop(model, 1)
    assert one == pytest.approx(69.2, rel=0.03)  # SPEC 6.6: 69.2 GFLOP per 128 px image.
    small = base.get_config("small").model
    assert flops.forward_gflop(small, 4) == pytest.approx(4 * flops.forward_gflop(small, 1))


@pytest.mark.parametrize(
    "kind, dtype, want",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
        ("NVIDIA H100 PCIe", "bfloat16", 756.0),
        ("NVIDIA H200", "bfloat16", 989.4),
        ("NVIDIA A100-SXM4-40GB", "bfloat16", 312.0),
        ("TPU v5 lite", "bfloat16", 197.0),
        ("TPU v5", "bfloat16", 459.0),
        ("TPU v4", "bfloat16", 275.0),
        ("NVIDIA H100 80GB HBM3", "float32", None),  # fp32/TF32 peaks: only by --peak_tflops
        ("cpu", "bfloat16", None),
    ],
)
def test_peak_lookup(kind, dtype, want):
    device = types.SimpleNamespace(device_kind=kind)
    assert flops.peak_tflops(device, dtype) == want
    assert flops.peak_tflops(device, dtype, override=100.0) == 100.0


def test_peak_device_memory():
    device = types.SimpleNamespace(memory_stats=lambda: {"peak_bytes_in_use": 3 * 2**20})
    assert flops.peak_device_memory_mib(device) == 3.0
    assert flops.peak_device_memory_mib(types.SimpleNamespace(memory_stats=lambda: None)) is None


def test_benchmarks_run_on_tiny(monkeypatch):
    # The commands an accelerator session runs: both scripts end to end, with a given peak.
    result = train_step.bench("tiny", repeats=1, warmup=0, dtype="bfloat16", peak=1.0)
    assert result["median_s"] > 0 and result["model_gflop_per_step"] > 0
    assert result["mfu"] == pytest.approx(result["achieved_gflops"] / 1e3 / result["devices"])
    out = sampling.bench(
        "tiny", batch=2, steps=2, guidance=1.0, sampler="ddpm", repeats=1, warmup=0, peak=1.0
    )
    assert out["images_per_s"] > 0 and out["mfu"] == pytest.approx(out["gflop_per_s"] / 1e3, 0.01)
