"""bitseg_jax: agnostic, holistic image segmentation with bit diffusion, in JAX/Flax."""

__version__ = "0.1.0"
