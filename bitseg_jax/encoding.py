"""Segment encodings: integer label maps <-> diffusion tensors (SPEC section 3).

This file owns analog bits (SPEC 3.1), one-hot (3.3) and the UniGS-style RGB colour map (3.4) with
its progressive-dichotomy decoder, the bit -> class probabilities of paper Eq. 3 (3.2), the
per-pixel entropy of the factorised bit distribution (7.4) and the `likelihood` metric (3.2).

Labels are integer arrays `[...]` (usually `[B, H, W]`) with -1 marking padding; encoded tensors
append a channel axis `[..., C]` (NHWC). Encoders/decoders of bits and one-hot are jit-safe and
vmappable with the bit width static (taken from Python ints or array shapes); RGB decoding runs in
NumPy on the host. Shape and dtype checks always run; value checks (label range, NaN) run only
when the input is concrete, i.e. not inside `jax.jit`.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MAX_BITS = 16
# `class_probs` materialises 2**k channels per pixel; beyond this use `bit_probs`.
MAX_CLASS_PROBS_BITS = 10


# ------------------------------------------------------------------------------------------------
# Input checks.
# ------------------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_num_bits(num_bits) -> int:
    if isinstance(num_bits, bool) or not isinstance(num_bits, (int, np.integer)):
        raise TypeError(f"num_bits must be a Python int, got {num_bits!r}.")
    if not 1 <= num_bits <= MAX_BITS:
        raise ValueError(f"num_bits must be in 1..{MAX_BITS}, got {num_bits}.")
    return int(num_bits)


def _check_int_labels(labels, name: str = "labels"):
    labels = labels if isinstance(labels, jax.Array) else np.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}.")
    return labels


def _check_label_range(labels, low: int, high: int, name: str = "labels") -> None:
    """Raises if a concrete `labels` has values outside [low, high)."""
    if labels.size == 0 or not _is_concrete(labels):
        return
    values = np.asarray(labels)
    lo, hi = int(values.min()), int(values.max())
    if lo < low or hi >= high:
        raise ValueError(f"{name} must lie in [{low}, {high}), got values in [{lo}, {hi}].")


def _check_float(x, name: str, *, min_ndim: int = 1):
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dim(s), got shape {x.shape}.")
    if _is_concrete(x) and x.size and np.isnan(np.asarray(x)).any():
        raise ValueError(f"{name} contains NaN.")
    return x


def _check_bits(bits, name: str = "bits"):
    bits = _check_float(bits, name)
    if not 1 <= bits.shape[-1] <= MAX_BITS:
        raise ValueError(
            f"{name} must be [..., num_bits] with 1 <= num_bits <= {MAX_BITS}, got shape "
            f"{bits.shape}."
        )
    return bits


# ------------------------------------------------------------------------------------------------
# Analog bits (SPEC 3.1).
# ------------------------------------------------------------------------------------------------


def encode_bits(labels: Array, num_bits: int) -> Array:
    """SPEC 3.1: label v -> bits b_i = 2 ((v >> i) & 1) - 1 on channel i (LSB first); -1 -> zeros.

    Any num_bits <= 16 works: labels are widened to int32, never cast to uint8 (SPEC B8).

    Args:
      labels: integer array [...], values in [-1, 2**num_bits).
      num_bits: k, a Python int in 1..16 (static).

    Returns:
      float32 [..., num_bits] in {-1, +1}, all 0 where labels == -1.

    Raises:
      TypeError: non-integer labels. ValueError: num_bits or (concrete) label values out of range.
    """
    num_bits = _check_num_bits(num_bits)
    labels = _check_int_labels(labels)
    _check_label_range(labels, -1, 2**num_bits)
    return _encode_bits(labels, num_bits)


@functools.partial(jax.jit, static_argnums=1)
def _encode_bits(labels: Array, num_bits: int) -> Array:
    v = jnp.asarray(labels, jnp.int32)[..., None]
    bits = jnp.right_shift(v, jnp.arange(num_bits, dtype=jnp.int32)) & 1
    return jnp.where(v >= 0, 2.0 * bits.astype(jnp.float32) - 1.0, 0.0)


def decode_bits(bits: Array) -> Array:
    """SPEC 3.1: v = sum_i [x_i > 0] 2^i (strictly > 0, so 0 and padding decode to bit 0).

    Args:
      bits: float [..., k] with 1 <= k <= 16.

    Returns:
      int32 [...].

    Raises:
      TypeError: non-float bits. ValueError: bad last axis, or NaN in a concrete input.
    """
    return _decode_bits(_check_bits(bits))


@jax.jit
def _decode_bits(bits: Array) -> Array:
    weights = jnp.left_shift(1, jnp.arange(bits.shape[-1], dtype=jnp.int32))
    return jnp.sum(jnp.where(bits > 0, weights, 0), axis=-1, dtype=jnp.int32)


# ------------------------------------------------------------------------------------------------
# One-hot (SPEC 3.3).
# ------------------------------------------------------------------------------------------------


def encode_onehot(labels: Array, num_bits: int) -> Array:
    """SPEC 3.3: label v -> one-hot over 2**num_bits channels, values {0, 1}; -1 -> zeros.

    Args:
      labels: integer array [...], values in [-1, 2**num_bits).
      num_bits: k (static); 2**k channels.

    Returns:
      float32 [..., 2**num_bits].
    """
    num_bits = _check_num_bits(num_bits)
    labels = _check_int_labels(labels)
    _check_label_range(labels, -1, 2**num_bits)
    return _encode_onehot(labels, num_bits)


@functools.partial(jax.jit, static_argnums=1)
def _encode_onehot(labels: Array, num_bits: int) -> Array:
    # jax.nn.one_hot gives all zeros for -1 (out of range), which is the padding encoding.
    return jax.nn.one_hot(jnp.asarray(labels, jnp.int32), 2**num_bits, dtype=jnp.float32)


def decode_onehot(x: Array) -> Array:
    """SPEC 3.3: argmax over channels (first maximum on ties).

    Args:
      x: float [..., K].

    Returns:
      int32 [...].
    """
    return _decode_onehot(_check_float(x, "x"))


@jax.jit
def _decode_onehot(x: Array) -> Array:
    return jnp.argmax(x, axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# RGB colour map (SPEC 3.4).
# ------------------------------------------------------------------------------------------------

RGB_NUM_CLASSES = 125  # 5 levels per channel.


def rgb_table(offset: bool = True) -> np.ndarray:
    """SPEC 3.4: the class -> colour table of the UniGS-style RGB encoding.

    v -> base-5 digits (v // 25, (v // 5) % 5, v % 5), intensity I = min(64 d, 255), value
    (2 I - 1) / 255 with `offset` (the reference, SPEC B3) or 2 I / 255 - 1 without (intended).

    Args:
      offset: reproduce the reference's (2I - 1)/255 mapping.

    Returns:
      float32 [125, 3].
    """
    v = np.arange(RGB_NUM_CLASSES)
    digits = np.stack([v // 25, (v // 5) % 5, v % 5], axis=-1)
    intensity = np.minimum(64 * digits, 255).astype(np.float64)
    values = (2.0 * intensity - 1.0) / 255.0 if offset else 2.0 * intensity / 255.0 - 1.0
    return values.astype(np.float32)


def encode_rgb(labels: Array, *, offset: bool = True) -> Array:
    """SPEC 3.4: label v in [0, 125) -> its colour (3 channels); -1 -> zeros.

    Args:
      labels: integer array [...], values in [-1, 125).
      offset: see `rgb_table`.

    Returns:
      float32 [..., 3].
    """
    labels = _check_int_labels(labels)
    _check_label_range(labels, -1, RGB_NUM_CLASSES)
    return _encode_rgb(labels, bool(offset))


@functools.partial(jax.jit, static_argnums=1)
def _encode_rgb(labels: Array, offset: bool) -> Array:
    v = jnp.asarray(labels, jnp.int32)
    colours = jnp.asarray(rgb_table(offset))[jnp.maximum(v, 0)]
    return jnp.where(v[..., None] >= 0, colours, 0.0)


def _two_means(points: np.ndarray, rng: np.random.Generator, n_init: int = 3, max_iter: int = 100):
    """Lloyd's 2-means, k-means++ seeding, best of `n_init` by inertia. Returns [N] in {0, 1}."""
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        first = points[rng.integers(len(points))]
        d2 = np.sum((points - first) ** 2, axis=1)
        second = points[rng.choice(len(points), p=d2 / d2.sum())] if d2.sum() > 0 else first
        centres = np.stack([first, second])
        for _ in range(max_iter):
            dist = np.sum((points[:, None, :] - centres[None]) ** 2, axis=-1)
            assign = np.argmin(dist, axis=1)
            new = np.stack(
                [points[assign == c].mean(0) if np.any(assign == c) else centres[c] for c in (0, 1)]
            )
            if np.allclose(new, centres):
                break
            centres = new
        inertia = np.sum(np.min(np.sum((points[:, None] - centres[None]) ** 2, -1), 1))
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best


def decode_rgb(
    x: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    seed: int = 0,
    min_pixels: int = 20,
    max_splits: int = 10,
    min_spread: float = 10.0,
    max_iterations: int = 2**10,
) -> np.ndarray:
    """SPEC 3.4: the progressive dichotomy module (PDM), NumPy on host, one image at a time.

    Colours are mapped to [0, 255] by (x + 1) 127.5. Starting with every valid pixel in class 0,
    repeatedly take the lowest-numbered unfinished class: it is finished if it has < `min_pixels`
    pixels, was split `max_splits` times, or its mean distance to its mean colour is
    < `min_spread`; otherwise a seeded 2-means splits it (cluster 0 keeps the id, cluster 1 gets the
    next id; both count one more split). Pixels outside `valid` get -1.

    Args:
      x: float [..., H, W, 3]; each leading index is decoded as a separate image.
      valid: bool [..., H, W], or None for all valid.
      seed: seed of the 2-means initialisation (the reference's k-means is unseeded).
      min_pixels, max_splits, min_spread, max_iterations: the SPEC 3.4 constants.

    Returns:
      int32 [..., H, W].
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must have a floating dtype, got {x.dtype}.")
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"x must be [..., H, W, 3], got shape {x.shape}.")
    if np.isnan(x).any():
        raise ValueError("x contains NaN.")
    if valid is None:
        valid = np.ones(x.shape[:-1], bool)
    valid = np.asarray(valid)
    if valid.shape != x.shape[:-1] or valid.dtype != bool:
        raise ValueError(
            f"valid must be bool with shape {x.shape[:-1]}, got {valid.dtype} {valid.shape}."
        )
    if x.ndim > 3:  # every leading index is its own image
        flat_x, flat_valid = x.reshape((-1,) + x.shape[-3:]), valid.reshape((-1,) + x.shape[-3:-1])
        kwargs = {
            "seed": seed,
            "min_pixels": min_pixels,
            "max_splits": max_splits,
            "min_spread": min_spread,
            "max_iterations": max_iterations,
        }
        out = [decode_rgb(xi, vi, **kwargs) for xi, vi in zip(flat_x, flat_valid, strict=True)]
        return np.stack(out).reshape(x.shape[:-1])
    rng = np.random.default_rng(seed)
    colours = (x[valid].astype(np.float64) + 1.0) * 127.5  # [N, 3]
    classes = np.zeros(len(colours), np.int64)
    finished, splits = [len(colours) == 0], [0]
    for _ in range(max_iterations):
        open_ids = [c for c, done in enumerate(finished) if not done]
        if not open_ids:
            break
        c = open_ids[0]
        members = np.flatnonzero(classes == c)
        pts = colours[members]
        spread = np.mean(np.linalg.norm(pts - pts.mean(0), axis=1)) if len(pts) else 0.0
        if len(pts) < min_pixels or splits[c] >= max_splits or spread < min_spread:
            finished[c] = True
            continue
        assign = _two_means(pts, rng)
        if assign.min() == assign.max():  # degenerate split: nothing to separate.
            finished[c] = True
            continue
        classes[members[assign == 1]] = len(finished)
        splits[c] += 1
        finished.append(False)
        splits.append(splits[c])
    out = np.full(x.shape[:-1], -1, np.int32)
    out[valid] = classes
    return out


# ------------------------------------------------------------------------------------------------
# Dispatch by encoding name.
# ------------------------------------------------------------------------------------------------

_CHANNELS: dict[str, Callable[[int], int]] = {
    "analog_bits": lambda k: k,
    "onehot": lambda k: 2**k,
    "rgb": lambda k: 3,
}


def _encoding_entry(table: dict, encoding: str):
    try:
        return table[encoding]
    except (KeyError, TypeError):
        raise KeyError(f"Unknown encoding {encoding!r}; expected one of {sorted(table)}.") from None


def num_channels(encoding: str, num_bits: int) -> int:
    """Channels C of the diffusion tensor: k (analog_bits), 2**k (onehot) or 3 (rgb)."""
    fn = _encoding_entry(_CHANNELS, encoding)
    return fn(_check_num_bits(num_bits))


def encode(labels: Array, *, encoding: str, num_bits: int, rgb_offset: bool = True) -> Array:
    """Encodes labels [...] into [..., num_channels(encoding, num_bits)] (SPEC 3.1, 3.3, 3.4).

    Args:
      labels: integer [...], -1 = padding (encoded as zeros).
      encoding: "analog_bits" | "onehot" | "rgb".
      num_bits: k (static; RGB ignores it beyond validation).
      rgb_offset: RGB only, see `rgb_table`.

    Returns:
      float32 [..., C].
    """
    encoders = {
        "analog_bits": lambda: encode_bits(labels, num_bits),
        "onehot": lambda: encode_onehot(labels, num_bits),
        "rgb": lambda: encode_rgb(labels, offset=rgb_offset),
    }
    _check_num_bits(num_bits)
    return _encoding_entry(encoders, encoding)()


def decode(
    x: Array, *, encoding: str, num_bits: int, valid: Array | None = None
) -> Array | np.ndarray:
    """Decodes [..., C] into labels [...] (SPEC 3.1, 3.3, 3.4); -1 outside `valid` when given.

    Analog bits and one-hot decode with jnp (jit-safe); RGB runs the PDM on host (NumPy, needs
    concrete [..., H, W, 3] input).

    Args:
      x: float [..., num_channels(encoding, num_bits)].
      encoding: "analog_bits" | "onehot" | "rgb".
      num_bits: k.
      valid: optional bool [...] region to decode.

    Returns:
      int32 [...].
    """
    channels = num_channels(encoding, num_bits)
    x = _check_float(x, "x")
    if x.shape[-1] != channels:
        raise ValueError(
            f"x has {x.shape[-1]} channels; encoding {encoding!r} with num_bits={num_bits} "
            f"needs {channels}."
        )
    if valid is not None and tuple(valid.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"valid has shape {tuple(valid.shape)}; expected {tuple(x.shape[:-1])}.")
    if encoding == "rgb":
        return decode_rgb(np.asarray(x), None if valid is None else np.asarray(valid))
    labels = decode_bits(x) if encoding == "analog_bits" else decode_onehot(x)
    return labels if valid is None else jnp.where(valid, labels, -1)


# ------------------------------------------------------------------------------------------------
# Probabilities and uncertainty (SPEC 3.2, 7.4).
# ------------------------------------------------------------------------------------------------


def _bit_factors(bits: Array) -> tuple[Array, Array]:
    """Eq. 3 per-bit factors 1 - |c - y|/2 for code c = -1 and c = +1, each [..., k]."""
    return 1.0 - jnp.abs(-1.0 - bits) / 2.0, 1.0 - jnp.abs(1.0 - bits) / 2.0


def bit_probs(bits: Array, labels: Array) -> Array:
    """SPEC 3.2 / paper Eq. 3: p(y | y_hat) = prod_i (1 - |c_i(y) - y_hat_i| / 2), per pixel.

    Only the given labels are evaluated, so no [..., 2**k] tensor is formed.

    Args:
      bits: float y_hat [..., k] (in [-1, 1] for a proper distribution).
      labels: integer [...] in [0, 2**k), the classes to score.

    Returns:
      float32 [...].
    """
    bits = _check_bits(bits)
    labels = _check_int_labels(labels)
    if tuple(labels.shape) != tuple(bits.shape[:-1]):
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}; expected bits.shape[:-1] = "
            f"{tuple(bits.shape[:-1])}."
        )
    _check_label_range(labels, 0, 2 ** bits.shape[-1])
    return _bit_probs(bits, labels)


@jax.jit
def _bit_probs(bits: Array, labels: Array) -> Array:
    code = _encode_bits(labels, bits.shape[-1])
    return jnp.prod(1.0 - jnp.abs(code - bits) / 2.0, axis=-1)


def class_probs(bits: Array) -> Array:
    """SPEC 3.2: p(y | y_hat) for every class y, channel y = sum_i b_i 2^i (small k only).

    Args:
      bits: float [..., k], k <= 10.

    Returns:
      float32 [..., 2**k]; sums to 1 over the last axis when bits lie in [-1, 1].
    """
    bits = _check_bits(bits)
    k = bits.shape[-1]
    if k > MAX_CLASS_PROBS_BITS:
        raise ValueError(
            f"class_probs materialises 2**k channels; k = {k} > {MAX_CLASS_PROBS_BITS}. "
            "Use bit_probs(bits, labels) for the classes you need."
        )
    return _class_probs(bits)


@jax.jit
def _class_probs(bits: Array) -> Array:
    k = bits.shape[-1]
    f_neg, f_pos = _bit_factors(bits)
    probs = jnp.stack([f_neg[..., 0], f_pos[..., 0]], axis=-1)  # index = b_0.
    for i in range(1, k):
        # New index b_i 2^i + old index: bit i becomes the most significant so far.
        step = jnp.stack([f_neg[..., i], f_pos[..., i]], axis=-1)
        probs = (step[..., :, None] * probs[..., None, :]).reshape(
            bits.shape[:-1] + (2 ** (i + 1),)
        )
    return probs


def bit_entropy(bits: Array) -> Array:
    """SPEC 7.4: entropy (nats) per pixel of the factorised bit distribution.

    With p_i = (1 + y_hat_i) / 2 (clipped to [0, 1]) this is sum_i H_b(p_i), exactly the entropy of
    `class_probs`, in O(k).

    Args:
      bits: float [..., k].

    Returns:
      float32 [...] in [0, k ln 2].
    """
    return _bit_entropy(_check_bits(bits))


@jax.jit
def _bit_entropy(bits: Array) -> Array:
    p = jnp.clip((1.0 + bits) / 2.0, 0.0, 1.0)
    # xlogy gives 0 ln 0 = 0 at saturated bits.
    h = -jax.scipy.special.xlogy(p, p) - jax.scipy.special.xlogy(1.0 - p, 1.0 - p)
    return jnp.sum(h, axis=-1)


def likelihood(bits: Array, labels: Array, valid: Array) -> Array:
    """SPEC 3.2 `likelihood`: mean over valid pixels of clip(p(y_gt | y_hat), 0, 1), per image.

    Args:
      bits: float [..., H, W, k] predicted bits.
      labels: integer [..., H, W] ground truth (any value where not valid, e.g. -1).
      valid: bool [..., H, W].

    Returns:
      float32 [...] (one value per image; 0 for an image without valid pixels).
    """
    bits = _check_bits(bits)
    if tuple(valid.shape) != tuple(bits.shape[:-1]) or valid.dtype != jnp.bool_:
        raise ValueError(
            f"valid must be bool with shape {tuple(bits.shape[:-1])}, got {valid.dtype} "
            f"{tuple(valid.shape)}."
        )
    labels = _check_int_labels(labels)
    if _is_concrete(labels) and _is_concrete(valid):
        _check_label_range(np.asarray(labels)[np.asarray(valid)], 0, 2 ** bits.shape[-1])
    return _likelihood(bits, labels, valid)


@jax.jit
def _likelihood(bits: Array, labels: Array, valid: Array) -> Array:
    # Invalid pixels may hold -1 (padding); score class 0 there and mask it out below.
    p = jnp.clip(_bit_probs(bits, jnp.where(valid, labels, 0)), 0.0, 1.0)
    m = valid.astype(p.dtype)
    return jnp.sum(p * m, axis=(-2, -1)) / jnp.maximum(jnp.sum(m, axis=(-2, -1)), 1.0)
