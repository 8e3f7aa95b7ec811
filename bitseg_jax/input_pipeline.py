"""tf.data input pipeline: raw segmentation examples -> host-local NumPy batches (SPEC 2.3-2.5).

This file owns everything between a data set's records and the batches `train.py` and
`evaluation.py` consume: per-host splitting, decoding, the SPEC 2.3 augmentations (their
functions live in `augment.py`), the SAM-style resize + ImageNet normalisation + bottom/right
padding, excess merging + palette on the host (`palette.assign` through `tf.numpy_function`),
weighted mixing of several data sets, batching, and padded evaluation batches. Batch keys and
shapes are those of docs/architecture.md.

Structure. The core works on `RawSource`s: a split of records that can be read by index range
and decoded into raw examples `{"image": uint8 [H, W, 3], "segmentations": uint16 [A, H, W],
"id": string}`. `source_from_tfds`/`source_from_builder` are the thin loading layer over the
TFDS builders (records stay undecoded until after shuffling and skipping); `source_from_dataset`
wraps an in-memory `tf.data.Dataset` of raw examples (tests, user data). `train_dataset`/`eval_dataset` build the
pipelines from sources; `create_train_iterator`/`create_eval_iterator` add TFDS and `jax`'s
process index/count and return NumPy iterators.

Choices (and where they deviate from the reference):

* Epochs without replacement. SPEC 2.5 samples with replacement; here the stream walks epochs
  of each data set, each epoch a shuffle (buffer `config.data.shuffle_buffer`) seeded by
  (config.seed, data set, epoch). This is what JAX data loaders do and it makes restarts cheap:
  `start_step` skips whole epochs arithmetically and the rest of one epoch as undecoded
  records, so no skipped example is ever decoded.
* One global stream for any number of hosts. Every host walks the same stream of undecoded
  records and keeps its rows of each global batch before decoding, so a multi-host run trains
  on exactly the batches of a one-process run (the price: every host reads every record).
* Stateless randomness. Every random choice of an example (annotator, augmentation draws, the
  no-LAP relabelling) derives from (config.seed, the example's position in the global stream),
  so a stream is deterministic for a seed and independent of tf.data's parallelism.
* Mixing. Several data sets are mixed with `tf.data.Dataset.choose_from_datasets` driven by a
  stateless selector (blocks of `tf.random.stateless_uniform` draws compared against the
  cumulative weights). `sample_from_datasets` would draw from the same weights, but its internal
  selector cannot be fast-forwarded; ours can, so restarts stay exact and cheap: the selector's
  first `start_step * batch` draws are counted to know how far into each data set to start.
* Augmentation after the resize. All SPEC 2.3 augmentations run on the resized h' x w' content
  (before normalisation and padding) instead of at native resolution. For the geometric ones
  (flip, rotation about the content's own centre) this is the same geometry at lower
  resolution; the colour ones are per-pixel and commute with the area resize up to their
  non-linearity (a "faithful equivalent", SPEC 2.3). It is 10-20x cheaper on BSDS/EntitySeg.
* uint8 until the batch. The resized image is rounded to uint8 (as the reference's uint8 OpenCV
  resize), each augmentation rounds again (as albumentations on uint8 does; gamma,
  brightness/contrast and RGB shift are 256-entry lookup tables), and whole batches are
  normalised to float32 at the end. Labels are resized with TF's nearest neighbour (half-pixel
  centres).
* Float images (in-memory sources, `prepare_image`) must be in [0, 1] (TF convention); NaN or
  out-of-range values raise, naming the example.
* Evaluation `annotations` are merged with the same padding value as `label` (so annotator 0's
  map is a relabelling of `label` on the valid region) and then set to -1 outside it. A_max is
  the largest annotator count of the split, read from the undecoded records' shapes once.
  `create_eval_iterator` evaluates one data set (default: the first of `config.data.datasets`).
"""

import collections.abc
import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from bitseg_jax import augment, palette

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# SPEC 2.4 step 2 / 3.4: number of classes K of an encoding, given num_bits and whether a LAP
# palette is used (the RGB encoding has a 11 x 11 palette grid, 125 classes without one).
NUM_CLASSES = {
    "analog_bits": lambda num_bits, lap: 2**num_bits,
    "onehot": lambda num_bits, lap: 2**num_bits,
    "rgb": lambda num_bits, lap: 121 if lap else 125,
}

MAX_SEGMENT_ID = 65_535  # ids must fit the uint16 maps of the TFDS builders.

# Stream tags folded into the run key, so that each kind of randomness has its own stream.
_TAG_EXAMPLE, _TAG_SELECTOR, _TAG_SHUFFLE = 0, 1, 2
_SELECTOR_BLOCK = 4096  # selector draws per stateless call (restarts count whole blocks).


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class RawSource:
    """One split of one data set, as the pipeline reads it.

    Attributes:
        name: shown in error messages (e.g. "bsds500:train").
        num_examples: records in the split.
        read: `(start, stop) -> tf.data.Dataset` of the records [start, stop) in a fixed order;
            records may be undecoded (TFDS) or raw examples (in memory).
        decode: record -> raw example `{"image": uint8 [H, W, 3] (or float in [0, 1]),
            "segmentations": uint16 [A, H, W] (or another integer type with ids in
            [0, 65535]), "id": tf.string}`. Must be traceable (tf.data map).
        num_annotators: record -> int32 scalar A, without decoding the maps where possible.
    """

    name: str
    num_examples: int
    read: collections.abc.Callable[[int, int], tf.data.Dataset]
    decode: collections.abc.Callable[[Any], dict[str, tf.Tensor]]
    num_annotators: collections.abc.Callable[[Any], tf.Tensor]


def source_from_dataset(dataset: tf.data.Dataset, name: str = "in_memory") -> RawSource:
    """Wraps a finite `tf.data.Dataset` of raw examples (see `RawSource.decode`) as a source.

    Args:
        dataset: elements `{"image", "segmentations", "id"}`; its cardinality must be known.
        name: shown in error messages.

    Returns:
        A `RawSource` reading `dataset` with `skip`/`take`.
    """
    n = int(dataset.cardinality())
    if n < 0:
        raise ValueError(f"source {name!r}: the dataset's cardinality is unknown or infinite.")
    missing = {"image", "segmentations", "id"} - set(dataset.element_spec)
    if missing:
        raise KeyError(f"source {name!r}: examples lack the keys {sorted(missing)}.")
    return RawSource(
        name=name,
        num_examples=n,
        read=lambda start, stop: dataset.skip(start).take(stop - start),
        decode=lambda example: example,
        num_annotators=lambda example: tf.shape(example["segmentations"])[0],
    )


def source_from_tfds(
    name: str, split: str, *, data_dir: str | None = None, manual_dir: str | None = None
) -> RawSource:
    """A registered TFDS data set's split as a source (see `source_from_builder`).

    A builder that is not prepared yet is prepared here when this is the only process (a
    multi-host job must prepare its data beforehand, e.g. with `tfds build`).

    Args:
        name: TFDS builder name, optionally with a config ("dead_leaves/tiny").
        split: a TFDS split string ("train", "validation[:50%]", "train+validation").
        data_dir: TFDS data dir (None: the TFDS default).
        manual_dir: manual-download folder for builders that need one (None: the default).

    Returns:
        A `RawSource` over the split.
    """
    import bitseg_jax.datasets  # noqa: F401  (registers the builders)

    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
        if jax.process_count() > 1:
            raise FileNotFoundError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir!r}; prepare it "
                "once before a multi-host run (e.g. `tfds build` with the same data_dir)."
            )
        logging.info("Preparing TFDS data set %s in %s.", name, builder.data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None)
        )
    return source_from_builder(builder, split)


def source_from_builder(builder: tfds.core.DatasetBuilder, split: str) -> RawSource:
    """A prepared TFDS builder's split as a source (e.g. a builder made with a custom config).

    Records are read undecoded (`SkipDecoding`) in a fixed order, and decoded only after the
    pipeline has shuffled and skipped them.

    Args:
        builder: a prepared builder whose features are those of docs/architecture.md.
        split: a TFDS split string ("train", "validation[:50%]", "train+validation").

    Returns:
        A `RawSource` over the split.
    """
    name = builder.info.full_name
    features = builder.info.features
    for key in ("image", "segmentations", "id"):
        if key not in features:
            raise KeyError(f"TFDS data set {name!r} has no feature {key!r}.")
    pieces = tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)
    bounds = []  # (split name, absolute start, absolute stop) of each piece of `split`.
    for piece in pieces:
        size = builder.info.splits[piece.splitname].num_examples
        start = 0 if piece.from_ is None else piece.from_
        stop = size if piece.to is None else piece.to
        bounds.append((piece.splitname, start, stop))
    num_examples = sum(stop - start for _, start, stop in bounds)
    decoders = {"image": tfds.decode.SkipDecoding(), "segmentations": tfds.decode.SkipDecoding()}
    read_config = tfds.ReadConfig(add_tfds_id=False, skip_prefetch=True)

    def read(start: int, stop: int) -> tf.data.Dataset:
        # Map [start, stop) of the (possibly composite) split onto absolute instructions.
        instruction, offset = None, 0
        for split_name, a, b in bounds:
            lo, hi = max(start - offset, 0), min(stop - offset, b - a)
            if lo < hi:
                piece = tfds.core.ReadInstruction(split_name, from_=a + lo, to=a + hi, unit="abs")
                instruction = piece if instruction is None else instruction + piece
            offset += b - a
        if instruction is None:  # empty range: an empty dataset of the right structure.
            split_name, a, _ = bounds[0]
            instruction = tfds.core.ReadInstruction(split_name, from_=a, to=a + 1, unit="abs")
            return _read_tfds(builder, instruction, decoders, read_config).take(0)
        return _read_tfds(builder, instruction, decoders, read_config)

    def decode(record):
        return {
            "image": features["image"].decode_example(record["image"]),
            "segmentations": features["segmentations"].decode_example(record["segmentations"]),
            "id": record["id"],
        }

    def num_annotators(record):
        seg = record["segmentations"]
        if isinstance(seg, dict):  # dynamic-shape Tensor feature: the shape is stored apart.
            return tf.cast(seg["shape"][0], tf.int32)
        return tf.shape(features["segmentations"].decode_example(seg))[0]

    return RawSource(f"{name}:{split}", num_examples, read, decode, num_annotators)


def _read_tfds(builder, instruction, decoders, read_config) -> tf.data.Dataset:
    return builder.as_dataset(
        split=instruction, decoders=decoders, shuffle_files=False, read_config=read_config
    )


def host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of the process's contiguous, near-equal slice of `num_examples` records."""
    return (
        num_examples * process_index // process_count,
        num_examples * (process_index + 1) // process_count,
    )


# --------------------------------------------------------------------------- preprocessing


def resized_shape(height, width, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """SPEC 2.3 step 2: size of the content after resizing the longest side to `image_size`.

    (h', w') = (S, round(w S / h)) if h > w else (round(h S / w), S), round half to even
    (computed in float64, so exact ties are exact), and at least 1.

    Args:
        height, width: int scalars (Python or tensors).
        image_size: S.

    Returns:
        (h', w') int32 scalar tensors.
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    s = tf.constant(image_size, tf.float64)
    long_h = h > w
    new_h = tf.where(long_h, s, tf.round(h * s / w))
    new_w = tf.where(long_h, tf.round(w * s / h), s)
    return (
        tf.cast(tf.maximum(new_h, 1.0), tf.int32),
        tf.cast(tf.maximum(new_w, 1.0), tf.int32),
    )


def valid_mask(height, width, image_size: int) -> tf.Tensor:
    """bool [S, S]: True on the top-left `height` x `width` content (SPEC 2.3 valid region)."""
    rows = tf.range(image_size)[:, None] < height
    cols = tf.range(image_size)[None, :] < width
    return tf.logical_and(rows, cols)


def _check_image(image: tf.Tensor, example_id) -> tf.Tensor:
    """Checks uint8 [H, W, 3] (returned as is) or float [H, W, 3] in [0, 1] (returned as float32
    [H, W, 3] in [0, 255])."""
    if image.shape.rank is not None and (image.shape.rank != 3 or image.shape[-1] not in (3, None)):
        raise ValueError(f"image must be [H, W, 3]; got static shape {image.shape}.")
    shape = tf.shape(image)
    checks = [
        tf.debugging.Assert(
            tf.logical_and(tf.equal(tf.rank(image), 3), tf.equal(shape[-1], 3)),
            ["Example", example_id, ": image must be [H, W, 3]; got shape", shape],
        ),
        tf.debugging.Assert(
            tf.reduce_all(shape[:2] > 0), ["Example", example_id, ": empty image", shape]
        ),
    ]
    if image.dtype == tf.uint8:
        with tf.control_dependencies(checks):
            return tf.identity(image)
    if not image.dtype.is_floating:
        raise TypeError(f"image must be uint8 or float in [0, 1]; got dtype {image.dtype.name}.")
    image = tf.cast(image, tf.float32)
    checks += [
        tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(image)),
            ["Example", example_id, ": image holds NaN or infinite values"],
        ),
        tf.debugging.Assert(
            tf.logical_and(tf.reduce_min(image) >= 0.0, tf.reduce_max(image) <= 1.0),
            [
                "Example",
                example_id,
                ": float image must be in [0, 1]; got range",
                tf.reduce_min(image),
                tf.reduce_max(image),
            ],
        ),
    ]
    with tf.control_dependencies(checks):
        return image * 255.0


def _check_segmentations(segs: tf.Tensor, image: tf.Tensor, example_id) -> tf.Tensor:
    """Integer [A, H, W] with the image's H, W and ids in [0, 65535] -> int32 [A, H, W]."""
    if segs.shape.rank is not None and segs.shape.rank != 3:
        raise ValueError(f"segmentations must be [A, H, W]; got static shape {segs.shape}.")
    if not segs.dtype.is_integer:
        raise TypeError(f"segmentations must be integer ids; got dtype {segs.dtype.name}.")
    seg_shape, image_shape = tf.shape(segs), tf.shape(image)
    checks = [
        tf.debugging.Assert(
            tf.reduce_all(tf.equal(seg_shape[1:], image_shape[:2])),
            [
                "Example",
                example_id,
                ": segmentations [A, H, W]",
                seg_shape,
                "do not match the image [H, W, 3]",
                image_shape,
            ],
        ),
        tf.debugging.Assert(seg_shape[0] > 0, ["Example", example_id, ": no annotator (A = 0)"]),
    ]
    if segs.dtype not in (tf.uint8, tf.uint16):
        lo, hi = tf.reduce_min(segs), tf.reduce_max(segs)
        checks.append(
            tf.debugging.Assert(
                tf.logical_or(
                    tf.equal(tf.size(segs), 0),
                    tf.logical_and(lo >= 0, hi <= MAX_SEGMENT_ID),
                ),
                [
                    "Example",
                    example_id,
                    f": segment ids must be in [0, {MAX_SEGMENT_ID}]; got",
                    lo,
                    hi,
                ],
            )
        )
    with tf.control_dependencies(checks):
        return tf.cast(segs, tf.int32)


def _resize_content(image: tf.Tensor, labels: tf.Tensor | None, image_size: int):
    """SPEC 2.3 step 2 on image [H, W, 3] (uint8 or float in [0, 255]) and int32 labels
    [H, W, C] (or None).

    Returns:
        (image uint8 [h', w', 3], labels int32 [h', w', C] or None, h', w').
    """
    shape = tf.shape(image)
    new_h, new_w = resized_shape(shape[0], shape[1], image_size)
    size = tf.stack([new_h, new_w])
    unchanged = tf.reduce_all(tf.equal(size, shape[:2]))
    # Area interpolation = OpenCV INTER_AREA's box average; round as the uint8 resize would.
    # Skipped when the size does not change (the average is then the identity).
    image = augment.to_uint8(
        tf.cond(
            unchanged,
            lambda: tf.cast(image, tf.float32),
            lambda: tf.image.resize(image, size, method="area"),
        )
    )
    if labels is not None:
        labels = _resize_labels(labels, size)
    return image, labels, new_h, new_w


def _resize_labels(labels: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Nearest resize of int32 labels [H, W, C] to `size` = [h', w'] (a no-op when equal)."""
    unchanged = tf.reduce_all(tf.equal(size, tf.shape(labels)[:2]))
    return tf.cond(
        unchanged, lambda: labels, lambda: tf.image.resize(labels, size, method="nearest")
    )


def _pad_image(content: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 [h', w', 3] -> uint8 [S, S, 3], 0 bottom/right (SPEC 2.3 step 4)."""
    shape = tf.shape(content)
    x = tf.pad(content, [[0, image_size - shape[0]], [0, image_size - shape[1]], [0, 0]])
    return tf.ensure_shape(x, [image_size, image_size, 3])


def normalize(image: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """SPEC 2.3 steps 3-4: ImageNet normalisation, 0 outside the valid region.

    Args:
        image: uint8 [..., S, S, 3].
        valid: bool [..., S, S].

    Returns:
        float32 [..., S, S, 3]: (x / 255 - mean) / std inside `valid`, 0 in the padding.
    """
    scale = 1.0 / (255.0 * np.asarray(IMAGENET_STD, np.float32))
    offset = np.asarray(IMAGENET_MEAN, np.float32) / np.asarray(IMAGENET_STD, np.float32)
    # A multiply by the mask is cheaper than tf.where on a whole batch.
    return (tf.cast(image, tf.float32) * scale - offset) * tf.cast(valid, tf.float32)[..., None]


def _pad_labels(labels: tf.Tensor, image_size: int, pad_value: int) -> tf.Tensor:
    """int32 [h', w', C] -> [S, S, C], `pad_value` bottom/right (SPEC 2.3 step 4, B1)."""
    shape = tf.shape(labels)
    labels = tf.pad(
        labels,
        [[0, image_size - shape[0]], [0, image_size - shape[1]], [0, 0]],
        constant_values=pad_value,
    )
    return tf.ensure_shape(labels, [image_size, image_size, labels.shape[-1]])


def prepare_image(image, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Resize + normalise + pad one image as the model expects it (SPEC 2.3 steps 2-4).

    Works eagerly (segment command, export: `np.asarray` the results) and inside tf.data.

    Args:
        image: uint8 [H, W, 3], or float [H, W, 3] in [0, 1] (array or tensor).
        image_size: S.

    Returns:
        (image float32 [S, S, 3] ImageNet-normalised with 0 in the padding, valid bool [S, S]).

    Raises:
        TypeError/ValueError (static problems) or tf.errors.InvalidArgumentError (bad values,
        e.g. NaN) naming the image.
    """
    image = _check_image(tf.convert_to_tensor(image), "image")
    content, _, new_h, new_w = _resize_content(image, None, image_size)
    valid = valid_mask(new_h, new_w, image_size)
    return normalize(_pad_image(content, image_size), valid), valid


# --------------------------------------------------------------------------- per example


def preprocess_train(
    example: dict[str, tf.Tensor],
    seed: tf.Tensor,
    *,
    image_size: int,
    probs: collections.abc.Mapping[str, float],
    mask_padding: bool,
) -> dict[str, tf.Tensor]:
    """One train example up to (not including) the host-side palette (SPEC 2.3 steps 1-4).

    Picks one annotator at random, resizes, augments and pads. The image stays uint8 (as in
    the reference's uint8 OpenCV/albumentations chain) and is normalised per batch (`normalize`).

    Args:
        example: raw example (see `RawSource.decode`).
        seed: int64 [2] stateless seed of this example (and epoch).
        image_size: S.
        probs: augmentation probabilities (`augment.probabilities`); empty = no augmentation.
        mask_padding: pad labels with -1 instead of segment 0 (SPEC B1).

    Returns:
        {"image": uint8 [S, S, 3] (0 in the padding), "label": int32 [S, S] instance ids
        (padding 0 or -1), "valid": bool [S, S], "palette_seed": int64 scalar}.
    """
    example_id = example["id"]
    image = _check_image(example["image"], example_id)
    segs = _check_segmentations(example["segmentations"], image, example_id)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    annotator = tf.random.stateless_uniform(
        [], seeds[0], minval=0, maxval=tf.shape(segs)[0], dtype=tf.int32
    )
    label = tf.gather(segs, annotator)[..., None]  # [H, W, 1]
    image, label, new_h, new_w = _resize_content(image, label, image_size)
    image, label = augment.apply(image, label[..., 0], seeds[1], probs)
    return {
        "image": _pad_image(image, image_size),
        "label": _pad_labels(label[..., None], image_size, -1 if mask_padding else 0)[..., 0],
        "valid": valid_mask(new_h, new_w, image_size),
        "palette_seed": _palette_seed(seeds[2]),
    }


def preprocess_eval(
    example: dict[str, tf.Tensor],
    seed: tf.Tensor,
    *,
    image_size: int,
    mask_padding: bool,
    num_annotators: int,
    eval_size: int | None = None,
) -> dict[str, tf.Tensor]:
    """One evaluation example up to the host-side merge + palette (SPEC 2.3 steps 2-4).

    The model sees the image at S; the annotations it is scored against are resized (SPEC 2.3
    step 2, nearest) and padded at the scoring size E, which may be larger (`eval_size`).

    Args:
        example: raw example (see `RawSource.decode`).
        seed: int64 [2] stateless seed of this example (for the no-LAP relabelling).
        image_size: S.
        mask_padding: pad labels with -1 instead of segment 0 (SPEC B1).
        num_annotators: A_max; examples with more annotators raise.
        eval_size: E (None: S).

    Returns:
        {"image": uint8 [S, S, 3], "label": int32 [S, S] (annotator 0), "valid": bool [S, S],
        "annotations": int32 [A_max, E, E] (-1 for absent annotators), "eval_valid": bool
        [E, E], "orig_size": int32 [2], "id": string, "_mask": bool, "palette_seed": int64}.
    """
    eval_size = image_size if eval_size is None else int(eval_size)
    example_id = example["id"]
    image = _check_image(example["image"], example_id)
    segs = _check_segmentations(example["segmentations"], image, example_id)
    num = tf.shape(segs)[0]
    check = tf.debugging.Assert(
        num <= num_annotators,
        ["Example", example_id, f": more annotators than num_annotators={num_annotators}:", num],
    )
    with tf.control_dependencies([check]):
        labels = tf.transpose(segs, [1, 2, 0])  # [H, W, A]: annotators resize as channels.
    orig_size = tf.shape(image)[:2]
    pad_value = -1 if mask_padding else 0
    content, model_labels, new_h, new_w = _resize_content(image, labels[..., :1], image_size)
    eval_h, eval_w = resized_shape(orig_size[0], orig_size[1], eval_size)
    eval_labels = _pad_labels(
        _resize_labels(labels, tf.stack([eval_h, eval_w])), eval_size, pad_value
    )
    annotations = tf.transpose(eval_labels, [2, 0, 1])
    annotations = tf.pad(
        annotations, [[0, num_annotators - num], [0, 0], [0, 0]], constant_values=-1
    )
    return {
        "image": _pad_image(content, image_size),
        "label": _pad_labels(model_labels, image_size, pad_value)[..., 0],
        "annotations": tf.ensure_shape(annotations, [num_annotators, eval_size, eval_size]),
        "valid": valid_mask(new_h, new_w, image_size),
        "eval_valid": valid_mask(eval_h, eval_w, eval_size),
        "orig_size": tf.cast(orig_size, tf.int32),
        "id": example_id,
        "_mask": tf.constant(True),
        "palette_seed": _palette_seed(seed),
    }


def _palette_seed(seed: tf.Tensor) -> tf.Tensor:
    """A non-negative int64 seed for `np.random.default_rng` from a stateless seed."""
    return tf.random.stateless_uniform([], seed, minval=0, maxval=2**62, dtype=tf.int64)


# --------------------------------------------------------------------------- host side


def num_classes(config: ml_collections.ConfigDict) -> int:
    """K of SPEC 2.4: 2**num_bits (analog bits, one-hot); RGB: 121 with a palette, 125 without."""
    try:
        fn = NUM_CLASSES[config.model.encoding]
    except KeyError:
        raise KeyError(
            f"config.model.encoding={config.model.encoding!r} is not one of {sorted(NUM_CLASSES)}."
        ) from None
    return fn(int(config.model.num_bits), config.data.lap_mode != "none")


@dataclasses.dataclass(frozen=True)
class _PaletteOptions:
    mode: str
    num_bits: int
    seed: int
    num_classes: int
    shuffle_zero: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "_PaletteOptions":
        options = cls(
            mode=config.data.lap_mode,
            num_bits=int(config.model.num_bits),
            seed=int(config.seed),
            num_classes=num_classes(config),
            shuffle_zero=bool(config.data.shuffle_zero),
        )
        try:  # a dry run so that bad options fail now, naming the config keys.
            options.assign(np.zeros((2, 2), np.int32), 0)
        except (KeyError, ValueError) as e:
            raise type(e)(
                f"config.data.lap_mode={options.mode!r} with config.model.num_bits="
                f"{options.num_bits} and config.model.encoding={config.model.encoding!r} "
                f"(K = {options.num_classes}): {e}"
            ) from e
        return options

    def assign(self, labels: np.ndarray, seed: int) -> np.ndarray:
        return palette.assign(
            labels,
            mode=self.mode,
            num_bits=self.num_bits,
            seed=self.seed,
            num_classes=self.num_classes,
            rng=np.random.default_rng(int(seed)),
            shuffle_zero=self.shuffle_zero,
        )


def _palette_rows(labels, seeds, mask, options: _PaletteOptions) -> np.ndarray:
    """Host: SPEC 2.4 merge + palette for every row of int32 [b, S, S] with mask[i]."""
    out = np.array(labels, dtype=np.int32)
    for i in np.flatnonzero(mask):
        out[i] = options.assign(labels[i], seeds[i])
    return out


def _merge_annotations(annotations, valid, mask, max_segments: int) -> np.ndarray:
    """Host: SPEC 2.4 step 2 on every annotator of int32 [b, A, S, S]; -1 outside valid."""
    out = np.array(annotations, dtype=np.int32)
    for i in np.flatnonzero(mask):
        for a in range(out.shape[1]):
            if out[i, a].max() >= 0:  # absent annotators are all -1.
                out[i, a] = palette.merge_excess(out[i, a], max_segments)
    return np.where(valid[:, None], out, -1).astype(np.int32)


def _host_palette_train(batch: dict[str, tf.Tensor], options: _PaletteOptions):
    """Batch: merge + palette on the host, and normalisation (one op for the whole batch)."""
    label = tf.numpy_function(
        lambda labels, seeds: _palette_rows(labels, seeds, np.ones(len(labels), bool), options),
        [batch["label"], batch["palette_seed"]],
        tf.int32,
        stateful=False,
    )
    return {
        "image": normalize(batch["image"], batch["valid"]),
        "label": tf.ensure_shape(label, batch["label"].shape),
        "valid": batch["valid"],
    }


def _host_palette_eval(batch: dict[str, tf.Tensor], options: _PaletteOptions):
    label, annotations = tf.numpy_function(
        lambda labels, seeds, annotations, valid, mask: (
            _palette_rows(labels, seeds, mask, options),
            _merge_annotations(annotations, valid, mask, options.num_classes),
        ),
        [
            batch["label"],
            batch["palette_seed"],
            batch["annotations"],
            batch["eval_valid"],
            batch["_mask"],
        ],
        (tf.int32, tf.int32),
        stateful=False,
    )
    out = {k: v for k, v in batch.items() if k != "palette_seed"}
    out["image"] = normalize(batch["image"], batch["valid"])
    out["label"] = tf.ensure_shape(label, batch["label"].shape)
    out["annotations"] = tf.ensure_shape(annotations, batch["annotations"].shape)
    return out


# --------------------------------------------------------------------------- train stream


def _map(ds: tf.data.Dataset, fn) -> tf.data.Dataset:
    """Parallel, ordered map. No autograph: the functions use explicit tf.cond, and skipping
    the conversion saves most of the tracing time."""
    fn = tf.autograph.experimental.do_not_convert(fn)
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    # Parallelism across examples (AUTOTUNE map calls), not inside one example's ops: on a
    # TPU host this scales with the cores, and on 2 cores it avoids thread hand-offs.
    options.threading.max_intra_op_parallelism = 1
    return options


def _run_key(seed: int, process_index: int, tag: int) -> tf.Tensor:
    """int64 [2] stateless key of one randomness stream of one host."""
    key = tf.constant([seed, process_index], tf.int64)
    return tf.random.experimental.stateless_fold_in(key, tag)


def _local_batch_size(global_batch: int, process_count: int, key: str) -> int:
    if global_batch < process_count or global_batch % process_count:
        raise ValueError(
            f"{key}={global_batch} must be a positive multiple of the number of processes "
            f"({process_count})."
        )
    return global_batch // process_count


def _mixing_weights(config: ml_collections.ConfigDict, num_sources: int) -> np.ndarray:
    weights = np.asarray(config.data.weights, np.float64).reshape(-1)
    if weights.size != num_sources:
        raise ValueError(
            f"config.data.weights has {weights.size} entries but config.data.datasets has "
            f"{num_sources}."
        )
    if np.any(weights < 0) or weights.sum() <= 0 or not np.all(np.isfinite(weights)):
        raise ValueError(f"config.data.weights must be >= 0 with a positive sum; got {weights}.")
    return weights / weights.sum()


def _selector_block(key: tf.Tensor, block, bounds: tf.Tensor) -> tf.Tensor:
    """int64 [_SELECTOR_BLOCK] data set choices of selector block `block` (stateless)."""
    u = tf.random.stateless_uniform(
        [_SELECTOR_BLOCK], tf.random.experimental.stateless_fold_in(key, block), dtype=tf.float64
    )
    return tf.searchsorted(bounds, u, side="right", out_type=tf.int64)


def _selector(key, weights: np.ndarray, start: int) -> tuple[tf.data.Dataset, np.ndarray]:
    """The mixing choice stream from position `start`, and how many of the first `start`
    choices went to each data set."""
    bounds = tf.constant(np.cumsum(weights)[:-1], tf.float64)  # choice = #bounds <= u.
    first_block, offset = divmod(start, _SELECTOR_BLOCK)
    consumed = np.zeros(weights.size, np.int64)
    block_fn = tf.function(_selector_block)  # traced once: `block` is passed as a tensor.
    for block in range(first_block):
        choices = block_fn(key, tf.constant(block, tf.int64), bounds).numpy()
        consumed += np.bincount(choices, minlength=weights.size)
    if offset:
        head = block_fn(key, tf.constant(first_block, tf.int64), bounds).numpy()[:offset]
        consumed += np.bincount(head, minlength=weights.size)
    choices = (
        tf.data.Dataset.range(first_block, np.iinfo(np.int64).max)
        .map(tf.autograph.experimental.do_not_convert(lambda b: _selector_block(key, b, bounds)))
        .unbatch()
        .skip(offset)
    )
    return choices, consumed


def _epochs(records: tf.data.Dataset, num_records: int, consumed: int, buffer: int, key):
    """Infinite stream of seeded shuffled epochs over undecoded `records`, from position
    `consumed` (whole epochs are skipped arithmetically, the rest record by record)."""
    first_epoch, offset = divmod(consumed, num_records)
    buffer = min(buffer, num_records)

    def one_epoch(epoch):
        if buffer <= 1:
            return records
        shuffle_seed = tf.random.stateless_uniform(
            [],
            tf.random.experimental.stateless_fold_in(key, epoch),
            minval=None,
            maxval=None,
            dtype=tf.int64,
        )
        return records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

    stream = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(one_epoch)
    return stream.skip(offset)


def train_dataset(
    sources: collections.abc.Sequence[RawSource],
    config: ml_collections.ConfigDict,
    *,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """The infinite, deterministic train stream of one host (SPEC 2.3-2.5).

    One global stream, the same on every host and for any number of hosts: seeded shuffled
    epochs of every source (undecoded records), mixed by `config.data.weights`, each example
    augmented with a key of its global position. Global batch k is stream positions
    [k B, (k+1) B); host p keeps positions k B + [p b, (p+1) b) before decoding, so a run on
    any number of hosts trains on exactly the batches of a one-process run (every host reads
    every record, but decodes only its own). Starting at `start_step` yields exactly the
    batches an uninterrupted stream yields from that step.

    Args:
        sources: one `RawSource` per entry of `config.data.datasets` (same record structure).
        config: the full config (seed, batch_size, model.image_size/encoding/num_bits, data.*).
        start_step: the first step's batch is the stream's batch number `start_step`.
        process_index, process_count: this host and the number of hosts.

    Returns:
        `tf.data.Dataset` of {"image": float32 [b, S, S, 3], "label": int32 [b, S, S] classes
        in [0, K) (-1 on padding with `mask_padding`), "valid": bool [b, S, S]},
        b = config.batch_size // process_count.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0; got {start_step}.")
    local_batch = _local_batch_size(config.batch_size, process_count, "config.batch_size")
    weights = _mixing_weights(config, len(sources))
    options = _PaletteOptions.from_config(config)
    probs = augment.probabilities(config) if config.data.augment else {}
    image_size = int(config.model.image_size)
    if config.data.shuffle_buffer < 0:
        raise ValueError(
            f"config.data.shuffle_buffer must be >= 0; got {config.data.shuffle_buffer}."
        )
    # Positions in the global stream; every key is host-independent (process index 0).
    seed, start = int(config.seed), start_step * int(config.batch_size)

    if len(sources) == 1:
        choices, consumed = None, np.array([start])
    else:
        choices, consumed = _selector(_run_key(seed, 0, _TAG_SELECTOR), weights, start)
    streams = []
    for d, source in enumerate(sources):
        if source.num_examples < 1:
            raise ValueError(f"Source {source.name} has no examples.")
        key = tf.random.experimental.stateless_fold_in(_run_key(seed, 0, _TAG_SHUFFLE), d)
        records = source.read(0, source.num_examples)
        streams.append(
            _epochs(
                records, source.num_examples, int(consumed[d]), int(config.data.shuffle_buffer), key
            )
        )
    if choices is None:
        records = streams[0]
    else:
        specs = [s.element_spec for s in streams]
        if any(spec != specs[0] for spec in specs[1:]):
            raise ValueError(
                f"config.data.datasets {[s.name for s in sources]} yield records of different "
                f"structures {specs}; they cannot be mixed."
            )
        records = tf.data.Dataset.choose_from_datasets(streams, choices)
    example_key = _run_key(seed, 0, _TAG_EXAMPLE)
    decode = sources[0].decode

    def preprocess(index, record):
        return preprocess_train(
            decode(record),
            tf.random.experimental.stateless_fold_in(example_key, index),
            image_size=image_size,
            probs=probs,
            mask_padding=bool(config.data.mask_padding),
        )

    ds = records.enumerate(start=start)
    if process_count > 1:  # this host's rows of every global batch, before decoding.
        ds = ds.filter(lambda index, _: (index // local_batch) % process_count == process_index)
    ds = _map(ds, preprocess)
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = _map(ds, functools.partial(_host_palette_train, options=options))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


# --------------------------------------------------------------------------- eval stream


def max_annotators(source: RawSource) -> int:
    """A_max: the largest number of annotators of any example of the source (one pass over the
    undecoded records)."""
    counts = _map(
        source.read(0, source.num_examples),
        lambda record: tf.cast(source.num_annotators(record), tf.int64),
    )
    return int(counts.reduce(tf.constant(0, tf.int64), tf.maximum))


def eval_indices(num_examples: int, num_images: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the split used by an evaluation (SPEC 2.5 "pure_gen").

    All examples when `num_images` is None, else the first `num_images` of the permutation
    `np.random.default_rng(seed).permutation(num_examples)` (sorted, so they are read in the
    split's order; at most the whole split).
    """
    if num_images is None or num_images >= num_examples:
        if num_images is not None and num_images > num_examples:
            logging.warning(
                "num_images=%d exceeds the split's %d examples; using all.",
                num_images,
                num_examples,
            )
        return np.arange(num_examples)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1 or None; got {num_images}.")
    return np.sort(np.random.default_rng(seed).permutation(num_examples)[:num_images])


def _read_indices(source: RawSource, indices: np.ndarray) -> tf.data.Dataset:
    """(index, record) for the sorted `indices` of the source, reading as little as possible."""
    if indices.size == 0:
        return source.read(0, min(1, source.num_examples)).take(0).enumerate()
    lo, hi = int(indices[0]), int(indices[-1]) + 1
    records = source.read(lo, hi).enumerate(start=lo)
    if hi - lo == indices.size:  # contiguous (no num_images limit).
        return records
    keep = np.zeros(hi, bool)
    keep[indices] = True
    keep = tf.constant(keep)
    return records.filter(tf.autograph.experimental.do_not_convert(lambda i, record: keep[i]))


def eval_image_size(config: ml_collections.ConfigDict) -> int:
    """E, the size at which evaluation scores: `config.eval.image_size`, or the model's size S
    when it is 0 or absent (configs saved before the field existed). E < S raises."""
    size = int(config.eval.get("image_size", 0)) or int(config.model.image_size)
    if size < int(config.model.image_size):
        raise ValueError(
            f"config.eval.image_size={size} is smaller than config.model.image_size="
            f"{config.model.image_size}; scoring is at the model's size or larger (0 = same)."
        )
    return size


def eval_dataset(
    source: RawSource,
    config: ml_collections.ConfigDict,
    *,
    num_images: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    num_annotators: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """Finite evaluation batches of one host, the last padded with `_mask=False` rows.

    Every host yields the same number of batches (big_vision's make_for_inference), so a
    multi-host evaluation runs the same number of steps everywhere.

    Args:
        source: the split.
        config: the full config.
        num_images: use the first `num_images` of a seeded permutation of the split (None: all).
        seed: seed of that permutation and of the no-LAP relabelling.
        batch_size: global batch size (None: `config.eval.batch_size`); each host gets
            batch_size // process_count rows.
        num_annotators: A_max (None: computed from the split with `max_annotators`).
        process_index, process_count: this host and the number of hosts.

    Returns:
        `tf.data.Dataset` of {"image": float32 [b, S, S, 3], "label": int32 [b, S, S],
        "valid": bool [b, S, S], "annotations": int32 [b, A_max, E, E], "eval_valid": bool
        [b, E, E], "_mask": bool [b], "orig_size": int32 [b, 2], "id": string [b]}, where E is
        the scoring size (`eval_image_size`). Padding rows: zeros, `valid` and `eval_valid`
        False, `annotations` -1, `id` "".
    """
    key = "config.eval.batch_size" if batch_size is None else "batch_size"
    global_batch = config.eval.batch_size if batch_size is None else batch_size
    local_batch = _local_batch_size(int(global_batch), process_count, key)
    options = _PaletteOptions.from_config(config)
    image_size = int(config.model.image_size)
    eval_size = eval_image_size(config)
    if num_annotators is None:
        num_annotators = max_annotators(source)
    if num_annotators < 1:
        raise ValueError(f"num_annotators must be >= 1; got {num_annotators}.")
    indices = eval_indices(source.num_examples, num_images, seed)
    # Every host runs as many batches as the host with the most examples needs.
    most = max(
        b - a for a, b in (host_range(indices.size, p, process_count) for p in range(process_count))
    )
    num_batches = -(-most // local_batch)
    lo, hi = host_range(indices.size, process_index, process_count)
    example_key = _run_key(seed, 0, _TAG_EXAMPLE)  # by split index: the same on any host count.

    def preprocess(index, record):
        return preprocess_eval(
            source.decode(record),
            tf.random.experimental.stateless_fold_in(example_key, index),
            image_size=image_size,
            mask_padding=bool(config.data.mask_padding),
            num_annotators=num_annotators,
            eval_size=eval_size,
        )

    ds = _map(_read_indices(source, indices[lo:hi]), preprocess)
    s, e = image_size, eval_size
    padding = {
        "image": tf.zeros([s, s, 3], tf.uint8),
        "label": tf.zeros([s, s], tf.int32),
        "annotations": tf.fill([num_annotators, e, e], -1),
        "valid": tf.zeros([s, s], tf.bool),
        "eval_valid": tf.zeros([e, e], tf.bool),
        "orig_size": tf.zeros([2], tf.int32),
        "id": tf.constant(""),
        "_mask": tf.constant(False),
        "palette_seed": tf.constant(0, tf.int64),
    }
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors(padding).repeat(num_batches * local_batch - (hi - lo))
    )
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = _map(ds, functools.partial(_host_palette_eval, options=options))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


# --------------------------------------------------------------------------- iterators


def _tfds_source(config: ml_collections.ConfigDict, name: str, split: str) -> RawSource:
    return source_from_tfds(
        name,
        split,
        data_dir=config.data.data_dir or None,
        manual_dir=config.data.manual_dir or None,
    )


def _dataset_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    names = config.data.datasets
    if isinstance(names, str) or not names:
        raise TypeError(f"config.data.datasets must be a non-empty tuple of names; got {names!r}.")
    return tuple(names)


def create_train_iterator(
    config: ml_collections.ConfigDict, *, start_step: int = 0
) -> collections.abc.Iterator[dict[str, np.ndarray]]:
    """Infinite host-local NumPy train batches (see `train_dataset`), from TFDS.

    Reads `config.data.train_split` of every `config.data.datasets` entry (from
    `config.data.data_dir`). Per-host batch `config.batch_size // jax.process_count()`.

    Args:
        config: the full config.
        start_step: first step; the batches equal an uninterrupted run's from that step.

    Returns:
        Iterator of {"image": float32 [b, S, S, 3], "label": int32 [b, S, S], "valid": bool
        [b, S, S]}.
    """
    sources = [_tfds_source(config, n, config.data.train_split) for n in _dataset_names(config)]
    ds = train_dataset(
        sources,
        config,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return ds.as_numpy_iterator()


@functools.lru_cache(maxsize=32)
def _tfds_max_annotators(name: str, split: str, data_dir: str, manual_dir: str) -> int:
    return max_annotators(source_from_tfds(name, split, data_dir=data_dir, manual_dir=manual_dir))


def create_eval_iterator(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    num_images: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    dataset: str | None = None,
) -> collections.abc.Iterator[dict[str, np.ndarray]]:
    """Finite host-local NumPy evaluation batches of a TFDS split (see `eval_dataset`).

    A_max (the `annotations` axis) is the largest annotator count of the split, computed once
    per process and cached.

    Args:
        config: the full config.
        split: TFDS split string, e.g. "validation".
        num_images: first `num_images` of a permutation seeded by `seed` (None: all).
        seed: permutation and relabelling seed.
        batch_size: global batch size (None: `config.eval.batch_size`).
        dataset: TFDS name (None: the first of `config.data.datasets`).

    Returns:
        Iterator of the batches of `eval_dataset`; every host yields the same number.
    """
    name = dataset if dataset is not None else _dataset_names(config)[0]
    source = _tfds_source(config, name, split)
    num_annotators = _tfds_max_annotators(
        name, split, config.data.data_dir or "", config.data.manual_dir or ""
    )
    ds = eval_dataset(
        source,
        config,
        num_images=num_images,
        seed=seed,
        batch_size=batch_size,
        num_annotators=num_annotators,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return ds.as_numpy_iterator()
