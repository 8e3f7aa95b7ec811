"""bitseg_jax: agnostic, holistic image segmentation with bit diffusion, in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str):
    # Lazy: `import bitseg_jax` stays cheap (no JAX/TF import) until Segmenter is used.
    if name == "Segmenter":
        from bitseg_jax.segment import Segmenter

        return Segmenter
    raise AttributeError(f"module 'bitseg_jax' has no attribute {name!r}")
