"""Tests of train_state.py: the SPEC 9.2 LR schedule, clipping + AdamW (SPEC 9.1), EMA."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitseg_jax import train_state
from configs import base


def _schedule(**optim):
    config = base.get_config()
    with config.unlocked():
        for k, v in optim.items():
            config.optim[k] = v
    return train_state.learning_rate_schedule(config.optim, config.total_steps)


@pytest.mark.parametrize(
    "step, expected",
    [
        (1, 1e-7),  # SPEC 9.2: lr = 1e-7 at the first update.
        (500, 5e-5),
        (999, 9.99e-5),
        (1000, 1e-4),
        (100_000, 1e-4),
        (250_000, 1e-4),
        (262_500, 1e-4 * 0.5 * (1 + math.cos(math.pi / 4))),
        (275_000, 5e-5),
        (300_000, 0.0),
    ],
)
def test_default_schedule_matches_spec(step, expected):
    lr = _schedule()
    np.testing.assert_allclose(float(lr(step)), expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
    "step, expected",
    [
        (250, 1e-4 * 0.5 * (1 + math.cos(0.75 * math.pi))),  # cosine warm-up at 1/4
        (500, 5e-5),
        (262_500, 0.75e-4),  # linear decay at f = 1/4
        (275_000, 5e-5),
    ],
)
def test_cosine_warmup_and_linear_decay(step, expected):
    lr = _schedule(warmup_type="cosine", decay_type="linear")
    np.testing.assert_allclose(float(lr(step)), expected, rtol=1e-5, atol=1e-12)


def test_zero_length_phases_are_constant():
    lr = _schedule(warmup_steps=0, decay_steps=0)
    np.testing.assert_allclose([float(lr(s)) for s in (1, 10, 300_000)], 1e-4, rtol=1e-7)


def test_unknown_schedule_type_names_the_field():
    with pytest.raises(KeyError, match="optim.warmup_type"):
        _schedule(warmup_type="exp")


def _numpy_reference(params, grads_seq, lr_fn, clip, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """SPEC 9.1 steps 6-7 written out (PyTorch AdamW semantics, without the 1e-6 in clip)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for step, g in enumerate(grads_seq, start=1):
        norm = math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values()))
        scale = 1.0 / max(1.0, norm / clip)
        lr = lr_fn(step)
        for k, pk in p.items():
            gk = g[k] * scale
            p[k] = pk * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * gk
            v2[k] = b2 * v2[k] + (1 - b2) * gk**2
            m_hat = m[k] / (1 - b1**step)
            v_hat = v2[k] / (1 - b2**step)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_optimizer_matches_clipped_adamw(weight_decay):
    config = base.get_config()
    with config.unlocked():
        config.optim.warmup_steps = 2
        config.optim.decay_steps = 2
        config.total_steps = 4
        config.optim.weight_decay = weight_decay
    tx = train_state.create_optimizer(config)
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": np.ones(5, np.float32)}
    # Norms around 5 (clipped) and 0.3 (not clipped).
    grads_seq = [
        {k: (rng.normal(size=v.shape) * s).astype(np.float32) for k, v in params.items()}
        for s in (1.5, 0.1, 2.0, 0.05)
    ]
    opt_state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads_seq:
        updates, opt_state = tx.update(g, opt_state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    lr_fn = train_state.learning_rate_schedule(config.optim, config.total_steps)
    want = _numpy_reference(params, grads_seq, lambda s: float(lr_fn(s)), 1.0, wd=weight_decay)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-6, atol=1e-7)


def test_ema_update_formula():
    ema = {"w": jnp.full((3,), 2.0)}
    params = {"w": jnp.full((3,), 4.0)}
    out = train_state.ema_update(ema, params, 0.9)
    np.testing.assert_allclose(out["w"], 0.9 * 2.0 + 0.1 * 4.0, rtol=1e-7)


def test_create_train_state_with_stand_in_model(monkeypatch):
    """EMA starts at the initial params; Adam moments are zero; step is 0."""

    def fake_init(model_config, rng):
        k1, k2 = jax.random.split(rng)
        return {
            "conv": {"kernel": jax.random.normal(k1, (3, 3, 2, 4))},
            "b": jax.random.normal(k2, (4,)),
        }

    monkeypatch.setattr(train_state.models, "init_unet", fake_init, raising=False)
    config = base.get_config("tiny")
    state = jax.jit(lambda r: train_state.create_train_state(config, r))(jax.random.key(0))
    assert int(state.step) == 0
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state.params, state.ema_params)
    assert train_state.num_params(state.params) == 3 * 3 * 2 * 4 + 4
    np.testing.assert_allclose(
        float(train_state.global_norm(state.params)),
        math.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(state.params))),
        rtol=1e-6,
    )
