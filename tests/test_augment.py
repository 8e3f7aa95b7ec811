"""Tests of bitseg_jax/augment.py: each augmentation against its formula on uint8 images.

The pipeline-level checks (image and label stay aligned under every augmentation, eagerly and
inside tf.data) are in test_input_pipeline.py.
"""

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from bitseg_jax import augment
from configs import base


@pytest.fixture
def image():
    """Every uint8 value appears: [16, 16, 3] with channel-shifted ramps."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return np.stack([ramp, np.roll(ramp, 85), np.roll(ramp, 170)], axis=-1)


def test_gamma_matches_formula(image):
    out = augment.adjust_gamma(tf.constant(image), 1.2).numpy()
    want = np.round(255.0 * (image / 255.0) ** 1.2)
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out, want, atol=1)  # float32 tables vs float64 here.
    assert np.mean(out == want) > 0.99


def test_brightness_contrast_matches_formula_and_saturates(image):
    out = augment.adjust_brightness_contrast(tf.constant(image), 1.15, -30.0).numpy()
    want = np.clip(np.round(1.15 * image.astype(np.float64) - 30.0), 0, 255)
    np.testing.assert_allclose(out, want, atol=1)  # x.5 ties round differently in float32.
    assert np.mean(out == want) > 0.95
    assert out.min() == 0 and out.max() == 255  # both ends clipped, not wrapped.


def test_rgb_shift_is_per_channel(image):
    out = augment.shift_rgb(tf.constant(image), tf.constant([-20.0, 0.0, 13.0])).numpy()
    want = np.clip(image.astype(np.int32) + np.array([-20, 0, 13]), 0, 255)
    np.testing.assert_array_equal(out, want)


def test_hsv_shift_matches_colorsys(image):
    hue, sat, val = 15.0, -25.0, 10.0  # OpenCV hue units (180 = full circle), 0-255 for s, v.
    out = augment.shift_hsv(tf.constant(image), hue, sat, val).numpy()
    want = np.empty_like(out)
    for idx in np.ndindex(image.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(image[idx] / 255.0))
        h = (h + hue / 180.0) % 1.0
        s = min(max(s + sat / 255.0, 0.0), 1.0)
        v = min(max(v + val / 255.0, 0.0), 1.0)
        want[idx] = np.round(255.0 * np.array(colorsys.hsv_to_rgb(h, s, v)))
    np.testing.assert_allclose(out, want, atol=1)


@pytest.mark.parametrize("degrees, k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_by_right_angles_is_exact(image, degrees, k):
    # About the centre of a square image, right angles map pixels onto pixels: np.rot90 exactly.
    label = np.arange(256, dtype=np.int32).reshape(16, 16)
    out, out_label = augment.rotate(tf.constant(image), tf.constant(label), degrees)
    np.testing.assert_array_equal(out.numpy(), np.rot90(image, k))
    np.testing.assert_array_equal(out_label.numpy(), np.rot90(label, k))


def test_rotation_fills_corners_with_zero(image):
    label = np.full((16, 16), 7, np.int32)
    out, out_label = augment.rotate(tf.constant(image + 1), tf.constant(label), 45.0)
    assert out_label.numpy()[0, 0] == 0 and np.all(out.numpy()[0, 0] == 0)
    assert out_label.numpy()[8, 8] == 7  # the centre stays.


def test_hflip(image):
    label = np.arange(256, dtype=np.int32).reshape(16, 16)
    out, out_label = augment.hflip(tf.constant(image), tf.constant(label))
    np.testing.assert_array_equal(out.numpy(), image[:, ::-1])
    np.testing.assert_array_equal(out_label.numpy(), label[:, ::-1])


def test_probability_is_respected():
    # With the SPEC probability, the flip rate over many seeds is about 0.5.
    label = tf.constant(np.arange(12, dtype=np.int32).reshape(1, 12).repeat(8, 0))
    image = tf.zeros([8, 12, 3], tf.uint8)
    flips = 0
    for i in range(200):
        _, out = augment.apply(image, label, tf.constant([i, 7], tf.int64), {"hflip": 0.5})
        flips += int(not np.array_equal(out, label))
    assert 70 <= flips <= 130


def test_apply_is_deterministic_per_seed_and_rejects_unknown_names(image):
    label = tf.zeros([16, 16], tf.int32)
    probs = dict.fromkeys(augment.AUG_PROBS, 0.5)
    a = augment.apply(tf.constant(image), label, tf.constant([3, 4], tf.int64), probs)
    b = augment.apply(tf.constant(image), label, tf.constant([3, 4], tf.int64), probs)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(KeyError, match="blur"):
        augment.apply(tf.constant(image), label, tf.constant([0, 0], tf.int64), {"blur": 1.0})


def test_probabilities_scale_and_cap():
    config = base.get_config("tiny")
    config.data.aug_prob_multiplier = 3.0
    probs = augment.probabilities(config)
    assert probs["hflip"] == 1.0 and probs["gamma"] == pytest.approx(0.9)
    assert probs["rgb_shift"] == pytest.approx(0.3)
    config.data.aug_prob_multiplier = -1.0
    with pytest.raises(ValueError, match="aug_prob_multiplier"):
        augment.probabilities(config)
