"""Tests of bitseg_jax/models: parameter counts (SPEC 6.6), blocks (SPEC 6.2-6.3), the boundary.

The default 128 px model is only ever built abstractly (eval_shape); forwards use small configs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitseg_jax.models import abstract_params, apply_unet, count_params, init_unet, layers, unet
from configs import base

# SPEC 6.6, default analog_bits model.
ENCODER_COUNTS = (
    [5_248] + [90_560] * 3 + [36_928, 263_040] + [328_576] * 2 + [147_584] + [328_576] * 3
    + [147_584, 1_248_512] + [1_510_656] * 2 + [590_080] + [1_510_656] * 3
)  # fmt: skip
DECODER_COUNTS = (
    [2_232_320] * 3 + [2_822_400] + [2_232_320] * 3 + [2_494_464, 673_280] + [509_184] * 2
    + [656_768] + [509_184] * 3 + [574_720, 176_896] + [135_808] * 3
)  # fmt: skip


def _model_config(variant=None, **overrides):
    config = base.get_config(variant)
    m = config.model
    m.unlock()
    for key, value in overrides.items():
        m[key] = value
    return m


def _time_test_config(**overrides):
    """16 px, 32 base channels, 2 levels: the smallest model in which t changes the output.

    With fewer than 64 channels GroupNorm has one channel per group, and the time embedding (a
    per-channel constant added just before it) has no effect at all (parity README 3).
    """
    kwargs = {"image_size": 16, "num_channels": 32, "channel_multiplier": (1, 2)}
    kwargs.update(overrides)
    return _model_config("tiny", **kwargs)


def _random_params(model_config, rng):
    """Random params with the parity fixtures' rule: kernels N(0, 1/fan_in), biases N(0, 0.01),
    GroupNorm scales 1 + N(0, 0.01); zero-initialised layers no longer hide the wiring.

    One normal draw for all leaves: a random call per leaf would make this compile for seconds.
    """
    abstract = abstract_params(model_config)
    leaves, treedef = jax.tree.flatten(abstract)
    noise = np.asarray(jax.random.normal(rng, (sum(leaf.size for leaf in leaves),)))
    out, offset = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        z = noise[offset : offset + leaf.size].reshape(leaf.shape)
        offset += leaf.size
        name = path[-1].key
        if name == "kernel":
            out.append(z / np.sqrt(np.prod(leaf.shape[:-1])))
        elif name == "scale":
            out.append(1.0 + 0.1 * z)
        else:
            out.append(0.1 * z)
    return jax.tree.unflatten(treedef, [jnp.asarray(x, jnp.float32) for x in out])


def _inputs(model_config, batch=2, size=None, rng=None):
    cfg = unet.UNetConfig.from_config(model_config)
    size = size or model_config.image_size
    k1, k2 = jax.random.split(rng if rng is not None else jax.random.key(0))
    x_t = jax.random.normal(k1, (batch, size, size, cfg.data_channels))
    image = jax.random.normal(k2, (batch, size, size, 3))
    return x_t, image


# --- Parameter counts (SPEC 6.6), abstract only ------------------------------------------------


def test_default_param_counts_per_part_and_block():
    counts = count_params(abstract_params(_model_config()))
    assert counts["total"] == 38_496_262
    assert counts["time_embed"] == 82_432
    assert [counts[f"input_blocks.{i}"] for i in range(20)] == ENCODER_COUNTS
    assert sum(ENCODER_COUNTS) == 11_906_816
    assert counts["middle_block"] == 2_757_632
    assert [counts[f"output_blocks.{i}"] for i in range(20)] == DECODER_COUNTS
    assert sum(DECODER_COUNTS) == 23_745_792
    assert counts["out"] == 3_590


@pytest.mark.parametrize(
    "variant, overrides, total",
    [
        (None, {"encoding": "onehot"}, 38_563_136),
        (None, {"encoding": "rgb"}, 38_492_803),
        ("small", {}, 7_274_374),
        (None, {"image_size": 32, "num_channels": 32}, 3_086_086),  # parity small model
    ],
)
def test_param_count_variants(variant, overrides, total):
    assert count_params(abstract_params(_model_config(variant, **overrides)))["total"] == total


def test_abstract_params_are_float32_even_for_bf16_compute():
    params = abstract_params(_model_config("tiny", dtype="bfloat16"))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


# --- Config resolution (SPEC 6.4) --------------------------------------------------------------


@pytest.mark.parametrize(
    "size, deeper, expected",
    [
        (128, False, (1, 2, 2, 4, 4)),
        (128, True, (1, 1, 2, 2, 4, 4)),
        (64, True, (1, 2, 3, 4, 4)),
        (256, False, (1, 1, 2, 2, 4, 4)),
        (32, False, (1, 2, 2, 2)),
    ],
)
def test_auto_channel_multiplier(size, deeper, expected):
    assert unet.resolve_channel_multiplier("auto", size, deeper) == expected


def test_auto_channel_multiplier_errors():
    with pytest.raises(KeyError, match="image_size=48"):
        unet.resolve_channel_multiplier("auto", 48)
    with pytest.raises(KeyError, match="deeper_net"):
        unet.resolve_channel_multiplier("auto", 32, True)
    with pytest.raises(ValueError, match="channel_multiplier"):
        unet.resolve_channel_multiplier("big", 32)


def test_attention_levels_negative_from_end():
    assert unet.resolve_attention_levels((-2, -1), 5) == (3, 4)
    assert unet.resolve_attention_levels((1, -1), 3) == (1, 2)
    with pytest.raises(ValueError, match="attention_levels entry -6"):
        unet.resolve_attention_levels((-6,), 5)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("encoding", "bits", KeyError),
        ("final_activation", "relu", KeyError),
        ("dtype", "float16", KeyError),
        ("num_heads", 3, ValueError),
        ("num_middle_res_blocks", 0, ValueError),
    ],
)
def test_config_errors_name_the_field(field, value, error):
    with pytest.raises(error, match=field if field != "encoding" else "bits"):
        unet.UNetConfig.from_config(_model_config("tiny", **{field: value}))


@pytest.mark.parametrize(
    "attention_levels, num_middle, expected",
    [
        ((-1,), 3, ["ResBlock", "AttentionBlock", "ResBlock", "AttentionBlock", "ResBlock"]),
        ((-1,), 1, ["ResBlock"]),
        ((0,), 3, ["ResBlock"] * 3),
    ],
)
def test_middle_block_rule(attention_levels, num_middle, expected):
    m = _model_config("tiny", attention_levels=attention_levels, num_middle_res_blocks=num_middle)
    model = nnx.eval_shape(lambda: unet.UNet(unet.UNetConfig.from_config(m), rngs=nnx.Rngs(0)))
    assert [type(layer).__name__ for layer in model.middle_block] == expected


# --- Blocks (SPEC 6.2, 6.3) --------------------------------------------------------------------


def test_timestep_embedding_golden():
    emb = np.asarray(layers.timestep_embedding(jnp.array([0.5]), 64))[0]
    np.testing.assert_allclose(emb[:4], [0.87758, 0.89369, 0.90772, 0.91992], atol=1e-5)
    np.testing.assert_allclose(emb[32:36], [0.47943, 0.44868, 0.41958, 0.39211], atol=1e-5)
    np.testing.assert_allclose(emb[31], np.cos(0.5 * 10 ** (-31 / 32)), atol=1e-6)


def _group_norm_np(x, groups, eps):
    b, h, w, c = x.shape
    xg = x.astype(np.float64).reshape(b, h, w, groups, c // groups)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(b, h, w, c)


def test_group_norm_eps_on_low_variance_input():
    # Variance ~1e-5 on a mean of 3: eps 1e-5 vs Flax's default 1e-6 changes the output by
    # ~35 % (parity README 8), and a one-pass E[x^2] - E[x]^2 would lose the variance.
    x = 3.0 + 0.003 * np.asarray(jax.random.normal(jax.random.key(0), (2, 4, 4, 64)))
    x = x.astype(np.float32)
    out = np.asarray(layers.GroupNorm(64, rngs=nnx.Rngs(0))(jnp.asarray(x)))
    np.testing.assert_allclose(out, _group_norm_np(x, 32, 1e-5), atol=2e-3)
    assert np.abs(out - _group_norm_np(x, 32, 1e-6)).max() > 0.1


def test_group_norm_groups():
    assert layers.num_groups(64) == 32 and layers.num_groups(48) == 48
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 3, 3, 48)))
    out = np.asarray(layers.GroupNorm(48, rngs=nnx.Rngs(0))(jnp.asarray(x)))
    np.testing.assert_allclose(out, _group_norm_np(x, 48, 1e-5), atol=1e-5)


def test_attention_block_head_major_layout():
    c, heads = 64, 4
    block = layers.AttentionBlock(c, heads, rngs=nnx.Rngs(0))
    keys = jax.random.split(jax.random.key(0), 3)
    block.proj_out.kernel[...] = jax.random.normal(keys[0], (c, c)) / 8
    block.proj_out.bias[...] = jax.random.normal(keys[1], (c,))
    x = np.asarray(jax.random.normal(keys[2], (2, 4, 4, c)))
    out = np.asarray(block(jnp.asarray(x)))

    wqkv, bqkv = np.asarray(block.qkv.kernel[...]), np.asarray(block.qkv.bias[...])
    wp, bp = np.asarray(block.proj_out.kernel[...]), np.asarray(block.proj_out.bias[...])
    tokens = _group_norm_np(x, 32, 1e-5).reshape(2, 16, c)
    qkv = (tokens @ wqkv + bqkv).reshape(2, 16, heads, 3 * (c // heads))  # head-major
    d = c // heads
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    logits = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(d)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnd->btnd", weights, v).reshape(2, 16, c)
    expected = x + (o @ wp + bp).reshape(x.shape)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_downsample_pads_one_on_every_side():
    block = layers.Downsample(2, rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 4, 4, 2)))
    out = np.asarray(block(jnp.asarray(x)))
    kernel, bias = np.asarray(block.op.kernel[...]), np.asarray(block.op.bias[...])
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 2, 2, 2))
    for i in range(2):
        for j in range(2):
            patch = padded[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]  # [3, 3, I]
            expected[0, i, j] = np.einsum("hwi,hwio->o", patch, kernel) + bias
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_upsample_is_nearest_then_conv():
    block = layers.Upsample(3, rngs=nnx.Rngs(0))
    block.conv.kernel[...] = jnp.zeros((3, 3, 3, 3)).at[1, 1].set(jnp.eye(3))  # identity conv
    block.conv.bias[...] = jnp.zeros(3)
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 2, 3, 3)))
    out = np.asarray(block(jnp.asarray(x)))
    assert out.shape == (1, 4, 6, 3)
    for a in range(2):
        for b in range(2):
            np.testing.assert_array_equal(out[0, a::2, b::2], x[0])


def test_init_follows_pytorch_and_zero_inits():
    m = _model_config("tiny")
    params = init_unet(m, jax.random.key(0))
    stem = np.asarray(params["input_blocks"][0][0]["kernel"])  # [3, 3, 9, 8], fan_in 81
    bound = 1 / np.sqrt(81)
    assert np.abs(stem).max() <= bound and np.abs(stem).max() > 0.9 * bound
    np.testing.assert_allclose(stem.std(), bound / np.sqrt(3), rtol=0.15)
    res = params["input_blocks"][1][0]
    for leaf in jax.tree.leaves(res["out_layers"][3]) + jax.tree.leaves(params["out"][3]):
        assert not np.any(np.asarray(leaf))
    attn = params["input_blocks"][1][1]
    assert not np.any(np.asarray(attn["proj_out"]["kernel"]))
    np.testing.assert_array_equal(res["in_layers"][0]["scale"], 1.0)
    np.testing.assert_array_equal(res["in_layers"][0]["bias"], 0.0)


# --- The functional boundary -------------------------------------------------------------------


def test_tiny_output_is_zero_at_init():
    m = _model_config("tiny")
    params = init_unet(m, jax.random.key(0))
    x_t, image = _inputs(m)
    out = jax.jit(lambda p, x, im: apply_unet(m, p, x, jnp.array([0.2, 0.7]), im))(
        params, x_t, image
    )
    assert out.shape == (2, 32, 32, 6) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize(
    "variant, overrides, size, channels",
    [
        ("tiny", {}, 32, 6),
        ("tiny", {"encoding": "onehot", "num_bits": 3}, 32, 8),
        ("tiny", {"encoding": "rgb", "final_activation": "none"}, 16, 3),
        ("tiny", {"use_scale_shift_norm": True}, 32, 6),
        ("small", {}, 64, 6),
    ],
)
def test_output_shapes(variant, overrides, size, channels):
    m = _model_config(variant, **overrides)
    params = abstract_params(m)
    x_t = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    image = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    out = jax.eval_shape(lambda p, x, im: apply_unet(m, p, x, 0.5, im), params, x_t, image)
    assert out.shape == (2, size, size, channels) and out.dtype == jnp.float32


def test_scalar_t_is_broadcast():
    m = _time_test_config()
    params = _random_params(m, jax.random.key(0))
    x_t, image = _inputs(m)
    fn = jax.jit(lambda p, t: apply_unet(m, p, x_t, t, image))
    scalar = fn(params, jnp.float32(0.3))
    np.testing.assert_array_equal(scalar, fn(params, jnp.array([0.3, 0.3])))
    assert np.abs(scalar - fn(params, jnp.array([0.3, 0.9]))).max() > 1e-3


def test_dropout_needs_rng_and_is_reproducible():
    m = _model_config("tiny", dropout=0.5)
    params = _random_params(m, jax.random.key(0))
    x_t, image = _inputs(m)

    @jax.jit
    def fn(rng):
        return apply_unet(m, params, x_t, 0.5, image, deterministic=False, rng=rng)

    a, b = fn(jax.random.key(1)), fn(jax.random.key(2))
    np.testing.assert_array_equal(a, fn(jax.random.key(1)))
    assert np.abs(a - b).max() > 1e-3
    with pytest.raises(ValueError, match="rng"):
        apply_unet(m, params, x_t, 0.5, image, deterministic=False)


def test_bad_inputs_name_the_argument():
    m = _model_config("tiny")
    params = abstract_params(m)
    x_t, image = jnp.zeros((2, 32, 32, 6)), jnp.zeros((2, 32, 32, 3))
    cases = [
        (jnp.zeros((2, 32, 32, 5)), 0.5, image, "x_t"),
        (x_t, 0.5, jnp.zeros((2, 32, 16, 3)), "image"),
        (x_t, jnp.zeros((3,)), image, "t must"),
        (jnp.zeros((2, 31, 31, 6)), 0.5, jnp.zeros((2, 31, 31, 3)), "divisible by 2"),
    ]
    for x, t, im, message in cases:
        with pytest.raises(ValueError, match=message):
            apply_unet(m, params, x, t, im)  # fails before any parameter is touched


def test_params_mismatch_is_reported():
    m = _model_config("tiny")
    params = abstract_params(m)
    params["out"][3]["kernel"] = jax.ShapeDtypeStruct((3, 3, 8, 5), jnp.float32)
    del params["out"][1]["scale"]
    with pytest.raises(ValueError, match=r"1 missing.*out/1/scale.*out/3/kernel: got"):
        jax.eval_shape(
            lambda p: apply_unet(m, p, jnp.zeros((1, 32, 32, 6)), 0.5, jnp.zeros((1, 32, 32, 3))),
            params,
        )


_CONV_HLO = """
import os, jax, jax.numpy as jnp
{import_line}
f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")
x, w = jnp.ones((1, 32, 16, 16)), jnp.ones((32, 32, 3, 3))
print(os.environ.get("XLA_FLAGS"))
print(jax.jit(f).lower(x, w).compile().as_text())
"""


def _compile_conv(import_line: str, xla_flags: str | None) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    code = _CONV_HLO.format(import_line=import_line)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_import_turns_off_ynn_fusions():
    """bitseg_jax/__init__.py: convs compile to XLA's own kernels (2x faster here), not YNNPACK."""
    from importlib import metadata

    import bitseg_jax

    if not metadata.version("jaxlib").startswith(bitseg_jax._YNN_JAXLIB):
        pytest.skip(f"bitseg_jax sets the flag for jaxlib {bitseg_jax._YNN_JAXLIB}x only")
    plain = _compile_conv("", None)
    assert "__ynn_fusion" in plain  # the control: jaxlib's default uses YNNPACK for this conv
    ours = _compile_conv("import bitseg_jax", None)
    assert "convolution" in ours and "__ynn_fusion" not in ours
    # A user's own setting of the flag is kept as given.
    kept = _compile_conv("import bitseg_jax", "--xla_cpu_experimental_ynn_fusion_type=invalid")
    assert kept.splitlines()[0] == "--xla_cpu_experimental_ynn_fusion_type=invalid"
