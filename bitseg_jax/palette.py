"""Segment canonicalisation on the host: excess merging, LAP grids, class assignment (SPEC 2.4, 4).

This file owns everything that turns an instance map with arbitrary ids into the class map that
is encoded as bits: merging the smallest segments when there are more than K (SPEC 2.4 step 2),
the location-aware palette grids (SPEC 4.1), the centroid -> home cell -> greedy nearest free
cell assignment (SPEC 4.2) and the random relabelling used without a palette (SPEC 2.4 step 4).

It is plain NumPy because it runs per example inside tf.data (through `tf.numpy_function`).
Everything is vectorised over pixels with `np.bincount` on the flattened ids and a lookup table;
the only Python loop is over segments (at most K) in the greedy collision fix.
"""

import functools
import math
from typing import NamedTuple

import numpy as np

# Ids above this bound (or above 4 * the number of pixels, whichever is larger) are compacted
# with np.unique instead of a bincount lookup table, to keep the table small.
_MAX_TABLE_ID = 1 << 16


def _similar_order(num_bits: int) -> np.ndarray:
    """SPEC 4.1 `similar`: the 2-D Gray code, cell (r, c) = (g(r) << m) | g(c)."""
    m = num_bits // 2
    side = np.arange(1 << m)
    gray = side ^ (side >> 1)
    return ((gray[:, None] << m) | gray[None, :]).reshape(-1)


def _different_order(num_bits: int) -> np.ndarray:
    """SPEC 4.1 `different`: greedy max-Hamming sequence laid out in snake order."""
    num_classes = 1 << num_bits
    ids = np.arange(num_classes)
    # popcount of every id < 2**num_bits, via the bits of each id.
    popcount = ((ids[:, None] >> np.arange(num_bits)) & 1).sum(axis=1)
    used = np.zeros(num_classes, dtype=bool)
    sequence = np.empty(num_classes, dtype=np.int64)
    last = 0
    for i in range(num_classes):
        sequence[i] = last
        used[last] = True
        distance = np.where(used, -1, popcount[ids ^ last])
        last = int(np.argmax(distance))  # argmax takes the first maximum: the smallest id.
    side = 1 << (num_bits // 2)
    grid = sequence.reshape(side, side)
    grid[1::2] = grid[1::2, ::-1]  # snake: odd rows right to left.
    return grid.reshape(-1)


def _random_order(num_classes: int, seed: int) -> np.ndarray:
    """SPEC 4.1 `random`: a permutation from `np.random.default_rng(seed)`."""
    return np.random.default_rng(seed).permutation(num_classes)


def _range_order(num_classes: int, seed: int) -> np.ndarray:
    """SPEC 4.1 `range`: 0, 1, ..., K - 1 row-major."""
    del seed
    return np.arange(num_classes)


# Modes that are built from the bits (K must be 2**num_bits with num_bits even) and modes that
# only need K to be a perfect square.
_BIT_ORDERS = {"similar": _similar_order, "different": _different_order}
_SQUARE_ORDERS = {"random": _random_order, "range": _range_order}
LAP_MODES = ("none", *_BIT_ORDERS, *_SQUARE_ORDERS)


@functools.lru_cache(maxsize=64)
def _cached_grid(mode: str, num_bits: int, seed: int, num_classes: int | None) -> np.ndarray:
    """The read-only grid of `lap_grid`; cached since `assign` runs once per example."""
    if mode in _BIT_ORDERS:
        if num_classes is not None and num_classes != 1 << num_bits:
            raise ValueError(
                f"lap mode {mode!r} uses all 2**num_bits classes; got num_classes={num_classes} "
                f"with num_bits={num_bits} (num_classes is only for 'random' and 'range')."
            )
        if num_bits not in (2, 4, 6, 8, 10):
            raise ValueError(
                f"lap mode {mode!r} needs an even num_bits in (2, 4, 6, 8, 10) so that "
                f"K = 2**num_bits is a square grid; got num_bits={num_bits}. Odd num_bits only "
                "works with lap mode 'none'."
            )
        order = _BIT_ORDERS[mode](num_bits)
    elif mode in _SQUARE_ORDERS:
        k = (1 << num_bits) if num_classes is None else num_classes
        if k < 1 or math.isqrt(k) ** 2 != k:
            raise ValueError(
                f"lap mode {mode!r} needs a perfect-square number of classes K; got K={k} "
                f"(num_bits={num_bits}, num_classes={num_classes}). Use lap mode 'none' instead."
            )
        order = _SQUARE_ORDERS[mode](k, seed)
    else:
        raise KeyError(
            f"Unknown lap mode {mode!r}; expected one of {sorted(_BIT_ORDERS) + sorted(_SQUARE_ORDERS)}"
            " (mode 'none' has no grid: `assign` relabels randomly)."
        )
    side = math.isqrt(order.size)
    grid = order.reshape(side, side).astype(np.int32)
    grid.flags.writeable = False
    return grid


def lap_grid(mode: str, num_bits: int, seed: int = 0, num_classes: int | None = None) -> np.ndarray:
    """The location-aware palette grid (SPEC 4.1).

    Args:
        mode: "similar" (2-D Gray code), "different" (greedy max-Hamming snake), "random"
            (permutation from `np.random.default_rng(seed)`) or "range" (row-major 0..K-1).
        num_bits: k; K = 2**k classes. "similar"/"different" need k in (2, 4, 6, 8, 10).
        seed: seed of the "random" permutation (the run seed; ignored by the other modes).
        num_classes: K for "random"/"range" when it is not 2**k (121 for RGB with LAP).

    Returns:
        int32 [L, L] with L = sqrt(K); every class 0..K-1 appears once.

    Raises:
        KeyError: unknown mode. ValueError: K is not a square grid for the mode.
    """
    return _cached_grid(mode, int(num_bits), int(seed), num_classes).copy()


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array; got dtype {labels.dtype}.")
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [H, W] map; got shape {labels.shape}.")
    if labels.size and labels.min() < -1:
        raise ValueError(f"{name} holds ids < -1 (min {labels.min()}); only -1 marks padding.")
    return labels


class _Segments(NamedTuple):
    """The segments of a flattened map. Pixel p lies in bin key[p]; bin 0 holds no segment."""

    ids: np.ndarray  # int [U] distinct ids >= 0, ascending.
    counts: np.ndarray  # int [U] pixels per segment.
    key: np.ndarray  # intp [P] bin of each pixel.
    bins: np.ndarray  # intp [U] bin of each segment.
    num_bins: int  # every key is < num_bins.

    def relabel(self, values: np.ndarray) -> np.ndarray:
        """Per-pixel value [P] from a value per segment [U] (-1 outside segments)."""
        lut = np.full(self.num_bins, -1, dtype=values.dtype)
        lut[self.bins] = values
        return lut[self.key]


def _segments(flat: np.ndarray) -> _Segments:
    """Segments of `flat` (int [P] ids >= -1), with one pass over pixels for typical ids."""
    top = int(flat.max()) if flat.size else -1
    if top < max(_MAX_TABLE_ID, 4 * flat.size):
        # Bins are the ids shifted by one, so -1 lands in bin 0: no compaction pass needed.
        key = np.add(flat, 1, dtype=np.intp, casting="unsafe")
        counts = np.bincount(key, minlength=top + 2)
        bins = np.flatnonzero(counts[1:]) + 1
        return _Segments(bins - 1, counts[bins], key, bins, top + 2)
    keep = flat >= 0
    ids, inverse, counts = np.unique(flat[keep], return_inverse=True, return_counts=True)
    key = np.zeros(flat.shape, dtype=np.intp)
    key[keep] = inverse + 1
    return _Segments(ids, counts, key, np.arange(1, ids.size + 1), ids.size + 1)


def _merge_target(counts: np.ndarray, max_segments: int) -> np.ndarray:
    """Dense index each segment ends up in after SPEC 2.4 step 2 (identity if <= K segments).

    A stable sort by descending count resolves equal counts by the smaller id (the reference's
    unstable argsort leaves this unspecified, SPEC B9).
    """
    target = np.arange(counts.size)
    if counts.size > max_segments:
        by_size = np.argsort(-counts, kind="stable")
        target[by_size[max_segments:]] = by_size[0]
    return target


def merge_excess(labels: np.ndarray, max_segments: int) -> np.ndarray:
    """Merges the smallest segments into the largest when there are too many (SPEC 2.4 step 2).

    Keeps the `max_segments` largest segments by pixel count (equal counts: the smaller id
    wins) and relabels every pixel of the others to the largest kept segment's id.

    Args:
        labels: int [H, W] instance ids; -1 (padding) is ignored and stays -1.
        max_segments: K, the most segments kept.

    Returns:
        [H, W] with the dtype of `labels` and at most `max_segments` distinct ids >= 0.
    """
    labels = _check_labels(labels)
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1; got {max_segments}.")
    seg = _segments(labels.reshape(-1))
    if seg.ids.size <= max_segments:
        return labels.copy()
    new_ids = seg.ids[_merge_target(seg.counts, max_segments)].astype(np.int64)
    return seg.relabel(new_ids).astype(labels.dtype).reshape(labels.shape)


@functools.lru_cache(maxsize=8)
def _pixel_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 row and column index of every pixel of an [H, W] map, flattened (cached)."""
    rows, cols = np.indices((height, width), dtype=np.float64)
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


def _coordinate_sums(seg: _Segments, shape: tuple[int, int]) -> np.ndarray:
    """float64 [U, 2] sums of the row and column indices of each segment's pixels."""
    rows, cols = _pixel_coords(*shape)
    return np.stack(
        [
            np.bincount(seg.key, weights=rows, minlength=seg.num_bins)[seg.bins],
            np.bincount(seg.key, weights=cols, minlength=seg.num_bins)[seg.bins],
        ],
        axis=1,
    )


def _grid_q(sums: np.ndarray, counts: np.ndarray, shape: tuple[int, int], side: int):
    """Continuous grid coordinates q of segment centroids (SPEC 4.2 steps 1-2).

    Args:
        sums: float [U, 2] row and column index sums of each segment's pixels.
        counts: [U] pixels per segment.
        shape: (H, W) of the map; each axis uses its own size S.
        side: L, the grid side.

    Returns:
        float64 [U, 2] (row, col): q = ((centroid + 0.5) / S) * L - 0.5.
    """
    centroid = sums / counts[:, None]
    rho = (centroid + 0.5) / np.asarray(shape, dtype=np.float64)
    return rho * side - 0.5


def grid_coordinates(labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroid of every segment in continuous grid coordinates (SPEC 4.2 steps 1-2).

    Args:
        labels: int [H, W] ids; -1 pixels belong to no segment.
        side: L, the grid side.

    Returns:
        (ids [U] ascending ids >= 0, q float64 [U, 2] as (row, col); cell centres are at the
        integers 0..L-1).
    """
    labels = _check_labels(labels)
    seg = _segments(labels.reshape(-1))
    return seg.ids, _grid_q(_coordinate_sums(seg, labels.shape), seg.counts, labels.shape, side)


def assign_cells(q: np.ndarray, side: int) -> np.ndarray:
    """Grid cell of each segment: home cells, greedy nearest free cell on collision (SPEC 4.2).

    Args:
        q: float [U, 2] continuous grid coordinates (row, col), segments in ascending id order;
            U <= side**2.
        side: L.

    Returns:
        int [U] row-major flat cell index (row * L + col), all distinct.
    """
    if len(q) > side * side:
        raise ValueError(f"q holds {len(q)} segments but the grid has only {side * side} cells.")
    home = np.clip(np.rint(q), 0, side - 1).astype(np.intp)  # rint: round half to even.
    flat_home = home[:, 0] * side + home[:, 1]
    if flat_home.size == 0 or np.bincount(flat_home).max() == 1:
        return flat_home
    # Any collision: redo every id greedily in ascending id order. Squared distances from each
    # segment's unrounded q to every cell centre; argmin's first minimum is the smallest flat
    # index, the SPEC's tie rule.
    cell = np.arange(side * side)
    dist = (cell // side - q[:, :1]) ** 2 + (cell % side - q[:, 1:]) ** 2
    free = np.ones(side * side, dtype=bool)
    taken = np.empty_like(flat_home)
    for i, h in enumerate(flat_home.tolist()):
        if not free[h]:
            h = int(np.argmin(np.where(free, dist[i], np.inf)))
        free[h] = False
        taken[i] = h
    return taken


def relabel_random(
    num_segments: int, num_classes: int, rng: np.random.Generator, shuffle_zero: bool = True
) -> np.ndarray:
    """Random distinct classes for segments in ascending id order (SPEC 2.4 step 4, no LAP).

    Args:
        num_segments: U (<= num_classes).
        num_classes: K.
        rng: the generator; fresh draws per call (per example and epoch).
        shuffle_zero: True keeps the smallest id at class 0 and draws the others from 1..K-1
            (the reference's default; its config text describes the flag inverted, SPEC B7);
            False draws all from 0..K-1.

    Returns:
        int [U] distinct classes.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a np.random.Generator for lap mode 'none'; got {rng!r}.")
    if not shuffle_zero:
        return rng.choice(num_classes, size=num_segments, replace=False)
    if num_segments == 0:
        return np.zeros(0, dtype=np.int64)
    rest = rng.choice(np.arange(1, num_classes), size=num_segments - 1, replace=False)
    return np.concatenate([[0], rest])


def assign(
    labels: np.ndarray,
    *,
    mode: str,
    num_bits: int,
    seed: int = 0,
    num_classes: int | None = None,
    rng: np.random.Generator | None = None,
    shuffle_zero: bool = True,
) -> np.ndarray:
    """Canonicalises an instance map into classes (SPEC 2.4 steps 2-5 and 4.2).

    Merges excess segments (keeping K), then maps every id to a class: by the centroid's cell of
    the palette grid for LAP modes, or randomly for mode "none". Centroids are taken over the
    whole map (padding labelled 0 counts for segment 0, as in the reference; -1 pixels count for
    no segment), with each axis scaled by its own size.

    Args:
        labels: int [H, W] instance ids >= 0; -1 marks padding.
        mode: one of `LAP_MODES`: "similar", "different", "random", "range" or "none".
        num_bits: k; K = 2**k classes unless `num_classes` is given.
        seed: the "random" grid's seed (the run seed).
        num_classes: K when it is not 2**k (RGB: 125 without LAP, 121 with the random LAP).
        rng: `np.random.Generator`, required for mode "none".
        shuffle_zero: mode "none" only, see `relabel_random` (SPEC B7).

    Returns:
        int32 [H, W] classes in [0, K); -1 stays -1.
    """
    labels = _check_labels(labels)
    if mode == "none":
        k = (1 << num_bits) if num_classes is None else num_classes
        grid = None
    else:
        grid = _cached_grid(mode, int(num_bits), int(seed), num_classes)
        k = grid.size
    seg = _segments(labels.reshape(-1))
    target = _merge_target(seg.counts, k)
    kept = np.flatnonzero(np.bincount(target, minlength=target.size))  # ascending id order.
    if grid is None:
        classes = relabel_random(kept.size, k, rng, shuffle_zero)
    else:
        sums, counts = _coordinate_sums(seg, labels.shape), seg.counts
        if kept.size < seg.ids.size:  # merged segments: add up their sums and counts.
            sums = np.stack([np.bincount(target, weights=w) for w in sums.T], axis=1)[kept]
            counts = np.bincount(target, weights=counts)[kept]
        q = _grid_q(sums, counts, labels.shape, grid.shape[0])
        classes = grid.reshape(-1)[assign_cells(q, grid.shape[0])]
    class_of_kept = np.zeros(seg.ids.size, dtype=np.int32)
    class_of_kept[kept] = classes
    return seg.relabel(class_of_kept[target]).reshape(labels.shape)
