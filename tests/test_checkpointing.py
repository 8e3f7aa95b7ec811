"""Tests of checkpointing.py on a small stand-in state (the train tests use the real model)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bitseg_jax import checkpointing, sharding, train_state
from configs import base


def _state(rng, widths=(4, 6)):
    k1, k2 = jax.random.split(rng)
    params = {
        "input_blocks": {"0": {"kernel": jax.random.normal(k1, (3, 3, 2, widths[0]))}},
        "out": {"bias": jax.random.normal(k2, (widths[1],))},
    }
    tx = optax.adamw(1e-3)
    return train_state.TrainState(
        step=jnp.asarray(7, jnp.int32),
        params=params,
        ema_params=jax.tree.map(lambda x: x * 0.5, params),
        opt_state=tx.init(params),
    )


def _abstract(state, mesh):
    repl = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_save_restore_roundtrip_with_shardings(tmp_path):
    config = base.get_config("tiny")
    mesh = sharding.create_mesh()
    state = jax.device_put(_state(jax.random.key(0)), sharding.replicated(mesh))
    ckpt = checkpointing.Checkpointer(tmp_path, config, max_to_keep=1)
    ckpt.save(2, state)
    ckpt.save(7, state)
    ckpt.save(7, state)  # already saved: skipped, not an error
    ckpt.close()

    ckpt = checkpointing.Checkpointer(tmp_path, config, max_to_keep=1)
    assert ckpt.latest_step() == 7
    steps = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == ["7"]  # max_to_keep=1
    restored = ckpt.restore(_abstract(state, mesh))
    ckpt.close()
    assert isinstance(restored, train_state.TrainState)
    _assert_trees_equal(restored, state)
    assert restored.params["out"]["bias"].sharding == sharding.replicated(mesh)


def test_restore_into_other_model_config_names_the_parameter(tmp_path):
    config = base.get_config("tiny")
    mesh = sharding.create_mesh()
    ckpt = checkpointing.Checkpointer(tmp_path, config)
    ckpt.save(1, _state(jax.random.key(0), widths=(4, 6)))
    ckpt.close()
    other = _abstract(_state(jax.random.key(0), widths=(8, 6)), mesh)
    ckpt = checkpointing.Checkpointer(tmp_path, config)
    with pytest.raises(
        ValueError, match=r"'input_blocks/0/kernel' has shape \(3, 3, 2, 4\).*\(3, 3, 2, 8\)"
    ):
        ckpt.restore(other)
    ckpt.close()


def test_best_checkpoint_and_restore_params(tmp_path):
    config = base.get_config("tiny")
    state = _state(jax.random.key(1))
    ckpt = checkpointing.Checkpointer(tmp_path, config)
    assert ckpt.best_value() is None
    ckpt.save(3, state)
    ckpt.save_best(2, state.ema_params, "max_ari", 0.25)
    ckpt.save_best(3, state.params, "max_ari", 0.5)
    ckpt.close()
    assert checkpointing.Checkpointer(tmp_path, config).best_value() == 0.5
    assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == ["3"]

    params, step = checkpointing.restore_params(tmp_path, which="best")
    assert step == 3
    _assert_trees_equal(params, state.params)
    ema, step = checkpointing.restore_params(tmp_path, use_ema=True)
    assert step == 3
    _assert_trees_equal(ema, state.ema_params)
    with pytest.raises(ValueError, match="raw params only"):
        checkpointing.restore_params(tmp_path, which="best", use_ema=True)
    with pytest.raises(KeyError, match="which='newest'"):
        checkpointing.restore_params(tmp_path, which="newest")
    with pytest.raises(FileNotFoundError, match="at step 5"):
        checkpointing.restore_params(tmp_path, step=5)


def test_config_json_roundtrip(tmp_path):
    config = base.get_config("tiny")
    checkpointing.save_config(config, tmp_path)
    loaded = checkpointing.load_config(tmp_path)
    assert loaded.model.channel_multiplier == (1, 2)
    assert loaded.model.attention_levels == (-2, -1)
    assert loaded.to_dict() == config.to_dict()
    with pytest.raises(AttributeError):
        loaded.optim.lrr = 1.0  # locked
    with pytest.raises(FileNotFoundError, match="config.json"):
        checkpointing.load_config(tmp_path / "nowhere")


def test_load_npz_params(tmp_path):
    params = _state(jax.random.key(2)).params
    flat = {k: np.asarray(v) for k, v in checkpointing.flatten_params(params).items()}
    assert sorted(flat) == ["input_blocks/0/kernel", "out/bias"]
    np.savez(tmp_path / "w.npz", **flat)
    loaded = checkpointing.load_npz_params(tmp_path / "w.npz", params)
    _assert_trees_equal(loaded, params)
    del flat["out/bias"]
    np.savez(tmp_path / "bad.npz", **flat)
    with pytest.raises(ValueError, match="'out/bias'.*missing"):
        checkpointing.load_npz_params(tmp_path / "bad.npz", params)


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    """`--workdir=runs/x` is relative: orbax's writer needs absolute paths (made so here)."""
    monkeypatch.chdir(tmp_path)
    config = base.get_config("tiny")
    mesh = sharding.create_mesh()
    state = jax.device_put(_state(jax.random.key(0)), sharding.replicated(mesh))
    ckpt = checkpointing.Checkpointer("runs/x", config)
    ckpt.save(3, state)
    ckpt.close()
    ckpt = checkpointing.Checkpointer("runs/x", config)
    assert ckpt.latest_step() == 3
    _assert_trees_equal(ckpt.restore(_abstract(state, mesh)), state)
    ckpt.close()
    params, step = checkpointing.restore_params("runs/x")
    assert step == 3
    _assert_trees_equal(params, state.params)
