"""Pictures of segmentations: a fixed id palette, overlays, uncertainty colour maps and grids.

NumPy + PIL only, host side. Every function returns uint8 RGB arrays `[H, W, 3]` so the
results go straight into TensorBoard (`writer.write_images`) or `PIL.Image.fromarray`.
Segment ids are agnostic (SPEC section 3), so colours only need to tell neighbours apart: the
palette is a fixed table indexed by `id % PALETTE_SIZE`, and id −1 (padding) is black.
Matplotlib plots of sweeps live in `evaluation.py`.
"""

import colorsys

import numpy as np
from PIL import Image

PALETTE_SIZE = 256

# ImageNet statistics used by the input pipeline's normalisation (SPEC 2.3 step 3); only
# needed here to turn a model input back into a picture.
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Anchors of a perceptually ordered dark-to-bright map (black, purple, red, orange, pale
# yellow), interpolated linearly: low uncertainty is dark, high is bright.
_UNCERTAINTY_ANCHORS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32
)


def _make_palette(size: int) -> np.ndarray:
    """Distinct colours: golden-ratio hue steps, cycling through 4 saturation/value pairs."""
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    levels = [(0.85, 0.95), (0.55, 0.80), (0.95, 0.65), (0.40, 1.00)]
    colours = []
    for i in range(size):
        sat, val = levels[i % len(levels)]
        colours.append(colorsys.hsv_to_rgb((0.05 + i * golden) % 1.0, sat, val))
    return np.round(np.asarray(colours) * 255).astype(np.uint8)


PALETTE = _make_palette(PALETTE_SIZE)  # [PALETTE_SIZE, 3] uint8, fixed across runs.


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`{name}` must be an integer [H, W] map, got {labels.dtype}{labels.shape}"
        )
    return labels


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (*shape, 3):
        raise ValueError(
            f"`image` must be uint8 [{shape[0]}, {shape[1]}, 3], got {image.dtype}{image.shape}"
        )
    return image


def colorize(labels: np.ndarray) -> np.ndarray:
    """Colours an id map with `PALETTE`.

    Args:
      labels: int [H, W]; ids ≥ 0 index `PALETTE` modulo its size, −1 (padding) is black.

    Returns:
      uint8 [H, W, 3].
    """
    labels = _check_labels(labels)
    out = PALETTE[np.mod(labels, PALETTE_SIZE)]
    out[labels < 0] = 0
    return out


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another id: bool [H, W] (1-px contours)."""
    labels = _check_labels(labels)
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blends segment colours over a photo and draws white segment boundaries.

    Args:
      image: uint8 [H, W, 3].
      labels: int [H, W]; −1 pixels keep the photo unchanged.
      alpha: colour weight in [0, 1].

    Returns:
      uint8 [H, W, 3].
    """
    labels = _check_labels(labels)
    image = _check_image(image, labels.shape)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}")
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(labels)
    blend = np.where((labels >= 0)[..., None], blend, image)
    blend[boundaries(labels) & (labels >= 0)] = 255.0
    return np.round(blend).astype(np.uint8)


def uncertainty_map(values: np.ndarray, *, vmax: float | None = None) -> np.ndarray:
    """Colours a per-pixel uncertainty map (entropy, disagreement) dark = sure, bright = unsure.

    Args:
      values: float [H, W], ≥ 0; NaN (e.g. padding) is drawn black.
      vmax: the value drawn brightest (e.g. `num_bits * ln 2` for bit entropy, 1 for a
        disagreement fraction); None uses the map's own maximum.

    Returns:
      uint8 [H, W, 3].
    """
    values = np.asarray(values, np.float32)
    if values.ndim != 2:
        raise ValueError(f"`values` must be [H, W], got shape {values.shape}")
    finite = np.isfinite(values)
    if vmax is None:
        vmax = float(values[finite].max()) if finite.any() else 1.0
    scaled = np.clip(np.where(finite, values, 0.0) / max(vmax, 1e-12), 0.0, 1.0)
    pos = scaled * (len(_UNCERTAINTY_ANCHORS) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int32), len(_UNCERTAINTY_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = (1.0 - frac) * _UNCERTAINTY_ANCHORS[lo] + frac * _UNCERTAINTY_ANCHORS[lo + 1]
    rgb[~finite] = 0.0
    return np.round(rgb).astype(np.uint8)


def denormalize(image: np.ndarray) -> np.ndarray:
    """Turns an ImageNet-normalised model input back into a picture.

    Args:
      image: float [H, W, 3] as produced by the input pipeline (SPEC 2.3 step 3); the
        zero padding comes out as the ImageNet mean colour.

    Returns:
      uint8 [H, W, 3].
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be [H, W, 3], got shape {image.shape}")
    return np.round(np.clip((image * _IMAGENET_STD + _IMAGENET_MEAN) * 255.0, 0, 255)).astype(
        np.uint8
    )


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes to `size` = (h, w) (ids stay ids).

    Pixel centres are aligned: output row r reads input row floor((r + 0.5) · H_in / h).
    """
    array = np.asarray(array)
    h_in, w_in = array.shape[:2]
    h, w = size
    if min(h_in, w_in, h, w) <= 0:
        raise ValueError(f"cannot resize an array of shape {array.shape} to {size}")
    rows = np.minimum(((np.arange(h) + 0.5) * h_in / h).astype(np.int64), h_in - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * w_in / w).astype(np.int64), w_in - 1)
    return array[rows][:, cols]


def content_shape(valid: np.ndarray) -> tuple[int, int]:
    """(h, w) of the content that SPEC 2.3 step 4 places top-left in bool valid [S, S]."""
    valid = np.asarray(valid, bool)
    return int(valid.any(1).sum()), int(valid.any(0).sum())


def resize_content(
    maps: np.ndarray,
    content: tuple[int, int],
    size: tuple[int, int],
    canvas: tuple[int, int] | None = None,
) -> np.ndarray:
    """Nearest-resizes the top-left `content` = (h, w) of maps [..., H, W] to `size`.

    Args:
      maps: [..., H, W] (leading axes kept).
      content: (h, w), the region to keep, e.g. `content_shape(valid)`.
      size: (h', w') it is resized to.
      canvas: (H', W') ≥ size: the result sits top-left in zeros of this shape (None: size).

    Returns:
      [..., h', w'] or [..., H', W'].
    """
    maps = np.asarray(maps)
    h, w = content
    moved = np.moveaxis(maps[..., :h, :w], (-2, -1), (0, 1))
    out = np.moveaxis(resize_nearest(moved, size), (0, 1), (-2, -1))
    if canvas is None:
        return out
    full = np.zeros(maps.shape[:-2] + tuple(canvas), maps.dtype)
    full[..., : size[0], : size[1]] = out
    return full


def grid(rows: list[list[np.ndarray]], *, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tiles pictures into one image, row by row (rows may differ in length).

    Args:
      rows: lists of uint8 [h, w, 3] tiles; every tile is placed top-left in a cell of the
        largest tile's size.
      pad: pixels of `fill` between and around cells.
      fill: separator grey level.

    Returns:
      uint8 [R · (h_max + pad) + pad, C · (w_max + pad) + pad, 3].
    """
    tiles = [np.asarray(t) for row in rows for t in row]
    if not tiles:
        raise ValueError("`rows` holds no tiles")
    for t in tiles:
        if t.dtype != np.uint8 or t.ndim != 3 or t.shape[-1] != 3:
            raise ValueError(f"every tile must be uint8 [h, w, 3], got {t.dtype}{t.shape}")
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    num_cols = max(len(row) for row in rows)
    out = np.full(
        (len(rows) * (cell_h + pad) + pad, num_cols * (cell_w + pad) + pad, 3), fill, np.uint8
    )
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
            out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return out


def save_png(path: str, picture: np.ndarray) -> None:
    """Writes a uint8 [H, W, 3] picture as PNG."""
    Image.fromarray(np.asarray(picture, np.uint8)).save(path)


def sample_row(
    image: np.ndarray,
    ground_truth: np.ndarray,
    samples: np.ndarray,
    uncertainty: np.ndarray,
    *,
    vmax: float | None = None,
) -> list[np.ndarray]:
    """One grid row: image | ground truth | each sample | uncertainty.

    Args:
      image: uint8 [H, W, 3].
      ground_truth: int [H, W] (−1 = padding, drawn black).
      samples: int [S, H, W] predicted id maps.
      uncertainty: float [H, W] (see `uncertainty_map`).
      vmax: brightest uncertainty value.

    Returns:
      A list of S + 3 uint8 [H, W, 3] tiles for `grid`.
    """
    samples = np.asarray(samples)
    if samples.ndim != 3:
        raise ValueError(f"`samples` must be [S, H, W], got shape {samples.shape}")
    return [
        _check_image(image, samples.shape[1:]),
        colorize(ground_truth),
        *[colorize(s) for s in samples],
        uncertainty_map(uncertainty, vmax=vmax),
    ]
