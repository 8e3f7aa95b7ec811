"""Tests of bitseg_jax/input_pipeline.py on synthetic in-memory sources (and dead_leaves/tiny).

Every preprocessing function is run both eagerly and inside tf.data (STYLE 10). Pipelines use
small images (16-64 px) so that each test takes about a second.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from bitseg_jax import augment, input_pipeline, palette
from configs import base

MEAN = np.array(input_pipeline.IMAGENET_MEAN, np.float32)
STD = np.array(input_pipeline.IMAGENET_STD, np.float32)


def make_config(**overrides):
    """The `tiny` config with dotted overrides, e.g. make_config(**{"data.augment": False})."""
    config = base.get_config("tiny")
    config.update_from_flattened_dict(overrides)
    return config


def make_source(examples, name="synthetic"):
    """A RawSource over a list of raw examples (NumPy), shapes may differ between examples."""
    first = examples[0]
    spec = {
        "image": tf.TensorSpec([None, None, 3], tf.as_dtype(first["image"].dtype)),
        "segmentations": tf.TensorSpec(
            [None, None, None], tf.as_dtype(first["segmentations"].dtype)
        ),
        "id": tf.TensorSpec([], tf.string),
    }
    ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(examples)))
    return input_pipeline.source_from_dataset(ds, name)


def random_examples(n, rng, *, size=(20, 40), annotators=(1, 3), num_ids=6, prefix="ex"):
    """n random raw examples with random sizes, annotator counts and ids."""
    out = []
    for i in range(n):
        h, w = rng.integers(size[0], size[1], 2)
        a = rng.integers(annotators[0], annotators[1] + 1)
        out.append(
            {
                "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                "segmentations": rng.integers(0, num_ids, (a, h, w)).astype(np.uint16),
                "id": f"{prefix}{i}",
            }
        )
    return out


def take(ds, n):
    return list(ds.take(n).as_numpy_iterator())


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def unnormalize(image):
    """float32 [..., 3] ImageNet-normalised -> [0, 255]."""
    return (np.asarray(image) * STD + MEAN) * 255.0


# ----------------------------------------------------------------------------- prepare_image


@pytest.mark.parametrize(
    "shape, valid_hw", [((451, 300), (128, 85)), ((300, 451), (85, 128)), ((500, 375), (128, 96))]
)
def test_prepare_image_valid_region_spec12(shape, valid_hw):
    image = np.full((*shape, 3), 200, np.uint8)
    eager_image, eager_valid = input_pipeline.prepare_image(image, 128)
    ds = tf.data.Dataset.from_tensors(image).map(lambda x: input_pipeline.prepare_image(x, 128))
    graph_image, graph_valid = next(iter(ds))
    expected = np.zeros((128, 128), bool)
    expected[: valid_hw[0], : valid_hw[1]] = True
    for out_image, valid in ((eager_image, eager_valid), (graph_image, graph_valid)):
        np.testing.assert_array_equal(valid, expected)
        # Constant 200 normalises to (200/255 - mean)/std inside, 0 in the padding (SPEC 2.3).
        np.testing.assert_allclose(
            np.asarray(out_image)[expected],
            np.broadcast_to((200 / 255 - MEAN) / STD, (expected.sum(), 3)),
            rtol=0,
            atol=1e-5,
        )
        np.testing.assert_array_equal(np.asarray(out_image)[~expected], 0.0)


def test_resized_shape_rounds_half_to_even():
    # 3 x 10 -> 128 * 3 / 10 = 38.4 -> 38; 5 x 128 -> ... ties: 1 x 256 at S = 1 -> 0.5 -> 0,
    # clamped to 1; 3 x 256 at S = 128 -> 1.5 -> 2 (half to even); 5 x 256 -> 2.5 -> 2.
    cases = [((3, 10, 128), (38, 128)), ((3, 256, 128), (2, 128)), ((5, 256, 128), (2, 128))]
    cases += [((256, 5, 128), (128, 2)), ((7, 7, 64), (64, 64)), ((1, 1000, 128), (1, 128))]
    for (h, w, s), expected in cases:
        got = input_pipeline.resized_shape(h, w, s)
        assert (int(got[0]), int(got[1])) == expected, (h, w, s)


def area_weights(n_in, n_out):
    """[n_out, n_in] INTER_AREA weights: the overlap of [i s, (i + 1) s) with each pixel."""
    s = n_in / n_out
    lo, hi = np.arange(n_out)[:, None] * s, (np.arange(n_out)[:, None] + 1) * s
    j = np.arange(n_in)[None]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return overlap / overlap.sum(1, keepdims=True)


def test_prepare_image_area_resize_is_the_box_average():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 100, 3), dtype=np.uint8)
    out, valid = input_pipeline.prepare_image(image, 64)
    assert np.asarray(valid).sum(1).max() == 43  # round(100 * 64 / 150) = 42.67 -> 43.
    got = unnormalize(out)[:, :43]
    rows, cols = area_weights(150, 64), area_weights(100, 43)
    expected = np.einsum("ij,jkc,lk->ilc", rows, image.astype(np.float64), cols)
    # The exact box average (OpenCV INTER_AREA), rounded to integers like the reference's
    # uint8 resize; 1e-3 covers float32 sums near .5 ties.
    np.testing.assert_allclose(got, np.round(expected), rtol=0, atol=1.0 + 1e-3)
    assert np.mean(np.abs(got - np.round(expected)) > 1e-3) < 0.01


def test_prepare_image_float_input_and_errors():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    a, _ = input_pipeline.prepare_image(image, 32)
    b, _ = input_pipeline.prepare_image(image.astype(np.float32) / 255.0, 32)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        input_pipeline.prepare_image(np.full((4, 4, 3), np.nan, np.float32), 32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 1\]"):
        input_pipeline.prepare_image(np.full((4, 4, 3), 7.0, np.float32), 32)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        input_pipeline.prepare_image(np.zeros((4, 4), np.uint8), 32)
    with pytest.raises(TypeError, match="uint8"):
        input_pipeline.prepare_image(np.zeros((4, 4, 3), np.int32), 32)


# ----------------------------------------------------------------------------- augmentations

# Colour code of the alignment test: segment id -> RGB; id 0 is black so that what rotates in
# (black image, segment 0) is consistent with the code too.
CODE = np.array(
    [
        [0, 0, 0],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [255, 255, 255],
        [128, 0, 0],
        [0, 128, 0],
        [0, 0, 128],
        [128, 128, 0],
    ],
    np.float32,
)


def coded_example():
    """90 x 120 image of 3 x 4 blocks; the image colour encodes the block's id."""
    ids = np.arange(12).reshape(3, 4)
    ids = np.repeat(np.repeat(ids, 30, axis=0), 30, axis=1)
    return {
        "image": CODE[ids].astype(np.uint8),
        "segmentations": ids[None].astype(np.uint16),
        "id": "coded",
    }


def interior(label, valid, width=5):
    """Pixels whose width x width neighbourhood lies in one segment and inside `valid`."""
    lo = ndimage.minimum_filter(label, width, mode="nearest")
    hi = ndimage.maximum_filter(label, width, mode="nearest")
    inside = ndimage.binary_erosion(valid, np.ones((width, width)), border_value=0)
    return (lo == hi) & inside


@pytest.mark.parametrize("name", sorted(augment.AUG_PROBS))
def test_augmentation_keeps_image_and_label_aligned(name):
    example = coded_example()
    seed = tf.constant([0, 1], tf.int64)
    kwargs = {"image_size": 64, "mask_padding": False}

    def run(probs):
        fn = lambda ex: input_pipeline.preprocess_train(ex, seed, probs=probs, **kwargs)
        eager = fn({k: tf.constant(v) for k, v in example.items()})
        graph = next(iter(tf.data.Dataset.from_tensors(example).map(fn)))
        for k in eager:  # STYLE 10: the same result eagerly and inside tf.data.
            np.testing.assert_allclose(eager[k], graph[k], rtol=0, atol=1e-4, err_msg=k)
        return {k: np.asarray(v) for k, v in eager.items()}

    plain, out = run({}), run({name: 1.0})
    label, valid, rgb = out["label"], out["valid"], out["image"].astype(np.float32)
    mask = interior(label, valid)
    assert mask.sum() > 200
    if name in ("hflip", "rotate"):
        assert not np.array_equal(label, plain["label"])  # the augmentation did something.
        # The colour at every interior pixel is the code of its label.
        np.testing.assert_allclose(rgb[mask], CODE[label[mask]], rtol=0, atol=1.0)
    else:
        np.testing.assert_array_equal(label, plain["label"])  # colour only: labels untouched.
        assert np.any(out["image"] != plain["image"])  # and it did change colours.
        # One colour per segment (a per-pixel colour function of the coded colours).
        for segment in np.unique(label[mask]):
            colours = rgb[mask & (label == segment)]
            np.testing.assert_allclose(colours, colours[:1].repeat(len(colours), 0), atol=1.0)


# ----------------------------------------------------------------------------- train stream


def test_train_batches_shapes_dtypes_ranges():
    rng = np.random.default_rng(0)
    source = make_source(random_examples(12, rng))
    config = make_config(batch_size=4)
    (batch,) = take(input_pipeline.train_dataset([source], config), 1)
    assert set(batch) == {"image", "label", "valid"}
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int32
    assert batch["valid"].shape == (4, 32, 32) and batch["valid"].dtype == bool
    assert np.all(np.isfinite(batch["image"]))
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert np.all(batch["image"] >= lo.min() - 1e-5) and np.all(batch["image"] <= hi.max() + 1e-5)
    assert np.all(batch["image"][~batch["valid"]] == 0.0)
    assert batch["label"].min() >= 0 and batch["label"].max() < 64
    # Every valid region is a top-left rectangle touching the bottom or the right edge.
    for v in batch["valid"]:
        h, w = v.sum(0).max(), v.sum(1).max()
        assert v[:h, :w].all() and max(h, w) == 32


def test_palette_is_applied_to_the_resized_map():
    rng = np.random.default_rng(1)
    # 64 x 128 -> 16 x 32 at S = 32: a factor of exactly 4, so the nearest resize of 4 x 4
    # blocks is the small map itself.
    small = [rng.integers(0, 9, (16, 32)) for _ in range(4)]
    examples = [
        {
            "image": rng.integers(0, 256, (64, 128, 3), dtype=np.uint8),
            "segmentations": np.kron(m, np.ones((4, 4), int))[None].astype(np.uint16),
            "id": f"p{i}",
        }
        for i, m in enumerate(small)
    ]
    config = make_config(
        **{"batch_size": 4, "data.augment": False, "data.shuffle_buffer": 0, "seed": 3}
    )
    (batch,) = take(input_pipeline.train_dataset([make_source(examples)], config), 1)
    for m, label in zip(small, batch["label"]):
        raw = np.zeros((32, 32), np.int32)
        raw[:16] = m
        expected = palette.assign(raw, mode="similar", num_bits=6, seed=3, num_classes=64)
        np.testing.assert_array_equal(label, expected)

    # No LAP: a random bijective relabelling with segment 0 (padding included) kept at 0.
    config.data.lap_mode = "none"
    (batch,) = take(input_pipeline.train_dataset([make_source(examples)], config), 1)
    for m, label in zip(small, batch["label"]):
        raw = np.zeros((32, 32), np.int32)
        raw[:16] = m
        pairs = np.unique(np.stack([raw.ravel(), label.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
        assert np.all(label[raw == 0] == 0)


def test_mask_padding_gives_minus_one_outside_valid():
    rng = np.random.default_rng(2)
    source = make_source(random_examples(8, rng))
    config = make_config(**{"batch_size": 8, "data.mask_padding": True, "data.augment": False})
    (batch,) = take(input_pipeline.train_dataset([source], config), 1)
    assert np.all(batch["label"][~batch["valid"]] == -1)
    assert np.all(batch["label"][batch["valid"]] >= 0)
    config.data.mask_padding = False
    (batch,) = take(input_pipeline.train_dataset([source], config), 1)
    assert np.all(batch["label"] >= 0)


def test_train_stream_is_deterministic_and_seeded():
    rng = np.random.default_rng(3)
    source = make_source(random_examples(10, rng, annotators=(2, 3)))
    config = make_config(**{"batch_size": 4, "data.aug_prob_multiplier": 2.0})
    a = take(input_pipeline.train_dataset([source], config), 4)
    b = take(input_pipeline.train_dataset([source], config), 4)
    assert_batches_equal(a, b)
    config.seed = 1
    c = take(input_pipeline.train_dataset([source], config), 4)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_restart_equals_uninterrupted_stream():
    # 10 examples, batches of 4: batches straddle epoch boundaries (shuffled per epoch).
    rng = np.random.default_rng(4)
    source = make_source(random_examples(10, rng, annotators=(1, 3)))
    config = make_config(**{"batch_size": 4, "data.lap_mode": "none"})
    full = take(input_pipeline.train_dataset([source], config), 7)
    for start_step in (1, 3, 5):
        restarted = take(input_pipeline.train_dataset([source], config, start_step=start_step), 2)
        assert_batches_equal(full[start_step : start_step + 2], restarted)


def test_restart_does_not_decode_skipped_examples():
    rng = np.random.default_rng(5)
    examples = random_examples(12, rng)
    source = make_source(examples)

    def decode(example):  # records 0..7 may not be decoded.
        index = tf.strings.to_number(tf.strings.substr(example["id"], 2, 3), tf.int32)
        tf.debugging.Assert(index >= 8, ["decoded a skipped record", example["id"]])
        return example

    guarded = input_pipeline.RawSource(
        source.name, source.num_examples, source.read, decode, source.num_annotators
    )
    config = make_config(**{"batch_size": 4, "data.shuffle_buffer": 0})
    (batch,) = take(input_pipeline.train_dataset([guarded], config, start_step=2), 1)
    assert batch["image"].shape[0] == 4
    with pytest.raises(tf.errors.InvalidArgumentError, match="decoded a skipped record"):
        take(input_pipeline.train_dataset([guarded], config, start_step=1), 1)


def test_mixing_respects_weights_deterministic_and_restartable():
    # Source "a" is white, "b" black: the image tells where an example came from.
    def examples(value, prefix):
        return [
            {
                "image": np.full((8, 8, 3), value, np.uint8),
                "segmentations": np.zeros((1, 8, 8), np.uint16),
                "id": f"{prefix}{i}",
            }
            for i in range(5)
        ]

    sources = [make_source(examples(255, "a"), "a"), make_source(examples(0, "b"), "b")]
    config = make_config(
        **{
            "batch_size": 8,
            "model.image_size": 8,
            "data.augment": False,
            "data.datasets": ("a", "b"),
            "data.weights": (3.0, 1.0),
        }
    )
    batches = take(input_pipeline.train_dataset(sources, config), 50)
    from_a = np.concatenate([b["image"][:, 0, 0, 0] > 0 for b in batches])
    assert abs(from_a.mean() - 0.75) < 0.065  # 3 binomial standard deviations for n = 400.
    assert_batches_equal(batches[:3], take(input_pipeline.train_dataset(sources, config), 3))
    restarted = take(input_pipeline.train_dataset(sources, config, start_step=37), 3)
    assert_batches_equal(batches[37:40], restarted)


def test_hosts_split_the_global_batches_of_one_process():
    """Any number of hosts trains on the one-process global batches: host p holds rows
    [p b, (p + 1) b) of each, and a restarted host resumes at the same global batch."""
    rng = np.random.default_rng(6)
    source = make_source(random_examples(9, rng, annotators=(1, 2)))
    config = make_config(batch_size=6)
    single = take(input_pipeline.train_dataset([source], config), 4)
    for count in (2, 3):
        b = 6 // count
        for host in range(count):
            ds = input_pipeline.train_dataset(
                [source], config, process_index=host, process_count=count
            )
            rows = [{k: v[host * b : (host + 1) * b] for k, v in batch.items()} for batch in single]
            assert_batches_equal(take(ds, 4), rows)
            restarted = input_pipeline.train_dataset(
                [source], config, start_step=2, process_index=host, process_count=count
            )
            assert_batches_equal(take(restarted, 2), rows[2:])
    with pytest.raises(ValueError, match="config.batch_size"):
        input_pipeline.train_dataset([source], config, process_count=4)


# ----------------------------------------------------------------------------- eval stream


def test_eval_batches_padding_and_annotations():
    rng = np.random.default_rng(7)
    examples = random_examples(10, rng, annotators=(1, 3))
    examples[0]["segmentations"] = examples[0]["segmentations"][:1]
    examples[1]["segmentations"] = np.repeat(examples[1]["segmentations"][:1], 3, axis=0)
    config = make_config()
    batches = take(input_pipeline.eval_dataset(make_source(examples), config, batch_size=4), 10)
    assert len(batches) == 3
    a_max = max(len(ex["segmentations"]) for ex in examples)
    for batch in batches:
        assert batch["image"].shape == (4, 32, 32, 3)
        assert batch["annotations"].shape == (4, a_max, 32, 32)
        assert batch["annotations"].dtype == np.int32 and batch["orig_size"].dtype == np.int32
    np.testing.assert_array_equal(batches[-1]["_mask"], [True, True, False, False])
    last = batches[-1]
    assert np.all(last["image"][2:] == 0) and not last["valid"][2:].any()
    assert np.all(last["annotations"][2:] == -1) and list(last["id"][2:]) == [b"", b""]
    ids = np.concatenate([b["id"] for b in batches])[:10]
    assert [i.decode() for i in ids] == [ex["id"] for ex in examples]
    sizes = np.concatenate([b["orig_size"] for b in batches])[:10]
    np.testing.assert_array_equal(sizes, [ex["image"].shape[:2] for ex in examples])
    first = batches[0]
    assert np.all(first["annotations"][0, 1:] == -1)  # absent annotators.
    for i in range(4):
        valid, ann = first["valid"][i], first["annotations"][i]
        assert np.all(ann[:, ~valid] == -1)
        # annotator 0's map is a relabelling of `label` on the valid region.
        pairs = np.unique(np.stack([ann[0][valid], first["label"][i][valid]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    # Example 1 has three identical annotators.
    np.testing.assert_array_equal(first["annotations"][1, 1], first["annotations"][1, 0])


def test_preprocess_eval_eager_equals_dataset():
    rng = np.random.default_rng(11)
    (example,) = random_examples(1, rng, size=(30, 50), annotators=(2, 2))
    seed = tf.constant([3, 4], tf.int64)

    def fn(ex):
        return input_pipeline.preprocess_eval(
            ex, seed, image_size=32, mask_padding=True, num_annotators=3
        )

    eager = fn({k: tf.constant(v) for k, v in example.items()})
    graph = next(iter(tf.data.Dataset.from_tensors(example).map(fn)))
    for k in eager:
        np.testing.assert_array_equal(eager[k], graph[k], err_msg=k)
    h, w = example["image"].shape[:2]
    np.testing.assert_array_equal(eager["orig_size"], [h, w])
    valid = np.asarray(eager["valid"])
    assert np.all(np.asarray(eager["annotations"])[:2][:, ~valid] == -1)  # mask_padding
    assert np.all(np.asarray(eager["annotations"])[2] == -1)  # absent third annotator


def test_preprocess_eval_scores_at_a_larger_size():
    # eval_size E > S: the image, `label` and `valid` are the model's (as at E = S); the
    # annotations and `eval_valid` are what preprocessing at E itself gives.
    rng = np.random.default_rng(12)
    (example,) = random_examples(1, rng, size=(30, 47), annotators=(3, 3))
    example = {k: tf.constant(v) for k, v in example.items()}
    seed = tf.constant([3, 4], tf.int64)

    def fn(size, eval_size=None):
        return input_pipeline.preprocess_eval(
            example,
            seed,
            image_size=size,
            mask_padding=False,
            num_annotators=4,
            eval_size=eval_size,
        )

    both, model, large = fn(16, eval_size=40), fn(16), fn(40)
    for key in ("image", "label", "valid"):
        np.testing.assert_array_equal(both[key], model[key], err_msg=key)
    np.testing.assert_array_equal(both["annotations"], large["annotations"])
    np.testing.assert_array_equal(both["eval_valid"], large["valid"])
    assert both["annotations"].shape == (4, 40, 40) and both["image"].shape == (16, 16, 3)
    np.testing.assert_array_equal(model["eval_valid"], model["valid"])  # E = S by default.


def test_eval_image_size_defaults_and_checks():
    config = make_config()
    assert input_pipeline.eval_image_size(config) == config.model.image_size
    with config.unlocked():
        config.eval.image_size = 2 * config.model.image_size
    assert input_pipeline.eval_image_size(config) == 2 * config.model.image_size
    batch = take(
        input_pipeline.eval_dataset(
            make_source(random_examples(3, np.random.default_rng(1), annotators=(1, 2))),
            config,
            batch_size=4,
        ),
        1,
    )[0]
    s, e = config.model.image_size, 2 * config.model.image_size
    assert batch["image"].shape == (4, s, s, 3) and batch["valid"].shape == (4, s, s)
    assert batch["annotations"].shape[2:] == (e, e) and batch["eval_valid"].shape == (4, e, e)
    assert not batch["eval_valid"][3].any()  # the padding row.
    with config.unlocked():
        config.eval.image_size = config.model.image_size // 2
    with pytest.raises(ValueError, match="config.eval.image_size"):
        input_pipeline.eval_image_size(config)
    with config.unlocked():
        del config.eval["image_size"]  # a config.json saved before the field existed.
    assert input_pipeline.eval_image_size(config) == config.model.image_size


def test_eval_num_images_permutation_and_hosts():
    rng = np.random.default_rng(8)
    examples = random_examples(11, rng, annotators=(1, 2))
    source = make_source(examples)
    config = make_config()
    expected = np.sort(np.random.default_rng(5).permutation(11)[:7])
    per_host = []
    for host in range(2):
        ds = input_pipeline.eval_dataset(
            source,
            config,
            num_images=7,
            seed=5,
            batch_size=4,
            num_annotators=2,
            process_index=host,
            process_count=2,
        )
        per_host.append(take(ds, 10))
    # 3 and 4 of the 7 images, batches of 2 rows per host: both hosts run 2 batches.
    assert [len(batches) for batches in per_host] == [2, 2]
    masks = [np.concatenate([b["_mask"] for b in batches]) for batches in per_host]
    np.testing.assert_array_equal(masks, [[True, True, True, False], [True, True, True, True]])
    ids = [i.decode() for batches in per_host for b in batches for i in b["id"][b["_mask"]]]
    assert ids == [f"ex{i}" for i in expected]
    # Deterministic.
    again = input_pipeline.eval_dataset(
        source, config, num_images=7, seed=5, batch_size=4, num_annotators=2, process_count=2
    )
    assert_batches_equal(take(again, 10), per_host[0])


# ----------------------------------------------------------------------------- bad input


def test_bad_examples_raise_naming_the_example():
    rng = np.random.default_rng(9)
    good = random_examples(3, rng, annotators=(1, 1))
    config = make_config(**{"batch_size": 4, "data.augment": False})

    def first_batch(bad):
        # A source has one element spec: the good examples take the bad one's dtypes.
        scale = 1.0 if bad["image"].dtype == np.uint8 else 1.0 / 255.0
        examples = [
            dict(
                ex,
                image=(ex["image"] * scale).astype(bad["image"].dtype),
                segmentations=ex["segmentations"].astype(bad["segmentations"].dtype),
            )
            for ex in good
        ]
        return take(input_pipeline.train_dataset([make_source([*examples, bad])], config), 1)

    mismatch = dict(good[0], segmentations=np.zeros((1, 5, 5), np.uint16), id="bad_size")
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad_size"):
        first_batch(mismatch)
    too_many = dict(
        good[0],
        segmentations=np.full((1, *good[0]["image"].shape[:2]), 70_000),
        image=good[0]["image"].astype(np.float32) / 255.0,
        id="bad_ids",
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"bad_ids.*\[0, 65535\]"):
        first_batch(too_many)
    nan = dict(good[0], image=np.full(good[0]["image"].shape, np.nan, np.float32), id="bad_nan")
    nan["segmentations"] = nan["segmentations"].astype(np.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad_nan.*NaN"):
        first_batch(nan)
    # Eagerly too.
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad_size"):
        input_pipeline.preprocess_train(
            {k: tf.constant(v) for k, v in mismatch.items()},
            tf.constant([0, 0], tf.int64),
            image_size=32,
            probs={},
            mask_padding=False,
        )
    # Eval: more annotators than the stated A_max.
    source = make_source(random_examples(2, rng, annotators=(2, 2)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="ex0.*num_annotators=1"):
        take(input_pipeline.eval_dataset(source, config, batch_size=2, num_annotators=1), 1)


@pytest.mark.parametrize(
    "overrides, error, key",
    [
        ({"model.encoding": "bits"}, KeyError, "config.model.encoding"),
        ({"data.lap_mode": "nearest"}, KeyError, "config.data.lap_mode"),
        ({"data.lap_mode": "similar", "model.num_bits": 5}, ValueError, "config.data.lap_mode"),
        ({"data.weights": (1.0, 2.0)}, ValueError, "config.data.weights"),
        ({"data.weights": (-1.0,)}, ValueError, "config.data.weights"),
        ({"batch_size": 6}, ValueError, "config.batch_size"),
        ({"data.aug_prob_multiplier": -1.0}, ValueError, "config.data.aug_prob_multiplier"),
        ({"data.shuffle_buffer": -1}, ValueError, "config.data.shuffle_buffer"),
    ],
)
def test_bad_options_name_the_config_key(overrides, error, key):
    source = make_source(random_examples(4, np.random.default_rng(10)))
    config = make_config(**overrides)
    with pytest.raises(error, match=key):
        input_pipeline.train_dataset([source], config, process_count=4)


def test_num_classes_follows_the_encoding():
    cases = [
        ("analog_bits", 6, "similar", 64),
        ("onehot", 4, "random", 16),
        ("rgb", 6, "random", 121),
        ("rgb", 6, "none", 125),
        ("analog_bits", 3, "none", 8),
    ]
    for encoding, bits, mode, k in cases:
        config = make_config(
            **{"model.encoding": encoding, "model.num_bits": bits, "data.lap_mode": mode}
        )
        assert input_pipeline.num_classes(config) == k


# ----------------------------------------------------------------------------- TFDS


def test_dead_leaves_through_tfds(tmp_path):
    pytest.importorskip("bitseg_jax.datasets.dead_leaves")
    config = make_config(
        **{"data.datasets": ("dead_leaves/tiny",), "data.data_dir": str(tmp_path), "batch_size": 4}
    )
    batches = list(_take_iter(input_pipeline.create_train_iterator(config), 3))
    restarted = list(_take_iter(input_pipeline.create_train_iterator(config, start_step=2), 1))
    assert_batches_equal(batches[2:], restarted)
    assert batches[0]["image"].shape == (4, 32, 32, 3)
    assert batches[0]["label"].max() < 64 and batches[0]["valid"].all()  # square 32 px images.
    evals = list(input_pipeline.create_eval_iterator(config, "validation", num_images=6, seed=1))
    assert len(evals) == 1 and evals[0]["_mask"].sum() == 6
    assert evals[0]["annotations"].shape == (8, 1, 32, 32)
    source = input_pipeline.source_from_tfds(
        "dead_leaves/tiny", "train[4:10]", data_dir=str(tmp_path)
    )
    assert source.num_examples == 6
    assert len(list(source.read(1, 4))) == 3


def _take_iter(iterator, n):
    for _ in range(n):
        yield next(iterator)
