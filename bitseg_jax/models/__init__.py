"""The attention U-Net (SPEC section 6): NNX modules behind `init_unet` / `apply_unet`."""

from bitseg_jax.models.unet import (
    UNet,
    UNetConfig,
    abstract_params,
    apply_unet,
    count_params,
    init_unet,
)

__all__ = [
    "UNet",
    "UNetConfig",
    "abstract_params",
    "apply_unet",
    "count_params",
    "init_unet",
]
