"""Tests for bitseg_jax.encoding: analog bits, one-hot, RGB + PDM, Eq. 3 probabilities, entropy.

Golden values are those of SPEC section 12 (bit table, bit2prob example).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitseg_jax import encoding

# Hypothesis draws only the data; every call has a fixed shape so that jit compiles once per k.
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def _labels_np(k, values):
    """Fixed-shape [4, 8] int32 labels in [0, 2**k) from hypothesis-drawn integers."""
    return (np.asarray(values, np.int64) % (2**k)).reshape(4, 8).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Analog bits (SPEC 3.1).
# --------------------------------------------------------------------------------------------


def test_bit_table_golden():
    # SPEC 12: v = 0..5 -> rows, channel 0 first; padding -> all 0 -> decodes to 0.
    want = [
        [-1, -1, -1, -1, -1, -1],
        [1, -1, -1, -1, -1, -1],
        [-1, 1, -1, -1, -1, -1],
        [1, 1, -1, -1, -1, -1],
        [-1, -1, 1, -1, -1, -1],
        [1, -1, 1, -1, -1, -1],
        [0, 0, 0, 0, 0, 0],
    ]
    bits = encoding.encode_bits(np.array([0, 1, 2, 3, 4, 5, -1], np.int32), 6)
    assert bits.dtype == jnp.float32
    np.testing.assert_array_equal(bits, want)
    np.testing.assert_array_equal(encoding.decode_bits(bits), [0, 1, 2, 3, 4, 5, 0])
    # Strictly > 0: an exact 0 is bit 0.
    np.testing.assert_array_equal(encoding.decode_bits(np.array([[0.0, 1e-7]], np.float32)), [2])


@PROPERTY_SETTINGS
@given(k=st.integers(1, 16), values=st.lists(st.integers(0, 2**16 - 1), min_size=32, max_size=32))
def test_bits_round_trip_every_width(k, values):
    labels = _labels_np(k, values)
    bits = np.asarray(encoding.encode_bits(labels, k))
    want = ((labels[..., None] >> np.arange(k)) & 1) * 2.0 - 1.0  # SPEC 3.1, LSB first
    np.testing.assert_array_equal(bits, want)
    np.testing.assert_array_equal(encoding.decode_bits(bits), labels)


def test_wide_labels_do_not_alias():
    # SPEC B8: the reference casts to uint8, so 1000 would become 232. Not here.
    bits = encoding.encode_bits(np.array([1000, 2**16 - 1], np.int32), 16)
    np.testing.assert_array_equal(encoding.decode_bits(bits), [1000, 2**16 - 1])
    np.testing.assert_array_equal(bits[0, 8:10], [1, 1])  # 1000 = 0b1111101000


def test_bits_jit_and_vmap():
    labels = np.arange(-1, 63, dtype=np.int32).reshape(2, 4, 8)
    enc = jax.jit(encoding.encode_bits, static_argnums=1)
    np.testing.assert_array_equal(enc(labels, 6), encoding.encode_bits(labels, 6))
    dec = jax.vmap(encoding.decode_bits)(enc(labels, 6))
    np.testing.assert_array_equal(dec, np.maximum(labels, 0))


def test_bits_bad_input():
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        encoding.encode_bits(np.zeros((2, 2), np.float32), 6)
    with pytest.raises(ValueError, match="num_bits must be in 1..16"):
        encoding.encode_bits(np.zeros((2, 2), np.int32), 17)
    with pytest.raises(ValueError, match="num_bits must be in 1..16"):
        encoding.encode_bits(np.zeros((2, 2), np.int32), 0)
    with pytest.raises(
        ValueError, match=r"labels must lie in \[-1, 64\), got values in \[-2, 64\]"
    ):
        encoding.encode_bits(np.array([-2, 0, 64], np.int32), 6)
    with pytest.raises(TypeError, match="bits must have a floating dtype"):
        encoding.decode_bits(np.zeros((2, 6), np.int32))
    with pytest.raises(ValueError, match="bits contains NaN"):
        encoding.decode_bits(np.array([[0.5, np.nan]], np.float32))
    with pytest.raises(ValueError, match=r"bits must be \[..., num_bits\]"):
        encoding.decode_bits(np.zeros((2, 17), np.float32))
    with pytest.raises(ValueError, match="at least 1 dim"):
        encoding.decode_bits(np.float32(0.5))


# --------------------------------------------------------------------------------------------
# One-hot (SPEC 3.3) and RGB (SPEC 3.4).
# --------------------------------------------------------------------------------------------


def test_onehot():
    labels = np.array([[0, 3, -1, 15]], np.int32)
    x = np.asarray(encoding.encode_onehot(labels, 4))
    assert x.shape == (1, 4, 16) and set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x.sum(-1), [[1, 1, 0, 1]])  # padding -> all zeros
    np.testing.assert_array_equal(encoding.decode_onehot(x)[0, [0, 1, 3]], [0, 3, 15])
    ties = np.array([[0.2, 0.7, 0.7, 0.1]], np.float32)
    np.testing.assert_array_equal(encoding.decode_onehot(ties), [1])  # first maximum
    with pytest.raises(ValueError, match="labels must lie in"):
        encoding.encode_onehot(np.array([16], np.int32), 4)


def test_rgb_table_and_encode():
    table_ref = encoding.rgb_table(offset=True)
    table_fix = encoding.rgb_table(offset=False)
    assert table_ref.shape == (125, 3)
    levels = np.array([0, 64, 128, 192, 255], np.float64)
    np.testing.assert_allclose(np.unique(table_ref), (2 * levels - 1) / 255, rtol=1e-6)
    np.testing.assert_allclose(np.unique(table_fix), 2 * levels / 255 - 1, rtol=1e-6)
    # 62 = digits (2, 2, 2); 124 = (4, 4, 4); 7 = (0, 1, 2).
    x = np.asarray(encoding.encode_rgb(np.array([62, 124, 7, -1], np.int32), offset=False))
    np.testing.assert_allclose(x[:3], table_fix[[62, 124, 7]])
    np.testing.assert_allclose(x[2], 2 * levels[[0, 1, 2]] / 255 - 1, rtol=1e-6)
    np.testing.assert_array_equal(x[3], 0.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[-1, 125\)"):
        encoding.encode_rgb(np.array([125], np.int32))


def test_rgb_pdm_recovers_colour_regions():
    # Four regions in four colours (with a little noise); the PDM must find the same partition.
    rng = np.random.default_rng(0)
    gt = np.zeros((24, 24), np.int32)
    gt[:12, 12:], gt[12:, :12], gt[12:, 12:] = 1, 2, 3
    colours = encoding.rgb_table(offset=False)[[0, 31, 93, 124]][gt]
    x = colours + rng.normal(0, 0.01, colours.shape).astype(np.float32)
    valid = np.ones(gt.shape, bool)
    valid[20:, :] = False
    pred = encoding.decode_rgb(x, valid, seed=0)
    assert pred.dtype == np.int32
    np.testing.assert_array_equal(pred[~valid], -1)
    pairs = set(zip(gt[valid].tolist(), pred[valid].tolist(), strict=True))
    assert len(pairs) == 4 and len({p for _, p in pairs}) == 4  # a bijection of regions
    # Leading axes (e.g. [batch, samples]) and the dispatcher give the same per image.
    x2 = np.stack([x, x[::-1]])[None]  # [1, 2, H, W, 3]
    valid2 = np.stack([valid, valid[::-1]])[None]
    batched = encoding.decode(x2, encoding="rgb", num_bits=6, valid=valid2)
    assert batched.shape == (1, 2, 24, 24)
    np.testing.assert_array_equal(batched[0, 0], pred)
    np.testing.assert_array_equal(batched[0, 1], encoding.decode_rgb(x[::-1], valid[::-1]))


# --------------------------------------------------------------------------------------------
# Dispatch.
# --------------------------------------------------------------------------------------------


def test_num_channels_and_dispatch():
    assert encoding.num_channels("analog_bits", 6) == 6
    assert encoding.num_channels("onehot", 6) == 64
    assert encoding.num_channels("rgb", 6) == 3
    with pytest.raises(KeyError, match="Unknown encoding 'bits'"):
        encoding.num_channels("bits", 6)
    labels = np.array([[3, -1], [0, 12]], np.int32)
    valid = labels >= 0
    for name in ("analog_bits", "onehot"):
        x = encoding.encode(labels, encoding=name, num_bits=4)
        assert x.shape == (2, 2, encoding.num_channels(name, 4))
        np.testing.assert_array_equal(
            encoding.decode(x, encoding=name, num_bits=4, valid=valid), labels
        )
    x = encoding.encode(labels, encoding="rgb", num_bits=6, rgb_offset=True)
    np.testing.assert_allclose(x[0, 0], encoding.rgb_table(True)[3])
    with pytest.raises(
        ValueError, match="x has 6 channels; encoding 'analog_bits' with num_bits=4"
    ):
        encoding.decode(np.zeros((2, 6), np.float32), encoding="analog_bits", num_bits=4)


# --------------------------------------------------------------------------------------------
# Probabilities, entropy, likelihood (SPEC 3.2, 7.4).
# --------------------------------------------------------------------------------------------


def test_bit2prob_golden_example():
    # SPEC 12: argmax class 21 (bit 5 = 0.0 is a tie resolved to 0), sums to 1, threshold gives 21.
    y = np.array([0.9, -0.8, 0.2, -1.0, 1.0, 0.0], np.float32)
    probs = np.asarray(encoding.class_probs(y))
    assert probs.shape == (64,)
    assert int(np.argmax(probs)) == 21
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)
    assert int(encoding.decode_bits(y)) == 21
    # Eq. 3 by hand for class 21 = 0b010101: 0.95 * 0.9 * 0.6 * 1 * 1 * 0.5.
    np.testing.assert_allclose(probs[21], 0.95 * 0.9 * 0.6 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(encoding.bit_probs(y, np.int32(21)), probs[21], rtol=1e-6)


@PROPERTY_SETTINGS
@given(
    k=st.integers(1, 6),
    values=st.lists(st.floats(-1, 1, width=32), min_size=4 * 6, max_size=4 * 6),
)
def test_probabilities_and_entropy_properties(k, values):
    bits = np.asarray(values, np.float32).reshape(4, 6)[:, :k]
    probs = np.asarray(encoding.class_probs(bits), np.float64)  # [4, 2**k]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)  # Eq. 3 is a distribution
    classes = np.broadcast_to(np.arange(2**k, dtype=np.int32), (4, 2**k))
    via_labels = encoding.bit_probs(np.repeat(bits[:, None], 2**k, axis=1), classes)
    np.testing.assert_allclose(via_labels, probs, atol=1e-6)
    # Sum of per-bit entropies = entropy of the factorised class distribution (nats).
    want = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), -1)
    np.testing.assert_allclose(encoding.bit_entropy(bits), want, atol=2e-5)


def test_entropy_extremes_and_wide_bits():
    bits = np.array([[1.0, -1.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(encoding.bit_entropy(bits), [0.0, 3 * math.log(2)], atol=1e-6)
    # bit_probs never forms 2**k channels: k = 16 is fine; class_probs refuses k > 10.
    y = np.full((2, 16), 0.5, np.float32)
    np.testing.assert_allclose(
        encoding.bit_probs(y, np.array([0, 65535], np.int32)),
        0.75**16 * np.array([(1 / 3) ** 16, 1]),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="class_probs materialises 2\\*\\*k channels; k = 16"):
        encoding.class_probs(y)
    with pytest.raises(ValueError, match="labels has shape"):
        encoding.bit_probs(y, np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="bits contains NaN"):
        encoding.bit_entropy(np.array([np.nan], np.float32))


def test_likelihood():
    labels = np.array([[[5, 9], [-1, 0]]], np.int32)  # [1, 2, 2] with one padding pixel
    valid = labels >= 0
    perfect = np.asarray(encoding.encode_bits(labels, 4))
    np.testing.assert_allclose(encoding.likelihood(perfect, labels, valid), [1.0], rtol=1e-6)
    # All-zero bits: every class has probability 2**-k.
    zeros = np.zeros((1, 2, 2, 4), np.float32)
    np.testing.assert_allclose(encoding.likelihood(zeros, labels, valid), [1 / 16], rtol=1e-6)
    # Outside [-1, 1] Eq. 3 leaves [0, 1]: a bit at -5 c gives the factor 1 - |6 c| / 2 = -2.
    # Two such bits give p = 4 (clipped to 1), one gives p = -2 (clipped to 0).
    two = perfect * np.array([-5, -5, 1, 1], np.float32)
    np.testing.assert_allclose(encoding.bit_probs(two[valid], labels[valid]), 4.0, rtol=1e-6)
    np.testing.assert_allclose(encoding.likelihood(two, labels, valid), [1.0], rtol=1e-6)
    one = perfect * np.array([-5, 1, 1, 1], np.float32)
    np.testing.assert_allclose(encoding.likelihood(one, labels, valid), [0.0], atol=0)
    with pytest.raises(ValueError, match="labels must lie in"):
        encoding.likelihood(perfect, labels, np.ones_like(valid))  # -1 where valid
