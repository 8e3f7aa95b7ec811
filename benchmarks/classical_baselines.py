r"""Reference points on real data: classical agnostic segmenters and annotator agreement.

This file owns the no-model part of the real-data proof: how well scikit-image's classical
segmenters and the human annotators themselves do on BSDS500 and DSB2018 under exactly the
protocol the model is evaluated with (SPEC 2.3-2.4, 8):

* Data: the TFDS builders `bsds500` / `dsb2018` through `input_pipeline.create_eval_iterator`
  (SAM-style resize of the longest side to 128 px, every annotator's map resized, merged to
  K = 64 segments and set to -1 outside the valid region). The classical methods segment the
  128-px content: the ImageNet-normalised image denormalised back to uint8 RGB on the valid
  (top-left h' x w') region, which is exact because the pipeline rounds the resized image to
  integers before normalising.
* Predictions: like the model's, a prediction names at most K = 64 segments; the excess
  segments of a map are merged into its largest one (`palette.merge_excess`, SPEC 2.4 step 2).
* Metrics (`bitseg_jax.metrics`) on the valid region: ARI and hiou_e (the paper's IoU) of each
  prediction against every annotator, as the mean over annotators (`*_vs_all`) and against the
  best annotator (`best_*_vs_all`), averaged over images; on multi-annotator data also the
  squared GED between the method's sample set and the annotator set. Every method here is
  deterministic, so its sample set is one map (GED = 2 E d(s, a) - E d(a, a')).
* Tuning: each method's grid (`GRIDS`, 1-8 points) is scored on a seeded draw of the train
  split and the point with the highest mean `ari_vs_all` is evaluated once on validation.
  Validation is never used for tuning.
* Annotator agreement (BSDS500, train and validation): ARI and hiou_e of every ordered pair of
  annotators (gt = one, prediction = another), averaged per image, then over images; and the
  leave-one-out score "one annotator as the prediction against the others" (the mean over the
  others equals the pairwise mean; reported are the best other annotator and the GED between
  the one map and the other annotators), averaged over annotators, then images.

Command (from the repo root; prepares the two TFDS data sets in --data_dir on the first run, about
2.5 minutes, from the manual dir ../shared/data):

  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \
    python benchmarks/classical_baselines.py --workers=2 --output=/tmp/classical_baselines.json

Prints progress, then Markdown tables (results/docs pages) and writes every number to --output.
"""

import dataclasses
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging
from skimage import color, filters, measure, segmentation

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bitseg_jax import metrics, palette, visualize

# --------------------------------------------------------------------------------------------
# Segmenters: uint8 [h, w, 3] -> int32 [h, w] ids >= 0.
# --------------------------------------------------------------------------------------------


def felzenszwalb(image: np.ndarray, *, scale: float, min_size: int) -> np.ndarray:
    """Felzenszwalb-Huttenlocher graph segmentation (skimage; sigma 0.8, its default).

    Args:
        image: uint8 [h, w, 3].
        scale: higher = larger segments.
        min_size: smallest segment in pixels (enforced by post-merging).

    Returns:
        int32 [h, w] segment ids >= 0.
    """
    return segmentation.felzenszwalb(image, scale=scale, sigma=0.8, min_size=min_size).astype(
        np.int32
    )


def slic(image: np.ndarray, *, n_segments: int, compactness: float) -> np.ndarray:
    """SLIC superpixels in CIELAB (skimage; Gaussian pre-smoothing sigma 1, connected).

    Args:
        image: uint8 [h, w, 3].
        n_segments: approximate number of superpixels.
        compactness: colour vs space trade-off (higher = more square).

    Returns:
        int32 [h, w] segment ids >= 0.
    """
    return segmentation.slic(
        image, n_segments=n_segments, compactness=compactness, sigma=1.0, start_label=0
    ).astype(np.int32)


def quickshift(image: np.ndarray, *, kernel_size: float, max_dist: float) -> np.ndarray:
    """Quickshift mode seeking in (CIELAB, x, y) (skimage; colour/space ratio 0.5, seed 42).

    Args:
        image: uint8 [h, w, 3].
        kernel_size: Gaussian kernel width of the density estimate (pixels).
        max_dist: cut-off distance of the tree links (higher = fewer segments).

    Returns:
        int32 [h, w] segment ids >= 0.
    """
    return segmentation.quickshift(
        image, kernel_size=kernel_size, max_dist=max_dist, ratio=0.5, rng=42
    ).astype(np.int32)


def watershed(image: np.ndarray, *, markers: int) -> np.ndarray:
    """Watershed of the Sobel gradient magnitude of the grey image, `markers` basins.

    Args:
        image: uint8 [h, w, 3].
        markers: number of basins (skimage places them on a regular grid).

    Returns:
        int32 [h, w] segment ids >= 0.
    """
    gradient = filters.sobel(color.rgb2gray(image))
    return (segmentation.watershed(gradient, markers=markers) - 1).astype(np.int32)


# Which side of the Otsu threshold holds the objects: foreground mask of the grey image's
# `gray > threshold` mask.
OTSU_POLARITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # Fluorescence: bright nuclei on a dark background.
    "bright": lambda above: above,
    # Also brightfield / histology (dark nuclei on a bright background): nuclei cover less of
    # the image than the background, so the objects are the minority side.
    "minority": lambda above: ~above if above.mean() > 0.5 else above,
}


def otsu_components(image: np.ndarray, *, polarity: str, min_size: int) -> np.ndarray:
    """Otsu threshold of the grey image + 4-connected components; background is segment 0.

    Args:
        image: uint8 [h, w, 3].
        polarity: a key of `OTSU_POLARITIES` ("bright" | "minority").
        min_size: components smaller than this (pixels) join the background.

    Returns:
        int32 [h, w]: 0 = background, 1..n the components.
    """
    try:
        foreground_of = OTSU_POLARITIES[polarity]
    except KeyError:
        raise KeyError(
            f"Unknown Otsu polarity {polarity!r}; expected one of {sorted(OTSU_POLARITIES)}."
        ) from None
    gray = color.rgb2gray(image)
    if gray.max() == gray.min():  # Otsu is undefined on a constant image: all background.
        return np.zeros(gray.shape, np.int32)
    foreground = foreground_of(gray > filters.threshold_otsu(gray))
    labels = measure.label(foreground, connectivity=1)
    small = np.bincount(labels.reshape(-1)) < min_size
    small[0] = False
    labels[small[labels]] = 0
    return labels.astype(np.int32)


def single_segment(image: np.ndarray) -> np.ndarray:
    """The trivial reference: the whole image is one segment (ARI 0 by construction).

    Args:
        image: uint8 [h, w, 3].

    Returns:
        int32 [h, w] zeros.
    """
    return np.zeros(image.shape[:2], np.int32)


SEGMENTERS: dict[str, Callable[..., np.ndarray]] = {
    "felzenszwalb": felzenszwalb,
    "slic": slic,
    "quickshift": quickshift,
    "watershed": watershed,
    "otsu_components": otsu_components,
    "single_segment": single_segment,
}


def _grid(**axes: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    """Every combination of the axes' values, as keyword dicts (the last axis varies fastest)."""
    names = list(axes)
    return tuple(dict(zip(names, values)) for values in itertools.product(*axes.values()))


# Tuning grids per data set and method, chosen around the scale of each data set's ground truth
# (BSDS500: median ~14 segments per 128-px map; DSB2018: background + median 27 nuclei).
GRIDS: dict[str, dict[str, tuple[dict[str, Any], ...]]] = {
    "bsds500": {
        "felzenszwalb": _grid(scale=(100, 200, 400, 800), min_size=(50, 150)),
        "slic": _grid(n_segments=(4, 8, 16, 32), compactness=(3.0, 30.0)),
        "quickshift": _grid(kernel_size=(3, 5, 8), max_dist=(5, 10)),
        "watershed": _grid(markers=(8, 12, 16, 24, 32, 48)),
        "single_segment": ({},),
    },
    "dsb2018": {
        "felzenszwalb": _grid(scale=(100, 300, 1000, 3000), min_size=(5, 25)),
        "slic": _grid(n_segments=(16, 64, 256), compactness=(0.3, 3.0)),
        "quickshift": _grid(kernel_size=(3, 5), max_dist=(5, 10, 20)),
        "watershed": _grid(markers=(8, 16, 32, 64, 128, 256)),
        "otsu_components": _grid(polarity=("bright", "minority"), min_size=(1, 4, 16)),
        "single_segment": ({},),
    },
}


def segment(method: str, image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Runs `SEGMENTERS[method]` on one image.

    Args:
        method: a key of `SEGMENTERS`.
        image: uint8 [h, w, 3].
        params: the method's keyword arguments (one grid point).

    Returns:
        int32 [h, w] segment ids >= 0.
    """
    try:
        fn = SEGMENTERS[method]
    except KeyError:
        raise KeyError(
            f"Unknown method {method!r}; expected one of {sorted(SEGMENTERS)}."
        ) from None
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [h, w, 3]; got {image.dtype} {image.shape}.")
    labels = fn(image, **params)
    if labels.shape != image.shape[:2] or labels.min() < 0:
        raise ValueError(f"{method}{dict(params)} returned a bad map {labels.shape}.")
    return labels


# --------------------------------------------------------------------------------------------
# Data under the evaluation protocol.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    """The images and annotations of one split after the eval pipeline (SPEC 2.3-2.4).

    Attributes:
        name: e.g. "bsds500:train".
        images: uint8 [N, S, S, 3]: the resized content (top-left), denormalised.
        valid: bool [N, S, S]: the content region.
        annotations: int32 [N, A, S, S]: every annotator's merged map, -1 outside `valid` and
            for absent annotators.
        ids: str [N] file stems.
    """

    name: str
    images: np.ndarray
    valid: np.ndarray
    annotations: np.ndarray
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def content(self, i: int) -> np.ndarray:
        """uint8 [h', w', 3]: image `i`'s valid region."""
        height = int(self.valid[i].any(axis=1).sum())
        width = int(self.valid[i].any(axis=0).sum())
        return self.images[i, :height, :width]


def split_from_batches(name: str, batches) -> Split:
    """Collects eval-pipeline batches (`input_pipeline.eval_dataset`) into a `Split`.

    Args:
        name: shown in messages.
        batches: iterable of eval batches (NumPy): `image` float32 [b, S, S, 3]
            ImageNet-normalised, `valid`, `annotations`, `_mask`, `id`.

    Returns:
        The split without the padding rows (`_mask` False).
    """
    images, valid, annotations, ids = [], [], [], []
    for batch in batches:
        keep = np.asarray(batch["_mask"], bool)
        valid.append(np.asarray(batch["valid"], bool)[keep])
        annotations.append(np.asarray(batch["annotations"], np.int32)[keep])
        for image, v in zip(np.asarray(batch["image"])[keep], valid[-1]):
            images.append(np.where(v[..., None], visualize.denormalize(image), 0))
        ids.extend(x.decode() if isinstance(x, bytes) else str(x) for x in batch["id"][keep])
    if not images:
        raise ValueError(f"{name}: the eval pipeline gave no images.")
    valid_all = np.concatenate(valid)
    for i, v in enumerate(valid_all):
        height, width = v.any(axis=1).sum(), v.any(axis=0).sum()
        if v.sum() != height * width or not v[:height, :width].all():
            raise ValueError(f"{name}: image {ids[i]!r} has a valid region that is no rectangle.")
    return Split(
        name=name,
        images=np.stack(images).astype(np.uint8),
        valid=valid_all,
        annotations=np.concatenate(annotations),
        ids=tuple(ids),
    )


def eval_config(data_dir: str, manual_dir: str, image_size: int = 128):
    """configs/bsds_cpu.py with the model's image size and the given TFDS / manual dirs.

    The methods segment the image at `image_size` and are scored there (the annotations at the
    same size, whatever the recipe's `eval.image_size`). The data set is chosen per call
    (`load_split`'s `dataset`), not by `config.data.datasets`.
    """
    from configs import bsds_cpu  # lazy: see `load_split`.

    config = bsds_cpu.get_config()
    with config.unlocked():
        config.model.image_size = image_size
        config.eval.image_size = image_size
        config.data.data_dir = data_dir
        config.data.manual_dir = manual_dir
        config.eval.batch_size = 32
    return config


def load_split(config, dataset: str, split: str, *, num_images: int | None = None) -> Split:
    """One TFDS split through the project's eval pipeline (prepared on first use).

    Args:
        config: from `eval_config`.
        dataset: "bsds500" | "dsb2018".
        split: "train" | "validation".
        num_images: a seeded (seed 0) draw of the split, as `Evaluator` makes; None = all.

    Returns:
        The `Split`.
    """
    # Imported here so that the spawned segmentation workers never load TensorFlow.
    from bitseg_jax import input_pipeline

    batches = input_pipeline.create_eval_iterator(
        config, split, num_images=num_images, seed=0, dataset=dataset
    )
    return split_from_batches(f"{dataset}:{split}", batches)


# --------------------------------------------------------------------------------------------
# Segmenting a split (optionally in worker processes).
# --------------------------------------------------------------------------------------------


def _segment_task(task) -> np.ndarray:
    """Worker: (method, grid, image [h,w,3], max_segments) -> int32 [G, h, w]."""
    method, grid, image, max_segments = task
    return np.stack(
        [palette.merge_excess(segment(method, image, params), max_segments) for params in grid]
    )


def segment_split(
    split: Split,
    method: str,
    grid: Sequence[Mapping[str, Any]],
    *,
    max_segments: int = 64,
    pool=None,
) -> np.ndarray:
    """Segments every image of a split at every grid point.

    Args:
        split: the images.
        method: a key of `SEGMENTERS`.
        grid: G parameter dicts.
        max_segments: K; excess predicted segments merge into the largest (SPEC 2.4 step 2).
        pool: a `multiprocessing` pool to spread the images over, or None (this process).

    Returns:
        int32 [N, G, S, S]: predictions on the valid region, 0 outside it.
    """
    tasks = [(method, tuple(grid), split.content(i), max_segments) for i in range(len(split))]
    maps = pool.imap(_segment_task, tasks, chunksize=4) if pool else map(_segment_task, tasks)
    n, s = len(split), split.valid.shape[-1]
    out = np.zeros((n, len(grid), s, s), np.int32)
    for i, labels in enumerate(maps):
        out[i, :, : labels.shape[1], : labels.shape[2]] = labels
    return out


# --------------------------------------------------------------------------------------------
# Scores.
# --------------------------------------------------------------------------------------------


def score_predictions(
    pred: np.ndarray, annotations: np.ndarray, valid: np.ndarray, *, chunk: int = 32
) -> dict[str, np.ndarray]:
    """ARI and hiou_e of every prediction against every present annotator (SPEC 8.1-8.2).

    Args:
        pred: int32 [N, G, S, S] predictions (>= 0 on the valid region).
        annotations: int32 [N, A, S, S]; an annotator that is -1 everywhere is absent.
        valid: bool [N, S, S].
        chunk: images per `metrics.segmentation_metrics` call (bounds memory).

    Returns:
        float64 [N, G] each: `ari_vs_all`, `hiou_e_vs_all` (mean over present annotators),
        `best_ari_vs_all`, `best_hiou_e_vs_all` (best annotator) and `ari`, `hiou_e` (against
        annotator 0 alone: the `Evaluator`'s headline numbers).
    """
    if pred.ndim != 4 or annotations.ndim != 4 or valid.ndim != 3:
        raise ValueError(
            f"pred [N, G, S, S], annotations [N, A, S, S], valid [N, S, S] expected; got "
            f"{pred.shape}, {annotations.shape}, {valid.shape}."
        )
    if pred.shape[0] != annotations.shape[0] or pred.shape[2:] != annotations.shape[2:]:
        raise ValueError(f"pred {pred.shape} does not match annotations {annotations.shape}.")
    present = (annotations >= 0).any(axis=(-2, -1))  # [N, A]
    if not present[:, 0].all():
        raise ValueError("annotations: annotator 0 (the ground truth) is absent in an image.")
    per_annotator = {"ari": [], "hiou_e": []}
    for a in range(annotations.shape[1]):
        # An absent annotator gets a stand-in map; its scores are masked below.
        gt = np.where(present[:, a, None, None], annotations[:, a], 0)
        parts = [
            metrics.segmentation_metrics(
                gt[i : i + chunk], pred[i : i + chunk], valid[i : i + chunk]
            )
            for i in range(0, len(pred), chunk)
        ]
        for key, values in per_annotator.items():
            values.append(np.concatenate([p[key] for p in parts]))
    out = {}
    for key, values in per_annotator.items():
        v = np.where(present[:, :, None], np.stack(values, axis=1), np.nan)  # [N, A, G]
        out[key] = values[0]
        out[f"{key}_vs_all"] = np.nanmean(v, axis=1)
        out[f"best_{key}_vs_all"] = np.nanmax(v, axis=1)
    return out


def ged_per_image(
    pred: np.ndarray, annotations: np.ndarray, valid: np.ndarray
) -> dict[str, np.ndarray]:
    """Squared GED between each image's sample set and its annotator set (`metrics.ged`).

    Args:
        pred: int32 [N, M, S, S]: M samples per image (M = 1 for a deterministic method).
        annotations: int32 [N, A, S, S] (-1: absent / outside valid).
        valid: bool [N, S, S].

    Returns:
        {"ged_hiou_e", "ged_ari"}: float64 [N].
    """
    return {
        f"ged_{d}": np.array(
            [metrics.ged(pred[i], annotations[i], valid[i], distance=d) for i in range(len(pred))]
        )
        for d in ("hiou_e", "ari")
    }


def select(scores: Mapping[str, np.ndarray], key: str = "ari_vs_all") -> tuple[int, np.ndarray]:
    """The grid point with the best mean `key` over images (first on ties).

    Args:
        scores: from `score_predictions`, [N, G] arrays.
        key: the tuning criterion.

    Returns:
        (index of the chosen point, float64 [G] mean over images of every point).
    """
    means = np.mean(scores[key], axis=0)
    return int(np.argmax(means)), means


def annotator_agreement(annotations: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """How well the annotators agree with each other, per image.

    For an image with A' >= 2 present annotators, with `m[g, p]` = metric(gt = annotator g,
    prediction = annotator p):

    * `pair_ari`, `pair_hiou_e`: mean of m over the A'(A'-1) ordered pairs g != p. This is
      also the leave-one-out "one annotator against the others" mean over the others,
      averaged over the annotator left out.
    * `loo_best_ari`, `loo_best_hiou_e`: max over g != p, averaged over p (the best other).
    * `loo_ged_hiou_e`, `loo_ged_ari`: `metrics.ged` of the one map {p} against the others,
      averaged over p.

    Args:
        annotations: int32 [N, A, S, S] (-1: absent / outside valid).
        valid: bool [N, S, S].

    Returns:
        float64 [N] each; NaN for an image with fewer than 2 annotators.
    """
    keys = ("pair_ari", "pair_hiou_e", "loo_best_ari", "loo_best_hiou_e", "loo_ged_hiou_e",
            "loo_ged_ari")  # fmt: skip
    out = {k: np.full(len(annotations), np.nan) for k in keys}
    for i, (maps, v) in enumerate(zip(annotations, valid)):
        maps = maps[(maps >= 0).any(axis=(-2, -1))]
        a = len(maps)
        if a < 2:
            continue
        m = metrics.segmentation_metrics(
            maps, np.broadcast_to(maps[None], (a, *maps.shape)), np.broadcast_to(v, maps.shape)
        )  # [g, p]
        others = ~np.eye(a, dtype=bool)
        for key in ("ari", "hiou_e"):
            out[f"pair_{key}"][i] = m[key][others].mean()
            out[f"loo_best_{key}"][i] = np.where(others, m[key], -np.inf).max(axis=0).mean()
        for d in ("hiou_e", "ari"):
            out[f"loo_ged_{d}"][i] = np.mean(
                [
                    metrics.ged(maps[p : p + 1], np.delete(maps, p, 0), v, distance=d)
                    for p in range(a)
                ]
            )
    return out


# --------------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------------

_DATASETS = flags.DEFINE_list("datasets", ["bsds500", "dsb2018"], "Data sets (keys of GRIDS).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "/tmp/bitseg_classical_tfds", "TFDS data dir (prepared here if empty)."
)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir",
    os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                  "shared", "data")),
    "Folder holding BSDS500/ and dsb2018/ (the publishers' layouts).",
)  # fmt: skip
_TUNE_IMAGES = flags.DEFINE_integer(
    "tune_images", 200, "Train images (a seeded draw) used for tuning; 0 = the whole split."
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 128, "Evaluation size in px (longest side), as the model's `image_size`."
)
_METHODS = flags.DEFINE_list("methods", [], "Methods to run (default: every method of GRIDS).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Segmentation worker processes (1 = in-process).")
_OUTPUT = flags.DEFINE_string("output", "", "Write every result as JSON here ('' = do not).")


class _Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.0f} s] {message}", flush=True)


def _mean_sem(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "sem": float(sem), "n": len(values)}


def run_agreement(split: Split, clock: _Clock) -> dict[str, Any]:
    """Annotator agreement of a split, summarised as mean ± s.e.m. over images."""
    start = time.perf_counter()
    per_image = annotator_agreement(split.annotations, split.valid)
    num = (split.annotations >= 0).any(axis=(-2, -1)).sum(axis=1)
    clock.log(f"{split.name}: annotator agreement of {len(split)} images")
    return {
        "num_images": len(split),
        "annotators_per_image": float(num.mean()),
        "seconds": time.perf_counter() - start,
        **{k: _mean_sem(v) for k, v in per_image.items()},
    }


def run_method(
    dataset: str,
    method: str,
    train: Split,
    val: Split,
    *,
    max_segments: int,
    pool,
    clock: _Clock,
) -> dict[str, Any]:
    """Tunes one method on `train` and evaluates the chosen point once on `val`."""
    grid = GRIDS[dataset][method]
    start = time.perf_counter()
    pred = segment_split(train, method, grid, max_segments=max_segments, pool=pool)
    seg_seconds = time.perf_counter() - start
    index, means = select(score_predictions(pred, train.annotations, train.valid))
    del pred
    chosen = grid[index]
    clock.log(
        f"{dataset} {method}: tuned on {len(train)} train images x {len(grid)} points "
        f"({seg_seconds:.0f} s segmenting): {chosen} (train ari_vs_all {means[index]:.3f})"
    )
    start = time.perf_counter()
    pred = segment_split(val, method, [chosen], max_segments=max_segments, pool=pool)
    val_seconds = time.perf_counter() - start
    scores = {k: v[:, 0] for k, v in score_predictions(pred, val.annotations, val.valid).items()}
    if val.annotations.shape[1] > 1:
        scores.update(ged_per_image(pred, val.annotations, val.valid))
    num_segments = [len(np.unique(pred[i, 0][val.valid[i]])) for i in range(len(val))]
    clock.log(f"{dataset} {method}: validation ari_vs_all {np.mean(scores['ari_vs_all']):.3f}")
    return {
        "grid": [dict(p) for p in grid],
        "train_ari_vs_all": [float(x) for x in means],
        "chosen": dict(chosen),
        "val": {k: _mean_sem(v) for k, v in scores.items()},
        "val_median_segments": float(np.median(num_segments)),
        "val_ms_per_image": 1000.0 * val_seconds / len(val),
    }


def _fmt(summary: Mapping[str, float] | None) -> str:
    if summary is None:
        return "n/a"
    return f"{summary['mean']:.3f} ± {summary['sem']:.3f}"


def format_tables(results: Mapping[str, Any]) -> str:
    """Markdown tables of the results (validation; mean ± s.e.m. over images)."""
    lines = []
    for dataset, r in results["datasets"].items():
        val = r["num_val_images"]
        lines += [
            f"### {dataset} validation ({val} images; tuned on {r['num_tune_images']} train)",
            "",
            (
                "| method | chosen parameters | ARI ann. 0 | ARI mean ann. | ARI best ann. "
                "| IoU ann. 0 | IoU mean ann. | IoU best ann. | GED (IoU) | GED (ARI) "
                "| median segs |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, m in r["methods"].items():
            params = ", ".join(f"{k}={v}" for k, v in m["chosen"].items()) or "–"
            v = m["val"]
            lines.append(
                f"| {method} | {params} | {_fmt(v['ari'])} | {_fmt(v['ari_vs_all'])} "
                f"| {_fmt(v['best_ari_vs_all'])} | {_fmt(v['hiou_e'])} "
                f"| {_fmt(v['hiou_e_vs_all'])} | {_fmt(v['best_hiou_e_vs_all'])} "
                f"| {_fmt(v.get('ged_hiou_e'))} | {_fmt(v.get('ged_ari'))} "
                f"| {m['val_median_segments']:.0f} |"
            )
        for split_name, agreement in r.get("agreement", {}).items():
            lines.append(
                f"| annotators ({split_name}, one vs others) | – | – "
                f"| {_fmt(agreement['pair_ari'])} | {_fmt(agreement['loo_best_ari'])} | – "
                f"| {_fmt(agreement['pair_hiou_e'])} "
                f"| {_fmt(agreement['loo_best_hiou_e'])} | {_fmt(agreement['loo_ged_hiou_e'])} "
                f"| {_fmt(agreement['loo_ged_ari'])} | – |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TFDS logs every split it opens.
    clock = _Clock()
    from bitseg_jax import input_pipeline  # lazy: see `load_split`.

    config = eval_config(_DATA_DIR.value, _MANUAL_DIR.value, _IMAGE_SIZE.value)
    num_classes = input_pipeline.num_classes(config)
    tune_images = _TUNE_IMAGES.value or None
    results: dict[str, Any] = {
        "config": {
            "image_size": int(config.model.image_size),
            "max_segments": num_classes,
            "tune_images": tune_images,
            "workers": _WORKERS.value,
        },
        "datasets": {},
    }
    pool = None
    if _WORKERS.value > 1:
        # spawn: the workers start clean rather than inheriting TensorFlow's / JAX's threads.
        pool = multiprocessing.get_context("spawn").Pool(_WORKERS.value)
    try:
        for dataset in _DATASETS.value:
            if dataset not in GRIDS:
                raise KeyError(f"Unknown data set {dataset!r}; expected one of {sorted(GRIDS)}.")
            train = load_split(config, dataset, "train", num_images=tune_images)
            val = load_split(config, dataset, "validation")
            clock.log(f"{dataset}: loaded {len(train)} train (tuning) + {len(val)} val images")
            r = {"num_tune_images": len(train), "num_val_images": len(val), "methods": {}}
            if val.annotations.shape[1] > 1:
                r["agreement"] = {"validation": run_agreement(val, clock)}
                full_train = train if tune_images is None else load_split(config, dataset, "train")
                r["agreement"]["train"] = run_agreement(full_train, clock)
            methods = _METHODS.value or list(GRIDS[dataset])
            for method in methods:
                if method not in GRIDS[dataset]:
                    continue
                r["methods"][method] = run_method(
                    dataset, method, train, val, max_segments=num_classes, pool=pool, clock=clock
                )
            results["datasets"][dataset] = r
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    results["wall_seconds"] = time.perf_counter() - clock.start
    clock.log("done")
    print(format_tables(results))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
