"""Tests of train.py and main.py with the `tiny` config on dead_leaves/tiny (SPEC 9).

- the sharded step on 8 CPU devices equals the 1-device step (2 steps);
- SIGTERM at step 2 saves; resuming ends with the parameters of an uninterrupted run;
- a non-finite loss stops the run with a clear message and saves nothing;
- an end-to-end `main` run writes event files, checkpoints and config.json (in-process; the
  multi-process test runs main.py in subprocesses).
"""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest
from etils import epath

from bitseg_jax import checkpointing, input_pipeline, sharding, train
from configs import base

REPO = epath.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with dead_leaves/tiny prepared (generated locally, seconds)."""
    import tensorflow_datasets as tfds

    import bitseg_jax.datasets.dead_leaves  # noqa: F401  (registers the builder)

    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("dead_leaves/tiny", data_dir=path).download_and_prepare()
    return path


def _config(data_dir: str | None = None, **overrides):
    config = base.get_config("tiny")
    with config.unlocked():
        if data_dir:
            config.data.data_dir = data_dir
        # Only training: evaluation and validation loss have their own (end-to-end) test.
        config.num_vali_batches = 0
        config.eval.num_images = 0
        config.update_from_flattened_dict(overrides)
    return config


def _synthetic_batch(config, rng) -> dict:
    s, b = config.model.image_size, config.batch_size
    return {
        "image": rng.normal(size=(b, s, s, 3)).astype(np.float32),
        "label": rng.integers(0, 2**config.model.num_bits, size=(b, s, s)).astype(np.int32),
        "valid": np.ones((b, s, s), bool),
    }


def _run_steps(config, mesh, initial_state, batches):
    fns = train.step_functions(train._step_config(config), mesh)
    state = jax.device_put(initial_state, sharding.replicated(mesh))
    for batch in batches:
        state, metrics = fns.train(state, sharding.to_global(batch, mesh), jax.random.key(1))
    return jax.device_get(state), jax.device_get(metrics)


def test_sharded_step_matches_single_device():
    """Data parallelism changes nothing but the reduction order (SPEC 9.1 on 8 devices)."""
    assert jax.device_count() == 8
    config = _config()
    rng = np.random.default_rng(0)
    batches = [_synthetic_batch(config, rng) for _ in range(2)]
    mesh8 = sharding.create_mesh()
    initial = jax.device_get(
        train.step_functions(train._step_config(config), mesh8).init(jax.random.key(0))
    )
    state8, metrics8 = _run_steps(config, mesh8, initial, batches)
    state1, metrics1 = _run_steps(config, sharding.create_mesh(jax.devices()[:1]), initial, batches)
    assert int(state8.step) == int(state1.step) == 2
    for key in ("train/loss", "train/grad_norm", "train/param_norm", "train/lr"):
        np.testing.assert_allclose(metrics8[key], metrics1[key], rtol=1e-5, err_msg=key)
    # Two Adam steps move a param by at most lr(1) + lr(2) = 1.5e-4; a real difference in the
    # update (wrong batch split, RNG) moves most params by ~1e-4. Reduction-order noise is ~1e-6,
    # largest in zero-initialised layers (Adam normalises their tiny gradients to full steps).
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    for a, b in zip(
        jax.tree.leaves(state8.ema_params), jax.tree.leaves(state1.ema_params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _patch_iterator(monkeypatch, on_batch):
    """Wraps the train iterator: `on_batch(step, batch)` runs as batch `step` is read."""
    real = input_pipeline.create_train_iterator

    def create(config, *, start_step=0):
        for step, batch in enumerate(real(config, start_step=start_step), start=start_step + 1):
            yield on_batch(step, batch)

    monkeypatch.setattr(input_pipeline, "create_train_iterator", create)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir):
    """An uninterrupted tiny run (4 steps): (config, workdir, final state on host)."""
    config = _config(data_dir, ckpt_every_steps=100)
    workdir = tmp_path_factory.mktemp("full")
    state = train.train_and_evaluate(config, str(workdir))
    return config, workdir, jax.device_get(state)


def test_preempt_and_resume_matches_uninterrupted(tmp_path, full_run, monkeypatch):
    config, _, full = full_run

    def sigterm_at_2(step, batch):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag
        return batch

    with monkeypatch.context() as m:
        _patch_iterator(m, sigterm_at_2)
        part = train.train_and_evaluate(config, str(tmp_path))
    assert int(part.step) == 2  # stopped at the preemption step ...
    assert checkpointing.Checkpointer(tmp_path, config).latest_step() == 2  # ... and saved it
    resumed = jax.device_get(train.train_and_evaluate(config, str(tmp_path)))
    assert int(full.step) == int(resumed.step) == config.total_steps
    # Same data order (start_step), same randomness (fold_in(rng, step)), same restored state:
    # bitwise equal.
    for name in ("params", "ema_params", "opt_state"):
        a_leaves, b_leaves = (
            jax.tree.leaves(getattr(full, name)),
            jax.tree.leaves(getattr(resumed, name)),
        )
        for a, b in zip(a_leaves, b_leaves, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    params, step = checkpointing.restore_params(tmp_path)
    assert step == config.total_steps
    flat = checkpointing.flatten_params(full.params)
    for key, value in checkpointing.flatten_params(params).items():
        np.testing.assert_array_equal(np.asarray(value), flat[key], err_msg=key)


def test_nonfinite_loss_stops_without_saving(tmp_path, full_run, monkeypatch):
    config, _, _ = full_run
    with config.unlocked():
        config = config.copy_and_resolve_references()
        config.ckpt_every_steps = 1

    def nan_image(step, batch):
        return {**batch, "image": np.full_like(batch["image"], np.nan)}

    _patch_iterator(monkeypatch, nan_image)
    with pytest.raises(FloatingPointError, match=r"Non-finite train/loss = nan at step 1"):
        train.train_and_evaluate(config, str(tmp_path))
    steps = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == []


def test_restore_into_different_model_config_fails(tmp_path, full_run):
    """A workdir's checkpoint of one model config is refused by a run with another."""
    config, workdir, _ = full_run
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    wider = _config(config.data.data_dir, **{"model.num_channels": 16})
    with pytest.raises(
        ValueError, match=r"Parameter '[^']+' has shape \(.*\) in checkpoint .* but"
    ):
        train.train_and_evaluate(wider, str(tmp_path))


def test_main_end_to_end(tmp_path, data_dir, full_run):
    """main.run with tiny: train, validation loss, evaluation, checkpoints, event files.

    (The command line itself, with --config overrides, runs in test_multiprocess.)
    """
    from bitseg_jax import main

    workdir = tmp_path / "run"
    config = base.get_config("tiny")
    config.data.data_dir = data_dir
    main.run(config, str(workdir), mode="train")
    assert checkpointing.load_config(workdir).model.num_channels == 8
    events = list(workdir.glob("events.out.tfevents.*"))
    assert events, list(workdir.iterdir())
    assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == ["4"]
    assert [p.name for p in (workdir / "best").iterdir() if p.name.isdigit()] == ["4"]
    # The logged scalars and the sample grid made it into the event file.
    import tensorflow as tf

    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        tags.update(v.tag for v in event.summary.value)
    expected = (
        "train/loss",
        "train/grad_norm",
        "train/lr",
        "train/param_norm",
        "vali/loss",
        "eval/max_ari",
        "eval_train/ari",
        "eval/samples",
    )
    for tag in expected:
        assert tag in tags, sorted(tags)

    # --mode=eval scoring at twice the model's size, written under its own tag.
    with config.unlocked():
        config.eval.image_size = 2 * config.model.image_size
        config.eval.max_images = 8
    main.run(config, str(workdir), mode="eval", eval_setup="vali", eval_tag="64px")
    record = json.loads((workdir / "eval" / "vali_64px.json").read_text())
    assert record["eval_image_size"] == 64 and record["image_size"] == 32
    assert record["dataset"] == "dead_leaves/tiny" and record["num_images"] == 8
    assert -1.0 <= record["ari"] <= 1.0 and not (workdir / "eval" / "vali.json").exists()
    with pytest.raises(ValueError, match="Eval tag"):
        main.run(config, str(workdir), mode="eval", eval_setup="vali", eval_tag="a/b")


def test_main_reports_missing_data(tmp_path):
    """A manual-download data set whose files are absent stops main with a helpful message."""
    pytest.importorskip("bitseg_jax.datasets.bsds500")
    from bitseg_jax import main
    from configs import bsds_cpu

    config = bsds_cpu.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.manual_dir = str(tmp_path / "nowhere")
    with pytest.raises(main.DataNotFoundError) as info:
        main.check_data(config)
    message = str(info.value)
    assert "bsds500" in message and "nowhere" in message and "To prepare it" in message


def test_main_log_filter_drops_orbax_info_only():
    import logging as py_logging

    from bitseg_jax.main import QuietOrbaxFilter

    def record(path, level):
        return py_logging.LogRecord("absl", level, path, 1, "msg", None, None)

    quiet = QuietOrbaxFilter()
    orbax_file = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not quiet.filter(record(orbax_file, py_logging.INFO))
    assert quiet.filter(record(orbax_file, py_logging.WARNING))
    assert quiet.filter(record("/repo/bitseg_jax/train.py", py_logging.INFO))
