"""The SPEC 2.3 train augmentations on uint8 images: pure TF functions, stateless randomness.

Each augmentation works on a uint8 image [h, w, 3] (and, for the geometric ones, its int32 label
map [h, w]) and returns uint8, rounding like the reference's uint8 albumentations chain; the
per-value colour maps (gamma, brightness/contrast, RGB shift) are 256-entry lookup tables.
`apply` runs the chain in SPEC order, each step gated by its probability and drawn from a
stateless seed, so it gives the same result eagerly and inside tf.data. input_pipeline.py calls
it on the resized content of each training example.
"""

import collections.abc
import math

import ml_collections
import numpy as np
import tensorflow as tf

# SPEC 2.3 step 1: augmentation name -> probability (before `config.data.aug_prob_multiplier`).
AUG_PROBS = {
    "hflip": 0.5,
    "gamma": 0.3,
    "brightness_contrast": 0.3,
    "hsv": 0.3,
    "rgb_shift": 0.1,
    "rotate": 0.3,
}

_HSV_SHIFT = (20.0, 30.0, 20.0)  # SPEC 2.3: hue (OpenCV units), saturation, value.


def to_uint8(x: tf.Tensor) -> tf.Tensor:
    """Rounds and saturates a float tensor to uint8 (the reference's uint8 rounding)."""
    return tf.saturate_cast(tf.round(x), tf.uint8)


def _lookup(image: tf.Tensor, table: tf.Tensor) -> tf.Tensor:
    """uint8 [h, w, 3] through float tables [256] (all channels) or [3, 256] (per channel)."""
    table = tf.convert_to_tensor(table, tf.float32)  # NumPy too (Python-float parameters).
    index = tf.cast(image, tf.int32)
    if table.shape.rank == 2:
        index += tf.constant([0, 256, 512])
    return tf.gather(tf.reshape(to_uint8(tf.clip_by_value(table, 0.0, 255.0)), [-1]), index)


_LEVELS = np.arange(256, dtype=np.float32)  # the 256 uint8 values, for the lookup tables.


def hflip(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror image [h, w, 3] and label [h, w] left-right."""
    return tf.reverse(image, [1]), tf.reverse(label, [1])


def adjust_gamma(image: tf.Tensor, gamma) -> tf.Tensor:
    """out = 255 (in / 255) ** gamma on uint8 [h, w, 3]."""
    return _lookup(image, 255.0 * tf.pow(_LEVELS / 255.0, gamma))


def adjust_brightness_contrast(image: tf.Tensor, alpha, beta) -> tf.Tensor:
    """out = clip(alpha in + beta, 0, 255) on uint8 [h, w, 3]."""
    return _lookup(image, alpha * _LEVELS + beta)


def shift_hsv(image: tf.Tensor, hue, saturation, value) -> tf.Tensor:
    """Shifts hue (OpenCV units: 180 = full circle), saturation and value (0-255 units) of
    uint8 [h, w, 3]; saturation and value are clipped."""
    hsv = tf.image.rgb_to_hsv(tf.cast(image, tf.float32) / 255.0)
    h = tf.math.floormod(hsv[..., 0] + hue / 180.0, 1.0)
    s = tf.clip_by_value(hsv[..., 1] + saturation / 255.0, 0.0, 1.0)
    v = tf.clip_by_value(hsv[..., 2] + value / 255.0, 0.0, 1.0)
    return to_uint8(255.0 * tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)))


def shift_rgb(image: tf.Tensor, shift) -> tf.Tensor:
    """Adds a per-channel shift [3] to uint8 [h, w, 3], clipped to [0, 255]."""
    return _lookup(image, _LEVELS[None, :] + tf.reshape(shift, [3, 1]))


def rotate(image: tf.Tensor, label: tf.Tensor, degrees) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotates uint8 image [h, w, 3] (bilinear) and label [h, w] (nearest) about the centre.

    Same size output, corners cut; what rotates in is 0 in both (black / segment 0), SPEC 2.3.
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    c, s = tf.cos(theta), tf.sin(theta)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    # Output pixel (x, y) samples input (c (x-cx) - s (y-cy) + cx, s (x-cx) + c (y-cy) + cy).
    transform = tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])

    def warp(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None],
            transforms=transform[None],
            output_shape=shape[:2],
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )[0]

    image = to_uint8(warp(tf.cast(image, tf.float32), "BILINEAR"))
    # Ids <= 65535 are exact in float32; the nearest warp only copies them.
    label = tf.cast(warp(tf.cast(label, tf.float32)[..., None], "NEAREST")[..., 0], tf.int32)
    return image, label


def probabilities(config: ml_collections.ConfigDict) -> dict[str, float]:
    """SPEC 2.3 probabilities times `config.data.aug_prob_multiplier` (capped at 1)."""
    m = float(config.data.aug_prob_multiplier)
    if m < 0:
        raise ValueError(f"config.data.aug_prob_multiplier must be >= 0; got {m}.")
    return {name: min(1.0, p * m) for name, p in AUG_PROBS.items()}


def apply(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, probs: collections.abc.Mapping[str, float]
) -> tuple[tf.Tensor, tf.Tensor]:
    """SPEC 2.3 step 1: the train augmentations, each with its probability, in SPEC order.

    Args:
        image: uint8 [h, w, 3] (the resized content).
        label: int32 [h, w].
        seed: int64 [2] stateless seed.
        probs: augmentation name (the keys of `AUG_PROBS`) -> probability.

    Returns:
        (image uint8 [h, w, 3], label int32 [h, w]).
    """
    unknown = set(probs) - set(AUG_PROBS)
    if unknown:
        raise KeyError(f"Unknown augmentations {sorted(unknown)}; expected {sorted(AUG_PROBS)}.")
    # name -> (image, label, u) -> (image, label), u: uniform [3] parameter draws in [0, 1).
    steps = {
        "hflip": lambda x, y, u: hflip(x, y),
        "gamma": lambda x, y, u: (adjust_gamma(x, 0.8 + 0.4 * u[0]), y),
        "brightness_contrast": lambda x, y, u: (
            adjust_brightness_contrast(x, 0.8 + 0.4 * u[0], 255.0 * (0.4 * u[1] - 0.2)),
            y,
        ),
        "hsv": lambda x, y, u: (shift_hsv(x, *tf.unstack((2.0 * u - 1.0) * _HSV_SHIFT)), y),
        "rgb_shift": lambda x, y, u: (shift_rgb(x, 40.0 * u - 20.0), y),
        "rotate": lambda x, y, u: rotate(x, y, 40.0 * u[0] - 20.0),
    }
    seeds = tf.random.experimental.stateless_split(seed, 2 * len(steps))
    for i, (name, fn) in enumerate(steps.items()):
        p = probs.get(name, 0.0)
        if p <= 0.0:  # statically off: not even in the graph.
            continue
        u = tf.random.stateless_uniform([3], seeds[2 * i + 1])

        def apply(fn=fn, u=u, x=image, y=label):
            return fn(x, y, u)

        if p >= 1.0:
            image, label = apply()
        else:
            gate = tf.random.stateless_uniform([], seeds[2 * i]) < p
            image, label = tf.cond(gate, apply, lambda x=image, y=label: (x, y))
    return image, label
