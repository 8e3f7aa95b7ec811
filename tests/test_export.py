"""Export: npz round trip, and the jax.export'ed sampler run without bitseg_jax."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from bitseg_jax import checkpointing, diffusion, encoding, export, input_pipeline, models
from configs import base

# Runs a script with bitseg_jax made unimportable (None in sys.modules makes `import` raise).
_NO_BITSEG = (
    "import runpy, sys; sys.modules['bitseg_jax'] = None; "
    "script, *args = sys.argv[1:]; sys.argv = [script, *args]; "
    "runpy.run_path(script, run_name='__main__')"
)


def _random_params(config):
    """Initial params with the zero-initialised layers filled in, so samples are not trivial."""
    params = models.init_unet(config.model, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config = base.get_config("tiny")
    params = _random_params(config)
    ema = jax.tree.map(lambda x: 0.5 * x, params)
    out = export.export_params(
        config, params, tmp_path_factory.mktemp("export"), ema_params=ema, step=7
    )
    return config, params, ema, out


def test_export_folder_is_complete(exported):
    _, params, _, out = exported
    names = {p.name for p in out.iterdir()}
    assert names == {
        "params.npz",
        "ema_params.npz",
        "config.json",
        "export.json",
        "sampler.jax_exported",
        "segment_exported.py",
    }
    meta = json.loads((out / "export.json").read_text())
    assert meta["step"] == 7 and meta["platforms"] == ["cpu", "cuda", "tpu"]
    assert len(meta["param_keys"]) == len(jax.tree.leaves(params))
    assert checkpointing.config_from_json(json.loads((out / "config.json").read_text()))


def test_npz_round_trip(exported):
    config, params, ema, out = exported
    like = models.abstract_params(config.model)
    for name, expected in (("params.npz", params), ("ema_params.npz", ema)):
        loaded = checkpointing.load_npz_params(out / name, like)
        jax.tree.map(
            lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
            loaded,
            jax.tree.map(np.asarray, expected),
        )


def _in_process_labels(config, params, images, valid, seed):
    bits = diffusion.sample(
        jax.tree_util.Partial(
            lambda p, x, t, im: models.apply_unet(config.model, p, x, t, im), params
        ),
        jax.random.PRNGKey(seed),
        images,
        valid,
        diffusion.DiffusionConfig.from_config(config.diffusion),
        num_channels=encoding.num_channels(config.model.encoding, config.model.num_bits),
        num_steps=config.eval.num_steps,
        guidance_weight=config.eval.guidance_weight,
        sampler=config.eval.sampler,
    )
    return np.asarray(encoding.decode(bits, encoding="analog_bits", num_bits=config.model.num_bits))


def test_exported_sampler_matches_in_process_sampling(exported, tmp_path):
    """A fresh process without bitseg_jax loads the export and gives the in-process labels."""
    config, params, _, out = exported
    s = config.model.image_size
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, s, s, 3)).astype(np.float32)
    valid = np.ones((3, s, s), bool)
    valid[1, :, s // 2 :] = False  # a padded example: replacement must match too
    np.savez(tmp_path / "inputs.npz", images=images, valid=valid)
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(out)!r})\n"
        "from segment_exported import ExportedSegmenter\n"
        f"seg = ExportedSegmenter({str(out)!r})\n"
        f"x = np.load({str(tmp_path / 'inputs.npz')!r})\n"
        "r = seg(x['images'], x['valid'], seed=5)\n"
        f"np.savez({str(tmp_path / 'result.npz')!r}, **r)\n"
    )
    subprocess.run([sys.executable, "-c", _NO_BITSEG, str(probe)], check=True)
    result = np.load(tmp_path / "result.npz")
    expected = _in_process_labels(config, params, images, valid, seed=5)
    assert len(np.unique(expected)) > 4, "the probe model should give non-trivial labels"
    np.testing.assert_array_equal(result["labels"], expected)
    assert result["probs"].shape == (3, s, s) and result["entropy"].shape == (3, s, s)
    assert np.all((result["probs"] > 0) & (result["probs"] <= 1 + 1e-6))


def test_segment_exported_cli(exported, tmp_path):
    _, _, _, out = exported
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide": (45, 70), "tall": (61, 33)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            inputs / f"{name}.png"
        )
    (inputs / "broken.png").write_bytes(b"not an image")
    result = subprocess.run(
        [sys.executable, "-c", _NO_BITSEG, str(out / "segment_exported.py"), str(inputs),
         "--output", str(tmp_path / "out"), "--num-samples", "2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "broken.png" in result.stderr
    for name, (h, w) in sizes.items():
        for suffix in ("labels", "sample0_labels", "sample1_labels"):
            with Image.open(tmp_path / "out" / f"{name}_{suffix}.png") as im:
                assert im.size == (w, h)
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "out" / f"{name}_labels.png")),
            np.asarray(Image.open(tmp_path / "out" / f"{name}_sample0_labels.png")),
        )


def test_exported_preprocessing_matches_pipeline(exported):
    """The standalone script's PIL preprocessing agrees with input_pipeline.prepare_image."""
    _, _, _, out = exported
    sys.path.insert(0, str(out))
    try:
        from segment_exported import ExportedSegmenter
    finally:
        sys.path.remove(str(out))
    seg = ExportedSegmenter(out)
    rng = np.random.default_rng(0)
    for shape in ((45, 70, 3), (97, 40, 3), (20, 25, 3)):  # down- and upsampling
        image = rng.integers(0, 255, shape, dtype=np.uint8)
        ours, valid, _ = seg.prepare(image)
        ref, ref_valid = (
            np.asarray(a) for a in input_pipeline.prepare_image(image, seg.image_size)
        )
        np.testing.assert_array_equal(valid, ref_valid)
        # Rounded area averages may differ by one grey level at .5 ties: 1/255/0.225 ~= 0.018.
        np.testing.assert_allclose(ours, ref, atol=0.02)


def test_rgb_encoding_is_rejected():
    config = base.get_config("tiny")
    with config.unlocked():
        config.model.encoding = "rgb"
    with pytest.raises(ValueError, match="encoding"):
        export.sampler_fn(config, [])


def test_segmenter_loads_the_export(exported):
    """`Segmenter.from_export` reads the folder export wrote (config JSON + npz weights)."""
    from bitseg_jax import Segmenter

    _, params, ema, out = exported
    for use_ema, expected in ((False, params), (True, ema)):
        segmenter = Segmenter.from_export(out, use_ema=use_ema)
        np.testing.assert_array_equal(
            np.asarray(jax.tree.leaves(segmenter.params)[0]),
            np.asarray(jax.tree.leaves(expected)[0]),
        )
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    result = segmenter(image, num_samples=2, steps=2)
    assert result["labels"].shape == (2, 40, 50)
