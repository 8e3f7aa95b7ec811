"""Tests of benchmarks/classical_baselines.py on small synthetic images (no real data)."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import classical_baselines as cb
from bitseg_jax import input_pipeline, metrics

_COLORS = np.array([[230, 30, 30], [30, 200, 40], [40, 40, 220], [240, 240, 60]], np.uint8)


def _quadrants(height=48, width=64) -> np.ndarray:
    gt = np.zeros((height, width), np.int32)
    gt[: height // 2, width // 2 :] = 1
    gt[height // 2 :, : width // 2] = 2
    gt[height // 2 :, width // 2 :] = 3
    return gt


def _halves(height=48, width=64) -> np.ndarray:
    gt = np.zeros((height, width), np.int32)
    gt[:, width // 2 :] = 1
    return gt


@pytest.mark.parametrize(
    "method, params, make_gt",
    [
        ("felzenszwalb", {"scale": 10, "min_size": 100}, _quadrants),
        ("quickshift", {"kernel_size": 3, "max_dist": 10}, _quadrants),
        ("watershed", {"markers": 4}, _quadrants),
        # SLIC's Gaussian pre-smoothing moves a quadrant corner by a pixel; halves are exact.
        ("slic", {"n_segments": 2, "compactness": 1.0}, _halves),
    ],
)
def test_flat_colour_regions_are_segmented_perfectly(method, params, make_gt):
    gt = make_gt()
    pred = cb.segment(method, _COLORS[gt], params)
    assert pred.dtype == np.int32 and pred.shape == gt.shape
    assert metrics.ari(gt, pred) == 1.0


def test_otsu_components_separates_bright_blobs_with_background_zero():
    gt = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    for k, (cy, cx) in enumerate([(8, 8), (8, 30), (28, 18)], start=1):
        gt[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = k
    gt[36:38, 2:3] = 4  # a 2-pixel speck: dropped by min_size=4, kept by min_size=1.
    image = np.where(gt[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, -1)
    for polarity in ("bright", "minority"):
        pred = cb.otsu_components(image, polarity=polarity, min_size=1)
        assert metrics.ari(gt, pred) == 1.0
        np.testing.assert_array_equal(pred == 0, gt == 0)  # background is segment 0.
    pred = cb.otsu_components(image, polarity="bright", min_size=4)
    np.testing.assert_array_equal(pred == 0, (gt == 0) | (gt == 4))
    # Dark nuclei on a bright background (brightfield): "minority" keeps the background at 0,
    # "bright" makes it the one component and puts the nuclei at 0.
    dark = 255 - image
    pred = cb.otsu_components(dark, polarity="minority", min_size=1)
    assert metrics.ari(gt, pred) == 1.0
    np.testing.assert_array_equal(pred == 0, gt == 0)
    pred = cb.otsu_components(dark, polarity="bright", min_size=1)
    np.testing.assert_array_equal(pred == 0, gt > 0)
    flat = np.full((8, 8, 3), 7, np.uint8)
    np.testing.assert_array_equal(cb.otsu_components(flat, polarity="bright", min_size=1), 0)


def test_bad_names_and_images_raise():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(KeyError, match="Unknown method 'sam'"):
        cb.segment("sam", image, {})
    with pytest.raises(KeyError, match="Unknown Otsu polarity 'dark'"):
        cb.segment("otsu_components", image, {"polarity": "dark", "min_size": 1})
    with pytest.raises(ValueError, match="uint8"):
        cb.segment("single_segment", image.astype(np.float32), {})


def test_every_grid_names_known_methods_and_valid_parameters():
    image = _COLORS[_quadrants(16, 16)]
    for dataset, grids in cb.GRIDS.items():
        assert 1 <= max(len(g) for g in grids.values()) <= 12, dataset
        for method, grid in grids.items():
            for params in grid:
                assert cb.segment(method, image, params).shape == (16, 16)


def test_segment_split_pastes_on_valid_region_and_merges_excess():
    rng = np.random.default_rng(0)
    s = 24
    images = np.zeros((2, s, s, 3), np.uint8)
    valid = np.zeros((2, s, s), bool)
    valid[0, :20, :24] = True
    valid[1, :24, :12] = True
    for i in range(2):
        images[i][valid[i]] = rng.integers(0, 256, (valid[i].sum(), 3))
    split = cb.Split("toy", images, valid, np.zeros((2, 1, s, s), np.int32), ("a", "b"))
    assert split.content(0).shape == (20, 24, 3) and split.content(1).shape == (24, 12, 3)
    grid = ({"scale": 1, "min_size": 1}, {"scale": 1, "min_size": 4})
    pred = cb.segment_split(split, "felzenszwalb", grid, max_segments=5)
    assert pred.shape == (2, 2, s, s)
    for i in range(2):
        assert (pred[i][:, ~valid[i]] == 0).all()
        for g in range(2):
            raw = cb.felzenszwalb(split.content(i), **grid[g])
            assert len(np.unique(raw)) > 5  # noise: many segments before the merge.
            assert len(np.unique(pred[i, g][valid[i]])) == 5


def _random_maps(rng, shape, k):
    return rng.integers(0, k, shape).astype(np.int32)


def test_score_predictions_matches_pairwise_metrics():
    rng = np.random.default_rng(1)
    n, g, a, s = 3, 2, 3, 16
    valid = np.ones((n, s, s), bool)
    valid[1, :, 10:] = False
    annotations = _random_maps(rng, (n, a, s, s), 4)
    annotations[:, :, :, :8] = annotations[:, :1, :, :8]  # annotators agree on the left half.
    annotations = np.where(valid[:, None], annotations, -1)
    annotations[2, 1] = -1  # absent annotator.
    pred = _random_maps(rng, (n, g, s, s), 3)
    pred[:, 0, :, :8] = annotations[:, 0, :, :8] + 5  # sample 0 matches the left half.
    scores = cb.score_predictions(pred, annotations, valid, chunk=2)
    for i in range(n):
        present = [j for j in range(a) if (annotations[i, j] >= 0).any()]
        for k in range(g):
            aris = [metrics.ari(annotations[i, j], pred[i, k], valid[i]) for j in present]
            ious = [
                metrics.hungarian_iou(annotations[i, j], pred[i, k], valid[i])[0] for j in present
            ]
            np.testing.assert_allclose(scores["ari_vs_all"][i, k], np.mean(aris), atol=1e-12)
            np.testing.assert_allclose(scores["best_ari_vs_all"][i, k], np.max(aris), atol=1e-12)
            np.testing.assert_allclose(scores["hiou_e_vs_all"][i, k], np.mean(ious), atol=1e-12)
            np.testing.assert_allclose(scores["best_hiou_e_vs_all"][i, k], np.max(ious), atol=1e-12)
            np.testing.assert_allclose(scores["ari"][i, k], aris[0], atol=1e-12)
            np.testing.assert_allclose(scores["hiou_e"][i, k], ious[0], atol=1e-12)
    with pytest.raises(ValueError, match="does not match"):
        cb.score_predictions(pred[:2], annotations, valid)
    annotations[0, 0] = -1
    with pytest.raises(ValueError, match="annotator 0"):
        cb.score_predictions(pred, annotations, valid)


def test_select_takes_the_best_mean_and_the_first_of_ties():
    scores = {"ari_vs_all": np.array([[0.1, 0.9, 0.3], [0.1, 0.2, 0.6]])}
    index, means = cb.select(scores)
    assert index == 1
    np.testing.assert_allclose(means, [0.1, 0.55, 0.45], atol=1e-12)
    assert cb.select({"ari_vs_all": np.array([[0.2, 0.5, 0.5]])})[0] == 1


def test_tuning_picks_the_grid_point_that_recovers_noisy_quadrants():
    rng = np.random.default_rng(2)
    gt = _quadrants(32, 32)
    n = 3
    images = np.stack(
        [
            np.clip(_COLORS[rng.permutation(4)][gt] + rng.normal(0, 12, (32, 32, 3)), 0, 255)
            for _ in range(n)
        ]
    ).astype(np.uint8)
    valid = np.ones((n, 32, 32), bool)
    annotations = np.broadcast_to(gt, (n, 1, 32, 32)).astype(np.int32)
    split = cb.Split("quadrants", images, valid, annotations, ("a", "b", "c"))
    # Too fine, right, too coarse (everything one segment): the middle one must win.
    grid = ({"markers": 64}, {"markers": 4}, {"markers": 1})
    pred = cb.segment_split(split, "watershed", grid)
    index, means = cb.select(cb.score_predictions(pred, annotations, valid))
    expected = [np.mean([metrics.ari(gt, pred[i, g]) for i in range(n)]) for g in range(3)]
    np.testing.assert_allclose(means, expected, atol=1e-12)
    assert index == 1 and means[1] > 0.9 and max(means[0], means[2]) < 0.5


def test_annotator_agreement_pairs_leave_one_out_and_ged():
    s = 12
    base = _quadrants(s, s)
    other = _halves(s, s)
    valid = np.ones((2, s, s), bool)
    annotations = np.full((2, 3, s, s), -1, np.int32)
    annotations[0] = [base, base + 7, other]  # two agree (ids differ), one does not.
    annotations[1, 0] = base  # a single annotator: no agreement to measure.
    out = cb.annotator_agreement(annotations, valid)
    maps = annotations[0]
    ari = np.array([[metrics.ari(g, p) for p in maps] for g in maps])
    iou = np.array([[metrics.hungarian_iou(g, p)[0] for p in maps] for g in maps])
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(out["pair_ari"][0], ari[off].mean(), atol=1e-12)
    np.testing.assert_allclose(out["pair_hiou_e"][0], iou[off].mean(), atol=1e-12)
    best = [max(ari[g, p] for g in range(3) if g != p) for p in range(3)]
    np.testing.assert_allclose(out["loo_best_ari"][0], np.mean(best), atol=1e-12)
    assert best[:2] == [1.0, 1.0]
    ged = [metrics.ged(maps[p : p + 1], np.delete(maps, p, 0), valid[0]) for p in range(3)]
    np.testing.assert_allclose(out["loo_ged_hiou_e"][0], np.mean(ged), atol=1e-12)
    assert all(np.isnan(v[1]) for v in out.values())


def test_split_from_batches_recovers_the_exact_uint8_content():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (20, 32, 3), dtype=np.uint8)
    segs = rng.integers(0, 3, (2, 20, 32)).astype(np.uint16)
    ds = tf.data.Dataset.from_tensors({"image": image, "segmentations": segs, "id": "x"})
    config = cb.eval_config("", "", image_size=32)  # longest side 32: no resize.
    batches = input_pipeline.eval_dataset(
        input_pipeline.source_from_dataset(ds), config, batch_size=2
    ).as_numpy_iterator()
    split = cb.split_from_batches("toy", batches)
    assert len(split) == 1 and split.ids == ("x",)  # the padding row is dropped.
    np.testing.assert_array_equal(split.content(0), image)
    np.testing.assert_array_equal(split.annotations[0, :, :20, :], segs)
    assert (split.annotations[0, :, 20:] == -1).all() and split.valid[0].sum() == 20 * 32
