"""The attention U-Net assembly (SPEC 6.1, 6.4) and its functional boundary.

This file owns `UNetConfig` (the resolved, hashable model settings), the `UNet` NNX module and the
pure-function API the rest of the project uses:

  params = init_unet(config.model, rng)                    # nested dict of float32 arrays
  out = apply_unet(config.model, params, x_t, t, image)    # [B, H, W, C_out], jit-safe

The module tree mirrors the reference (`time_embed`, `input_blocks.i.j`, `middle_block.j`,
`output_blocks.i.j`, `out.j`; parity README 2.2), so the parameter paths are the PyTorch state-dict
keys with `weight` renamed to `kernel` / `scale` (see convert_torch.py).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitseg_jax import diffusion, encoding
from bitseg_jax.models import layers

# SPEC 6.4 `channel_multiplier = "auto"`: image size -> (normal, deeper_net); None = not defined.
AUTO_CHANNEL_MULTIPLIERS = {
    256: ((1, 1, 2, 2, 4, 4), (1, 1, 1, 2, 2, 4, 4)),
    128: ((1, 2, 2, 4, 4), (1, 1, 2, 2, 4, 4)),
    64: ((1, 2, 3, 4), (1, 2, 3, 4, 4)),
    32: ((1, 2, 2, 2), None),
    16: ((1, 2, 2), None),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Resolved U-Net settings (hashable: one graphdef is cached per value).

    Attributes:
      num_channels: base channels M; the time embedding is 4M wide.
      channel_multiplier: per-level multipliers, e.g. (1, 2, 2, 4, 4).
      num_res_blocks: ResBlocks per encoder level (the decoder uses one more).
      num_middle_res_blocks: ResBlocks in the middle block (SPEC 6.4 general rule).
      attention_levels: non-negative, sorted level indices with attention.
      num_heads: attention heads.
      dropout: dropout rate inside the ResBlocks.
      use_scale_shift_norm: FiLM-style time conditioning (SPEC 6.3).
      data_channels: diffusion channels C; the network sees C + 3 (x_t then the image).
      out_channels: output channels (C for every current encoding).
      dtype: compute dtype name, a key of `DTYPES`.
      final_activation: applied by `apply_unet` after the head.
    """

    num_channels: int
    channel_multiplier: tuple[int, ...]
    num_res_blocks: int
    num_middle_res_blocks: int
    attention_levels: tuple[int, ...]
    num_heads: int
    dropout: float
    use_scale_shift_norm: bool
    data_channels: int
    out_channels: int
    dtype: str
    final_activation: str

    @classmethod
    def from_config(cls, model_config: Any) -> "UNetConfig":
        """Resolves a `config.model` ConfigDict (SPEC 6.4 rules); a UNetConfig passes through.

        Raises:
          ValueError / KeyError naming the `model.*` field at fault.
        """
        if isinstance(model_config, cls):
            return model_config
        m = model_config
        mult = resolve_channel_multiplier(m.channel_multiplier, m.image_size, m.deeper_net)
        levels = resolve_attention_levels(m.attention_levels, len(mult))
        if int(m.num_res_blocks) < 1:
            raise ValueError(f"model.num_res_blocks={m.num_res_blocks} must be >= 1.")
        if int(m.num_middle_res_blocks) < 1:
            raise ValueError(f"model.num_middle_res_blocks={m.num_middle_res_blocks} must be >= 1.")
        if m.dtype not in DTYPES:
            raise KeyError(f"model.dtype={m.dtype!r} is unknown; expected one of {sorted(DTYPES)}.")
        if m.final_activation not in diffusion.FINAL_ACTIVATIONS:
            raise KeyError(
                f"model.final_activation={m.final_activation!r} is unknown; expected one of "
                f"{sorted(diffusion.FINAL_ACTIVATIONS)}."
            )
        channels = encoding.num_channels(m.encoding, m.num_bits)  # KeyError names the encoding
        for level in levels:
            width = m.num_channels * mult[level]
            if width % m.num_heads:
                raise ValueError(
                    f"model.num_heads={m.num_heads} does not divide the {width} channels of "
                    f"attention level {level}."
                )
        return cls(
            num_channels=int(m.num_channels),
            channel_multiplier=mult,
            num_res_blocks=int(m.num_res_blocks),
            num_middle_res_blocks=int(m.num_middle_res_blocks),
            attention_levels=levels,
            num_heads=int(m.num_heads),
            dropout=float(m.dropout),
            use_scale_shift_norm=bool(m.use_scale_shift_norm),
            data_channels=channels,
            out_channels=channels,
            dtype=str(m.dtype),
            final_activation=str(m.final_activation),
        )


def resolve_channel_multiplier(
    channel_multiplier: Any, image_size: int, deeper_net: bool = False
) -> tuple[int, ...]:
    """`"auto"` -> the SPEC 6.4 table entry for `image_size`; a sequence -> a tuple of ints."""
    if isinstance(channel_multiplier, str):
        if channel_multiplier != "auto":
            raise ValueError(
                f"model.channel_multiplier={channel_multiplier!r}: expected 'auto' or a tuple "
                "such as (1, 2, 2, 4, 4)."
            )
        if image_size not in AUTO_CHANNEL_MULTIPLIERS:
            raise KeyError(
                f"model.channel_multiplier='auto' has no entry for model.image_size={image_size}; "
                f"known sizes {sorted(AUTO_CHANNEL_MULTIPLIERS)} (or give a tuple)."
            )
        mult = AUTO_CHANNEL_MULTIPLIERS[image_size][int(bool(deeper_net))]
        if mult is None:
            raise KeyError(
                f"model.channel_multiplier='auto' with model.deeper_net=True is not defined for "
                f"model.image_size={image_size} (SPEC 6.4); give a tuple."
            )
        return mult
    mult = tuple(int(v) for v in channel_multiplier)
    if not mult or min(mult) < 1:
        raise ValueError(f"model.channel_multiplier={channel_multiplier!r} must be positive ints.")
    return mult


def resolve_attention_levels(attention_levels: Any, num_levels: int) -> tuple[int, ...]:
    """Negative entries count from the end (-1 = deepest level); returns sorted unique levels."""
    levels = set()
    for level in attention_levels:
        resolved = int(level) + num_levels if int(level) < 0 else int(level)
        if not 0 <= resolved < num_levels:
            raise ValueError(
                f"model.attention_levels entry {level} is out of range for {num_levels} levels."
            )
        levels.add(resolved)
    return tuple(sorted(levels))


class UNet(nnx.Module):
    """Attention U-Net of SPEC 6.4 (reference `UNetModel`), NHWC.

    Built from a `UNetConfig`. `__call__` returns the head output *before* the final activation.
    """

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        dtype = DTYPES[cfg.dtype]
        base = cfg.num_channels
        emb_dim = 4 * base
        num_levels = len(cfg.channel_multiplier)
        self.num_channels = base
        self.num_levels = num_levels
        self.dtype = dtype

        def res_block(c_in: int, c_out: int) -> layers.ResBlock:
            return layers.ResBlock(
                c_in,
                c_out,
                emb_dim,
                dropout=cfg.dropout,
                use_scale_shift_norm=cfg.use_scale_shift_norm,
                dtype=dtype,
                rngs=rngs,
            )

        def attention(c: int) -> layers.AttentionBlock:
            return layers.AttentionBlock(c, cfg.num_heads, dtype=dtype, rngs=rngs)

        # The time MLP and the head stay in float32, as in the reference's fp16 mode (SPEC 6.7).
        self.time_embed = nnx.List(
            [
                layers.linear(base, emb_dim, rngs=rngs),
                layers.SiLU(),
                layers.linear(emb_dim, emb_dim, rngs=rngs),
            ]
        )

        stem = layers.conv(cfg.data_channels + 3, base, dtype=dtype, rngs=rngs)
        input_blocks = [nnx.List([stem])]
        skip_channels = [base]  # every input block's output is pushed, downsamples included
        ch = base
        for level, mult in enumerate(cfg.channel_multiplier):
            for _ in range(cfg.num_res_blocks):
                block = [res_block(ch, base * mult)]
                ch = base * mult
                if level in cfg.attention_levels:
                    block.append(attention(ch))
                input_blocks.append(nnx.List(block))
                skip_channels.append(ch)
            if level < num_levels - 1:
                input_blocks.append(nnx.List([layers.Downsample(ch, dtype=dtype, rngs=rngs)]))
                skip_channels.append(ch)
        self.input_blocks = nnx.List(input_blocks)

        # SPEC 6.4: (n - 1) x [ResBlock, Attn] + ResBlock if the deepest level has attention,
        # else n ResBlocks.
        middle = []
        if num_levels - 1 in cfg.attention_levels:
            for _ in range(cfg.num_middle_res_blocks - 1):
                middle += [res_block(ch, ch), attention(ch)]
            middle.append(res_block(ch, ch))
        else:
            middle = [res_block(ch, ch) for _ in range(cfg.num_middle_res_blocks)]
        self.middle_block = nnx.List(middle)

        output_blocks = []
        for level in reversed(range(num_levels)):
            for i in range(cfg.num_res_blocks + 1):
                out_ch = base * cfg.channel_multiplier[level]
                block = [res_block(ch + skip_channels.pop(), out_ch)]
                ch = out_ch
                if level in cfg.attention_levels:
                    block.append(attention(ch))
                if level > 0 and i == cfg.num_res_blocks:
                    block.append(layers.Upsample(ch, dtype=dtype, rngs=rngs))
                output_blocks.append(nnx.List(block))
        self.output_blocks = nnx.List(output_blocks)

        self.out = nnx.List(
            [
                layers.Identity(),
                layers.GroupNorm(ch, rngs=rngs),
                layers.SiLU(),
                layers.conv(ch, cfg.out_channels, zero_init=True, rngs=rngs),
            ]
        )

    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        image: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        block_outputs: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """Runs the network (SPEC 6.1).

        Args:
          x_t: [B, H, W, C] noisy diffusion tensor.
          t: [B] float times.
          image: [B, H, W, 3] conditioning image (zeros = no image).
          deterministic: False enables dropout (then `rngs` must hold a `dropout` stream).
          rngs: dropout randomness.
          block_outputs: if a dict is given, it is filled with diagnostics named like the
            reference: `temb_sin` [B, M], `emb` [B, 4M] and the output of every top-level block
            (`input_blocks.i`, `middle_block`, `output_blocks.i`, and `out`, the head output
            before the final activation), all NHWC.

        Returns:
          [B, H, W, C_out] float32 head output before the final activation.
        """
        record = block_outputs if block_outputs is not None else {}
        temb = layers.timestep_embedding(t, self.num_channels)
        dense0, act, dense1 = self.time_embed
        emb = dense1(act(dense0(temb)))
        record["temb_sin"], record["emb"] = temb, emb

        def run(block: nnx.List, h: jax.Array) -> jax.Array:
            # The reference's TimestepEmbedSequential: only ResBlocks see emb.
            for layer in block:
                if isinstance(layer, layers.ResBlock):
                    h = layer(h, emb, deterministic=deterministic, rngs=rngs)
                else:
                    h = layer(h)
            return h

        h = jnp.concatenate([x_t, image], axis=-1).astype(self.dtype)
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = run(block, h)
            skips.append(h)
            record[f"input_blocks.{i}"] = h
        h = run(self.middle_block, h)
        record["middle_block"] = h
        for i, block in enumerate(self.output_blocks):
            h = run(block, jnp.concatenate([h, skips.pop()], axis=-1))  # h first, skip second
            record[f"output_blocks.{i}"] = h
        out = run(self.out, h.astype(jnp.float32))
        record["out"] = out
        return out


# --- Functional boundary -----------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _abstract_model(cfg: UNetConfig) -> tuple[nnx.GraphDef, dict]:
    """Graphdef and abstract params (ShapeDtypeStruct leaves) of one config, built once."""

    def build(key: jax.Array) -> UNet:
        # nnx.Rngs bumps a counter Variable per parameter; traced, each bump costs time linear in
        # the program so far (flax 0.12.8), ~5 s CPU for the 128 px model. Evaluating the counter
        # eagerly (the key stays a tracer, so random inits stay abstract) cuts that to ~2 s; the
        # price is that constant inits (zeros, ones) are briefly materialised (~50 MB at 128 px).
        with jax.ensure_compile_time_eval():
            return UNet(cfg, rngs=nnx.Rngs(params=key))

    model = nnx.eval_shape(build, jax.random.key(0))
    graphdef, params = nnx.split(model, nnx.Param)  # raises if any non-Param state existed
    return graphdef, nnx.to_pure_dict(params)


def abstract_params(model_config: Any) -> dict:
    """The params tree of `model_config` with `jax.ShapeDtypeStruct` leaves (no allocation)."""
    _, abstract = _abstract_model(UNetConfig.from_config(model_config))
    return jax.tree.map(lambda x: x, abstract)  # a copy: the cached tree stays untouched


def init_unet(model_config: Any, rng: jax.Array) -> dict:
    """Initialises the U-Net (SPEC 6.5: PyTorch-uniform, zero last convs / proj_out / head).

    Args:
      model_config: the `config.model` ConfigDict (or a `UNetConfig`).
      rng: a JAX key.

    Returns:
      Nested dict of float32 arrays (parameters only); list positions are int keys.
    """
    return _init_jit(UNetConfig.from_config(model_config), rng)


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(cfg: UNetConfig, rng: jax.Array) -> dict:
    # One compiled program: eager init would compile a separate kernel per parameter shape.
    _, params = nnx.split(UNet(cfg, rngs=nnx.Rngs(params=rng)), nnx.Param)
    return nnx.to_pure_dict(params)


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _canonical_params(params: Any, abstract: dict) -> dict:
    """Checks `params` against the abstract tree and returns it with the canonical (int) keys.

    Checkpoint libraries may turn int keys into strings; the order of string keys ('10' < '2')
    differs from int keys, so leaves are matched by path, never by position.
    """
    given = {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    expected = {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    bad_shapes = [
        f"{k}: got {tuple(np.shape(given[k]))}, expected {expected[k].shape}"
        for k in sorted(set(given) & set(expected))
        if tuple(np.shape(given[k])) != expected[k].shape
    ]
    if missing or unexpected or bad_shapes:
        raise ValueError(
            "apply_unet: `params` does not match model_config: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(bad_shapes)} shape mismatches (e.g. {bad_shapes[:3]})."
        )
    return jax.tree_util.tree_map_with_path(lambda p, _: given[_path_str(p)], abstract)


def _check_inputs(cfg: UNetConfig, x_t: jax.Array, t: jax.Array, image: jax.Array) -> jax.Array:
    """Validates shapes (naming the argument at fault) and returns t as [B] float32."""
    c = cfg.data_channels
    if x_t.ndim != 4 or x_t.shape[-1] != c:
        raise ValueError(f"apply_unet: x_t must be [B, H, W, {c}], got shape {x_t.shape}.")
    b, h, w, _ = x_t.shape
    if image.shape != (b, h, w, 3):
        raise ValueError(
            f"apply_unet: image must be [B, H, W, 3] = {(b, h, w, 3)} to match x_t, "
            f"got shape {image.shape}."
        )
    factor = 2 ** (len(cfg.channel_multiplier) - 1)
    if h % factor or w % factor:
        raise ValueError(
            f"apply_unet: H and W of x_t {x_t.shape} must be divisible by {factor} "
            f"({len(cfg.channel_multiplier)} levels)."
        )
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 0:
        return jnp.broadcast_to(t, (b,))
    if t.shape != (b,):
        raise ValueError(f"apply_unet: t must be a scalar or [B] = ({b},), got shape {t.shape}.")
    return t


def apply_unet(
    model_config: Any,
    params: dict,
    x_t: jax.Array,
    t: jax.Array,
    image: jax.Array,
    *,
    deterministic: bool = True,
    rng: jax.Array | None = None,
    block_outputs: dict[str, jax.Array] | None = None,
) -> jax.Array:
    """Runs the U-Net on `[x_t, image]` at time t (SPEC 6.1); jit-safe.

    Args:
      model_config: the `config.model` ConfigDict (or a `UNetConfig`); static.
      params: the tree from `init_unet` / `convert_torch.convert` (int or digit-string keys).
      x_t: [B, H, W, C] noisy diffusion tensor, C = `encoding.num_channels(...)`.
      t: [B] or scalar float times in [0, 1] (a scalar is broadcast to the batch).
      image: [B, H, W, 3] conditioning image; zeros = unconditional.
      deterministic: False enables dropout, which then needs `rng`.
      rng: JAX key for dropout.
      block_outputs: optional dict filled with diagnostics (see `UNet.__call__`).

    Returns:
      [B, H, W, C_out] float32 after `model_config.final_activation`.

    Raises:
      ValueError: wrong input shapes, params that do not fit the config, or missing `rng`.
    """
    cfg = UNetConfig.from_config(model_config)
    x_t, image = jnp.asarray(x_t), jnp.asarray(image)
    t = _check_inputs(cfg, x_t, t, image)
    if not deterministic and cfg.dropout > 0 and rng is None:
        raise ValueError("apply_unet: deterministic=False with model.dropout > 0 needs `rng`.")
    graphdef, abstract = _abstract_model(cfg)
    model = nnx.merge(graphdef, nnx.State(_canonical_params(params, abstract)))
    rngs = nnx.Rngs(dropout=rng) if rng is not None else None
    out = model(x_t, t, image, deterministic=deterministic, rngs=rngs, block_outputs=block_outputs)
    return diffusion.final_activation(out, cfg.final_activation)


def count_params(params: dict) -> dict[str, int]:
    """Parameter count per top-level block, named like the reference's state dict.

    Args:
      params: params tree (arrays or ShapeDtypeStructs, e.g. from `abstract_params`).

    Returns:
      {"time_embed": n, "input_blocks.0": n, ..., "middle_block": n, "output_blocks.0": n, ...,
       "out": n, "total": n} in module order (SPEC 6.6 lists the default model's counts).
    """

    def size(tree: Any) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))

    def per_block(part: str) -> dict[str, int]:
        return {f"{part}.{i}": size(params[part][i]) for i in sorted(params[part], key=int)}

    counts = {"time_embed": size(params["time_embed"])}
    counts.update(per_block("input_blocks"))
    counts["middle_block"] = size(params["middle_block"])
    counts.update(per_block("output_blocks"))
    counts["out"] = size(params["out"])
    counts["total"] = sum(counts.values())
    return counts
