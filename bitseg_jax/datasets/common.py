"""What every builder shares: the feature spec, image/label decoding, and the hash split.

Every builder in this package yields exactly the features of docs/architecture.md ("Datasets"):

* `image`: uint8 `[H, W, 3]`. Grayscale is replicated, alpha dropped, 16-bit scaled to 8-bit.
* `segmentations`: uint16 `[A, H, W]` (ZLIB-compressed Tensor), one full map per annotator.
* `id`: the file stem.

Decoding is strict: a corrupt or truncated file, a label whose size differs from its image, or
more than 65,535 ids raises a `ValueError` that names the file, never a silently wrong label.
"""

import hashlib
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

MAX_ID = int(np.iinfo(np.uint16).max)  # 65,535: the largest id a uint16 map can hold.

# Hash split (DSB2018, `folder` without a validation folder): an example whose key hashes to
# 0 mod VALIDATION_MODULUS goes to validation (about 10%), the rest to train.
VALIDATION_MODULUS = 10

# PIL modes of 16-bit (or wider integer) single-channel images.
_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def features() -> tfds.features.FeaturesDict:
    """The feature spec shared by all builders (architecture.md, "Datasets")."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "segmentations": tfds.features.Tensor(
                shape=(None, None, None),
                dtype=np.uint16,
                encoding=tfds.features.Encoding.ZLIB,
            ),
            "id": tfds.features.Text(),
        }
    )


def hash_split(key: str) -> str:
    """Returns "validation" if sha1(key) mod 10 == 0, else "train" (fixed, order-free)."""
    digest = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)
    return "validation" if digest % VALIDATION_MODULUS == 0 else "train"


def drop_empty_splits(name: str, splits: dict[str, list], source: str) -> dict[str, list]:
    """Drops splits without examples (TFDS cannot write an empty split), logging each one.

    Args:
        name: the builder name, for messages.
        splits: split name -> its items.
        source: the folder read, named in the error.

    Returns:
        `splits` without the empty ones.

    Raises:
        FileNotFoundError: every split is empty.
    """
    kept = {split: items for split, items in splits.items() if items}
    if not kept:
        raise FileNotFoundError(f"{name}: no examples found in {source}.")
    for split in sorted(set(splits) - set(kept)):
        logging.warning("%s: split %r has no examples in %s; it is left out.", name, split, source)
    return kept


def _open(path: os.PathLike | str) -> Image.Image:
    """Opens and fully decodes an image file, naming the file in any error."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise ValueError("the file is empty")
        img = Image.open(io.BytesIO(data))
        img.load()  # decodes every pixel now, so a truncated file fails here.
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"Cannot decode image file {os.fspath(path)}: {e}") from e
    return img


def _rgb_uint8(img: Image.Image, path: os.PathLike | str) -> np.ndarray:
    """PIL image of any common mode -> uint8 `[H, W, 3]` (architecture.md conversions)."""
    mode = img.mode
    if mode in _WIDE_INT_MODES:
        # 16-bit grayscale: scale [0, 65535] -> [0, 255] with rounding, then replicate.
        x = np.asarray(img).astype(np.int64)
        if x.min() < 0 or x.max() > MAX_ID:
            raise ValueError(
                f"Image {os.fspath(path)} (mode {mode}) has values outside [0, 65535]."
            )
        gray = ((x * 255 + MAX_ID // 2) // MAX_ID).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        raise ValueError(f"Image {os.fspath(path)} holds float pixels (mode F); expected integers.")
    if mode in ("L", "LA", "1"):
        gray = np.asarray(img.convert("L"))
        return np.repeat(gray[..., None], 3, axis=-1)
    # RGB, RGBA (alpha dropped), P (palette), CMYK, YCbCr, ...: PIL's conversion to RGB.
    return np.asarray(img.convert("RGB"))


def load_image(path: os.PathLike | str) -> np.ndarray:
    """Decodes an image file to uint8 RGB.

    Args:
        path: any format PIL reads (JPEG, PNG 8/16-bit, gray, RGBA, palette, TIFF, ...).

    Returns:
        uint8 `[H, W, 3]`.

    Raises:
        ValueError: the file is empty, corrupt, truncated or of an unsupported pixel type.
    """
    return _rgb_uint8(_open(path), path)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 `[H, W, 3]` -> PNG bytes (fast, lossless: zlib level 1)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_feature(path: os.PathLike | str) -> tuple[bytes, tuple[int, int]]:
    """Encoded bytes for the `image` feature, and the image's (height, width).

    An 8-bit RGB or grayscale JPEG is stored as its original bytes (no re-encoding loss; TFDS
    decodes it with 3 channels, which replicates gray). Every other file is converted by
    `load_image` and stored as PNG. The file is fully decoded either way, so corrupt files fail
    here rather than at training time.

    Args:
        path: the image file.

    Returns:
        `(encoded, (H, W))`.

    Raises:
        ValueError: as `load_image`.
    """
    img = _open(path)
    if img.format == "JPEG" and img.mode in ("RGB", "L"):
        with open(path, "rb") as f:
            return f.read(), (img.height, img.width)
    array = _rgb_uint8(img, path)
    return encode_png(array), array.shape[:2]


def load_label(path: os.PathLike | str) -> np.ndarray:
    """Decodes a label map: one integer id per pixel.

    Args:
        path: a single-channel 8- or 16-bit image (PNG L, P, I;16 or I; a 3-channel file is
            accepted only when its channels are identical, i.e. a gray map saved as RGB).

    Returns:
        uint16 `[H, W]`; the stored values unchanged.

    Raises:
        ValueError: corrupt file, several distinct channels, or ids outside [0, 65535].
    """
    img = _open(path)
    mode = img.mode
    if mode in ("L", "P", "1") + _WIDE_INT_MODES:
        x = np.asarray(img).astype(np.int64)
    elif mode == "RGB":
        rgb = np.asarray(img)
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise ValueError(
                f"Label map {os.fspath(path)} is a colour (RGB) image; expected one channel of "
                "integer ids (8- or 16-bit grayscale or palette PNG)."
            )
        x = rgb[..., 0].astype(np.int64)
    else:
        raise ValueError(
            f"Label map {os.fspath(path)} has PIL mode {mode}; expected one channel of integer "
            "ids (8- or 16-bit grayscale or palette PNG)."
        )
    return to_uint16(x, os.fspath(path))


def to_uint16(ids: np.ndarray, source: str) -> np.ndarray:
    """Checks that integer ids fit uint16 and casts.

    Args:
        ids: integer (or integral float) array of any shape.
        source: the file or item named in the error.

    Returns:
        `ids` as uint16, same shape.

    Raises:
        ValueError: non-integral values, negative ids or ids above 65,535.
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return ids.astype(np.uint16)
    if not np.issubdtype(ids.dtype, np.integer) and not np.array_equal(ids, np.round(ids)):
        raise ValueError(f"{source}: segment ids are not integers (dtype {ids.dtype}).")
    lo, hi = ids.min(), ids.max()
    if lo < 0 or hi > MAX_ID:
        raise ValueError(
            f"{source}: segment ids span [{lo}, {hi}]; uint16 maps hold ids 0..{MAX_ID}."
        )
    return ids.astype(np.uint16)


def check_same_size(
    image_hw: tuple[int, int], label_hw: tuple[int, ...], image_path: str, label_path: str
) -> None:
    """Raises a ValueError naming both files when a label's (H, W) differs from its image's."""
    if tuple(image_hw) != tuple(label_hw):
        raise ValueError(
            f"Label {label_path} has size (H, W) = {tuple(label_hw)} but its image {image_path} "
            f"has {tuple(image_hw)}; every label map must match its image pixel for pixel."
        )


def example(image: bytes, segmentations: np.ndarray, example_id: str) -> dict:
    """Builds one example dict, checking `segmentations` is uint16 `[A, H, W]` with A >= 1."""
    if segmentations.ndim != 3 or segmentations.shape[0] < 1:
        raise ValueError(
            f"{example_id}: segmentations must be [A >= 1, H, W], got {segmentations.shape}."
        )
    return {
        "image": image,
        "segmentations": segmentations.astype(np.uint16, copy=False),
        "id": example_id,
    }
