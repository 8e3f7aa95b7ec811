"""The attention U-Net (SPEC section 6)."""
