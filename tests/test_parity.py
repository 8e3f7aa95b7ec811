"""Parity with the authors' PyTorch outputs (../shared/parity, README sections 3-8).

The small reference U-Net's weights go through `convert_torch.convert`; outputs, the training loss
(with its gradients) and both samplers are compared in float32 with the README section 8
tolerances. Fixtures are NCHW; our arrays are NHWC. Skips cleanly where the fixtures are absent.
"""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitseg_jax import convert_torch, diffusion
from bitseg_jax.models import abstract_params, apply_unet, count_params
from configs import base


@pytest.fixture(autouse=True)
def _full_precision():
    # TF32 / bf16 passes (GPU / TPU defaults) would miss atol=1e-4 by orders of magnitude.
    with jax.default_matmul_precision("highest"):
        yield


def _nhwc(x):
    return np.asarray(x).transpose(*range(x.ndim - 3), -2, -1, -3)


def _small_config(**overrides):
    """The fixtures' small model: 32 px, 32 channels, auto -> (1, 2, 2, 2), attention at 8 and 4."""
    m = base.get_config().model
    m.unlock()
    m.image_size, m.num_channels = 32, 32
    for key, value in overrides.items():
        m[key] = value
    return m


def _forward_fn(model_config):
    @jax.jit
    def forward(params, x_t, t, image):
        record = {}
        y = apply_unet(model_config, params, x_t, t, image, block_outputs=record)
        return y, record

    return forward


@pytest.fixture(scope="module")
def small(parity_dir):
    z = np.load(parity_dir / "unet_small.npz")
    m = _small_config()
    return types.SimpleNamespace(
        z=z,
        config=m,
        params=convert_torch.convert(parity_dir / "unet_small.npz", m),
        forward=_forward_fn(m),  # always called with batch 4: one compile for the module
    )


def _cond_uncond(small, x_t, t, image):
    """One batch-4 call: [x_t; x_t] with [image; zeros] -> (cond, uncond, record)."""
    y, record = small.forward(
        small.params,
        np.concatenate([x_t, x_t]),
        np.concatenate([t, t]),
        np.concatenate([image, np.zeros_like(image)]),
    )
    return np.asarray(y[:2]), np.asarray(y[2:]), record


# --- U-Net (README 3) --------------------------------------------------------------------------


def test_unet_small_outputs(small):
    z = small.z
    assert count_params(small.params)["total"] == int(z["n_params"]) == 3_086_086
    cond, uncond, record = _cond_uncond(small, _nhwc(z["x_t"]), z["t"], _nhwc(z["image"]))
    tol = {"atol": 1e-4, "rtol": 0}
    np.testing.assert_allclose(cond, _nhwc(z["y"]), **tol)
    np.testing.assert_allclose(cond, _nhwc(z["f64_y"]), **tol)
    np.testing.assert_allclose(uncond, _nhwc(z["y_no_image"]), **tol)
    pre = np.asarray(record["out"])
    np.testing.assert_allclose(pre[:2], _nhwc(z["y_pre_tanh"]), **tol)
    np.testing.assert_allclose(pre[2:], _nhwc(z["y_no_image_pre_tanh"]), **tol)
    np.testing.assert_allclose(record["temb_sin"][:2], z["temb_sin"], atol=1e-6)
    np.testing.assert_allclose(record["emb"][:2], z["emb"], atol=1e-5)

    act_tol = {"atol": 1e-4, "rtol": 1e-4}
    for block in map(str, z["block_names"]):
        h = np.asarray(record[block][:2], np.float64)  # [2, h, w, C]
        np.testing.assert_allclose(h.mean(axis=(1, 2)), z[f"act_mean/{block}"], **act_tol)
        np.testing.assert_allclose(h.std(axis=(1, 2)), z[f"act_std/{block}"], **act_tol)
        if f"act/{block}" in z.files:
            np.testing.assert_allclose(h, _nhwc(z[f"act/{block}"]), **act_tol, err_msg=block)


def _stringify(tree):
    if isinstance(tree, dict):
        return {str(k): _stringify(v) for k, v in tree.items()}
    return tree


def test_unet_small_bf16_close_to_fp32(small):
    z = small.z
    m = _small_config(dtype="bfloat16")
    forward = jax.jit(lambda p, x, t, im: apply_unet(m, p, x, t, im))
    # Also a checkpoint-style tree whose list indices became strings ("10" sorts before "2"):
    # leaves must be matched by path, not by position.
    params = _stringify(small.params)
    y = forward(params, _nhwc(z["x_t"]), z["t"], _nhwc(z["image"]))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, _nhwc(z["y"]), atol=5e-2, rtol=0)


# --- Converter on the default model (README 4) -------------------------------------------------


def test_default_model_keys_match_reference(parity_dir):
    ref = json.loads((parity_dir / "unet_default_keys.json").read_text())
    m = base.get_config().model
    expected = {entry["key"]: tuple(entry["shape"]) for entry in ref["keys"]}
    assert len(expected) == ref["n_tensors"] == 530
    assert convert_torch.torch_key_shapes(m) == expected

    abstract = abstract_params(m)
    counts = count_params(abstract)
    assert counts.pop("total") == ref["n_params"] == 38_496_262
    assert counts == ref["params_per_block"]

    # The converter consumes exactly these keys and fills every parameter.
    params = convert_torch.convert({k: np.zeros(s, np.float32) for k, s in expected.items()}, m)
    got = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    assert got == jax.tree.map(lambda x: (x.shape, x.dtype), abstract)


# --- Training loss (README 5) ------------------------------------------------------------------


def _diffusion_config():
    return diffusion.DiffusionConfig.from_config(base.get_config().diffusion)


def test_training_loss_parity(small, parity_dir):
    zl = np.load(parity_dir / "loss_small.npz")
    m, cfg = small.config, _diffusion_config()
    # Image dropout as the reference drew it: sample i keeps its image iff draw <= p_image.
    present = zl["np_rand_draws"] <= base.get_config().diffusion.p_image
    np.testing.assert_array_equal(present, zl["image_present"])
    image = _nhwc(zl["image"]) * present[:, None, None, None]
    np.testing.assert_array_equal(image, _nhwc(zl["image_input"]))
    x0 = _nhwc(zl["x0_bits"])
    mask = zl["gt_int"][:, 0] != -1

    @jax.jit
    def loss_and_grads(params):
        def loss_fn(params):
            def denoise(x_t, t, im):
                return apply_unet(m, params, x_t, t, im)

            return diffusion.training_loss(
                denoise, x0, image, mask, jax.random.key(0), cfg, t=zl["t"], eps=_nhwc(zl["eps"])
            )

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, aux), grads = loss_and_grads(small.params)
    alpha, sigma = diffusion.alpha_sigma(aux["logsnr"])
    np.testing.assert_allclose(alpha, zl["alpha_t"], rtol=1e-6)
    np.testing.assert_allclose(sigma, zl["sigma_t"], rtol=1e-6)
    np.testing.assert_allclose(aux["x_t"], _nhwc(zl["x_t"]), atol=1e-6)
    np.testing.assert_allclose(aux["x_hat"], _nhwc(zl["pred_x"]), atol=1e-4)
    np.testing.assert_allclose(aux["weight"], zl["loss_weights"], rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], zl["mse_per_sample"], rtol=1e-5)
    np.testing.assert_allclose(aux["loss_per_sample"], zl["losses"], rtol=1e-5)
    np.testing.assert_allclose(loss, zl["loss"], rtol=1e-5)

    grad_norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(grad_norm, zl["grad_norm"], rtol=1e-4)
    # Bring the reference's gradients into our layout with the converter itself.
    keys = [k[len("grad/") :] for k in zl.files if k.startswith("grad/")]
    assert len(keys) == 4
    shapes = convert_torch.torch_key_shapes(m)
    ref = convert_torch.convert(
        {k: zl[f"grad/{k}"] if k in keys else np.zeros(s, np.float32) for k, s in shapes.items()},
        m,
    )
    for key in keys:
        path = [int(p) if p.isdigit() else p for p in key.split(".")[:-1]]
        ours, theirs = grads, ref
        for p in path:
            ours, theirs = ours[p], theirs[p]
        name = "bias" if key.endswith("bias") else "kernel"
        g_ref = np.asarray(theirs[name])
        np.testing.assert_allclose(
            ours[name], g_ref, atol=1e-3 * np.abs(g_ref).max(), rtol=0, err_msg=key
        )


# --- Samplers (README 6, 7) --------------------------------------------------------------------

SAMPLE_FILES = [("sample_small.npz", "ddpm"), ("sample_small_ddim.npz", "ddim")]


def _decode(bits):
    """[..., C] -> sum_i [x_i > 0] 2^i (README 1)."""
    return np.sum((bits > 0) * (2 ** np.arange(bits.shape[-1])), axis=-1)


@pytest.mark.parametrize("name, sampler", SAMPLE_FILES)
def test_sampler_teacher_forced(small, parity_dir, name, sampler):
    zs = np.load(parity_dir / name)
    image = _nhwc(zs["image"])
    for k in range(8):
        t = np.full((2,), zs["step_t"][k], np.float32)
        cond, uncond, _ = _cond_uncond(small, _nhwc(zs["x_t"][k]), t, image)
        np.testing.assert_allclose(cond, _nhwc(zs["model_out_cond"][k]), atol=1e-4, err_msg=k)
        np.testing.assert_allclose(uncond, _nhwc(zs["model_out_uncond"][k]), atol=1e-4)
        # SPEC 7.1: with x-prediction eps-space guidance equals x_hat = (1+w) x_c - w x_u.
        x_hat = np.clip(2.0 * cond - uncond, -1.0, 1.0)
        if k == 0:  # t = 1: the reference's own eps -> x rounding is ~1e-2 (README 8)
            np.testing.assert_allclose(x_hat, _nhwc(zs["pred_x"][0]), atol=2e-2)
            np.testing.assert_allclose(x_hat, _nhwc(zs["f64_pred_x_first_step"]), atol=1e-4)
        else:
            np.testing.assert_allclose(x_hat, _nhwc(zs["pred_x"][k]), atol=5e-4, err_msg=k)


@pytest.mark.parametrize("name, sampler", SAMPLE_FILES)
def test_sampler_update_rules(parity_dir, name, sampler):
    """Schedule scalars and the update alone: stored x_t[k], pred_x[k], eps / z -> x_t[k+1]."""
    zs = np.load(parity_dir / name)
    kwargs = _diffusion_config().schedule_kwargs
    lam_t = diffusion.logsnr(jnp.asarray(zs["step_t"]), **kwargs)
    lam_s = diffusion.logsnr(jnp.asarray(zs["step_s"]), **kwargs)
    np.testing.assert_allclose(lam_t, zs["logsnr_t"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lam_s, zs["logsnr_s"], rtol=1e-5, atol=1e-5)
    alpha, sigma = diffusion.alpha_sigma(lam_t)
    np.testing.assert_allclose(alpha, zs["alpha_t"], rtol=1e-5)
    np.testing.assert_allclose(sigma, zs["sigma_t"], rtol=1e-5)
    for k in range(7):
        x, x_hat = _nhwc(zs["x_t"][k]), _nhwc(zs["pred_x"][k])
        if sampler == "ddpm":
            coefs = diffusion.ddpm_coefficients(lam_t[k], lam_s[k], "large")
            ref = [zs["ddpm_coef_x_t"][k], zs["ddpm_coef_pred_x"][k], zs["ddpm_std"][k]]
            np.testing.assert_allclose(coefs, ref, rtol=1e-5)
            x_next = diffusion.ddpm_step(x, x_hat, lam_t[k], lam_s[k], _nhwc(zs["noise"][k]))
        else:
            x_next = diffusion.ddim_step(x_hat, _nhwc(zs["pred_eps"][k]), lam_s[k])
        np.testing.assert_allclose(x_next, _nhwc(zs["x_t"][k + 1]), atol=1e-5, err_msg=k)


def _apply_small(params, x_t, t, image):
    return apply_unet(_SMALL_CONFIG, params, x_t, t, image)


_SMALL_CONFIG = _small_config()


@pytest.mark.parametrize("name, sampler", SAMPLE_FILES)
def test_sampler_free_running(small, parity_dir, name, sampler):
    zs = np.load(parity_dir / name)
    image = _nhwc(zs["image"])
    step_noise = _nhwc(zs["noise"]) if sampler == "ddpm" else None
    assert zs["noise_used"].tolist() == ([True] * 7 + [False] if sampler == "ddpm" else [False] * 8)
    bits, traj = diffusion.sample(
        jax.tree_util.Partial(_apply_small, small.params),
        jax.random.key(0),
        image,
        np.ones(image.shape[:3], bool),  # imshape 32 x 32: the whole canvas is valid
        _diffusion_config(),
        num_channels=6,
        num_steps=int(zs["num_steps"]),
        guidance_weight=float(zs["guidance_weight"]),
        sampler=sampler,
        var_type="large",
        clip_denoised=bool(zs["clip_denoised"]),
        noise_init=_nhwc(zs["noise_init"]),
        step_noise=step_noise,
        return_trajectory=True,
    )
    np.testing.assert_array_equal(traj["t"], zs["step_t"])
    np.testing.assert_allclose(traj["x_t"], _nhwc(zs["x_t"][:8]), atol=2e-3)
    np.testing.assert_allclose(traj["x_hat"][1:], _nhwc(zs["pred_x"][1:]), atol=2e-3)
    np.testing.assert_allclose(traj["x_hat"][0], _nhwc(zs["pred_x"][0]), atol=2e-2)
    np.testing.assert_allclose(traj["x_hat"][0], _nhwc(zs["f64_pred_x_first_step"]), atol=1e-4)
    np.testing.assert_allclose(traj["eps_hat"], _nhwc(zs["pred_eps"]), atol=2e-3)
    np.testing.assert_allclose(bits, _nhwc(zs["pred_bit"]), atol=2e-3)

    ref_bits = _nhwc(zs["pred_bit"])
    ours, theirs = _decode(np.asarray(bits)), zs["pred_int"][:, 0]
    np.testing.assert_array_equal(_decode(ref_bits), theirs)  # the fixture's own decoding
    safe = np.abs(ref_bits).min(axis=-1) > 2e-3
    np.testing.assert_array_equal(ours[safe], theirs[safe])
    assert np.mean(ours == theirs) >= 0.999
