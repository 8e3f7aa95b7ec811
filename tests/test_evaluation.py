"""Tests for bitseg_jax/evaluation.py: Evaluator, named setups, sweeps, plots.

Most tests feed the Evaluator a small synthetic eval stream (a stand-in for
`input_pipeline.create_eval_iterator` with exactly known ground truth, several annotators and
padded rows) and, where the scores must be exact, a "perfect" stand-in denoiser that reads the
ground-truth classes from the image and returns their encoding.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from bitseg_jax import encoding, evaluation, metrics, models
from configs import base

IMAGE_SIZE = 32
PERFECT_SCALE = 8.0  # the stand-in images carry class / PERFECT_SCALE in channel 0.


def _tiny_config(**eval_overrides):
    config = base.get_config("tiny")
    with config.unlocked():
        for key, value in eval_overrides.items():
            setattr(config.eval, key, value)
    return config


def _example(rng: np.random.Generator, index: int, num_annotators: int) -> dict:
    """One eval example: random rectangles, a top-left valid region, A annotators."""
    s = IMAGE_SIZE
    h, w = s - 4 * (index % 3), s - 8 * (index % 2)  # valid region (content top-left)
    inst = np.zeros((s, s), np.int32)
    for seg_id in range(1, 6):
        y, x = rng.integers(0, s - 8, 2)
        inst[y : y + rng.integers(4, 12), x : x + rng.integers(4, 12)] = seg_id
    valid = np.zeros((s, s), bool)
    valid[:h, :w] = True
    # A stand-in palette: instance id -> class id (an injective relabelling).
    label = np.where(valid, (inst * 7 + 3) % 64, 0).astype(np.int32)
    image = rng.normal(size=(s, s, 3)).astype(np.float32)
    image[..., 0] = label / PERFECT_SCALE
    image[~valid] = 0.0
    annotations = np.full((num_annotators, s, s), -1, np.int32)
    annotations[0] = np.where(valid, inst, -1)
    if num_annotators > 1:
        annotations[1] = np.where(valid, inst // 2, -1)  # a coarser annotator
    if num_annotators > 2 and index % 2 == 0:
        annotations[2] = np.where(valid, (inst > 0).astype(np.int32), -1)  # else absent
    return {
        "image": image,
        "label": label,
        "valid": valid,
        "annotations": annotations,
        "eval_valid": valid,
        "_mask": True,
        "orig_size": np.array([h, w], np.int32),
        "id": f"img{index}".encode(),
    }


def _upscaled(example: dict, factor: int) -> dict:
    """The example with its annotations (and their valid mask) at `factor` times the model's
    size, exactly as nearest resizing of the content makes them: each pixel a block."""
    out = dict(example)
    for key in ("annotations", "eval_valid"):
        out[key] = np.repeat(np.repeat(example[key], factor, -2), factor, -1)
    return out


def _stream(num_images: int, num_annotators: int = 1, batch_size: int = 8, eval_scale: int = 1):
    """A stand-in for `create_eval_iterator`: fixed examples, last batch padded (_mask=False);
    annotations at `eval_scale` times the model's size."""
    rng = np.random.default_rng(0)
    examples = [_example(rng, i, num_annotators) for i in range(num_images)]
    examples = [_upscaled(ex, eval_scale) for ex in examples]

    def create_eval_iterator(config, split, *, num_images=None, seed=0, batch_size=None):
        del config, split, seed, batch_size
        chosen = examples[: num_images or len(examples)]
        for start in range(0, len(chosen), batch_size_):
            rows = chosen[start : start + batch_size_]
            pad = {k: np.zeros_like(np.asarray(v)) for k, v in rows[0].items()}
            pad["_mask"], pad["id"] = False, b""
            rows = rows + [pad] * (batch_size_ - len(rows))
            yield {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}

    batch_size_ = batch_size
    return examples, create_eval_iterator


def _perfect_apply(model_config, params, x_t, t, image):
    """Stand-in U-Net that returns the encoded ground-truth classes read off the image."""
    del params, x_t, t
    labels = jnp.round(image[..., 0] * PERFECT_SCALE).astype(jnp.int32)
    return encoding.encode(labels, encoding="analog_bits", num_bits=model_config.num_bits)


@pytest.fixture
def perfect(monkeypatch):
    monkeypatch.setattr(models, "apply_unet", _perfect_apply)


def _random_tiny_params(config):
    # Random normal weights of the U-Net's shapes, drawn on host: no init compile, and unlike a
    # fresh init (whose zero head outputs exactly 0) the samples depend on the noise.
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda p: 0.2 * rng.normal(size=p.shape).astype(np.float32),
        models.abstract_params(config.model),
    )


def test_perfect_denoiser_scores_one(monkeypatch, perfect):
    _, stream = _stream(num_images=10)
    monkeypatch.setattr(evaluation.input_pipeline, "create_eval_iterator", stream)
    config = _tiny_config()
    ev = evaluation.Evaluator(config, split="validation", num_images=10, num_samples=2)
    results = ev.run({})
    for key in ("ari", "hiou_e", "hiou", "max_ari", "max_hiou_e", "likelihood"):
        np.testing.assert_allclose(results[key], 1.0, atol=1e-6, err_msg=key)
    assert results["num_images"] == 10  # the 6 padded rows of the second batch are dropped.
    assert not any("vs_all" in k or k.startswith("ged") for k in results)
    np.testing.assert_allclose(ev.best_of_n["ari"], [1.0, 1.0], atol=1e-6)
    # 4 rows of image | GT | 2 samples | uncertainty, 32 px tiles with 2 px separators.
    assert ev.images.shape == (4 * 34 + 2, 5 * 34 + 2, 3) and ev.images.dtype == np.uint8


def test_scoring_at_twice_the_model_size(monkeypatch, perfect):
    # config.eval.image_size = 2 S: the pipeline gives annotations at 2 S and the evaluator
    # upsamples the samples (at S) to them. Here the annotations are the model-size maps
    # upsampled 2x, so a perfect sample scores 1 when scored in register with them.
    _, stream = _stream(num_images=6, num_annotators=2, eval_scale=2)
    monkeypatch.setattr(evaluation.input_pipeline, "create_eval_iterator", stream)
    config = _tiny_config(image_size=2 * IMAGE_SIZE)
    ev = evaluation.Evaluator(config, split="validation", num_images=6, num_samples=1)
    results = ev.run({})
    for key in ("ari", "hiou_e", "hiou", "likelihood"):
        np.testing.assert_allclose(results[key], 1.0, atol=1e-6, err_msg=key)
    assert results["num_images"] == 6 and results["ari_vs_all"] < 1.0
    assert ev.images.shape == (4 * 66 + 2, 4 * 66 + 2, 3)  # tiles at the scoring size.


def test_multi_annotator_scores_and_ged(monkeypatch, perfect):
    examples, stream = _stream(num_images=6, num_annotators=3)
    monkeypatch.setattr(evaluation.input_pipeline, "create_eval_iterator", stream)
    config = _tiny_config()
    results = evaluation.Evaluator(config, split="validation", num_images=6, num_samples=1).run({})
    # The perfect sample equals annotator 0's partition: recompute every multi-annotator score
    # independently, from the stand-in data and metrics' scalar functions.
    ari_all, best_all, ged_ari, ged_hiou = [], [], [], []
    for ex in examples:
        valid, annots = ex["valid"], ex["annotations"]
        pred = np.where(valid, annots[0], 0)
        present = [a for a in annots if (a >= 0).any()]
        aris = [metrics.ari(a, pred, valid) for a in present]
        ari_all.append(np.mean(aris))
        best_all.append(np.max(aris))
        ged_ari.append(metrics.ged(pred[None], annots, valid, distance="ari"))
        ged_hiou.append(metrics.ged(pred[None], annots, valid, distance="hiou_e"))
    np.testing.assert_allclose(results["ari"], 1.0, atol=1e-6)
    np.testing.assert_allclose(results["ari_vs_all"], np.mean(ari_all), atol=1e-6)
    np.testing.assert_allclose(results["best_ari_vs_all"], np.mean(best_all), atol=1e-6)
    np.testing.assert_allclose(results["ged_ari"], np.mean(ged_ari), atol=1e-6)
    np.testing.assert_allclose(results["ged_hiou_e"], np.mean(ged_hiou), atol=1e-6)
    assert results["ari_vs_all"] < 1.0  # the other annotators really disagree.
    for key in ("hiou_e_vs_all", "best_hiou_e_vs_all"):
        assert 0.0 < results[key] <= 1.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with dead_leaves/tiny (the `tiny` config's data) prepared locally."""
    import tensorflow_datasets as tfds

    import bitseg_jax.datasets.dead_leaves  # noqa: F401  (registers the builder)

    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("dead_leaves/tiny", data_dir=path).download_and_prepare()
    return path


def test_tiny_model_on_real_pipeline_all_keys_in_range_and_reproducible(data_dir):
    config = _tiny_config(max_images=0)
    with config.unlocked():
        config.data.data_dir = data_dir
    params = _random_tiny_params(config)
    ev = evaluation.Evaluator(config, split="validation", num_images=8, num_samples=2, seed=3)
    first = ev.run(params)
    expected = {"ari", "hiou_e", "hiou", "max_ari", "max_hiou_e", "max_hiou", "likelihood"}
    assert expected | {"num_images"} == set(first)
    assert -1.0 <= first["ari"] <= first["max_ari"] <= 1.0
    for key in expected - {"ari", "max_ari"}:
        assert 0.0 <= first[key] <= 1.0, key
    # Samples of one image use distinct fold_in'd rngs: they differ, so the best of two beats
    # the mean of two.
    assert first["max_ari"] > first["ari"] and first["max_hiou_e"] > first["hiou_e"]
    assert first["likelihood"] < 1.0  # a random model is not certain of the ground truth.
    again = ev.run(params)
    for key in expected:
        np.testing.assert_allclose(again[key], first[key], rtol=1e-6, err_msg=key)


def test_sample_fn_is_shared_per_setting():
    config = _tiny_config()
    fn = evaluation.get_sample_fn(config, num_steps=2, guidance_weight=1.0, sampler="ddpm")
    assert fn is evaluation.get_sample_fn(config, num_steps=2, guidance_weight=1.0, sampler="ddpm")
    for other in ({"num_steps": 3}, {"guidance_weight": 0.0}, {"sampler": "ddim"}):
        kwargs = {"num_steps": 2, "guidance_weight": 1.0, "sampler": "ddpm", **other}
        assert fn is not evaluation.get_sample_fn(config, **kwargs)


def test_disagreement_is_relabelling_invariant():
    base_map = np.zeros((4, 6), np.int32)
    base_map[:, 3:] = 1
    relabelled = np.where(base_map == 0, 9, 4)
    np.testing.assert_array_equal(
        evaluation.disagreement(np.stack([base_map, relabelled, base_map])), 0.0
    )
    changed = relabelled.copy()
    changed[0, 0] = 4  # one pixel moves to the other segment in one of two other samples.
    out = evaluation.disagreement(np.stack([base_map, changed, relabelled]))
    expected = np.zeros((4, 6))
    expected[0, 0] = 0.5
    np.testing.assert_allclose(out, expected)
    split = base_map.copy()
    split[:2, :3] = 7  # a new segment with no partner in sample 0 disagrees everywhere it is.
    out = evaluation.disagreement(np.stack([base_map, split]))
    assert out[:2, :3].min() == 1.0 or out[2:, :3].min() == 1.0
    with pytest.raises(ValueError, match="samples"):
        evaluation.disagreement(base_map[None])


def test_named_setups_match_spec():
    s = evaluation.SETUPS
    assert {"vali", "test", "train", "64x3[vali]", "64x3[train]", "sweeps[ts]",
            "sweeps[ts][ddim]", "sweeps[gw]", "bestofn"} <= set(s)  # fmt: skip
    assert (s["64x3[vali]"].num_images, s["64x3[vali]"].num_samples) == (64, 3)
    assert s["64x3[train]"].split == "train" and s["vali"].num_images is None
    ts = s["sweeps[ts]"]
    assert (ts.num_images, ts.seed, ts.guidance_weight, ts.sampler) == (256, 123, 1.0, "ddpm")
    assert ts.sweep == ("num_steps", (2, 3, 4, 5, 6, 8, 10, 20, 30, 50, 100, 200))
    assert s["sweeps[ts][ddim]"].sampler == "ddim"
    gw = s["sweeps[gw]"]
    assert gw.sweep[0] == "guidance_weight" and gw.num_steps == 8
    assert set(gw.sweep[1]) == {-1, -0.1, 0, 0.1, 0.3, 1, 2, 2.5, 3, 10}
    assert s["bestofn"].num_samples >= 8
    config = _tiny_config()
    assert evaluation.split_name(config, "vali") == config.data.eval_split
    with pytest.raises(KeyError, match="64x3"):
        evaluation.get_setup("64x4[vali]")


def test_run_eval_writes_json_csv_and_plots(monkeypatch, perfect, tmp_path):
    _, stream = _stream(num_images=6)
    monkeypatch.setattr(evaluation.input_pipeline, "create_eval_iterator", stream)
    restored = []

    config = _tiny_config(max_images=4)
    params = _random_tiny_params(config)

    def fake_restore(workdir, *, which="latest", step=None, use_ema=False):
        restored.append((str(workdir), which, step, use_ema))
        return params, 7

    monkeypatch.setattr(evaluation.checkpointing, "restore_params", fake_restore)
    # Shrink the sweeps (values) and, via config.eval.max_images, the images of every run.
    small = {"sweeps[ts]": (2, 3), "sweeps[ts][ddim]": (2,), "sweeps[gw]": (0.0, 1.0)}
    for name, values in small.items():
        setup = evaluation.SETUPS[name]
        monkeypatch.setitem(
            evaluation.SETUPS,
            name,
            evaluation.dataclasses.replace(setup, sweep=(setup.sweep[0], values)),
        )
    bestofn = evaluation.SETUPS["bestofn"]
    monkeypatch.setitem(
        evaluation.SETUPS,
        "bestofn",
        evaluation.dataclasses.replace(bestofn, num_samples=3, sweep=("guidance_weight", (0.0,))),
    )

    single = evaluation.run_eval(config, tmp_path, setup="64x3[vali]")
    assert restored[-1] == (str(tmp_path), "latest", None, False)
    assert single["step"] == 7 and single["num_images"] == 4 and single["ari"] == 1.0
    out = tmp_path / "eval"
    assert json.loads((out / "64x3[vali].json").read_text())["max_hiou_e"] == 1.0
    assert Image.open(out / "64x3[vali]_samples.png").size[1] > 0

    for name in ("sweeps[ts]", "sweeps[ts][ddim]", "sweeps[gw]", "bestofn"):
        record = evaluation.run_eval(config, tmp_path, setup=name, which="best", step=7)
        saved = json.loads((out / f"{name}.json").read_text())
        assert saved == json.loads(json.dumps(record))
        assert len(saved["results"]) == len(saved["values"])
        for entry in saved["results"]:
            assert {"ari", "hiou_e", "hiou", "max_ari", "max_hiou_e"} <= set(entry)
        rows = (out / f"{name}.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + len(saved["values"]) and "hiou_e" in rows[0]
        with Image.open(out / f"{name}.png") as png:
            assert png.format == "PNG" and min(png.size) > 100
    assert restored[-1] == (str(tmp_path), "best", 7, False)
    assert [r["num_steps"] for r in saved_results("sweeps[ts]", out)] == [2, 3]
    curve = json.loads((out / "bestofn.json").read_text())["results"][0]["best_of_n_ari"]
    assert len(curve) == 3
    assert "best_of_n_ari_3" in (out / "bestofn.csv").read_text()


def saved_results(name, out):
    return json.loads((out / f"{name}.json").read_text())["results"]


def test_bad_arguments_raise_clear_errors(monkeypatch):
    config = _tiny_config()
    with pytest.raises(ValueError, match="num_samples"):
        evaluation.Evaluator(config, split="validation", num_images=4, num_samples=0)
    with pytest.raises(ValueError, match="num_images"):
        evaluation.Evaluator(config, split="validation", num_images=0, num_samples=1)
    _, stream = _stream(num_images=3, batch_size=3)  # 3 rows do not split over 8 devices.
    monkeypatch.setattr(evaluation.input_pipeline, "create_eval_iterator", stream)
    with pytest.raises(ValueError, match="batch_size"):
        evaluation.Evaluator(config, split="validation", num_images=3, num_samples=1).run({})
    with pytest.raises(KeyError, match="split role"):
        evaluation.split_name(config, "validation")
