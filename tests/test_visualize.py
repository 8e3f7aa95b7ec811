"""Tests for bitseg_jax/visualize.py: palette, overlays, uncertainty maps, resizing, grids."""

import numpy as np
import pytest

from bitseg_jax import visualize


def test_palette_is_distinct_for_64_ids():
    # 64 = the paper's 2**6 classes: every pair of their colours must be visibly different.
    colours = visualize.PALETTE[:64].astype(np.float32)
    dist = np.sqrt(((colours[:, None] - colours[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    assert visualize.PALETTE.shape == (visualize.PALETTE_SIZE, 3)
    assert visualize.PALETTE.dtype == np.uint8
    assert dist.min() > 20.0
    assert len({tuple(c) for c in visualize.PALETTE}) == visualize.PALETTE_SIZE


def test_colorize_padding_black_and_ids_wrap():
    labels = np.array([[-1, 0, 1], [2, 256, 257]], np.int32)
    out = visualize.colorize(labels)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], visualize.PALETTE[0])
    np.testing.assert_array_equal(out[1, 1], out[0, 1])  # 256 wraps to 0.
    np.testing.assert_array_equal(out[1, 2], out[0, 2])


def test_boundaries_marks_both_sides_of_an_edge_once():
    labels = np.zeros((4, 4), np.int32)
    labels[:, 2:] = 1
    edge = visualize.boundaries(labels)
    expected = np.zeros((4, 4), bool)
    expected[:, 1] = True  # pixel left of the edge differs from its right neighbour.
    np.testing.assert_array_equal(edge, expected)


def test_overlay_blends_keeps_padding_and_draws_edges():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    labels = np.zeros((6, 6), np.int32)
    labels[:, 3:] = 5
    labels[5, :] = -1
    out = visualize.overlay(image, labels, alpha=0.5)
    np.testing.assert_array_equal(out[5], image[5])  # padding untouched.
    np.testing.assert_array_equal(out[0, 2], [255, 255, 255])  # boundary drawn white.
    expected = np.round(0.5 * image[0, 0].astype(np.float32) + 0.5 * visualize.PALETTE[0])
    np.testing.assert_allclose(out[0, 0], expected, atol=1)
    solid = visualize.overlay(image, labels, alpha=1.0)
    np.testing.assert_array_equal(solid[1, 4], visualize.PALETTE[5])


def test_uncertainty_map_ordered_and_nan_black():
    values = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, np.nan]], np.float32)
    out = visualize.uncertainty_map(values, vmax=1.0).astype(np.int32)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 4])
    np.testing.assert_array_equal(out[1, 1], [252, 255, 164])
    np.testing.assert_array_equal(out[1, 2], [0, 0, 0])
    brightness = out.sum(-1).ravel()[:5]
    assert np.all(np.diff(brightness) > 0)
    # Values above vmax saturate instead of wrapping.
    np.testing.assert_array_equal(
        visualize.uncertainty_map(np.full((1, 1), 7.0), vmax=1.0)[0, 0], [252, 255, 164]
    )


def test_denormalize_inverts_imagenet_normalisation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    normalised = (image / 255.0 - mean) / std
    np.testing.assert_array_equal(visualize.denormalize(normalised), image)


def test_resize_content_crops_then_resizes_onto_a_canvas():
    maps = np.arange(2 * 16).reshape(2, 4, 4)  # content: the top-left 3 x 2 of each map.
    out = visualize.resize_content(maps, (3, 2), (5, 3), canvas=(6, 6))
    # Row r reads floor((r + 0.5) * 3 / 5), column c floor((c + 0.5) * 2 / 3).
    expected = np.zeros((2, 6, 6), maps.dtype)
    expected[:, :5, :3] = maps[:, [0, 0, 1, 2, 2]][:, :, [0, 1, 1]]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        visualize.resize_content(maps, (3, 2), (5, 3)), expected[:, :5, :3]
    )
    assert visualize.content_shape(np.pad(np.ones((3, 2), bool), ((0, 1), (0, 2)))) == (3, 2)


def test_resize_nearest_up_and_down():
    labels = np.array([[0, 1], [2, 3]], np.int32)
    up = visualize.resize_nearest(labels, (4, 6))
    np.testing.assert_array_equal(up[:2, :3], 0)
    np.testing.assert_array_equal(up[2:, 3:], 3)
    np.testing.assert_array_equal(visualize.resize_nearest(up, (2, 2)), labels)
    assert visualize.resize_nearest(np.zeros((3, 5, 2)), (7, 1)).shape == (7, 1, 2)


def test_grid_places_tiles_with_separators():
    a = np.full((2, 3, 3), 10, np.uint8)
    b = np.full((4, 2, 3), 20, np.uint8)
    out = visualize.grid([[a, b], [b]], pad=1, fill=255)
    assert out.shape == (2 * (4 + 1) + 1, 2 * (3 + 1) + 1, 3)
    np.testing.assert_array_equal(out[1:3, 1:4], 10)
    np.testing.assert_array_equal(out[1:5, 5:7], 20)
    np.testing.assert_array_equal(out[0], 255)


def test_sample_row_tiles():
    image = np.zeros((4, 4, 3), np.uint8)
    row = visualize.sample_row(
        image, np.zeros((4, 4), np.int32), np.zeros((3, 4, 4), np.int32), np.zeros((4, 4))
    )
    assert len(row) == 6 and all(t.shape == (4, 4, 3) for t in row)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="labels"):
        visualize.colorize(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="image"):
        visualize.overlay(np.zeros((3, 3, 3), np.uint8), np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="alpha"):
        visualize.overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.int32), alpha=2)
    with pytest.raises(ValueError, match="tiles"):
        visualize.grid([[]])
    with pytest.raises(ValueError, match="values"):
        visualize.uncertainty_map(np.zeros((2, 2, 2)))


def test_imagenet_statistics_match_the_input_pipeline():
    # visualize stays free of TensorFlow, so it keeps its own copy of the statistics.
    from bitseg_jax import input_pipeline

    np.testing.assert_array_equal(
        visualize._IMAGENET_MEAN, np.float32(input_pipeline.IMAGENET_MEAN)
    )
    np.testing.assert_array_equal(visualize._IMAGENET_STD, np.float32(input_pipeline.IMAGENET_STD))
