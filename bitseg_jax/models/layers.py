"""Building blocks of the attention U-Net (SPEC 6.2 and 6.3), as Flax NNX modules, NHWC.

This file owns the time embedding, GroupNorm, ResBlock, AttentionBlock, Downsample and Upsample.
Attribute names *and list indices* mirror the reference PyTorch modules (parity README 2.1), so a
PyTorch key maps to our parameter path by a rename: `in_layers.2.weight` is `in_layers[2].kernel`.
Parameter-free positions of the reference's `nn.Sequential`s (SiLU, Dropout, Identity) are kept as
parameter-free modules so that the indices line up.

Precision: parameters are float32; every conv / linear computes in the block's `dtype`; GroupNorm
statistics and the attention softmax are always float32 (SPEC 6.7).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def _torch_uniform(fan_in: int) -> Initializer:
    """PyTorch's default Conv/Linear init (SPEC 6.5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    kaiming_uniform(a=sqrt(5)) for weights and the bias rule give the same bound, so one
    initializer serves both.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _inits(fan_in: int, zero_init: bool) -> dict[str, Initializer]:
    if zero_init:  # zero weights and bias: the block starts as the identity / outputs 0.
        return {"kernel_init": nnx.initializers.zeros, "bias_init": nnx.initializers.zeros}
    return {"kernel_init": _torch_uniform(fan_in), "bias_init": _torch_uniform(fan_in)}


def conv(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int = 3,
    stride: int = 1,
    zero_init: bool = False,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D conv with bias and PyTorch padding semantics (`kernel_size // 2` on every side).

    Explicit symmetric padding, not "SAME": for stride 2 on even sizes "SAME" pads (0, 1) and
    gives different numbers than the reference (SPEC 6.3, Downsample).
    """
    pad = kernel_size // 2
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
        **_inits(in_channels * kernel_size * kernel_size, zero_init),
    )


def linear(
    in_features: int,
    out_features: int,
    *,
    zero_init: bool = False,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A dense layer with bias (also the reference's Conv1d k=1 per-token projections)."""
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
        **_inits(in_features, zero_init),
    )


def num_groups(channels: int) -> int:
    """SPEC 6.3: 32 groups when C is divisible by 32, else one group per channel."""
    return 32 if channels % 32 == 0 else channels


class GroupNorm(nnx.GroupNorm):
    """GroupNorm of SPEC 6.3 (eps 1e-5, contiguous channel groups), statistics in float32.

    Returns the input's dtype, as the reference's fp32-inside GroupNorm does. Two-pass variance
    (`use_fast_variance=False`) so low-variance inputs on a large mean stay accurate.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        super().__init__(
            channels,
            num_groups=num_groups(channels),
            epsilon=1e-5,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            use_fast_variance=False,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x.astype(jnp.float32)).astype(x.dtype)


class SiLU(nnx.Module):
    """x * sigmoid(x); a module only to hold its index in a mirrored `nn.Sequential`."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.silu(x)


class Identity(nnx.Module):
    """Placeholder for the reference's `nn.Identity` (index 0 of the head `out`)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10.0) -> jax.Array:
    """Sinusoidal features of raw t (SPEC 6.2): `[cos(t f), sin(t f)]`, cos first.

    f_j = exp(-ln(max_period) j / half), j = 0..half-1, half = dim // 2. max period 10 and raw t
    (not 1000 t) are the reference's choice (SPEC A8). An odd `dim` gets a trailing zero column.

    Args:
      t: [B] float times in [0, 1].
      dim: feature size (the base channel count M).
      max_period: the longest period of the features.

    Returns:
      [B, dim] float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class ResBlock(nnx.Module):
    """Residual block with time conditioning (SPEC 6.3).

    h = in_layers(x) = Conv3x3(SiLU(GN(x))); h += emb_layers(emb) over H, W (or, with
    `use_scale_shift_norm`, GN(h) * (1 + scale) + shift); h = Conv3x3(Dropout(SiLU(GN(h))))
    with the last conv zero-initialised; returns skip_connection(x) + h, where the skip is a
    1x1 conv only when the channel count changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nnx.List(
            [
                GroupNorm(in_channels, rngs=rngs),
                SiLU(),
                conv(in_channels, out_channels, dtype=dtype, rngs=rngs),
            ]
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nnx.List([SiLU(), linear(emb_channels, emb_out, dtype=dtype, rngs=rngs)])
        self.out_layers = nnx.List(
            [
                GroupNorm(out_channels, rngs=rngs),
                SiLU(),
                nnx.Dropout(dropout),
                conv(out_channels, out_channels, zero_init=True, dtype=dtype, rngs=rngs),
            ]
        )
        if in_channels == out_channels:
            self.skip_connection = None  # identity, no parameters (as in the reference)
        else:
            self.skip_connection = conv(
                in_channels, out_channels, kernel_size=1, dtype=dtype, rngs=rngs
            )

    def __call__(
        self,
        x: jax.Array,
        emb: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Args: x [B, H, W, C_in]; emb [B, E]. Returns [B, H, W, C_out] in x's dtype."""
        norm_in, act_in, conv_in = self.in_layers
        h = conv_in(act_in(norm_in(x)))
        act_emb, dense_emb = self.emb_layers
        emb_out = dense_emb(act_emb(emb))[:, None, None, :].astype(h.dtype)
        norm_out, act_out, drop, conv_out = self.out_layers
        if self.use_scale_shift_norm:
            # Reference order: torch.chunk(emb_out, 2) -> scale first, shift second.
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = norm_out(h) * (1 + scale) + shift
        else:
            h = norm_out(h + emb_out)
        h = conv_out(drop(act_out(h), deterministic=deterministic, rngs=rngs))
        skip = x if self.skip_connection is None else self.skip_connection(x)
        return skip.astype(h.dtype) + h


class AttentionBlock(nnx.Module):
    """Spatial multi-head self-attention with a residual (SPEC 6.3), no positional encoding.

    qkv is a per-token dense layer C -> 3C whose output is laid out head-major: reshape 3C as
    (heads, 3, d) with q|k|v inside each head (parity README 2.4). q and k are each scaled by
    d^-1/4; the softmax over keys is float32. proj_out is zero-initialised.
    """

    def __init__(
        self, channels: int, num_heads: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs
    ):
        if channels % num_heads:
            raise ValueError(
                f"AttentionBlock: channels={channels} not divisible by num_heads={num_heads}."
            )
        self.num_heads = num_heads
        self.norm = GroupNorm(channels, rngs=rngs)
        self.qkv = linear(channels, 3 * channels, dtype=dtype, rngs=rngs)
        self.proj_out = linear(channels, channels, zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x [B, H, W, C]. Returns [B, H, W, C] in x's dtype."""
        b, height, width, c = x.shape
        d = c // self.num_heads
        qkv = self.qkv(self.norm(x).reshape(b, height * width, c))
        qkv = qkv.reshape(b, height * width, self.num_heads, 3, d)
        scale = d**-0.25  # on q and k separately, as the reference does for fp16 range
        q, k, v = qkv[..., 0, :] * scale, qkv[..., 1, :] * scale, qkv[..., 2, :]
        logits = jnp.einsum("btnd,bsnd->bnts", q, k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bnts,bsnd->btnd", weights, v).reshape(b, height * width, c)
        return x + self.proj_out(out).reshape(b, height, width, c).astype(x.dtype)


class Downsample(nnx.Module):
    """Conv3x3 with stride 2 and padding 1 on every side (SPEC 6.3): H -> H / 2."""

    def __init__(self, channels: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.op = conv(channels, channels, stride=2, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x [B, H, W, C] with even H, W. Returns [B, H/2, W/2, C]."""
        return self.op(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 then Conv3x3 (SPEC 6.3): H -> 2H."""

    def __init__(self, channels: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x [B, H, W, C]. Returns [B, 2H, 2W, C] (out[2i+a, 2j+b] = in[i, j])."""
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)
