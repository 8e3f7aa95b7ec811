"""bitseg_jax: agnostic, holistic image segmentation with bit diffusion, in JAX/Flax."""

import os
from importlib import metadata

__version__ = "0.1.0"

# XLA:CPU flag set at import, before any JAX backend starts. In jaxlib 0.10 the CPU backend
# routes convolutions and dots through YNNPACK fusions, whose convolution kernels (above all the
# weight gradients of 3x3 convs) run 2-4x slower than XLA's own on this model: measured on a
# 2-core Sapphire Rapids, the default train step takes 23.8 s with them and 12.8 s without
# (benchmarks/RESULTS.md). An empty fusion-type list turns them off. The flag only touches the
# CPU backend (TPU and GPU ignore it); it is left out when the user's XLA_FLAGS already names it
# and for other jaxlib versions, which may not know it (XLA aborts on an unknown flag).
_YNN_FLAG_NAME = "--xla_cpu_experimental_ynn_fusion_type"
_YNN_JAXLIB = "0.10."  # jaxlib versions (prefix) known to have the flag


def _set_xla_cpu_flags() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if _YNN_FLAG_NAME in flags:
        return
    try:
        jaxlib_version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return
    if jaxlib_version.startswith(_YNN_JAXLIB):
        os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG_NAME}=".strip()


_set_xla_cpu_flags()

__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str):
    # Lazy: `import bitseg_jax` stays cheap (no JAX/TF import) until Segmenter is used.
    if name == "Segmenter":
        from bitseg_jax.segment import Segmenter

        return Segmenter
    raise AttributeError(f"module 'bitseg_jax' has no attribute {name!r}")
