"""Tests for bitseg_jax/metrics.py: ARI, Hungarian IoU, batched metrics, best-of-N, GED (SPEC 8)."""

import itertools

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
import sklearn.metrics

from bitseg_jax import metrics

HUNGARIAN_GOLDEN = [
    # SPEC 8.2: (G, P, hiou_e, hiou).
    ([0] * 50 + [1] * 30 + [2] * 20, [3] * 80 + [7] * 20, 0.54167, 0.54167),
    ([0] * 80 + [1] * 20, [3] * 50 + [7] * 30 + [9] * 20, 0.8125, 0.54167),
]


def _random_pair(seed: int, shape, num_gt: int, num_pred: int, blocky: bool):
    """A gt/pred/valid triple; gt has some -1 pixels, labels are sparse, some large."""
    rng = np.random.default_rng(seed)

    def draw(num):
        if blocky:
            low = rng.integers(0, num, size=(-(-shape[0] // 3), -(-shape[1] // 3)))
            return np.kron(low, np.ones((3, 3), np.int64))[: shape[0], : shape[1]]
        return rng.integers(0, num, size=shape)

    gt = draw(num_gt) * 5 + rng.integers(0, 3)
    pred = draw(num_pred) * rng.choice([1, 31, 100_003])  # direct, presence table, np.unique.
    gt[rng.random(shape) < 0.1] = -1
    valid = rng.random(shape) < 0.9
    gt[0, 0] = max(gt[0, 0], 0)  # at least one counted pixel.
    valid[0, 0] = True
    return gt, pred, valid


def _brute_force_hiou(gt, pred, valid):
    """Hungarian IoU by enumerating every assignment of the padded M x M IoU matrix."""
    keep = valid & (gt >= 0)
    g, p = gt[keep], pred[keep]
    gids, pids = np.unique(g), np.unique(p)
    size = max(len(gids), len(pids))
    iou = np.zeros((size, size))
    for a, i in enumerate(gids):
        for b, j in enumerate(pids):
            iou[a, b] = ((g == i) & (p == j)).sum() / ((g == i) | (p == j)).sum()
    best = max(
        iou[np.arange(size), list(perm)].sum() for perm in itertools.permutations(range(size))
    )
    return best / len(gids), best / size


# --- Single pair (SPEC 8.1, 8.2) ----------------------------------------------------------------


@pytest.mark.parametrize("g,p,hiou_e,hiou", HUNGARIAN_GOLDEN)
def test_hungarian_golden(g, p, hiou_e, hiou):
    np.testing.assert_allclose(
        metrics.hungarian_iou(np.array(g), np.array(p)), (hiou_e, hiou), atol=5e-6
    )
    batched = metrics.segmentation_metrics(
        np.reshape(g, (1, 10, 10)), np.reshape(p, (1, 1, 10, 10)), np.ones((1, 10, 10), bool)
    )
    np.testing.assert_allclose(
        [batched["hiou_e"][0, 0], batched["hiou"][0, 0]], (hiou_e, hiou), atol=5e-6
    )


def test_single_segment_is_one_and_reference_b2():
    g, p = np.zeros(100, np.int32), np.full(100, 4, np.int32)
    assert metrics.hungarian_iou(g, p) == (1.0, 1.0)  # B2 fixed.
    np.testing.assert_allclose(metrics.hungarian_iou(g, p, reference_b2=True), (1 / 199, 1 / 199))
    np.testing.assert_allclose(1 / 199, 0.005, atol=5e-5)  # SPEC 8.2's value for n = 100.
    batched = metrics.segmentation_metrics(
        g.reshape(1, 10, 10), p.reshape(1, 1, 10, 10), np.ones((1, 10, 10), bool), reference_b2=True
    )
    np.testing.assert_allclose(batched["hiou_e"], [[1 / 199]])


def test_perfect_relabelled_prediction():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 20, size=(32, 32))
    perm = rng.permutation(1000)[:20] * 3
    pred = perm[gt]
    assert metrics.ari(gt, pred) == 1.0
    assert metrics.hungarian_iou(gt, pred) == (1.0, 1.0)
    out = metrics.segmentation_metrics(gt[None], pred[None, None], np.ones((1, 32, 32), bool))
    np.testing.assert_allclose(
        [out["ari"][0, 0], out["hiou_e"][0, 0], out["hiou"][0, 0]], 1.0, rtol=0, atol=0
    )


def test_trivial_labelings_follow_sklearn():
    ones, singletons = np.zeros(6, int), np.arange(6)
    for g, p in [
        (ones, ones),
        (singletons, singletons * 2),
        (ones, singletons),
        (singletons, ones),
    ]:
        assert metrics.ari(g, p) == sklearn.metrics.adjusted_rand_score(g, p)
    assert metrics.ari([0, 0, 1, 1], [0, 1, 0, 1]) == -0.5


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**31),
    shape=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    num_gt=st.integers(1, 8),
    num_pred=st.integers(1, 8),
    blocky=st.booleans(),
)
def test_ari_matches_sklearn_and_is_relabel_invariant(seed, shape, num_gt, num_pred, blocky):
    gt, pred, valid = _random_pair(seed, shape, num_gt, num_pred, blocky)
    keep = valid & (gt >= 0)
    expected = sklearn.metrics.adjusted_rand_score(gt[keep], pred[keep])
    np.testing.assert_allclose(metrics.ari(gt, pred, valid), expected, rtol=0, atol=1e-12)
    # A permutation of ids (and gt's -1 pixels) changes nothing.
    rng = np.random.default_rng(seed)
    ids = np.unique(pred)
    pred2 = (rng.permutation(len(ids)) * 13 + 5)[np.searchsorted(ids, pred)]
    gt2 = np.where(gt >= 0, rng.permutation(gt.max() + 2)[np.maximum(gt, 0)], -1)
    np.testing.assert_allclose(metrics.ari(gt2, pred2, valid), expected, rtol=0, atol=1e-12)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**31),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    num_gt=st.integers(1, 5),
    num_pred=st.integers(1, 5),
    blocky=st.booleans(),
)
def test_hungarian_matches_brute_force(seed, shape, num_gt, num_pred, blocky):
    gt, pred, valid = _random_pair(seed, shape, num_gt, num_pred, blocky)
    expected = _brute_force_hiou(gt, pred, valid)
    np.testing.assert_allclose(metrics.hungarian_iou(gt, pred, valid), expected, rtol=0, atol=1e-12)


def test_valid_and_minus_one_exclude_pixels():
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 4, (12, 12)), rng.integers(0, 4, (12, 12))
    valid = np.zeros((12, 12), bool)
    valid[:7, :9] = True
    crop = (gt[:7, :9], pred[:7, :9])
    assert metrics.ari(gt, pred, valid) == metrics.ari(*crop)
    assert metrics.hungarian_iou(gt, pred, valid) == metrics.hungarian_iou(*crop)
    gt_pad = np.where(valid, gt, -1)
    assert metrics.ari(gt_pad, pred) == metrics.ari(*crop)
    assert metrics.hungarian_iou(gt_pad, pred) == metrics.hungarian_iou(*crop)


# --- Batched (image x sample) metrics -----------------------------------------------------------


@hypothesis.example(seed=127, num_gt=1, num_pred=1, blocky=False)  # exact 0: float32 gave 1e-5.
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**31),
    num_gt=st.integers(1, 12),
    num_pred=st.integers(1, 12),
    blocky=st.booleans(),
)
def test_segmentation_metrics_equals_per_pair(seed, num_gt, num_pred, blocky):
    n, s, shape = 2, 3, (9, 7)
    pairs = [_random_pair(seed + i, shape, num_gt, num_pred, blocky) for i in range(n * s)]
    gt = np.stack([pairs[i * s][0] for i in range(n)])
    valid = np.stack([pairs[i * s][2] for i in range(n)])
    valid[:, 0, 0] = True
    gt[:, 0, 0] = 0  # every image has a counted pixel.
    pred = np.stack([p[1] for p in pairs]).reshape(n, s, *shape)
    out = metrics.segmentation_metrics(gt, pred, valid)
    for i, j in itertools.product(range(n), range(s)):
        # Same formulas, tables built two ways (host np.unique vs jitted scatter-add).
        np.testing.assert_allclose(
            out["ari"][i, j], metrics.ari(gt[i], pred[i, j], valid[i]), rtol=0, atol=1e-12
        )
        np.testing.assert_allclose(
            [out["hiou_e"][i, j], out["hiou"][i, j]],
            metrics.hungarian_iou(gt[i], pred[i, j], valid[i]),
            rtol=1e-12,
        )


def test_segmentation_metrics_at_full_size_matches_sklearn():
    # 128 x 128 Voronoi maps with up to 64 segments (pair counts ~1e8, products ~1e16).
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:128, :128]

    def voronoi(k):
        centres = rng.uniform(0, 128, (k, 2))
        return (
            (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
        ).argmin(-1)

    gt = np.stack([voronoi(64), voronoi(30)])
    pred = np.stack([[voronoi(64), gt[0] % 7], [voronoi(50), gt[1]]])
    valid = np.zeros(gt.shape, bool)
    valid[:, :128, :85] = True
    out = metrics.segmentation_metrics(gt, pred, valid)
    for i, j in itertools.product(range(2), range(2)):
        m = valid[i]
        expected = sklearn.metrics.adjusted_rand_score(gt[i][m], pred[i, j][m])
        np.testing.assert_allclose(out["ari"][i, j], expected, rtol=0, atol=1e-12)
    assert out["ari"][1, 1] == 1.0


def test_segmentation_metrics_accepts_jax_arrays_and_large_ids():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 6, (2, 8, 8)).astype(np.int32)
    pred = rng.integers(0, 6, (2, 2, 8, 8)).astype(np.int32)
    valid = np.ones((2, 8, 8), bool)
    out = metrics.segmentation_metrics(jax.numpy.asarray(gt), jax.numpy.asarray(pred), valid)
    # Labels far apart (compaction through the presence table and through np.unique).
    for offset in (100, 10**9):
        big = metrics.segmentation_metrics(
            gt.astype(np.int64) * offset, pred.astype(np.int64) + offset, valid
        )
        for name in ("ari", "hiou_e", "hiou"):
            np.testing.assert_allclose(big[name], out[name], rtol=0, atol=1e-12)


def test_segmentation_metrics_chunks_big_batches(monkeypatch):
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 20, (5, 6, 6))
    pred = rng.integers(0, 20, (5, 2, 6, 6))
    valid = np.ones((5, 6, 6), bool)
    whole = metrics.segmentation_metrics(gt, pred, valid)
    monkeypatch.setattr(metrics, "_MAX_TABLE_CELLS", 2 * 32 * 32)  # one image (2 x 32 x 32) a call.
    chunked = metrics.segmentation_metrics(gt, pred, valid)
    for name in ("ari", "hiou_e", "hiou"):
        np.testing.assert_array_equal(chunked[name], whole[name])


def test_segmentation_metrics_bad_input():
    gt = np.zeros((2, 4, 4), np.int32)
    pred = np.zeros((2, 3, 4, 4), np.int32)
    valid = np.ones((2, 4, 4), bool)
    with pytest.raises(ValueError, match="pred"):
        metrics.segmentation_metrics(gt, pred[:, :, :3], valid)
    with pytest.raises(ValueError, match="gt"):
        metrics.segmentation_metrics(gt[0], pred, valid)
    with pytest.raises(ValueError, match="valid"):
        metrics.segmentation_metrics(gt, pred, valid[:1])
    with pytest.raises(TypeError, match="valid"):
        metrics.segmentation_metrics(gt, pred, valid.astype(np.int32))
    with pytest.raises(TypeError, match="pred"):
        metrics.segmentation_metrics(gt, pred.astype(np.float32), valid)
    with pytest.raises(TypeError, match="gt"):
        metrics.ari(gt.astype(float), gt)
    empty = valid.copy()
    empty[1] = False
    with pytest.raises(ValueError, match=r"image\(s\) \[1\]"):
        metrics.segmentation_metrics(gt, pred, empty)
    with pytest.raises(ValueError, match="No pixel counts"):
        metrics.hungarian_iou(np.full(4, -1), np.zeros(4, int))
    with pytest.raises(ValueError, match="pred holds negative"):
        metrics.segmentation_metrics(gt, pred - 1, valid)
    with pytest.raises(ValueError, match="< -1"):
        metrics.ari(gt - 2, gt)
    many = np.arange(40 * 40).reshape(1, 40, 40)
    with pytest.raises(ValueError, match=r"pred has a map with 1600 distinct labels.*MAX_SEGMENTS"):
        metrics.segmentation_metrics(many * 0, many[:, None], np.ones((1, 40, 40), bool))
    with pytest.raises(ValueError, match=r"gt has a map with 1600"):
        metrics.segmentation_metrics(many, many[:, None] * 0, np.ones((1, 40, 40), bool))


def test_best_of_n_and_summarize():
    values = np.array([[0.1, 0.5], [0.3, 0.2]])
    assert metrics.best_of_n(values) == pytest.approx(0.4)
    summary = metrics.summarize({"ari": values, "hiou_e": values[::-1], "hiou": values * 0})
    assert summary == pytest.approx(
        {"ari": 0.275, "hiou_e": 0.275, "hiou": 0.0, "max_ari": 0.4, "max_hiou_e": 0.4}
    )
    with pytest.raises(ValueError, match=r"\[N, S\]"):
        metrics.best_of_n(values[0])


# --- GED ----------------------------------------------------------------------------------------


def _maps(seed, num, shape=(10, 10), num_ids=4):
    rng = np.random.default_rng(seed)
    low = rng.integers(0, num_ids, size=(num, shape[0] // 2, shape[1] // 2))
    return np.kron(low, np.ones((1, 2, 2), np.int64))


@pytest.mark.parametrize("distance", ["hiou_e", "ari"])
def test_ged_identical_sets_is_zero_and_symmetric(distance):
    maps = _maps(0, 3)
    valid = np.ones((10, 10), bool)
    np.testing.assert_allclose(metrics.ged(maps, maps, valid, distance=distance), 0.0, atol=1e-12)
    other = _maps(1, 2)
    d2 = metrics.ged(maps, other, valid, distance=distance)
    assert d2 > 0
    np.testing.assert_allclose(metrics.ged(other, maps, valid, distance=distance), d2, atol=1e-12)


def test_ged_one_by_one_is_twice_the_distance():
    x, y = _maps(3, 2)
    valid = np.ones((10, 10), bool)
    forward, backward = metrics.hungarian_iou(x, y)[0], metrics.hungarian_iou(y, x)[0]
    np.testing.assert_allclose(
        metrics.ged(x[None], y[None], valid), 2 * (1 - (forward + backward) / 2), atol=1e-12
    )
    np.testing.assert_allclose(
        metrics.ged(x[None], y[None], valid, distance="ari"),
        2 * (1 - metrics.ari(x, y)),
        atol=1e-12,
    )


def test_ged_drops_absent_annotators_and_masks_pixels():
    samples, annotations = _maps(4, 2), _maps(5, 2)
    valid = np.ones((10, 10), bool)
    valid[:, 8:] = False
    absent = np.full((1, 10, 10), -1)
    padded = np.where(valid, annotations, -1)  # -1 outside the valid region changes nothing.
    d2 = metrics.ged(samples, annotations, valid)
    np.testing.assert_allclose(
        metrics.ged(samples, np.concatenate([padded, absent]), valid), d2, atol=1e-12
    )
    with pytest.raises(ValueError, match="annotations"):
        metrics.ged(samples, absent, valid)
    with pytest.raises(KeyError, match="hiou_e"):
        metrics.ged(samples, annotations, valid, distance="iou")
    with pytest.raises(ValueError, match="samples"):
        metrics.ged(samples - 5, annotations, valid)
