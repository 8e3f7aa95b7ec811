"""Tests for bitseg_jax/palette.py: LAP grids, centroid assignment, excess merging (SPEC 2.4, 4)."""

import math

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from bitseg_jax import palette

# SPEC 4.1, k = 6.
SIMILAR_K6 = [
    [0, 1, 3, 2, 6, 7, 5, 4],
    [8, 9, 11, 10, 14, 15, 13, 12],
    [24, 25, 27, 26, 30, 31, 29, 28],
    [16, 17, 19, 18, 22, 23, 21, 20],
    [48, 49, 51, 50, 54, 55, 53, 52],
    [56, 57, 59, 58, 62, 63, 61, 60],
    [40, 41, 43, 42, 46, 47, 45, 44],
    [32, 33, 35, 34, 38, 39, 37, 36],
]
DIFFERENT_K6 = [
    [0, 63, 1, 62, 3, 60, 2, 61],
    [56, 7, 58, 5, 59, 4, 57, 6],
    [15, 48, 11, 52, 9, 54, 8, 55],
    [50, 13, 51, 12, 49, 14, 53, 10],
    [29, 34, 21, 42, 17, 46, 16, 47],
    [41, 22, 40, 23, 44, 19, 45, 18],
    [20, 43, 28, 35, 24, 39, 25, 38],
    [32, 31, 33, 30, 37, 26, 36, 27],
]
DIFFERENT_K6_START = [0, 63, 1, 62, 3, 60, 2, 61, 6, 57, 4, 59, 5, 58, 7, 56, 15, 48]

# Every (mode, num_bits, num_classes) the palette supports.
SUPPORTED = (
    [(mode, k, None) for mode in ("similar", "different") for k in (2, 4, 6, 8, 10)]
    + [(mode, k, None) for mode in ("random", "range") for k in (2, 4, 6, 8)]
    + [("random", 6, 121), ("range", 6, 9)]
    + [("none", k, None) for k in (1, 3, 5, 6)]
    + [("none", 6, 125)]
)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = np.bitwise_xor(a, b)
    return sum((x >> i) & 1 for i in range(16))


def _random_map(rng: np.random.Generator, shape, num_ids: int, blocky: bool) -> np.ndarray:
    """Random instance map: per-pixel noise or blocks (spread-out centroids), some -1 padding."""
    h, w = shape
    if blocky:
        low = rng.integers(0, num_ids, size=(-(-h // 4), -(-w // 4)))
        labels = np.kron(low, np.ones((4, 4), dtype=np.int64))[:h, :w]
    else:
        labels = rng.integers(0, num_ids, size=shape)
    if rng.random() < 0.5:  # bottom/right padding as -1 (data.mask_padding).
        labels[rng.integers(1, h + 1) :] = -1
        labels[:, rng.integers(1, w + 1) :] = -1
    return labels


# --- Grids (SPEC 4.1) ---------------------------------------------------------------------------


def test_similar_grid_k6_golden():
    np.testing.assert_array_equal(palette.lap_grid("similar", 6), SIMILAR_K6)


def test_different_grid_k6_golden_and_sequence_start():
    grid = palette.lap_grid("different", 6)
    np.testing.assert_array_equal(grid, DIFFERENT_K6)
    unsnaked = grid.copy()
    unsnaked[1::2] = unsnaked[1::2, ::-1]
    np.testing.assert_array_equal(
        unsnaked.reshape(-1)[: len(DIFFERENT_K6_START)], DIFFERENT_K6_START
    )
    # SPEC 4.1: mean Hamming distance 5.57 horizontally, 3.86 vertically (2 decimals).
    np.testing.assert_allclose(_hamming(grid[:, 1:], grid[:, :-1]).mean(), 5.57, atol=0.005)
    np.testing.assert_allclose(_hamming(grid[1:], grid[:-1]).mean(), 3.86, atol=0.005)


@pytest.mark.parametrize("num_bits", [2, 4, 6, 8, 10])
def test_similar_neighbours_differ_in_one_bit(num_bits):
    grid = palette.lap_grid("similar", num_bits)
    assert (_hamming(grid[:, 1:], grid[:, :-1]) == 1).all()
    assert (_hamming(grid[1:], grid[:-1]) == 1).all()


@pytest.mark.parametrize("mode,num_bits,num_classes", [s for s in SUPPORTED if s[0] != "none"])
def test_grid_is_square_permutation(mode, num_bits, num_classes):
    grid = palette.lap_grid(mode, num_bits, seed=3, num_classes=num_classes)
    k = (1 << num_bits) if num_classes is None else num_classes
    side = math.isqrt(k)
    assert grid.shape == (side, side) and grid.dtype == np.int32
    np.testing.assert_array_equal(np.sort(grid.reshape(-1)), np.arange(k))


def test_random_and_range_orders():
    expected = np.random.default_rng(7).permutation(64).reshape(8, 8)
    np.testing.assert_array_equal(palette.lap_grid("random", 6, seed=7), expected)
    assert not np.array_equal(palette.lap_grid("random", 6, seed=8), expected)
    np.testing.assert_array_equal(palette.lap_grid("range", 4), np.arange(16).reshape(4, 4))
    # The returned grid is a copy: changing it does not change the cached palette.
    grid = palette.lap_grid("range", 4)
    grid[0, 0] = 99
    assert palette.lap_grid("range", 4)[0, 0] == 0


@pytest.mark.parametrize("mode", ["similar", "different"])
@pytest.mark.parametrize("num_bits", [3, 5, 12])
def test_bit_modes_reject_unsupported_num_bits(mode, num_bits):
    with pytest.raises(ValueError, match=rf"num_bits.*{num_bits}") as err:
        palette.lap_grid(mode, num_bits)
    assert mode in str(err.value)


def test_square_modes_reject_non_square_k():
    with pytest.raises(ValueError, match=r"random.*K=8"):
        palette.lap_grid("random", 3)
    with pytest.raises(ValueError, match=r"range.*K=125"):
        palette.lap_grid("range", 6, num_classes=125)
    with pytest.raises(ValueError, match="num_classes"):
        palette.lap_grid("similar", 6, num_classes=121)
    with pytest.raises(KeyError, match="gray"):
        palette.lap_grid("gray", 6)
    with pytest.raises(KeyError, match="none"):
        palette.lap_grid("none", 6)


# --- Assignment (SPEC 4.2) ----------------------------------------------------------------------


def _golden_map() -> np.ndarray:
    labels = np.zeros((128, 128), dtype=np.int32)
    labels[6:12, 6:12] = 1
    labels[0:4, 0:4] = 2
    labels[12:16, 0:2] = 3
    labels[100:128, 100:128] = 4
    labels[100:128, 64:100] = 5
    return labels


def test_golden_mapping_example():
    labels = _golden_map()
    ids, q = palette.grid_coordinates(labels, 8)
    np.testing.assert_array_equal(ids, np.arange(6))
    expected_q = [
        (3.129, 3.268),
        (0.0625, 0.0625),
        (-0.375, -0.375),
        (0.375, -0.4375),
        (6.625, 6.625),
        (6.625, 4.625),
    ]
    np.testing.assert_allclose(q, expected_q, atol=5e-4)  # SPEC prints 3 decimals.
    out = palette.assign(labels, mode="similar", num_bits=6)
    assert out.dtype == np.int32 and out.shape == labels.shape
    mapping = {int(i): np.unique(out[labels == i]).tolist() for i in ids}
    assert mapping == {0: [18], 1: [0], 2: [1], 3: [8], 4: [36], 5: [39]}


@pytest.mark.parametrize("cols,grid_col,expected_col", [((15, 17), 0.5, 0), ((31, 33), 1.5, 2)])
def test_round_half_to_even_ties(cols, grid_col, expected_col):
    # One segment (the rest is -1 padding) whose centroid column is 15.5 (grid 0.5) or 31.5
    # (grid 1.5) and row 1.5 (grid -0.375 -> row 0).
    labels = np.full((128, 128), -1, dtype=np.int32)
    labels[0:4, cols[0] : cols[1]] = 5
    _, q = palette.grid_coordinates(labels, 8)
    np.testing.assert_allclose(q[0], [-0.375, grid_col], rtol=0, atol=0)
    out = palette.assign(labels, mode="range", num_bits=6)
    assert np.unique(out[labels == 5]).tolist() == [expected_col]
    assert (out[labels == -1] == -1).all()


def test_assign_cells_greedy_tie_rule():
    # Two ids with the same home cell (1, 1): the first (ascending id) keeps it, the second is
    # equally far from (1, 0), (0, 1), (1, 2), (2, 1) and takes the smallest flat index (0, 1).
    q = np.array([[1.0, 1.0], [1.0, 1.0], [1.2, 1.0]])
    np.testing.assert_array_equal(palette.assign_cells(q, 4), [5, 1, 9])
    # Without collisions every id keeps its home cell.
    np.testing.assert_array_equal(
        palette.assign_cells(np.array([[0.4, 2.6], [3.0, 0.0]]), 4), [3, 12]
    )


def test_assign_cells_rejects_more_segments_than_cells():
    with pytest.raises(ValueError, match="4 cells"):
        palette.assign_cells(np.zeros((5, 2)), 2)


def test_centroids_use_each_axis_size():
    # H != W: a 64 x 128 map; rows scale by 64, columns by 128.
    labels = np.zeros((64, 128), dtype=np.int32)
    labels[0:8, 0:16] = 1
    _, q = palette.grid_coordinates(labels, 8)
    np.testing.assert_allclose(q[1], [(3.5 + 0.5) / 64 * 8 - 0.5, (7.5 + 0.5) / 128 * 8 - 0.5])
    rows, cols = np.nonzero(labels == 0)
    np.testing.assert_allclose(
        q[0], [(rows.mean() + 0.5) / 64 * 8 - 0.5, (cols.mean() + 0.5) / 128 * 8 - 0.5]
    )


@pytest.mark.parametrize("which", SUPPORTED, ids=str)
@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**31),
    num_ids=st.integers(1, 80),
    blocky=st.booleans(),
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
)
def test_assign_is_injective_function_of_merged_segments(which, seed, num_ids, blocky, shape):
    mode, num_bits, num_classes = which
    rng = np.random.default_rng(seed)
    labels = _random_map(rng, shape, num_ids, blocky) * 3 + 2  # sparse ids; -1 stays -1.
    out = palette.assign(
        labels,
        mode=mode,
        num_bits=num_bits,
        seed=seed,
        num_classes=num_classes,
        rng=np.random.default_rng(seed),
    )
    k = (1 << num_bits) if num_classes is None else num_classes
    merged = palette.merge_excess(labels, k)
    np.testing.assert_array_equal(out == -1, labels == -1)
    assert out.dtype == np.int32 and out.shape == labels.shape
    assert ((out >= -1) & (out < k)).all()
    pairs = np.unique(np.stack([merged.reshape(-1), out.reshape(-1)]), axis=1)
    # A function of the (merged) segment, and distinct segments get distinct classes.
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
    if mode != "none":
        # Merging first changes nothing; an order-preserving change of ids changes nothing.
        np.testing.assert_array_equal(
            palette.assign(
                merged, mode=mode, num_bits=num_bits, seed=seed, num_classes=num_classes
            ),
            out,
        )
        big = np.where(labels >= 0, labels.astype(np.int64) * 1_000_003 + 7, -1)
        np.testing.assert_array_equal(
            palette.assign(big, mode=mode, num_bits=num_bits, seed=seed, num_classes=num_classes),
            out,
        )


def test_assign_is_location_aware():
    # Two segments far apart in a 2-segment map land in the cells under their centroids.
    labels = np.zeros((32, 32), dtype=np.int32)
    labels[:, 16:] = 1
    out = palette.assign(labels, mode="similar", num_bits=6)
    grid = palette.lap_grid("similar", 6)
    assert out[0, 0] == grid[4, 2] and out[0, 31] == grid[4, 6]  # centroids (15.5, 7.5 | 23.5).


# --- No LAP (SPEC 2.4 step 4, B7) ---------------------------------------------------------------


def test_no_lap_shuffle_zero():
    labels = np.repeat(np.arange(3, 33), 4).reshape(8, 15)
    out = palette.assign(labels, mode="none", num_bits=6, rng=np.random.default_rng(0))
    assert (out[labels == 3] == 0).all()  # the smallest id keeps class 0.
    classes = [np.unique(out[labels == i]).item() for i in range(3, 33)]
    assert len(set(classes)) == 30 and min(classes[1:]) >= 1 and max(classes) < 64
    again = palette.assign(labels, mode="none", num_bits=6, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)  # deterministic for the generator's state.
    # shuffle_zero=False draws the smallest id's class too: over several draws it is not always 0.
    rng = np.random.default_rng(0)
    firsts = [
        palette.assign(labels, mode="none", num_bits=6, rng=rng, shuffle_zero=False)[0, 0]
        for _ in range(5)
    ]
    assert any(f != 0 for f in firsts)


def test_no_lap_needs_generator():
    with pytest.raises(TypeError, match="rng"):
        palette.assign(np.zeros((4, 4), np.int32), mode="none", num_bits=6)


# --- Excess merging (SPEC 2.4 step 2) -----------------------------------------------------------


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**31),
    num_ids=st.integers(1, 40),
    max_segments=st.integers(1, 20),
    blocky=st.booleans(),
)
def test_merge_excess_keeps_largest(seed, num_ids, max_segments, blocky):
    rng = np.random.default_rng(seed)
    labels = _random_map(rng, (16, 12), num_ids, blocky).astype(np.int16)
    merged = palette.merge_excess(labels, max_segments)
    assert merged.dtype == labels.dtype and merged.shape == labels.shape
    np.testing.assert_array_equal(merged == -1, labels == -1)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    assert len(np.unique(merged[merged >= 0])) == min(len(ids), max_segments)
    # Kept: the max_segments largest, equal counts broken by the smaller id (stable sort).
    ranked = ids[np.lexsort((ids, -counts))]
    kept, excess = ranked[:max_segments], ranked[max_segments:]
    for i in kept:
        np.testing.assert_array_equal(merged[labels == i], i)
    for i in excess:
        np.testing.assert_array_equal(merged[labels == i], ranked[0])


def test_merge_excess_example_and_errors():
    labels = np.array([[0, 0, 0, 1, 1, 2], [3, 3, 2, -1, -1, 4]])
    np.testing.assert_array_equal(
        palette.merge_excess(labels, 3), [[0, 0, 0, 1, 1, 2], [0, 0, 2, -1, -1, 0]]
    )
    with pytest.raises(TypeError, match="labels"):
        palette.merge_excess(labels.astype(np.float32), 3)
    with pytest.raises(ValueError, match=r"labels.*\[H, W\]"):
        palette.assign(labels[None], mode="similar", num_bits=6)
    with pytest.raises(ValueError, match="< -1"):
        palette.assign(labels - 2, mode="similar", num_bits=6)
    with pytest.raises(ValueError, match="max_segments"):
        palette.merge_excess(labels, 0)
