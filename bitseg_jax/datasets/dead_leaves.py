"""`dead_leaves`: procedural full-image partitions, generated locally (the embedded default).

A dead-leaves image is a stack of opaque random shapes dropped back to front over a background:
ellipses, star-shaped polygons and smooth Fourier blobs, with radii drawn from a power law
p(r) ~ r^-2 (heavier than the classical r^-3, see `_radius`), so big and small shapes mix.
Each layer is filled with a random
crop of a photograph or texture (random scale, one of the 8 flips/transposes, colour jitter), so
segments are textured like real ones and a model cannot segment by colour alone. The label of a
pixel is the layer visible there: occlusion makes partial and split (disconnected) segments, and
every pixel belongs to a segment. Visible layers are relabelled to consecutive ids 0..N-1 in
back-to-front order (0 = the deepest visible layer, normally the background).

Generation is deterministic and order-free: example `i` of a split draws everything from
`np.random.default_rng([seed, split_number, i])`, so examples can be made in any order or in
parallel, and changing one split's size does not change the other split. The textures are the
photographs below, which ship inside the scikit-image wheel (read from its data directory; no
pooch download). All are CC0 or public domain as stated in `skimage.data`'s docstrings:

| name | licence (skimage.data) |
|---|---|
| astronaut | public domain (NASA) |
| brick | CC0 (CC0Textures) |
| camera | CC0 (Lav Varshney) |
| cell | CC0 (Müller et al.) |
| chelsea | CC0 (Stefan van der Walt) |
| clock | public domain (Stefan van der Walt) |
| coffee | CC0 (Rachel Michetti) |
| grass | CC0 |
| gravel | CC0 (CC0Textures) |
| hubble_deep_field | public domain (NASA) |
| retina | CC0 (Mikael Häggström) |
| rocket | public domain (SpaceX) |
| text | public domain |

(Bundled images without an explicit licence statement, e.g. coins, moon, page, ihc, and the
synthetic/logo ones, are not used.) The examples depend on these pixels, so a scikit-image release
that changed them would change the data set; the builder version covers this generator only.
"""

import dataclasses
import functools
from typing import ClassVar

import numpy as np
import skimage.data
import skimage.draw
import tensorflow_datasets as tfds

from bitseg_jax.datasets import common

# name -> loader of a bundled, CC0/public-domain image (see the module docstring).
TEXTURES = {
    "astronaut": skimage.data.astronaut,
    "brick": skimage.data.brick,
    "camera": skimage.data.camera,
    "cell": skimage.data.cell,
    "chelsea": skimage.data.chelsea,
    "clock": skimage.data.clock,
    "coffee": skimage.data.coffee,
    "grass": skimage.data.grass,
    "gravel": skimage.data.gravel,
    "hubble_deep_field": skimage.data.hubble_deep_field,
    "retina": skimage.data.retina,
    "rocket": skimage.data.rocket,
    "text": skimage.data.text,
}

# Seeds of the per-example generators: [seed, SPLIT_NUMBERS[split], index].
SPLIT_NUMBERS = {"train": 0, "validation": 1}

_MAX_TEXTURE_SIDE = 768  # larger photographs are halved until they fit (speed, memory).
_MIN_LEVEL_SIDE = 64  # the texture pyramid stops before a level this small.
_MAX_SCALE = 3.0  # texture pixels per canvas pixel, at most (zoom out).
_MIN_SCALE = 0.5  # ... and at least (zoom in x2).
_BLOB_ANGLES = 720  # angular resolution of a blob's tabulated boundary (0.5 degrees).


@dataclasses.dataclass(eq=False)
class DeadLeavesConfig(tfds.core.BuilderConfig):
    """Size and split sizes of a dead_leaves variant.

    Attributes:
        image_size: side S of the square images, in pixels.
        min_layers: fewest shapes dropped over the background.
        max_layers: most shapes (so at most max_layers + 1 segments).
        num_train: examples in `train`.
        num_validation: examples in `validation`.
        seed: data set seed; example i of a split depends on (seed, split, i) only.
    """

    image_size: int = 128
    min_layers: int = 3
    max_layers: int = 30
    num_train: int = 10_000
    num_validation: int = 500
    seed: int = 0


@functools.cache
def _texture_pyramids() -> tuple[tuple[tuple[np.ndarray, ...], np.ndarray, bool], ...]:
    """Loads the textures once per process.

    Returns:
        One `(levels, mean, is_gray)` per texture: `levels` are uint8 `[h, w, 3]` arrays, each
        half the size of the previous (2x2 box filter), so zooming out samples a pre-filtered
        level; `mean` is the float `[3]` mean colour in [0, 1].
    """
    pyramids = []
    for load in TEXTURES.values():
        img = np.asarray(load())
        is_gray = img.ndim == 2
        if is_gray:
            img = np.repeat(img[..., None], 3, axis=-1)
        img = img[..., :3].astype(np.float32)
        levels = []
        while True:
            if max(img.shape[:2]) <= _MAX_TEXTURE_SIDE:
                levels.append(np.round(img).astype(np.uint8))
            if min(img.shape[:2]) // 2 < _MIN_LEVEL_SIDE:
                break
            h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
            img = img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        mean = levels[0].reshape(-1, 3).mean(axis=0) / 255.0
        pyramids.append((tuple(levels), mean, is_gray))
    return tuple(pyramids)


def _radius(rng: np.random.Generator, r_min: float, r_max: float) -> float:
    """Draws r with density ~ r^-2 on [r_min, r_max] by inversion.

    The dead-leaves size law is r^-3 (scale invariance over an infinite stack); with at most
    30 layers that law leaves mostly bare background, so the heavier r^-2 tail is used: large,
    mutually occluding shapes with small ones among them.
    """
    u = rng.uniform()
    return float(1.0 / (1.0 / r_min - u * (1.0 / r_min - 1.0 / r_max)))


def _box(c: float, extent: float, size: int) -> tuple[int, int]:
    """Pixel range [lo, hi) of a 1-D interval [c - extent, c + extent] clipped to the canvas."""
    return max(0, int(np.floor(c - extent))), min(size, int(np.ceil(c + extent)) + 1)


def _shape_pixels(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterises one random shape.

    Returns:
        `(rows, cols)`: int arrays `[N]` of the covered canvas pixels (N may be 0 when the shape
        lies outside the canvas).
    """
    r = _radius(rng, max(1.5, 0.05 * size), 0.6 * size)
    # Centres may lie a little outside, so shapes are also cut by the image border.
    cy, cx = rng.uniform(-0.1 * size, 1.1 * size, size=2)
    kind = rng.integers(3)
    if kind == 0:  # star-shaped polygon: sorted random angles, random radii.
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0.0, 2 * np.pi, size=n))
        radii = r * rng.uniform(0.4, 1.0, size=n)
        return skimage.draw.polygon(
            cy + radii * np.sin(angles), cx + radii * np.cos(angles), shape=(size, size)
        )
    if kind == 1:  # rotated ellipse with aspect ratio up to 3 and area ~ pi r^2.
        aspect = rng.uniform(1.0, 3.0)
        a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
        extent = a
    else:  # smooth blob: radius r (1 + sum_k c_k cos(k theta + phi_k)), k = 2..5.
        coef = rng.uniform(0.0, 0.15, size=4)
        phase = rng.uniform(0.0, 2 * np.pi, size=4)
        extent = r * (1.0 + coef.sum())
    y0, y1 = _box(cy, extent, size)
    x0, x1 = _box(cx, extent, size)
    if y0 >= y1 or x0 >= x1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Pixel centres relative to the shape centre (float32: half the memory traffic).
    dy = (np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx))[None, :]
    if kind == 1:
        theta = rng.uniform(0.0, np.pi)
        cos, sin = np.cos(theta), np.sin(theta)
        mask = ((dx * cos + dy * sin) / a) ** 2 + ((dy * cos - dx * sin) / b) ** 2 <= 1.0
    else:
        # The squared boundary radius is tabulated at _BLOB_ANGLES angles and looked up per
        # pixel: one arctan2 per pixel instead of four cosines.
        table = np.linspace(-np.pi, np.pi, _BLOB_ANGLES, endpoint=False) + np.pi / _BLOB_ANGLES
        table = r * (1.0 + coef @ np.cos(np.arange(2, 6)[:, None] * table + phase[:, None]))
        bins = (np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(_BLOB_ANGLES / (2 * np.pi))
        bins = np.minimum(bins.astype(np.int32), _BLOB_ANGLES - 1)
        mask = dy**2 + dx**2 <= (table**2).astype(np.float32)[bins]
    rows, cols = np.nonzero(mask)
    return rows + y0, cols + x0


def _draw_texture(rng: np.random.Generator, size: int) -> tuple:
    """Draws one layer's fill: a random crop of a random texture, with colour jitter.

    The crop is a square window of the texture covering the whole canvas (so a layer's texture is
    continuous under its shape), at a random scale, in one of the 8 flips/transposes.

    Returns:
        An opaque tuple for `_paint`.
    """
    pyramids = _texture_pyramids()
    levels, mean, is_gray = pyramids[int(rng.integers(len(pyramids)))]
    fit = min(levels[0].shape[:2]) / size  # largest scale at which the canvas fits level 0
    lo, hi = min(_MIN_SCALE, fit), min(_MAX_SCALE, fit)
    scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    # The pyramid level whose pixels are closest to (not smaller than) a canvas pixel.
    level = int(np.clip(np.floor(np.log2(max(scale, 1.0))), 0, len(levels) - 1))
    tex = levels[level]
    step = scale / 2**level
    h, w = tex.shape[:2]
    oy = rng.uniform(0.0, max(0.0, h - size * step))
    ox = rng.uniform(0.0, max(0.0, w - size * step))
    transpose, flip_y, flip_x = (bool(b) for b in rng.integers(2, size=3))
    # Colour jitter as a per-channel lookup table: contrast about the texture's mean colour,
    # brightness, then per-channel gains. Gray textures get a random tint instead of gains near 1,
    # so they take on colours.
    contrast = rng.uniform(0.6, 1.4)
    brightness = rng.uniform(-0.15, 0.15)
    gains = rng.uniform(0.3, 1.3, size=3) if is_gray else rng.uniform(0.75, 1.25, size=3)
    values = np.arange(256.0)[None, :] / 255.0
    mean = mean[:, None]
    lut = ((values - mean) * contrast + mean + brightness) * gains[:, None]  # [3, 256]
    lut = (np.clip(lut, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return tex, oy, ox, step, transpose, flip_y, flip_x, lut.ravel()


def _paint(texture: tuple, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Colours of canvas pixels `(rows, cols)` (int `[N]`) under `texture`: uint8 `[N, 3]`."""
    tex, oy, ox, step, transpose, flip_y, flip_x, lut = texture
    h, w = tex.shape[:2]
    u, v = (cols, rows) if transpose else (rows, cols)
    u = size - 1 - u if flip_y else u
    v = size - 1 - v if flip_x else v
    ty = np.minimum((oy + (u + 0.5) * step).astype(np.int64), h - 1)
    tx = np.minimum((ox + (v + 0.5) * step).astype(np.int64), w - 1)
    # Channel c of the lookup table starts at 256 c.
    return lut[tex[ty, tx] + np.array([0, 256, 512])]


def sample(
    rng: np.random.Generator, *, image_size: int, min_layers: int, max_layers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Generates one dead-leaves image and its partition.

    Args:
        rng: the example's generator (everything is drawn from it).
        image_size: side S.
        min_layers: fewest shapes over the background (>= 0).
        max_layers: most shapes (>= min_layers, <= 65,534).

    Returns:
        `(image, labels)`: uint8 `[S, S, 3]` and uint16 `[S, S]` with ids 0..N-1, N <=
        max_layers + 1, consecutive in back-to-front order of the visible layers.
    """
    if not 0 <= min_layers <= max_layers < common.MAX_ID:
        raise ValueError(
            f"Need 0 <= min_layers <= max_layers < {common.MAX_ID}, got {min_layers}, {max_layers}."
        )
    if image_size < 4:
        raise ValueError(f"image_size must be at least 4, got {image_size}.")
    size = image_size
    # Back to front: layer 0 is the background; each shape overwrites the labels it covers.
    num_layers = int(rng.integers(min_layers, max_layers + 1))
    textures = [_draw_texture(rng, size)]
    labels = np.zeros((size, size), np.int32)
    for layer in range(1, num_layers + 1):
        rows, cols = _shape_pixels(rng, size)
        textures.append(_draw_texture(rng, size))
        labels[rows, cols] = layer
    # Texture only what is visible: group the pixels by layer (a stable sort keeps raster order)
    # and fill each group from its layer's texture, one lookup per canvas pixel in total.
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=num_layers + 1)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    image = np.empty((size * size, 3), np.uint8)
    for layer in np.flatnonzero(counts):
        pixels = order[bounds[layer] : bounds[layer + 1]]
        rows, cols = np.divmod(pixels, size)
        image[pixels] = _paint(textures[layer], rows, cols, size)
    # Consecutive ids over the visible layers, keeping back-to-front order.
    new_id = np.cumsum(counts > 0) - 1
    return image.reshape(size, size, 3), new_id[labels].astype(np.uint16)


class DeadLeaves(tfds.core.GeneratorBasedBuilder):
    """Procedural dead-leaves partitions over textured layers (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        DeadLeavesConfig(
            name="default",
            description="128 px, 3-30 shapes; train 10,000 / validation 500.",
        ),
        DeadLeavesConfig(
            name="small",
            description="64 px, 3-20 shapes; train 2,000 / validation 200 (CPU quickstart).",
            image_size=64,
            max_layers=20,
            num_train=2_000,
            num_validation=200,
        ),
        DeadLeavesConfig(
            name="tiny",
            description="32 px, 2-10 shapes; train 64 / validation 16 (tests).",
            image_size=32,
            min_layers=2,
            max_layers=10,
            num_train=64,
            num_validation=16,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.features(),
            homepage="https://en.wikipedia.org/wiki/Dead_leaves_model",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # generated locally
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
        }

    def _generate_examples(self, split: str, num_examples: int):
        cfg = self.builder_config
        for index in range(num_examples):
            rng = np.random.default_rng([cfg.seed, SPLIT_NUMBERS[split], index])
            image, labels = sample(
                rng,
                image_size=cfg.image_size,
                min_layers=cfg.min_layers,
                max_layers=cfg.max_layers,
            )
            yield (
                index,
                common.example(common.encode_png(image), labels[None], f"{split}_{index:06d}"),
            )
