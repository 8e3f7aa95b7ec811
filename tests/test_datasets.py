"""Tests for bitseg_jax/datasets: every builder on fixtures made here, the real data when present.

Each builder is prepared with `download_and_prepare(download_config=DownloadConfig(manual_dir=...))`
into a temporary data dir and read back through `as_dataset`, so the features, splits and label
values are checked as the input pipeline will see them. Real BSDS500 / DSB2018 tests symlink a
handful of files from ../shared/data (the `shared_data_dir` fixture skips where it is absent).
"""

import hashlib
import io
import json
import logging
import os
import pathlib
import random

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from bitseg_jax.datasets import common, dead_leaves, entityseg, folder

tfds.disable_progress_bar()

# pycocotools 2.0.x on NumPy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


# --- helpers -------------------------------------------------------------------------------


def _prepare(tmp_path, name, manual_dir=None, **builder_kwargs):
    """Builds `name` into a fresh data dir under tmp_path and returns the builder."""
    data_dir = tmp_path / f"tfds_{name.replace('/', '_')}"
    builder = tfds.builder(name, data_dir=str(data_dir), **builder_kwargs)
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=config)
    return builder


def _examples(builder, split):
    """All examples of a split as NumPy dicts, keyed by id."""
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return {ex["id"].decode(): ex for ex in tfds.as_numpy(ds)}


def _check_features(builder):
    """The contract of docs/architecture.md ("Datasets") on a prepared builder."""
    feats = builder.info.features
    assert feats["image"].shape == (None, None, 3)
    assert feats["image"].np_dtype == np.uint8
    assert feats["segmentations"].shape == (None, None, None)
    assert feats["segmentations"].np_dtype == np.uint16
    assert feats["segmentations"]._encoding == tfds.features.Encoding.ZLIB
    assert isinstance(feats["id"], tfds.features.Text)


def _check_example(ex):
    image, seg = ex["image"], ex["segmentations"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert seg.dtype == np.uint16 and seg.ndim == 3 and seg.shape[0] >= 1
    assert seg.shape[1:] == image.shape[:2]


def _save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _stems(split, n, prefix="im"):
    """n stems whose hash split (common.hash_split) is `split`."""
    out, i = [], 0
    while len(out) < n:
        stem = f"{prefix}{i:03d}"
        if common.hash_split(stem) == split:
            out.append(stem)
        i += 1
    return out


# --- common --------------------------------------------------------------------------------


def test_hash_split_is_sha1_mod_10():
    for key in ("a", "0007", "x" * 40):
        want = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10 == 0
        assert (common.hash_split(key) == "validation") == want


def test_to_uint16_rejects_ids_beyond_65535_and_non_integers():
    np.testing.assert_array_equal(common.to_uint16(np.array([0, 65535]), "x"), [0, 65535])
    with pytest.raises(ValueError, match="labels.png.*65535"):
        common.to_uint16(np.array([0, 65536]), "labels.png")
    with pytest.raises(ValueError, match="m.png"):
        common.to_uint16(np.array([-1, 3]), "m.png")
    with pytest.raises(ValueError, match="not integers"):
        common.to_uint16(np.array([0.5]), "f")


def test_load_image_conversions(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    _save(tmp_path / "gray.png", gray)
    _save(tmp_path / "rgba.png", np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], -1))
    _save(tmp_path / "g16.png", g16)
    _save(tmp_path / "pal.png", gray, bits=8)
    np.testing.assert_array_equal(
        common.load_image(tmp_path / "gray.png"), np.stack([gray] * 3, -1)
    )
    np.testing.assert_array_equal(common.load_image(tmp_path / "rgba.png"), rgb)
    want16 = np.round(g16.astype(np.float64) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        common.load_image(tmp_path / "g16.png"), np.stack([want16] * 3, -1)
    )


def test_load_image_corrupt_truncated_and_empty_files_name_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("trunc.jpg", "junk.png", "empty.png"):
        with pytest.raises(ValueError, match=name):
            common.load_image(tmp_path / name)


def test_load_label_modes_and_errors(tmp_path):
    ids16 = np.array([[0, 1, 300], [65535, 7, 7]], np.uint16)
    _save(tmp_path / "l16.png", ids16)
    np.testing.assert_array_equal(common.load_label(tmp_path / "l16.png"), ids16)
    pal = Image.fromarray(np.array([[0, 3], [5, 3]], np.uint8)).convert("P")
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(common.load_label(tmp_path / "pal.png"), [[0, 3], [5, 3]])
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    _save(tmp_path / "colour.png", colour)
    with pytest.raises(ValueError, match="colour.png.*RGB"):
        common.load_label(tmp_path / "colour.png")


# --- dead_leaves -----------------------------------------------------------------------------


def _sample(index, split="train", seed=0, size=64, lo=3, hi=20):
    rng = np.random.default_rng([seed, dead_leaves.SPLIT_NUMBERS[split], index])
    return dead_leaves.sample(rng, image_size=size, min_layers=lo, max_layers=hi)


def test_dead_leaves_same_seed_same_example_and_order_free():
    later = [_sample(i) for i in range(4)][3]  # example 3 after 0..2 ...
    alone = _sample(3)  # ... equals example 3 made alone
    for a, b in zip(later, alone):
        np.testing.assert_array_equal(a, b)
    for other in (_sample(4), _sample(3, seed=1), _sample(3, split="validation")):
        assert not np.array_equal(other[0], alone[0])


def test_dead_leaves_partitions():
    counts, split_found = [], False
    for i in range(30):
        image, labels = _sample(i, size=64, lo=3, hi=20)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert labels.shape == (64, 64) and labels.dtype == np.uint16
        n = int(labels.max()) + 1
        # Every pixel is labelled and the ids are exactly 0..n-1.
        np.testing.assert_array_equal(np.unique(labels), np.arange(n))
        assert 1 <= n <= 21
        counts.append(n)
        for k in range(n):  # occlusion splits some layers into disconnected parts
            split_found |= scipy.ndimage.label(labels == k)[1] > 1
    assert split_found
    assert np.median(counts) >= 5  # mostly multi-segment scenes, not a bare background
    # Segments are textured, not flat: most segments of some image have > 1 colour.
    image, labels = _sample(0)
    assert sum(len(np.unique(image[labels == k], axis=0)) > 1 for k in range(labels.max() + 1)) > 1


def test_dead_leaves_rejects_bad_layer_counts():
    with pytest.raises(ValueError, match="min_layers"):
        dead_leaves.sample(np.random.default_rng(0), image_size=32, min_layers=5, max_layers=2)


def test_dead_leaves_builder_tiny(tmp_path):
    builder = _prepare(tmp_path, "dead_leaves/tiny")
    _check_features(builder)
    cfg = builder.builder_config
    assert builder.info.splits["train"].num_examples == cfg.num_train == 64
    assert builder.info.splits["validation"].num_examples == cfg.num_validation == 16
    for split in ("train", "validation"):
        examples = _examples(builder, split)
        for ex in examples.values():
            _check_example(ex)
            assert ex["image"].shape == (32, 32, 3)
        # The stored example i is exactly sample() with the (seed, split, i) generator.
        ex = examples[f"{split}_000005"]
        image, labels = _sample(5, split, cfg.seed, cfg.image_size, cfg.min_layers, cfg.max_layers)
        np.testing.assert_array_equal(ex["image"], image)
        np.testing.assert_array_equal(ex["segmentations"], labels[None])


# --- bsds500 --------------------------------------------------------------------------------


def _write_bsds(root, split, stem, maps, image):
    _save(root / "images" / split / f"{stem}.jpg", image, quality=95)
    gt = np.empty((1, len(maps)), dtype=object)
    for k, m in enumerate(maps):
        gt[0, k] = {"Segmentation": m, "Boundaries": np.zeros(m.shape, np.uint8)}
    path = root / "groundTruth" / split / f"{stem}.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"groundTruth": gt})


def test_bsds500_fixture(tmp_path):
    root = tmp_path / "manual" / "BSR" / "BSDS500" / "data"  # the archive's layout
    rng = np.random.default_rng(0)
    written = {}
    for split, stems in {"train": ["1", "2"], "val": ["3"], "test": ["4"]}.items():
        for stem in stems:
            a = int(stem) + 1  # annotators differ between images
            maps = [rng.integers(1, 6, (6, 9)).astype(np.uint16) for _ in range(a)]
            image = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
            if stem == "2":
                image = np.repeat(image[..., :1], 3, -1)[..., 0]  # a grayscale JPEG
            _write_bsds(root, split, stem, maps, image)
            written[stem] = np.stack(maps)
    (root / "images" / "train" / "Thumbs.db").write_bytes(b"\0")  # shipped in the archive
    builder = _prepare(tmp_path, "bsds500", tmp_path / "manual")
    _check_features(builder)
    sizes = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
    assert sizes == {"train": 2, "validation": 1, "test": 1}
    for split in sizes:
        for stem, ex in _examples(builder, split).items():
            _check_example(ex)
            np.testing.assert_array_equal(ex["segmentations"], written[stem])
    gray = _examples(builder, "train")["2"]["image"]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_bsds500_real(tmp_path, shared_data_dir):
    src = shared_data_dir / "BSDS500" / "data"
    dst = tmp_path / "manual" / "BSDS500" / "data"
    for split, n in (("train", 3), ("val", 2)):
        for image in sorted((src / "images" / split).glob("*.jpg"))[:n]:
            for sub, suffix in (("images", ".jpg"), ("groundTruth", ".mat")):
                (dst / sub / split).mkdir(parents=True, exist_ok=True)
                name = image.stem + suffix
                os.symlink(src / sub / split / name, dst / sub / split / name)
    builder = _prepare(tmp_path, "bsds500", tmp_path / "manual")
    assert set(builder.info.splits) == {"train", "validation"}
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 2
    for split in ("train", "validation"):
        for stem, ex in _examples(builder, split).items():
            _check_example(ex)
            seg = ex["segmentations"]
            assert seg.shape[1:] in ((321, 481), (481, 321))
            assert 4 <= seg.shape[0] <= 9
            for m in seg:  # each annotator's map: ids 1..N, consecutive
                np.testing.assert_array_equal(np.unique(m), np.arange(1, m.max() + 1))
            folder_name = "train" if split == "train" else "val"
            gt = scipy.io.loadmat(src / "groundTruth" / folder_name / f"{stem}.mat")["groundTruth"]
            np.testing.assert_array_equal(seg[-1], gt[0, -1]["Segmentation"][0, 0])


def test_bsds500_missing_or_wrong_manual_dir_says_what_to_put_where(tmp_path):
    with pytest.raises(AssertionError, match="(?s)does not exist.*bsds500: put the official"):
        _prepare(tmp_path, "bsds500", tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dsb2018").mkdir()
    with pytest.raises(FileNotFoundError, match="bsds500: no split folder.*BSR"):
        _prepare(tmp_path, "bsds500", tmp_path / "other")


@pytest.mark.parametrize(
    "name, match",
    [
        ("bsds500", "bsds500: no split folder"),
        ("dsb2018", "dsb2018: no .*stage1_train"),
        ("entityseg", "entityseg: entityseg_train_lr.json and entityseg_val_lr.json not found"),
        ("folder", "folder: expected .*images"),
    ],
)
def test_manual_dir_without_the_data_set_names_it(tmp_path, name, match):
    manual = tmp_path / "manual"
    (manual / "something_else").mkdir(parents=True)  # a shared manual dir, without this data
    with pytest.raises(FileNotFoundError, match=match):
        _prepare(tmp_path, name, manual)


# --- dsb2018 -------------------------------------------------------------------------------


def test_dsb2018_fixture(tmp_path):
    root = tmp_path / "manual" / "dsb2018" / "stage1_train"
    (val_id,) = _stems("validation", 1, "v")
    train_ids = _stems("train", 2, "t")
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 10, 4), dtype=np.uint8)
    for image_id in [val_id, *train_ids]:
        _save(root / image_id / "images" / f"{image_id}.png", rgba)
    # train_ids[0]: two overlapping nuclei (b is later: wins) plus unusable mask files.
    masks = root / train_ids[0] / "masks"
    a = np.zeros((8, 10), np.uint8)
    a[1:5, 1:5] = 255
    b = np.zeros((8, 10), np.uint8)
    b[3:7, 3:8] = 255
    _save(masks / "a.png", a)
    _save(masks / "b.png", b)
    masks.joinpath("0_empty.png").write_bytes(b"")  # skipped (empty file)
    masks.joinpath("c_corrupt.png").write_bytes(b"\x89PNG garbage")  # skipped (corrupt)
    _save(masks / "d_zero.png", np.zeros((8, 10), np.uint8))  # skipped (no pixel)
    # val_id has an empty masks/ folder; train_ids[1] has none: both all background.
    (root / val_id / "masks").mkdir()
    builder = _prepare(tmp_path, "dsb2018", tmp_path / "manual")
    _check_features(builder)
    assert builder.info.splits["train"].num_examples == 2
    assert builder.info.splits["validation"].num_examples == 1
    train = _examples(builder, "train")
    want = np.zeros((8, 10), np.uint16)
    want[a > 0] = 1
    want[b > 0] = 2
    np.testing.assert_array_equal(train[train_ids[0]]["segmentations"], want[None])
    np.testing.assert_array_equal(train[train_ids[0]]["image"], rgba[..., :3])
    np.testing.assert_array_equal(train[train_ids[1]]["segmentations"], np.zeros((1, 8, 10)))
    val = _examples(builder, "validation")[val_id]
    np.testing.assert_array_equal(val["segmentations"], np.zeros((1, 8, 10)))


def test_dsb2018_mask_size_mismatch_is_an_error(tmp_path):
    (image_id,) = _stems("train", 1)
    root = tmp_path / "manual" / "stage1_train" / image_id  # Kaggle's layout, no dsb2018/
    _save(root / "images" / f"{image_id}.png", np.zeros((8, 10, 4), np.uint8))
    _save(root / "masks" / "m.png", np.full((8, 11), 255, np.uint8))
    with pytest.raises(ValueError, match=r"m\.png.*\(8, 11\)"):
        _prepare(tmp_path, "dsb2018", tmp_path / "manual")


def test_dsb2018_real(tmp_path, shared_data_dir):
    src = shared_data_dir / "dsb2018" / "stage1_train"
    ids = sorted(p.name for p in src.iterdir())
    # The documented split of the 547 images.
    assert len(ids) == 547
    assert sum(common.hash_split(i) == "validation" for i in ids) == 51
    picked = _stems_in(ids, "train", 2) + _stems_in(ids, "validation", 1)
    dst = tmp_path / "manual" / "stage1_train"
    dst.mkdir(parents=True)
    for image_id in picked:
        os.symlink(src / image_id, dst / image_id)
    builder = _prepare(tmp_path, "dsb2018", tmp_path / "manual")
    assert builder.info.splits["train"].num_examples == 2
    assert builder.info.splits["validation"].num_examples == 1
    for split in ("train", "validation"):
        for image_id, ex in _examples(builder, split).items():
            _check_example(ex)
            seg = ex["segmentations"][0]
            num_masks = len(list((src / image_id / "masks").glob("*.png")))
            assert seg.max() == num_masks and 0 in seg  # background is a segment
            # Overlaps can hide a nucleus entirely, but nearly all ids are visible.
            assert len(np.unique(seg)) >= 0.9 * (num_masks + 1)


def _stems_in(ids, split, n):
    return [i for i in ids if common.hash_split(i) == split][:n]


# --- entityseg -----------------------------------------------------------------------------


def _rle(mask):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _entityseg_fixture(manual):
    """25 images in two folders, a train JSON (24) and a val JSON (1); returns expectations."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    jsons = {"train": {"images": [], "annotations": []}, "val": {"images": [], "annotations": []}}
    expected = {}
    for i in range(25):
        folder_name = "entity_01_x" if i < 12 else "entity_02_x"
        file_name = f"{folder_name}/img{i:02d}.jpg"
        h, w = 20, 24 + i % 3
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i == 1:
            image = image[..., 0]  # grayscale
        _save(manual / file_name, image, quality=95)
        which = "val" if i == 7 else "train"
        image_id = len(jsons[which]["images"]) + 1  # ids restart per JSON
        jsons[which]["images"].append(
            {"id": image_id, "file_name": file_name, "height": h, "width": w}
        )
        want = np.zeros((h, w), np.uint16)
        segms = []
        if i == 0:  # 300 one-pixel annotations: ids above 255 stay exact (SPEC B8 fix)
            for n in range(300):
                m = np.zeros((h, w), bool)
                m.flat[n] = True
                segms.append(_rle(m))
                want.flat[n] = n + 1
        else:
            a = np.zeros((h, w), bool)
            a[2:12, 3:15] = True
            b = np.zeros((h, w), bool)
            b[8:18, 10:20] = True
            # a: compressed RLE; b: uncompressed RLE (counts list), overlapping a (b wins);
            # c: two polygons (merged by union); pixels outside all stay 0.
            b_rle = {"size": [h, w], "counts": _uncompressed_counts(b)}
            assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(b_rle, h, w)), b)
            segms += [_rle(a), b_rle]
            polys = [[1, 14, 6, 14, 6, 19, 1, 19], [18, 1, 23, 1, 23, 5, 18, 5]]
            c = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))) > 0
            segms.append(polys)
            want[a] = 1
            want[b] = 2
            want[c] = 3
        for segm in segms:
            jsons[which]["annotations"].append(
                {"image_id": image_id, "segmentation": segm, "category_id": 1}
            )
        expected[pathlib.PurePosixPath(file_name).stem] = (file_name, want, image)
    for which in ("train", "val"):
        (manual / f"entityseg_{which}_lr.json").write_text(json.dumps(jsons[which]))
    return expected


def _uncompressed_counts(mask):
    """COCO uncompressed RLE counts (column-major run lengths, starting with zeros)."""
    flat = mask.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def test_entityseg_fixture_rasterisation_and_splits(tmp_path, caplog):
    manual = tmp_path / "manual"
    expected = _entityseg_fixture(manual)
    (manual / "entity_02_x" / "img20.jpg").unlink()  # a JSON entry without its image
    with caplog.at_level(logging.WARNING):
        builder = _prepare(tmp_path, "entityseg", manual)
    assert any("img20.jpg" in r.getMessage() for r in caplog.records)
    _check_features(builder)
    names = entityseg.split_file_names(
        [f for f, _, _ in expected.values() if f != "entity_01_x/img07.jpg"],
        ["entity_01_x/img07.jpg"],
    )
    # SPEC 2.2 with N = 25: target_val = round(2.5) = 2, target_test = max(2, 1) = 2.
    assert [len(names[s]) for s in ("train", "validation", "test")] == [21, 2, 2]
    assert "entity_01_x/img07.jpg" in names["test"]
    seen = {}
    for split, split_names in names.items():
        examples = _examples(builder, split)
        want_ids = {pathlib.PurePosixPath(n).stem for n in split_names} - {"img20"}
        assert set(examples) == want_ids
        for stem, ex in examples.items():
            _check_example(ex)
            np.testing.assert_array_equal(ex["segmentations"][0], expected[stem][1])
            seen[stem] = ex
    assert set(seen) == set(expected) - {"img20"}
    assert seen["img00"]["segmentations"].max() == 300
    gray = seen["img01"]["image"]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    # The JPEG is stored as is (no re-encoding): TF decodes exactly the original file's pixels.
    raw = (manual / expected["img03"][0]).read_bytes()
    np.testing.assert_array_equal(seen["img03"]["image"], tf.io.decode_jpeg(raw, channels=3))


def test_entityseg_split_sizes_of_the_paper():
    # SPEC 2.2: N_total = 33,227 with the EntitySeg paper's 1,314 native val images.
    train = [f"t{i:05d}.jpg" for i in range(33_227 - 1_314)]
    val = [f"v{i:04d}.jpg" for i in range(1_314)]
    names = entityseg.split_file_names(train, val)
    assert (len(names["train"]), len(names["validation"]), len(names["test"])) == (
        26_581,
        3_323,
        3_323,
    )
    assert set(val) <= set(names["test"])
    assert not set(names["validation"]) & set(names["test"])
    # Literal SPEC 2.2 recipe (one random.Random(0), two rng.sample calls).
    rng = random.Random(0)
    test = set(val) | set(rng.sample(sorted(set(train) - set(val)), 3_323 - 1_314))
    assert names["test"] == sorted(test)
    assert names["validation"] == sorted(rng.sample(sorted(set(train) - test), 3_323))


def test_entityseg_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="a.jpg has 65536 annotations"):
        entityseg.rasterise(2, 2, [None] * 65_536, "a.jpg")
    with pytest.raises(ValueError, match="RLE size"):
        entityseg.rasterise(4, 4, [_rle(np.ones((3, 4), bool))], "b.jpg")
    manual = tmp_path / "manual"
    _save(manual / "e" / "x.jpg", np.zeros((10, 12, 3), np.uint8))
    coco = {
        "images": [{"id": 1, "file_name": "e/x.jpg", "height": 10, "width": 13}],
        "annotations": [],
    }
    (manual / "entityseg_train_lr.json").write_text(json.dumps(coco))
    (manual / "entityseg_val_lr.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"x\.jpg is \(H, W\) = \(10, 12\).*\(10, 13\)"):
        _prepare(tmp_path, "entityseg", manual)


# --- folder --------------------------------------------------------------------------------


def test_folder_hash_split_and_conversions(tmp_path):
    manual = tmp_path / "manual"
    rng = np.random.default_rng(0)
    stems = _stems("train", 3) + _stems("validation", 1)
    images = {
        stems[0]: rng.integers(0, 256, (6, 8), dtype=np.uint8),  # grayscale
        stems[1]: rng.integers(0, 256, (6, 8, 4), dtype=np.uint8),  # RGBA
        stems[2]: rng.integers(0, 65536, (6, 8), dtype=np.uint16),  # 16-bit grayscale
        stems[3]: rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
    }
    labels = {
        stems[0]: rng.integers(0, 3, (6, 8)).astype(np.uint8),
        stems[1]: rng.integers(0, 2000, (6, 8)).astype(np.uint16),  # 16-bit ids
        stems[2]: np.full((6, 8), 65535, np.uint16),
        stems[3]: rng.integers(0, 256, (6, 8)).astype(np.uint8),
    }
    for stem in stems:
        _save(manual / "images" / f"{stem}.png", images[stem])
        _save(manual / "labels" / f"{stem}.png", labels[stem])
    builder = _prepare(tmp_path, "folder", manual)
    _check_features(builder)
    train, val = _examples(builder, "train"), _examples(builder, "validation")
    assert set(train) == set(stems[:3]) and set(val) == {stems[3]}
    both = {**train, **val}
    for stem in stems:
        _check_example(both[stem])
        np.testing.assert_array_equal(both[stem]["segmentations"], labels[stem][None])
    np.testing.assert_array_equal(both[stems[0]]["image"], np.stack([images[stems[0]]] * 3, -1))
    np.testing.assert_array_equal(both[stems[1]]["image"], images[stems[1]][..., :3])
    want16 = np.round(images[stems[2]] / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(both[stems[2]]["image"], np.stack([want16] * 3, -1))


def test_folder_config_path_with_validation_subfolders(tmp_path):
    root = tmp_path / "mydata"
    for sub, stems in (("", ["a", "b"]), ("val", ["c"]), ("test", ["d"])):
        for stem in stems:
            _save(root / "images" / sub / f"{stem}.jpg", np.zeros((4, 5, 3), np.uint8))
            _save(root / "labels" / sub / f"{stem}.png", np.ones((4, 5), np.uint8))
    cfg = folder.FolderConfig(name="mydata", path=str(root))
    builder = _prepare(tmp_path, "folder", config=cfg)
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
        "train": 2,
        "validation": 1,
        "test": 1,
    }
    assert set(_examples(builder, "validation")) == {"c"}


@pytest.mark.parametrize("problem", ["size", "missing_label", "truncated"])
def test_folder_bad_inputs_name_the_file(tmp_path, problem):
    root = tmp_path / "data"
    _save(root / "images" / "ok.png", np.zeros((4, 5, 3), np.uint8))
    _save(root / "labels" / "ok.png", np.ones((4, 5), np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _save(root / "images" / "bad.png", noise)
    if problem == "size":
        _save(root / "labels" / "bad.png", np.ones((64, 63), np.uint8))
        error, match = ValueError, r"bad\.png has size \(H, W\) = \(64, 63\)"
    elif problem == "missing_label":
        error, match = FileNotFoundError, r"bad\.png"
    else:
        _save(root / "labels" / "bad.png", np.ones((64, 64), np.uint8))
        data = (root / "images" / "bad.png").read_bytes()
        (root / "images" / "bad.png").write_bytes(data[: len(data) // 2])
        error, match = ValueError, r"Cannot decode image file .*bad\.png"
    with pytest.raises(error, match=match):
        _prepare(tmp_path, "folder", config=folder.FolderConfig(name="bad", path=str(root)))
