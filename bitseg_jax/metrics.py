"""Agnostic segmentation metrics: ARI, Hungarian-matched IoU, best-of-N and GED (SPEC 8).

This file owns the metric definitions. Labels are arbitrary integers (only the partition
matters); only pixels in the valid region count, and ground-truth pixels labelled -1 (padding,
absent annotators) are excluded as well.

Every metric is a function of the contingency table of a (gt, pred) pair (pixel counts per
label pair): ARI from exact integer pair counts, as scikit-learn's `adjusted_rand_score`, and the
Hungarian IoU with scipy's `linear_sum_assignment`. Tables come from one of two places:
  * `ari` / `hungarian_iou`: one pair, built on host with np.unique + np.bincount.
  * `segmentation_metrics`: a batch of images x samples. Labels are checked (and compacted when
    large) on host, and the tables of all pairs are built in one jitted scatter-add; ARI is then
    vectorised over the tables and the matching runs per pair, both on host.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

# Most distinct labels per map that `segmentation_metrics` accepts. Tables are padded to a power
# of two >= the largest count in the batch, so a pair costs up to MAX_SEGMENTS**2 int32 cells
# (4 MiB at 1024); 1024 covers 10-bit analog bits and the RGB decoder's at most 2**10 classes.
MAX_SEGMENTS = 1024

# Most table cells built in one jitted call (int32 cell indices; 256 MiB of int32 counts).
_MAX_TABLE_CELLS = 1 << 26

# Labels in [-1, _DIRECT_LABELS) are used as table indices without compaction.
_DIRECT_LABELS = 128

# Label ranges up to max(this, pixels per map) are compacted with a presence table per map;
# wider ones with np.unique per map.
_MAX_TABLE_ID = 4096


# ------------------------------------------------------------------------------------------------
# Input checks and label compaction (host).
# ------------------------------------------------------------------------------------------------


def _as_labels(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must hold integer labels; got dtype {x.dtype}.")
    return x


def _as_valid(valid, shape: tuple[int, ...], name: str = "valid") -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    valid = np.asarray(valid)
    if valid.dtype != bool:
        raise TypeError(f"{name} must be a bool mask; got dtype {valid.dtype}.")
    if valid.shape != shape:
        raise ValueError(f"{name} has shape {valid.shape}; expected {shape} (the shape of gt).")
    return valid


def _counted(gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pixels that count: valid and gt >= 0 (-1 in gt = padding or absent annotation)."""
    if gt.size and gt.min() < -1:
        raise ValueError(f"gt holds labels < -1 (min {gt.min()}); -1 is the only excluded label.")
    return valid & (gt >= 0)


def _check_nonnegative(labels: np.ndarray, mask: np.ndarray, name: str) -> None:
    """Raises if `labels` is negative where `mask` (broadcast against it) is True."""
    if labels.min() < 0 and (np.where(mask, labels, 0) < 0).any():
        raise ValueError(f"{name} holds negative labels on counted pixels (valid and gt >= 0).")


def _dense_labels(labels: np.ndarray, mask: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Labels of M maps as table indices 0..U-1 on their counted pixels.

    Small labels (in [-1, _DIRECT_LABELS), e.g. the 2**k classes of a decoded sample) index the
    tables directly: the empty rows and columns they leave change no metric. Others are compacted
    per map to 0..U-1 in ascending label order.

    Args:
        labels: int [..., P] labels of maps with P pixels each.
        mask: bool, broadcastable to `labels`: counted pixels.
        name: argument name for errors.

    Returns:
        (int32 [..., P] indices in [0, U) on counted pixels, arbitrary elsewhere; U).
    """
    if labels.min() >= -1 and labels.max() < _DIRECT_LABELS:
        return labels.astype(np.int32, copy=False), int(labels.max()) + 1
    shape = labels.shape
    labels = labels.reshape(-1, shape[-1])
    mask = np.broadcast_to(mask, shape).reshape(labels.shape)
    m, p = labels.shape
    if not mask.any():
        return np.zeros(shape, np.int32), 1
    lo = int(labels[mask].min())
    hi = int(labels[mask].max())
    span = hi - lo + 1
    if span <= max(_MAX_TABLE_ID, p):
        # Presence per (map, label) with one bincount; uncounted pixels go to an extra column
        # `span` of their map. The rank of a label among its map's present labels is its index.
        shifted = np.where(mask, labels.astype(np.int64, copy=False) - lo, span)
        key = shifted + (np.arange(m) * (span + 1))[:, None]
        present = np.bincount(key.reshape(-1), minlength=m * (span + 1)).reshape(m, span + 1) > 0
        present[:, span] = False
        rank = np.cumsum(present, axis=1, dtype=np.int32) - 1
        dense = rank.reshape(-1)[key]
        num = int(present.sum(axis=1).max())
    else:
        dense = np.zeros((m, p), np.int64)
        num = 1
        for i in range(m):
            uniq, inv = np.unique(labels[i][mask[i]], return_inverse=True)
            dense[i][mask[i]] = inv
            num = max(num, uniq.size)
    if num > MAX_SEGMENTS:
        raise ValueError(
            f"{name} has a map with {num} distinct labels on counted pixels; at most "
            f"MAX_SEGMENTS={MAX_SEGMENTS} are supported (merge segments first)."
        )
    return dense.astype(np.int32, copy=False).reshape(shape), num


def _bucket(n: int) -> int:
    """Table side for n labels: the next power of two >= 16, so few shapes get compiled."""
    return max(16, 1 << (n - 1).bit_length())


# ------------------------------------------------------------------------------------------------
# Per-table math.
# ------------------------------------------------------------------------------------------------


def _ari_from_tables(tables: np.ndarray) -> np.ndarray:
    """ARI from contingency tables [..., Kg, Kp] (SPEC 8.1), in scikit-learn's pair-count form.

    Pair counts are exact int64; only the final products are float64 (n**4 overflows int64 for
    maps beyond ~55k pixels). Float32 on device is not enough here: near-degenerate tables
    (e.g. one predicted segment) lose ~1e-5 to cancellation.

    Returns:
        float64 [...]; identical partitions (also the trivial ones) give exactly 1.0.
    """
    t = tables.astype(np.int64)
    n = t.sum(axis=(-2, -1))
    sum_sq = (t * t).sum(axis=(-2, -1))
    gt_sq = (t.sum(axis=-1) ** 2).sum(axis=-1)
    pred_sq = (t.sum(axis=-2) ** 2).sum(axis=-1)
    # Ordered pixel pairs: same segment in both (tp), in pred only (fp), in gt only (fn), neither.
    tp, fp, fn = sum_sq - n, pred_sq - sum_sq, gt_sq - sum_sq
    tn = n * n - tp - fp - fn - n
    identical = (fn == 0) & (fp == 0)
    tp, fp, fn, tn = (x.astype(np.float64) for x in (tp, fp, fn, tn))
    denominator = np.where(identical, 1.0, (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    return np.where(identical, 1.0, 2.0 * (tp * tn - fn * fp) / denominator)


def _hungarian_from_table(table: np.ndarray, reference_b2: bool = False) -> tuple[float, float]:
    """(hiou_e, hiou) from one contingency table [Kg, Kp] (SPEC 8.2); empty rows/cols dropped."""
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0].astype(np.float64)
    num_gt, num_pred = table.shape
    if reference_b2 and num_gt == num_pred == 1:
        # The reference's bug B2: it returns 1/(2n - 1) for a single segment on both sides.
        return (1.0 / (2.0 * table[0, 0] - 1.0),) * 2
    union = table.sum(axis=1, keepdims=True) + table.sum(axis=0, keepdims=True) - table
    iou = table / union
    # Rectangular matching = padding to M x M with zero-IoU dummies (they add nothing).
    rows, cols = scipy.optimize.linear_sum_assignment(iou, maximize=True)
    total = float(iou[rows, cols].sum())
    return total / num_gt, total / max(num_gt, num_pred)


# ------------------------------------------------------------------------------------------------
# One pair (host).
# ------------------------------------------------------------------------------------------------


def _pair_table(gt, pred, valid) -> np.ndarray:
    gt, pred = _as_labels(gt, "gt"), _as_labels(pred, "pred")
    if pred.shape != gt.shape:
        raise ValueError(f"pred has shape {pred.shape}; expected {gt.shape} (the shape of gt).")
    mask = _counted(gt, _as_valid(valid, gt.shape))
    _check_nonnegative(pred, mask, "pred")
    if not mask.any():
        raise ValueError("No pixel counts: valid (and gt >= 0) is empty.")
    _, g = np.unique(gt[mask], return_inverse=True)
    _, p = np.unique(pred[mask], return_inverse=True)
    num_p = int(p.max()) + 1
    return np.bincount(g * num_p + p, minlength=(int(g.max()) + 1) * num_p).reshape(-1, num_p)


def ari(gt, pred, valid=None) -> float:
    """Adjusted Rand index between two label maps (SPEC 8.1).

    Hubert-Arabie ARI as scikit-learn's `adjusted_rand_score`, including its convention that
    identical partitions (also the trivial ones: one segment, all singletons) score 1.0.

    Args:
        gt: int [...] ground-truth labels; -1 pixels are excluded.
        pred: int [...] predicted labels, same shape.
        valid: bool [...] pixels that count, or None for all.

    Returns:
        ARI in [-1, 1] (float64, exact pair counts).
    """
    return float(_ari_from_tables(_pair_table(gt, pred, valid)))


def hungarian_iou(gt, pred, valid=None, *, reference_b2: bool = False) -> tuple[float, float]:
    """Hungarian-matched IoU between two label maps (SPEC 8.2).

    Args:
        gt: int [...] ground-truth labels; -1 pixels are excluded.
        pred: int [...] predicted labels, same shape.
        valid: bool [...] pixels that count, or None for all.
        reference_b2: reproduce the reference's 1/(2n - 1) when both maps hold one segment
            (bug B2); the default gives the correct 1.0.

    Returns:
        (hiou_e, hiou): the summed IoU of the IoU-maximising one-to-one matching divided by the
        number of GT segments (the paper's IoU) and by max(#GT, #pred) segments.
    """
    return _hungarian_from_table(_pair_table(gt, pred, valid), reference_b2)


# ------------------------------------------------------------------------------------------------
# A batch of images x samples: tables under jit, ARI and matching on host.
# ------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_gt", "num_pred"))
def _contingency_tables(gt, pred, mask, *, num_gt: int, num_pred: int) -> jax.Array:
    """Contingency tables of every (image, sample) pair.

    Args:
        gt: int32 [N, P] table indices in [0, num_gt) on counted pixels (others ignored).
        pred: int32 [N, S, P] table indices in [0, num_pred) on counted pixels.
        mask: bool [N, P] counted pixels.

    Returns:
        int32 [N, S, num_gt, num_pred]: entry (a, b) counts the pixels with gt a and pred b.
    """
    n, s, p = pred.shape
    cells = num_gt * num_pred
    gt = jnp.where(mask, gt, 0)
    pred = jnp.where(mask[:, None, :], pred, 0)
    # One scatter-add over all pairs: pair index * cells + gt * num_pred + pred. Scatter (rather
    # than a one-hot matmul, P x Kg x Kp MACs per pair) keeps the cost at O(P) per pair.
    pair = jnp.arange(n * s, dtype=jnp.int32).reshape(n, s, 1)
    index = pair * cells + gt[:, None, :] * num_pred + pred
    weight = jnp.broadcast_to(mask[:, None, :], (n, s, p)).astype(jnp.int32)
    tables = jax.ops.segment_sum(weight.reshape(-1), index.reshape(-1), num_segments=n * s * cells)
    return tables.reshape(n, s, num_gt, num_pred)


def segmentation_metrics(gt, pred, valid, *, reference_b2: bool = False) -> dict[str, np.ndarray]:
    """ARI and Hungarian IoU of every (image, sample) pair (SPEC 8.1-8.2).

    Labels are arbitrary non-negative integers. Labels below 128 (the 2**k classes of the
    pipeline and the sampler) index the tables directly; larger ones are compacted per map on
    host, and a map may then hold at most `MAX_SEGMENTS` distinct labels on its counted pixels.
    Table sides are powers of two (>= 16), so few shapes get compiled.

    Args:
        gt: int [N, H, W] ground truth; -1 pixels are excluded.
        pred: int [N, S, H, W] S predicted samples per image.
        valid: bool [N, H, W] pixels that count (e.g. the non-padding region).
        reference_b2: see `hungarian_iou`.

    Returns:
        {"ari", "hiou_e", "hiou"}: float64 [N, S] each.

    Raises:
        TypeError: non-integer labels or a non-bool mask. ValueError: mismatched shapes, an image
        with no counted pixel, negative pred labels on counted pixels, too many labels.
    """
    gt, pred = _as_labels(gt, "gt"), _as_labels(pred, "pred")
    if gt.ndim != 3:
        raise ValueError(f"gt must be [N, H, W]; got shape {gt.shape}.")
    if pred.ndim != 4 or pred.shape[:1] + pred.shape[2:] != gt.shape:
        raise ValueError(f"pred must be [N, S, H, W] matching gt {gt.shape}; got {pred.shape}.")
    valid = _as_valid(valid, gt.shape)
    n, s, h, w = pred.shape
    mask = _counted(gt, valid)
    _check_nonnegative(pred, mask[:, None], "pred")
    mask = mask.reshape(n, h * w)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"No pixel counts (valid and gt >= 0) in image(s) {empty.tolist()}.")
    gt_dense, num_gt = _dense_labels(gt.reshape(n, h * w), mask, "gt")
    pred_dense, num_pred = _dense_labels(pred.reshape(n, s, h * w), mask[:, None], "pred")
    num_gt, num_pred = _bucket(num_gt), _bucket(num_pred)
    # Images per call, so that one call's tables stay below _MAX_TABLE_CELLS (int32 indices,
    # bounded memory); the usual 64 images x 3 samples x 64 x 64 cells is a single call.
    chunk = max(1, _MAX_TABLE_CELLS // (s * num_gt * num_pred))
    tables = np.concatenate(
        [
            np.asarray(  # on host for the matching anyway.
                _contingency_tables(
                    gt_dense[i : i + chunk],
                    pred_dense[i : i + chunk],
                    mask[i : i + chunk],
                    num_gt=num_gt,
                    num_pred=num_pred,
                )
            )
            for i in range(0, n, chunk)
        ]
    )  # [N, S, Kg, Kp]
    hiou = np.array(
        [_hungarian_from_table(t, reference_b2) for t in tables.reshape(n * s, *tables.shape[2:])]
    ).reshape(n, s, 2)
    return {
        "ari": _ari_from_tables(tables),
        "hiou_e": hiou[..., 0],
        "hiou": hiou[..., 1],
    }


def best_of_n(values) -> float:
    """Oracle best-of-N (SPEC 8.3): mean over images of the per-image max over samples.

    Args:
        values: float [N, S] a metric per (image, sample), e.g. `segmentation_metrics()["ari"]`.

    Returns:
        The mean over N of the max over S (`max_ari`, `max_hiou_e`).
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values must be a non-empty [N, S] array; got shape {values.shape}.")
    return float(values.max(axis=1).mean())


def summarize(metrics: dict[str, np.ndarray]) -> dict[str, float]:
    """Logged aggregates (SPEC 8.3): means over all pairs plus `max_ari` and `max_hiou_e`.

    Args:
        metrics: the output of `segmentation_metrics` ([N, S] arrays).

    Returns:
        {"ari", "hiou_e", "hiou", "max_ari", "max_hiou_e"} as floats.
    """
    out = {name: float(np.mean(metrics[name])) for name in ("ari", "hiou_e", "hiou")}
    out["max_ari"] = best_of_n(metrics["ari"])
    out["max_hiou_e"] = best_of_n(metrics["hiou_e"])
    return out


# ------------------------------------------------------------------------------------------------
# Generalised energy distance.
# ------------------------------------------------------------------------------------------------


def _distance_hiou_e(m: dict[str, np.ndarray]) -> np.ndarray:
    # hiou_e(x, y) divides the matched IoU by #segments of x: average both directions.
    similarity = 0.5 * (m["hiou_e"] + m["hiou_e"].T)
    return 1.0 - similarity


def _distance_ari(m: dict[str, np.ndarray]) -> np.ndarray:
    return 1.0 - m["ari"]


GED_DISTANCES = {"hiou_e": _distance_hiou_e, "ari": _distance_ari}


def ged(samples, annotations, valid, *, distance: str = "hiou_e") -> float:
    """Squared generalised energy distance D^2_GED between samples and annotations.

    D^2 = 2 E[d(s, a)] - E[d(s, s')] - E[d(a, a')], with every expectation a mean over all
    ordered pairs, i = j included (the V-statistic of Kohl et al.'s probabilistic U-Net). As
    d(x, x) = 0 for both distances, identical sets give exactly 0.

    Distances: "ari": d = 1 - ARI (symmetric). "hiou_e": d(x, y) = 1 - (hiou_e(x, y) +
    hiou_e(y, x)) / 2 with hiou_e(gt, pred) of SPEC 8.2, i.e. the matched IoU sum averaged over
    the segment counts of both maps, which makes d symmetric.

    Pixels that count: `valid` and >= 0 in every present annotation. An annotation that is -1
    on the whole valid region is an absent annotator and is dropped.

    Args:
        samples: int [S, H, W] predicted maps (>= 0 on counted pixels).
        annotations: int [A, H, W] annotators' maps; -1 = not annotated.
        valid: bool [H, W] pixels that count, or None for all.
        distance: "hiou_e" or "ari".

    Returns:
        D^2_GED as a float.
    """
    try:
        distance_fn = GED_DISTANCES[distance]
    except KeyError:
        raise KeyError(
            f"Unknown GED distance {distance!r}; expected one of {sorted(GED_DISTANCES)}."
        ) from None
    samples = _as_labels(samples, "samples")
    annotations = _as_labels(annotations, "annotations")
    if samples.ndim != 3 or samples.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty [S, H, W]; got shape {samples.shape}.")
    if annotations.ndim != 3 or annotations.shape[1:] != samples.shape[1:]:
        raise ValueError(
            f"annotations must be [A, H, W] with H, W of samples {samples.shape}; "
            f"got {annotations.shape}."
        )
    valid = _as_valid(valid, samples.shape[1:])
    present = (annotations[:, valid] >= 0).any(axis=1)
    if not present.any():
        raise ValueError("annotations: no annotator labels any valid pixel.")
    annotations = annotations[present]
    region = valid & (annotations >= 0).all(axis=0)
    if not region.any():
        raise ValueError("No pixel counts: valid and labelled by every present annotator.")
    _check_nonnegative(samples, region, "samples")
    maps = np.concatenate([samples, annotations])
    # All ordered pairs (i as gt, j as pred) of the S + A maps in one batch.
    m = len(maps)
    pairwise = segmentation_metrics(
        maps, np.broadcast_to(maps[None], (m, *maps.shape)), np.broadcast_to(region, maps.shape)
    )
    d = distance_fn(pairwise)
    s = len(samples)
    return float(2.0 * d[:s, s:].mean() - d[:s, :s].mean() - d[s:, s:].mean())
