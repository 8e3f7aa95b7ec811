"""Tests for bitseg_jax.diffusion: schedule, weights, samplers of t, loss and the DDPM/DDIM loop.

Golden values are those of SPEC section 12 (tables of SPEC 5.1, 5.5 and 7.2).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitseg_jax import diffusion
from configs import base

SCHEDULE_NAMES = ("cosine", "linear", "linear_simple")


def _normal(shape, seed):
    return jax.random.normal(jax.random.fold_in(jax.random.key(0), seed), shape)


# --------------------------------------------------------------------------------------------
# Float64 NumPy transcription of SPEC 5.1 / 5.5, used as an independent reference.
# --------------------------------------------------------------------------------------------


def _gamma0_and_slope_f64(t, schedule):
    t = np.asarray(t, np.float64)
    if schedule == "cosine":
        return np.cos(np.pi * t / 2) ** 2, -(np.pi / 2) * np.sin(np.pi * t)
    if schedule == "linear":
        x = 1e-4 + 10 * t**2
        u = np.expm1(x)
        return 1 / (1 + u), -np.exp(x) * 20 * t / (1 + u) ** 2
    return 1 - t, -np.ones_like(t)


def _spec_schedule_f64(t, schedule="cosine", b=0.1, lmin=-20.0, lmax=20.0):
    """SPEC 5.1 literally (gamma_b, affine remap) and SPEC 5.5's analytic d lambda / dt.

    Returns (lambda, dlambda/dt, cancellation), where `cancellation` bounds the relative float32
    error of gamma or 1 - gamma from subtracting the endpoint values gamma_b(1) and 1 - gamma_b(0)
    (zero for cosine, whose endpoints are exactly 0 and 1).
    """
    sig = lambda z: 1 / (1 + np.exp(-z))
    g0, dg0 = _gamma0_and_slope_f64(t, schedule)
    gb = lambda g: b**2 * g / ((b**2 - 1) * g + 1)
    gb0 = gb(_gamma0_and_slope_f64(0.0, schedule)[0])
    gb1 = gb(_gamma0_and_slope_f64(1.0, schedule)[0])
    s = (sig(lmax) - sig(lmin)) / (gb0 - gb1)
    c = sig(lmin) - s * gb1
    gamma = s * gb(g0) + c
    dgamma = s * b**2 * dg0 / ((b**2 - 1) * g0 + 1) ** 2
    lam = np.log(gamma) - np.log1p(-gamma)
    eps32 = np.finfo(np.float32).eps
    cancellation = 2 * eps32 * (gb1 / gamma + (1 - gb0) / (1 - gamma))
    return lam, dgamma / (gamma * (1 - gamma)), cancellation


# --------------------------------------------------------------------------------------------
# Schedule (SPEC 5.1).
# --------------------------------------------------------------------------------------------


def test_schedule_matches_spec_table():
    # SPEC 5.1 table (cosine, b = 0.1, range +-20). lambda is given to 4 decimals, alpha and sigma
    # to 5 decimals: atol = half a unit of the last digit plus float32 rounding.
    t = np.array([0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1], np.float32)
    lam = [20.0, 3.7018, 0.4790, -0.9197, -2.8424, -4.6052, -6.3679, -8.2906, -20.0]
    alpha = [1.0, 0.98788, 0.78582, 0.53387, 0.23468, 0.09950, 0.04139, 0.01584, 4.54e-5]
    sigma = [4.54e-5, 0.15519, 0.61845, 0.84557, 0.97207, 0.99504, 0.99914, 0.99987, 1.0]
    got_lam = diffusion.logsnr(jnp.asarray(t))
    got_alpha, got_sigma = diffusion.alpha_sigma(got_lam)
    np.testing.assert_allclose(got_lam, lam, atol=6e-5, rtol=0)
    # The 4.54e-5 entries have 3 digits: compare those with sqrt(sigmoid(-20)) itself.
    np.testing.assert_allclose(got_alpha[:-1], alpha[:-1], atol=6e-6, rtol=0)
    np.testing.assert_allclose(got_sigma[1:], sigma[1:], atol=6e-6, rtol=0)
    tail = math.sqrt(1 / (1 + math.exp(20)))
    np.testing.assert_allclose([got_alpha[-1], got_sigma[0]], [tail, tail], rtol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("input_scale", [0.1, 1.0])
def test_schedule_matches_float64_spec_formula(schedule, input_scale):
    # Dense grid including points within 1e-4 of the endpoints, where the remap matters.
    t = np.concatenate([[0, 1e-6, 1e-4, 1e-3], np.linspace(0.01, 0.99, 99), [1 - 1e-4, 1.0]])
    t = t.astype(np.float32)
    want_lam, want_dlam, cancellation = _spec_schedule_f64(t, schedule, b=input_scale)
    kwargs = {"schedule": schedule, "input_scale": input_scale}
    lam = np.asarray(diffusion.logsnr(jnp.asarray(t), **kwargs), np.float64)
    # float32 rounding of the internal pi * t products moves lambda by ~|dlambda/dt| * t * 6e-8;
    # `linear` near t = 0 also loses digits to cancellation (float32 limit, see gamma_pair).
    tol = 2e-5 + 1.2e-7 * np.abs(want_dlam * t) + cancellation
    excess = np.abs(lam - want_lam) - tol
    assert np.all(excess <= 0), (
        f"lambda off by {excess.max()} more than tol at t={t[excess.argmax()]}"
    )
    # Autodiff derivative vs SPEC 5.5's analytic form, endpoints included (rtol 1e-4).
    neg_dlam = np.asarray(diffusion.neg_dlogsnr_dt(jnp.asarray(t), **kwargs), np.float64)
    # Same sensitivity to float32 rounding of t as above, now via the second derivative.
    t64, h = t.astype(np.float64), 1e-7
    d2lam = (
        _spec_schedule_f64(np.minimum(t64 + h, 1), schedule, b=input_scale)[1]
        - _spec_schedule_f64(np.maximum(t64 - h, 0), schedule, b=input_scale)[1]
    ) / (np.minimum(t64 + h, 1) - np.maximum(t64 - h, 0))
    tol = 1e-6 + (1e-4 + cancellation) * np.abs(want_dlam) + 1.2e-7 * np.abs(d2lam * t)
    excess = np.abs(neg_dlam + want_dlam) - tol
    assert np.all(excess <= 0), f"-dlambda/dt off by {excess.max()} at t={t[excess.argmax()]}"


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("input_scale", [0.1, 1.0])
def test_schedule_endpoints_and_monotone(schedule, input_scale):
    kwargs = {
        "schedule": schedule,
        "input_scale": input_scale,
        "logsnr_min": -15.0,
        "logsnr_max": 12.0,
    }
    ends = diffusion.logsnr(jnp.array([0.0, 1.0]), **kwargs)
    np.testing.assert_allclose(ends, [12.0, -15.0], atol=2e-6, rtol=0)
    lam = np.asarray(diffusion.logsnr(jnp.linspace(0.0, 1.0, 1001), **kwargs))
    assert np.all(np.diff(lam) < 0), "logSNR must decrease strictly in t"


def test_cosine_derivative_is_zero_at_endpoints_and_analytic_inside():
    np.testing.assert_array_equal(diffusion.neg_dlogsnr_dt(jnp.array([0.0, 1.0])), [0.0, 0.0])
    # Away from the endpoints the remap is invisible: -dlambda/dt = 2 pi / sin(pi t) (SPEC 5.5).
    t = np.linspace(0.01, 0.9, 50, dtype=np.float32)
    np.testing.assert_allclose(
        diffusion.neg_dlogsnr_dt(jnp.asarray(t)), 2 * np.pi / np.sin(np.pi * t), rtol=1e-4
    )


# (For `linear`, gamma0(0) = 1/(1 + 1e-4), so the range remap stretches lambda everywhere and the
# shift is only exact before the remap.)
@pytest.mark.parametrize("schedule", ("cosine", "linear_simple"))
def test_input_scaling_is_a_logsnr_shift(schedule):
    t = jnp.linspace(0.05, 0.8, 16)
    for b in (0.1, 0.3, 2.0):
        shifted = diffusion.logsnr(t, schedule=schedule, input_scale=b)
        plain = diffusion.logsnr(t, schedule=schedule, input_scale=1.0)
        np.testing.assert_allclose(shifted - plain, 2 * math.log(b), atol=2e-4)


def test_schedule_bad_arguments():
    with pytest.raises(KeyError, match="schedule 'cosin'"):
        diffusion.logsnr(jnp.zeros(2), schedule="cosin")
    with pytest.raises(ValueError, match="input_scale"):
        diffusion.logsnr(jnp.zeros(2), input_scale=0.0)
    with pytest.raises(ValueError, match="logsnr_min must be < logsnr_max"):
        diffusion.logsnr(jnp.zeros(2), logsnr_min=5.0, logsnr_max=-5.0)


# --------------------------------------------------------------------------------------------
# Loss weights (SPEC 5.5).
# --------------------------------------------------------------------------------------------


def test_loss_weight_golden_values():
    # SPEC 5.5 reference values, 5 significant digits (rtol 1e-4).
    t = jnp.array([1e-4, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
    want = [1.9983e4, 199.94, 39.714, 19.440, 6.7611, 2.21898, 0.76108, 0.27472, 0.026948]
    np.testing.assert_allclose(diffusion.loss_weight(t), want, rtol=1e-4)
    np.testing.assert_allclose(diffusion.loss_weight(jnp.array([1.0])), [0.0], atol=1e-6)
    bare = diffusion.loss_weight(jnp.array([0.5, 0.1]), decoupled=False)
    np.testing.assert_allclose(bare, [0.35316, 0.95607], rtol=1e-4)


def test_loss_weight_mean_over_t_by_quadrature():
    # Decoupled weights make the loss an integral over lambda: int_0^1 w dt =
    # int_{-20}^{20} sigmoid(l + 4) dl = softplus(24) - softplus(-16) = 23.99999989 exactly.
    # (SPEC 5.5 quotes "~24.4", which looks like a Monte-Carlo estimate of this heavy-tailed mean.)
    t = np.concatenate([[0.0], np.geomspace(1e-10, 1e-2, 6000), np.linspace(1e-2, 1, 6000)[1:]])
    w = np.asarray(diffusion.loss_weight(jnp.asarray(t, jnp.float32)), np.float64)
    mean = np.sum(0.5 * (w[1:] + w[:-1]) * np.diff(t))
    softplus = lambda z: np.logaddexp(0.0, z)
    np.testing.assert_allclose(mean, softplus(24.0) - softplus(-16.0), rtol=2e-3)


WEIGHTING_FORMULAS = {
    "sigmoid_-4": lambda lam: 1 / (1 + np.exp(-(lam + 4))),
    "sigmoid_2": lambda lam: 1 / (1 + np.exp(-(lam - 2))),
    "sigmoid_-2.5": lambda lam: 1 / (1 + np.exp(-(lam + 2.5))),
    "sigmoid": lambda lam: 1 / (1 + np.exp(-lam)),
    "SNR": np.exp,
    "SNR_plus1": lambda lam: 1 + np.exp(lam),
    "SNR_trunc": lambda lam: np.maximum(np.exp(lam), 1),
    "uniform": np.ones_like,
}


def test_weightings():
    lam = np.linspace(-20, 20, 41, dtype=np.float32)
    for name, formula in WEIGHTING_FORMULAS.items():
        got = diffusion.weighting_fn(name)(jnp.asarray(lam))
        np.testing.assert_allclose(got, formula(lam.astype(np.float64)), rtol=1e-5, err_msg=name)
    # loss_weight: the bare weight of the schedule's lambda, times -dlambda/dt if decoupled.
    t = jnp.linspace(0.02, 0.98, 25)
    bare = WEIGHTING_FORMULAS["SNR_plus1"](np.asarray(diffusion.logsnr(t), np.float64))
    got = diffusion.loss_weight(t, weighting="SNR_plus1", decoupled=False)
    np.testing.assert_allclose(got, bare, rtol=1e-5)
    got = diffusion.loss_weight(t, weighting="SNR_plus1", decoupled=True)
    np.testing.assert_allclose(got, bare * np.asarray(diffusion.neg_dlogsnr_dt(t)), rtol=1e-5)


@pytest.mark.parametrize("name", ["sigmoid_abc", "sigmoid_", "sigmoid_nan", "sigmoid-4", "snr"])
def test_weighting_malformed_names(name):
    with pytest.raises(KeyError, match=repr(name).replace("[", r"\[")):
        diffusion.loss_weight(jnp.zeros(2), weighting=name)


# --------------------------------------------------------------------------------------------
# t samplers, forward process, parameterisations (SPEC 5.2-5.4).
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["uniform_low_d", "low_discrepancy"])
def test_stratified_samplers_put_one_t_per_stratum(sampler):
    rng = jax.random.key(0)
    for i in range(3):
        t = np.asarray(diffusion.sample_t(jax.random.fold_in(rng, i), 8, sampler))
        np.testing.assert_array_equal(np.sort(np.floor(t * 8)), np.arange(8))
        if sampler == "low_discrepancy":
            # One shared offset: every t sits at the same place within its stratum.
            frac = t * 8 - np.floor(t * 8)
            np.testing.assert_allclose(frac, frac[0], atol=1e-5)
        else:
            assert not np.allclose(np.sort(t), t), "strata should be randomly permuted"


def test_uniform_sampler_and_errors():
    t = np.asarray(diffusion.sample_t(jax.random.key(0), 1000, "uniform"))
    assert t.shape == (1000,) and t.min() >= 0 and t.max() < 1
    assert abs(t.mean() - 0.5) < 0.05
    with pytest.raises(KeyError, match="t sampler 'low_discrepency'"):
        diffusion.sample_t(jax.random.key(0), 8, "low_discrepency")


def test_q_sample_moments():
    z = np.asarray(_normal((2, 4, 64, 64, 8), 6))
    x0, eps = np.where(z[0] > 0, 1.0, -1.0).astype(np.float32), z[1]
    lam = diffusion.logsnr(jnp.array([0.05, 0.3, 0.6, 0.9]))
    x_t = np.asarray(diffusion.q_sample(x0, lam, eps))
    alpha, sigma = (np.asarray(v)[:, None, None, None] for v in diffusion.alpha_sigma(lam))
    resid = (x_t - alpha * np.asarray(x0)) / sigma  # should be standard normal per sample
    n = resid[0].size
    # 5 standard errors of the mean (1/sqrt(n)) and of the variance (sqrt(2/n)).
    np.testing.assert_allclose(resid.mean(axis=(1, 2, 3)), 0.0, atol=5 / math.sqrt(n))
    np.testing.assert_allclose(resid.var(axis=(1, 2, 3)), 1.0, atol=5 * math.sqrt(2 / n))


@pytest.mark.parametrize("predict", ["x", "eps", "v"])
def test_prediction_conversions_invert(predict):
    z = np.asarray(_normal((2, 3, 4, 4, 2), 7))
    x0, eps = np.tanh(z[0]), z[1]
    lam = jnp.array([-5.0, 0.0, 5.0])
    alpha, sigma = (v[:, None, None, None] for v in diffusion.alpha_sigma(lam))
    x_t = alpha * x0 + sigma * eps
    out = {"x": x0, "eps": eps, "v": alpha * eps - sigma * x0}[predict]
    x_hat, eps_hat = diffusion.predict_x_eps(out, x_t, lam, predict)
    np.testing.assert_allclose(x_hat, x0, atol=1e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-4)


def test_final_activations():
    out = jax.random.normal(jax.random.key(0), (2, 3, 3, 5))
    np.testing.assert_allclose(diffusion.final_activation(out, "tanh"), np.tanh(out), rtol=1e-6)
    np.testing.assert_array_equal(diffusion.final_activation(out, "none"), out)
    soft = diffusion.final_activation(out, "softmax")
    np.testing.assert_allclose(jnp.sum(soft, axis=-1), 1.0, rtol=1e-6)
    sig = diffusion.final_activation(out, "sigmoid")
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-np.asarray(out))), rtol=1e-6)
    with pytest.raises(KeyError, match="final activation 'relu'"):
        diffusion.final_activation(out, "relu")
    assert diffusion.resolve_final_activation("tanh_if_x", "x") == "tanh"
    assert diffusion.resolve_final_activation("tanh_if_x", "eps") == "none"
    assert diffusion.resolve_final_activation("softmax", "v") == "softmax"


def test_config_from_base_config():
    config = base.get_config()
    cfg = diffusion.DiffusionConfig.from_config(config.diffusion)  # p_image is ignored
    assert cfg == diffusion.DiffusionConfig()
    assert hash(cfg) == hash(diffusion.DiffusionConfig())
    with pytest.raises(KeyError, match="prediction type 'z'"):
        diffusion.DiffusionConfig(predict="z")
    with pytest.raises(KeyError, match="sigmoid_x"):
        diffusion.DiffusionConfig(weighting="sigmoid_x")


# --------------------------------------------------------------------------------------------
# Training loss (SPEC 5.5).
# --------------------------------------------------------------------------------------------


def _loss(fn, x0, image, mask, cfg, **overrides):
    """training_loss under jit, as the train step runs it (eager dispatch is slow on CPU)."""
    run = jax.jit(lambda *args: diffusion.training_loss(fn, *args, cfg, **overrides))
    return run(x0, image, mask, jax.random.key(0))


def _batch(b=4, h=6, w=5, k=6):
    """x0: +-1 bits of random labels [b, h, w, k]; image [b, h, w, 3] (NumPy, from one key)."""
    z = np.asarray(_normal((b, h, w, k + 3), 0))
    return np.where(z[..., :k] > 0, 1.0, -1.0).astype(np.float32), z[..., k:]


def test_training_loss_zero_denoiser_gives_k_times_mean_weight():
    # SPEC 12: x_hat = 0 against +-1 targets gives MSE_j = k and loss = k * mean_j w(t_j).
    x0, image = _batch()
    mask = np.ones(x0.shape[:3], bool)
    cfg = diffusion.DiffusionConfig()
    loss, aux = _loss(lambda x_t, t, img: jnp.zeros_like(x_t), x0, image, mask, cfg)
    np.testing.assert_allclose(aux["mse"], 6.0, rtol=1e-6)
    np.testing.assert_allclose(aux["weight"], diffusion.loss_weight(aux["t"]), rtol=1e-6)
    np.testing.assert_allclose(loss, 6.0 * np.mean(aux["weight"]), rtol=1e-5)
    # The default sampler is stratified.
    np.testing.assert_array_equal(np.sort(np.floor(np.asarray(aux["t"]) * 4)), np.arange(4))


def test_training_loss_masked_pixels_do_not_count():
    x0, image = _batch()
    mask = np.asarray(_normal(x0.shape[:3], 1)) > -0.3
    mask[0] = False
    t, eps = np.array([0.1, 0.3, 0.5, 0.7], np.float32), np.zeros_like(x0)
    # Exact on counted pixels except 2 channels off by 1 (MSE = 2); wildly wrong on masked ones.
    pred = np.where(mask[..., None], x0 + np.array([1, 1, 0, 0, 0, 0], np.float32), 100.0)
    fn = lambda x_t, tt, img: jnp.asarray(pred)
    cfg = diffusion.DiffusionConfig()
    loss, aux = _loss(fn, x0, image, mask, cfg, t=t, eps=eps)
    np.testing.assert_allclose(aux["mse"][1:], 2.0, rtol=1e-6)
    assert float(aux["mse"][0]) == 0.0  # no counted pixels: 0 / (0 + 1e-14), not NaN
    np.testing.assert_allclose(
        loss, np.mean(2.0 * np.asarray(aux["weight"])[1:]) * 3 / 4, rtol=1e-5
    )


def test_training_loss_overrides_and_x_space_for_eps():
    x0, image = _batch()
    mask = np.ones(x0.shape[:3], bool)
    t = np.array([0.1, 0.2, 0.35, 0.5], np.float32)
    eps = np.asarray(_normal(x0.shape, 2))
    cfg = diffusion.DiffusionConfig(predict="eps")
    seen = {}

    def true_eps(x_t, tt, img):
        seen["t"], seen["x_t"], seen["image"] = tt, x_t, img
        return jnp.asarray(eps)

    def run(x0, image, mask):
        loss, aux = diffusion.training_loss(
            true_eps, x0, image, mask, jax.random.key(0), cfg, t=t, eps=eps
        )
        return loss, aux, seen["t"], seen["x_t"], seen["image"]

    loss, aux, seen_t, seen_x_t, seen_image = jax.jit(run)(x0, image, mask)
    alpha, sigma = (
        np.asarray(v)[:, None, None, None] for v in diffusion.alpha_sigma(aux["logsnr"])
    )
    np.testing.assert_array_equal(seen_t, t)
    np.testing.assert_array_equal(seen_image, image)
    np.testing.assert_allclose(seen_x_t, alpha * x0 + sigma * eps, atol=1e-6)
    np.testing.assert_allclose(aux["logsnr"], diffusion.logsnr(jnp.asarray(t)), atol=1e-6)
    # The loss is in x space: the true eps gives x_hat = x0.
    np.testing.assert_allclose(aux["x_hat"], x0, atol=1e-4)
    np.testing.assert_allclose(aux["loss_per_sample"], aux["weight"] * aux["mse"], rtol=1e-6)
    assert float(loss) < 1e-5


def test_training_loss_bad_inputs():
    x0, image = _batch()
    mask = np.ones(x0.shape[:3], bool)
    fn = lambda x_t, t, img: x_t
    cfg = diffusion.DiffusionConfig()
    rng = jax.random.key(0)
    with pytest.raises(ValueError, match="mask"):
        diffusion.training_loss(fn, x0, image, mask[:, :-1], rng, cfg)
    with pytest.raises(TypeError, match="mask"):
        diffusion.training_loss(fn, x0, image, mask.astype(np.int32), rng, cfg)
    with pytest.raises(ValueError, match="image"):
        diffusion.training_loss(fn, x0, image[..., :2], mask, rng, cfg)
    with pytest.raises(TypeError, match="x0 must be float"):
        diffusion.training_loss(fn, x0.astype(np.int32), image, mask, rng, cfg)
    with pytest.raises(ValueError, match="t has shape"):
        diffusion.training_loss(fn, x0, image, mask, rng, cfg, t=np.zeros(3, np.float32))


# --------------------------------------------------------------------------------------------
# DDPM / DDIM (SPEC 7).
# --------------------------------------------------------------------------------------------


def test_ddpm_coefficients_match_spec_table():
    # SPEC 7.2, 8 steps: lambda_t, lambda_s, c_xt, c_xhat, std (6 significant digits; rtol 2e-5).
    table = np.array(
        [
            [-20, -7.83495, 2.28195e-3, 1.98873e-2, 0.999997],
            [-7.83495, -6.36792, 0.479901, 3.18419e-2, 0.876976],
            [-6.36792, -5.41157, 0.619066, 4.10486e-2, 0.783997],
            [-5.41157, -4.60517, 0.666345, 5.50790e-2, 0.742346],
            [-4.60517, -3.79877, 0.664115, 8.19302e-2, 0.740309],
            [-3.79877, -2.84242, 0.609313, 0.144493, 0.776027],
            [-2.84242, -1.37539, 0.441375, 0.345585, 0.852654],
        ]
    )
    i = np.arange(7, -1, -1)
    lam = np.asarray(diffusion.logsnr(jnp.asarray(np.append(i + 1, 0) / 8, jnp.float32)))
    lam_t, lam_s = lam[:7], lam[1:8]  # the last step (t = 1/8 -> 0) returns x_hat
    got = np.stack([lam_t, lam_s, *diffusion.ddpm_coefficients(lam_t, lam_s, "large")], axis=1)
    np.testing.assert_allclose(got, table, rtol=2e-5, atol=0)
    # "small": var = (1 - r) sigma_s^2.
    _, _, std_small = diffusion.ddpm_coefficients(lam_t, lam_s, "small")
    r = np.exp(lam_t.astype(np.float64) - lam_s)
    np.testing.assert_allclose(std_small, np.sqrt((1 - r) / (1 + np.exp(lam_s))), rtol=1e-5)


B, H, W, C = 2, 6, 5, 3


def _setup(num_steps=4):
    """x0 [B,H,W,C] +-1, image, valid (all True) and injected noise (NumPy, from one key)."""
    z = np.asarray(_normal((2, B, H, W, C), 3))
    x0 = np.where(z[0] > 0, 1.0, -1.0).astype(np.float32)
    image = np.asarray(_normal((B, H, W, 3), 5))
    noise = {"noise_init": z[1], "step_noise": np.asarray(_normal((num_steps, B, H, W, C), 4))}
    return x0, image, np.ones((B, H, W), bool), noise


def _tiled(x0, x_t):
    """x0 repeated to the denoiser's batch (B or 2B under guidance)."""
    return jnp.concatenate([jnp.asarray(x0)] * (x_t.shape[0] // x0.shape[0]))


@pytest.mark.parametrize("sampler, guidance_weight", [("ddpm", 1.0), ("ddim", 0.0)])
def test_oracle_denoiser_returns_x0(sampler, guidance_weight):
    x0, image, valid, noise = _setup()
    out = diffusion.sample(
        lambda x_t, t, img: _tiled(x0, x_t),
        jax.random.key(0),
        image,
        valid,
        diffusion.DiffusionConfig(),
        num_channels=C,
        num_steps=4,
        guidance_weight=guidance_weight,
        sampler=sampler,
        **noise,
    )
    np.testing.assert_array_equal(out, x0)


def test_ddim_oracle_trajectory_keeps_the_initial_noise():
    # With a perfect x_hat, DDIM keeps eps = (x_1 - alpha_1 x0) / sigma_1 along the whole path, so
    # x_t at every step is alpha_t x0 + sigma_t eps.
    x0, image, valid, noise = _setup()
    out, traj = diffusion.sample(
        lambda x_t, t, img: jnp.asarray(x0),
        jax.random.key(1),
        image,
        valid,
        diffusion.DiffusionConfig(),
        num_channels=C,
        num_steps=4,
        guidance_weight=0.0,
        sampler="ddim",
        noise_init=noise["noise_init"],
        return_trajectory=True,
    )
    np.testing.assert_allclose(traj["t"], [1.0, 0.75, 0.5, 0.25], rtol=1e-6)
    lam = diffusion.logsnr(traj["t"])
    alpha, sigma = (np.asarray(v)[:, None, None, None, None] for v in diffusion.alpha_sigma(lam))
    eps0 = (noise["noise_init"] - alpha[0] * x0) / sigma[0]
    np.testing.assert_allclose(traj["x_t"], alpha * x0 + sigma * eps0, atol=1e-4)
    np.testing.assert_allclose(
        traj["eps_hat"][1:], np.broadcast_to(eps0, (3,) + x0.shape), atol=1e-4
    )
    np.testing.assert_array_equal(traj["x_hat"], np.broadcast_to(x0, (4,) + x0.shape))
    np.testing.assert_array_equal(out, x0)


@pytest.mark.parametrize("predict", ["eps", "v"])
def test_oracle_for_eps_and_v_predictions(predict):
    x0, image, valid, noise = _setup()

    def oracle(x_t, t, img):
        x_true = _tiled(x0, x_t)
        alpha, sigma = (v[:, None, None, None] for v in diffusion.alpha_sigma(diffusion.logsnr(t)))
        eps = (x_t - alpha * x_true) / sigma
        return eps if predict == "eps" else alpha * eps - sigma * x_true

    cfg = diffusion.DiffusionConfig(predict=predict)
    out = diffusion.sample(
        oracle, jax.random.key(0), image, valid, cfg, num_channels=C, num_steps=4,
        guidance_weight=2.0, **noise,
    )  # fmt: skip
    np.testing.assert_allclose(out, x0, atol=1e-3)


@pytest.mark.parametrize("guidance_weight, factor", [(0.0, 1), (1.5, 2)])
def test_one_denoise_call_per_step(guidance_weight, factor):
    _, image, valid, noise = _setup()
    traced, executed = [], []

    def fn(x_t, t, img):
        traced.append((x_t.shape[0], t.shape))
        # Runs on every executed step of the compiled loop, not just at tracing.
        jax.debug.callback(lambda im: executed.append(np.asarray(im)), img)
        return jnp.tanh(x_t)

    cfg = diffusion.DiffusionConfig()
    diffusion.sample(
        fn, jax.random.key(0), image, valid, cfg, num_channels=C, num_steps=4,
        guidance_weight=guidance_weight, **noise,
    )  # fmt: skip
    jax.effects_barrier()
    assert traced == [(factor * B, (factor * B,))]  # one call site in the loop body ...
    assert len(executed) == 4  # ... executed once per step
    for img in executed:
        assert img.shape[0] == factor * B
        np.testing.assert_array_equal(img[:B], image)  # conditional half first
        if factor == 2:
            np.testing.assert_array_equal(img[B:], 0.0)  # unconditional = zero image


def test_guidance_and_ddpm_update():
    # SPEC 7.1: eps = (1 + w) eps_c - w eps_u and x_hat = (x - sigma eps) / alpha; SPEC 7.2 update
    # with the injected z; the final step returns x_hat and uses no noise. Checked step by step
    # against the returned trajectory.
    _, image, valid, noise = _setup()
    w = 1.7
    net = jax.jit(lambda x_t, t, img: jnp.tanh(0.5 * x_t + img + t[:, None, None, None]))
    cfg = diffusion.DiffusionConfig()
    kwargs = {"num_channels": C, "num_steps": 4, "guidance_weight": w, "return_trajectory": True}
    out, traj = diffusion.sample(net, jax.random.key(0), image, valid, cfg, **kwargs, **noise)
    np.testing.assert_array_equal(traj["x_t"][0], noise["noise_init"])
    lam = np.asarray(diffusion.logsnr(jnp.array([1.0, 0.75, 0.5, 0.25, 0.0])))
    alpha, sigma = (np.asarray(v) for v in diffusion.alpha_sigma(lam))
    for k in range(4):
        x, t = np.asarray(traj["x_t"][k]), np.full((B,), traj["t"][k])
        eps_c = (x - alpha[k] * np.asarray(net(x, t, image))) / sigma[k]
        eps_u = (x - alpha[k] * np.asarray(net(x, t, np.zeros_like(image)))) / sigma[k]
        eps = (1 + w) * eps_c - w * eps_u
        np.testing.assert_allclose(traj["eps_hat"][k], eps, rtol=1e-4, atol=1e-4)
        if k > 0:  # at t = 1 the eps route divides by alpha = 4.5e-5 (parity README section 8)
            x_hat = np.clip((x - sigma[k] * eps) / alpha[k], -1, 1)
            np.testing.assert_allclose(traj["x_hat"][k], x_hat, rtol=1e-4, atol=1e-4)
        if k < 3:
            c_xt, c_xhat, std = diffusion.ddpm_coefficients(lam[k], lam[k + 1], "large")
            want = c_xt * x + c_xhat * traj["x_hat"][k] + std * noise["step_noise"][k]
            np.testing.assert_allclose(traj["x_t"][k + 1], want, atol=1e-5)
    np.testing.assert_array_equal(out, traj["x_hat"][-1])
    # Same compiled sampler (same net, settings): another key and a changed last z change nothing.
    other_noise = {**noise, "step_noise": noise["step_noise"].copy()}
    other_noise["step_noise"][3] = 9.0
    other, _ = diffusion.sample(net, jax.random.key(7), image, valid, cfg, **kwargs, **other_noise)
    np.testing.assert_array_equal(other, out)


def test_clipping_and_padding_replacement():
    x0, image, _, noise = _setup()
    valid = np.ones((B, H, W), bool)
    valid[:, 4:, :] = False
    valid[1, :, 3:] = False
    big = lambda x_t, t, img: 2 * _tiled(x0, x_t)
    cfg = diffusion.DiffusionConfig()
    keep = valid[..., None]
    for clip, want in [(True, np.where(keep, x0, -1.0)), (False, np.where(keep, 2 * x0, -1.0))]:
        out, traj = diffusion.sample(
            big, jax.random.key(0), image, valid, cfg, num_channels=C, num_steps=4,
            clip_denoised=clip, return_trajectory=True, **noise,
        )  # fmt: skip
        np.testing.assert_allclose(out, want, atol=1e-6)
        for k in range(4):  # replaced at every step, not just the last
            np.testing.assert_allclose(traj["x_hat"][k], want, atol=1e-6)


def test_sampler_compiles_once():
    _, image, valid, _ = _setup()
    traces = []

    def apply_fn(scale, x_t, t, img):
        traces.append(x_t.shape)
        return jnp.tanh(scale * x_t)

    cfg = diffusion.DiffusionConfig()
    fn = lambda x_t, t, img: apply_fn(1.0, x_t, t, img)
    a = diffusion.sample(fn, jax.random.key(0), image, valid, cfg, num_channels=C, num_steps=2)
    b = diffusion.sample(fn, jax.random.key(1), image, valid, cfg, num_channels=C, num_steps=2)
    assert len(traces) == 1
    assert not np.allclose(a, b)  # the key drives the initial and the step noise
    # New "params" through a jax.tree_util.Partial reuse the compiled sampler too.
    traces.clear()
    outs = []
    for scale in (0.5, 2.0):
        fn = jax.tree_util.Partial(apply_fn, jnp.float32(scale))
        outs.append(
            diffusion.sample(fn, jax.random.key(0), image, valid, cfg, num_channels=C, num_steps=2)
        )
    assert len(traces) == 1 and not np.allclose(*outs)


def test_sample_bad_inputs():
    x0, image, valid, _ = _setup()
    fn = lambda x_t, t, img: x_t
    cfg = diffusion.DiffusionConfig()
    rng = jax.random.key(0)
    with pytest.raises(ValueError, match="valid"):
        diffusion.sample(fn, rng, image, valid[:, :-1], cfg, num_channels=C)
    with pytest.raises(TypeError, match="valid"):
        diffusion.sample(fn, rng, image, valid.astype(np.float32), cfg, num_channels=C)
    with pytest.raises(ValueError, match="noise_init"):
        diffusion.sample(fn, rng, image, valid, cfg, num_channels=C, noise_init=x0[..., :2])
    with pytest.raises(ValueError, match="step_noise"):
        diffusion.sample(
            fn, rng, image, valid, cfg, num_channels=C, num_steps=2, step_noise=x0[None]
        )
    with pytest.raises(KeyError, match="sampler 'dpm'"):
        diffusion.sample(fn, rng, image, valid, cfg, num_channels=C, sampler="dpm")
    with pytest.raises(ValueError, match="image"):
        diffusion.sample(fn, rng, image[..., :2], valid, cfg, num_channels=C)


def test_sample_inside_an_outer_jit():
    # The evaluator's pattern: params traced by the caller's jit, denoise_fn a closure over them.
    _, image, valid, noise = _setup()
    cfg = diffusion.DiffusionConfig()

    def apply_fn(scale, x_t, t, img):
        return jnp.tanh(scale * x_t + img)

    @jax.jit
    def run(scale, rng):
        fn = lambda x_t, t, img: apply_fn(scale, x_t, t, img)
        return diffusion.sample(fn, rng, image, valid, cfg, num_channels=C, num_steps=4, **noise)

    direct = diffusion.sample(
        jax.tree_util.Partial(apply_fn, jnp.float32(0.7)), jax.random.key(0), image, valid, cfg,
        num_channels=C, num_steps=4, **noise,
    )  # fmt: skip
    np.testing.assert_allclose(run(jnp.float32(0.7), jax.random.key(0)), direct, atol=1e-6)
