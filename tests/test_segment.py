"""Tests for bitseg_jax/segment.py: the Segmenter (Python) and the segment CLI.

A real workdir (config.json + an orbax checkpoint of a random `tiny` U-Net) is written once per
module. Tests that check the geometry use a stand-in denoiser that segments the image by
brightness, so the expected label map at the input's resolution is known exactly.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import bitseg_jax
from bitseg_jax import checkpointing, encoding, models, segment
from configs import base


def _tiny_config():
    return base.get_config("tiny")


def _random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "/".join(str(k) for k in path): 0.2 * rng.normal(size=shape).astype(np.float32)
        for path, shape in _flat_shapes(models.abstract_params(config.model))
    }


def _flat_shapes(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat_shapes(value, (*prefix, key))
        else:
            yield (*prefix, key), value.shape


def _nested(flat):
    tree = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _write_workdir(path, config, params, step=3):
    """A training workdir as train.py leaves it: config.json + a regular checkpoint."""
    checkpointing.save_config(config, path)
    ckpt = checkpointing.Checkpointer(path, config)
    ckpt.save(step, {"step": np.int32(step), "params": params, "ema_params": params})
    ckpt.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("workdir")
    config = _tiny_config()
    _write_workdir(path, config, _nested(_random_params(config)))
    return path


def _bright_apply(model_config, params, x_t, t, image):
    """Stand-in U-Net: segment 1 where the (normalised) red channel is bright, else 0."""
    del params, x_t, t
    labels = (image[..., 0] > 1.0).astype(jnp.int32)
    return encoding.encode(labels, encoding="analog_bits", num_bits=model_config.num_bits)


def _bright_image(h, w):
    """uint8 [h, w, 3]: a bright top-left rectangle (segment 1) on a dark background."""
    image = np.full((h, w, 3), 20, np.uint8)
    image[: h // 2, : w // 3] = 250
    return image


def test_segmenter_labels_at_input_resolution(monkeypatch, workdir):
    monkeypatch.setattr(models, "apply_unet", _bright_apply)
    segmenter = segment.Segmenter.from_workdir(workdir)
    for h, w in ((45, 70), (97, 31)):  # landscape and portrait, odd sizes.
        image = _bright_image(h, w)
        out = segmenter(image, num_samples=1, steps=2)
        assert out["labels"].shape == (1, h, w) and out["labels"].dtype == np.int32
        expected = (image[..., 0] > 128).astype(np.int32)
        # Exact away from the edge, whose position moves by < 1 model pixel under resizing.
        agree = out["labels"][0] == expected
        margin = int(np.ceil(max(h, w) / 32)) + 1
        edge = np.zeros((h, w), bool)
        edge[max(h // 2 - margin, 0) : h // 2 + margin, : w // 3 + margin] = True
        edge[: h // 2 + margin, max(w // 3 - margin, 0) : w // 3 + margin] = True
        assert agree[~edge].all(), (h, w)
        # Perfectly confident bits: Eq. 3 gives probability 1 and entropy 0 everywhere.
        np.testing.assert_allclose(out["probs"], 1.0, atol=1e-6)
        np.testing.assert_allclose(out["entropy"], 0.0, atol=1e-6)
        assert "disagreement" not in out


def test_segmenter_random_model_samples_and_disagreement(workdir):
    segmenter = bitseg_jax.Segmenter.from_workdir(workdir, use_ema=True)  # the lazy name
    image = np.random.default_rng(0).integers(0, 256, (40, 53, 3), dtype=np.uint8)
    out = segmenter(image, num_samples=3, steps=2, guidance=1.0, seed=1)
    assert out["labels"].shape == (3, 40, 53)
    assert out["probs"].shape == out["entropy"].shape == (3, 40, 53)
    assert out["disagreement"].shape == (40, 53)
    assert out["labels"].min() >= 0 and out["labels"].max() < 2**segmenter.config.model.num_bits
    assert 0.0 <= out["probs"].min() and out["probs"].max() <= 1.0
    num_bits = segmenter.config.model.num_bits
    assert 0.0 <= out["entropy"].min() and out["entropy"].max() <= num_bits * np.log(2) + 1e-5
    assert 0.0 <= out["disagreement"].min() and out["disagreement"].max() <= 1.0
    assert out["disagreement"].max() > 0.0  # different noise, different samples.
    again = segmenter(image, num_samples=3, steps=2, guidance=1.0, seed=1)
    np.testing.assert_array_equal(again["labels"], out["labels"])


def test_cli_end_to_end(monkeypatch, workdir, tmp_path, capsys):
    monkeypatch.setattr(models, "apply_unet", _bright_apply)
    inputs = tmp_path / "in"
    inputs.mkdir()
    sizes = {"a": (45, 70), "b": (97, 31)}
    for name, (h, w) in sizes.items():
        Image.fromarray(_bright_image(h, w)).save(inputs / f"{name}.png")
    Image.fromarray(_bright_image(33, 33)).convert("L").save(tmp_path / "gray.jpg")
    (inputs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = [f"--workdir={workdir}", "--num-samples=2", "--steps=2", "--output", str(out)]
    status = segment.main([*argv, str(inputs), str(tmp_path / "gray.jpg"), "missing.png"])
    assert status == 0
    sizes["gray"] = (33, 33)
    for name, (h, w) in sizes.items():
        with Image.open(out / f"{name}_labels.png") as labels:
            assert labels.size == (w, h) and labels.mode == "L"
            sample0 = np.asarray(labels)
        for suffix in ("overlay", "uncertainty", "sample0_labels", "sample1_labels"):
            with Image.open(out / f"{name}_{suffix}.png") as png:
                assert png.size == (w, h), (name, suffix)
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / f"{name}_sample0_labels.png")), sample0
        )
        assert set(np.unique(sample0)) == {0, 1}
    err = capsys.readouterr().err
    assert "broken.png" in err and "missing.png" in err and "Skipped 2" in err


def test_cli_single_sample_writes_no_sample_files(monkeypatch, workdir, tmp_path):
    monkeypatch.setattr(models, "apply_unet", _bright_apply)
    Image.fromarray(_bright_image(20, 26)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    assert segment.main([f"--workdir={workdir}", "--steps=2", str(tmp_path / "x.png"),
                         "--output", str(out)]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "x_labels.png",
        "x_overlay.png",
        "x_uncertainty.png",
    ]


def test_cli_nothing_segmented_fails(workdir, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_bytes(b"\x00\x01")
    status = segment.main(
        [f"--workdir={workdir}", str(tmp_path / "bad.jpg"), "--output", str(tmp_path / "o")]
    )
    assert status == 1
    assert "bad.jpg" in capsys.readouterr().err


def test_bad_workdirs_name_the_problem(tmp_path, capsys):
    config = _tiny_config()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        segment.Segmenter.from_workdir(empty)
    no_ckpt = tmp_path / "no_ckpt"
    checkpointing.save_config(config, no_ckpt)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        segment.Segmenter.from_workdir(no_ckpt)
    # A checkpoint written with another model config than the workdir's config.json.
    wider = base.get_config("tiny")
    with wider.unlocked():
        wider.model.num_channels = 16
    mismatched = tmp_path / "mismatched"
    _write_workdir(mismatched, config, _nested(_random_params(wider)))
    with pytest.raises(ValueError, match="mismatched"):
        segment.Segmenter.from_workdir(mismatched)
    image = tmp_path / "x.png"
    Image.fromarray(_bright_image(8, 8)).save(image)
    status = segment.main([f"--workdir={mismatched}", str(image), "--output", str(tmp_path)])
    assert status == 2 and "mismatched" in capsys.readouterr().err


def test_from_export_reads_weights_and_config(tmp_path):
    config = _tiny_config()
    flat = _random_params(config, seed=4)
    np.savez(tmp_path / "params.npz", **flat)
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    segmenter = segment.Segmenter.from_export(tmp_path)
    got = checkpointing.flatten_params(segmenter.params)
    assert set(got) == set(flat)
    for key, value in flat.items():
        np.testing.assert_array_equal(np.asarray(got[key]), value)
    with pytest.raises(FileNotFoundError, match="ema_params.npz"):
        segment.Segmenter.from_export(tmp_path, use_ema=True)


def test_bad_image_and_label_range(workdir):
    segmenter = segment.Segmenter.from_workdir(workdir)
    with pytest.raises(ValueError, match="image"):
        segmenter(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="image"):
        segmenter(np.zeros((4, 4), np.uint8))
    assert segment._label_png(np.array([[0, 300]])).mode == "I;16"
    assert segment._label_png(np.array([[0, 255]])).mode == "L"
    with pytest.raises(ValueError, match="65535"):
        segment._label_png(np.array([[0, 70000]]))
