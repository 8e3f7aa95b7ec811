"""Checkpoint export: weights as flat .npz + config JSON, and the sampler via `jax.export`.

`python -m bitseg_jax.main --mode=export --config=... --workdir=DIR [--out OUT]` writes OUT
(default DIR/export):

  params.npz, ema_params.npz   weights keyed by "/"-joined parameter paths (the lasting artifact;
                               `config.init_from` and `Segmenter.from_export` read them)
  config.json                  the training config
  sampler.jax_exported         (params, images [b, S, S, 3], valid [b, S, S], seed) ->
                               {labels, probs, entropy} [b, S, S]; steps, guidance and sampler
                               fixed at export, batch size b symbolic; serialised for cpu, cuda
                               and tpu
  export.json                  what the sampler needs: image size, settings, parameter order,
                               ImageNet statistics
  segment_exported.py          a CLI that needs only jax, numpy and pillow

Weights converted from the authors' PyTorch checkpoints export the same way through
`export_params` (see `convert_torch`).
"""

import json
import pathlib
import shutil
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from bitseg_jax import checkpointing, diffusion, encoding, input_pipeline, models

PLATFORMS = ("cpu", "cuda", "tpu")
SAMPLER_FILE = "sampler.jax_exported"
SCRIPT_FILE = "segment_exported.py"
# Encodings whose decoding runs on device (RGB's progressive dichotomy runs on host in NumPy).
EXPORTABLE_ENCODINGS = ("analog_bits", "onehot")


def sampler_fn(config: ml_collections.ConfigDict, param_keys: Sequence[str]):
    """Builds the pure function that `jax.export` serialises.

    Args:
      config: the run's config (model, diffusion and eval groups are used).
      param_keys: flat parameter paths in the order of the model's tree.

    Returns:
      fn(flat_params: dict[str, f32], images f32 [b, S, S, 3], valid bool [b, S, S], seed u32 [])
      -> {"labels": int32 [b, S, S], "probs": f32 [b, S, S], "entropy": f32 [b, S, S]}.
    """
    model_cfg, ev = config.model, config.eval
    if model_cfg.encoding not in EXPORTABLE_ENCODINGS:
        raise ValueError(
            f"Export supports model.encoding in {EXPORTABLE_ENCODINGS}; got "
            f"{model_cfg.encoding!r} (its decoder runs on host)."
        )
    dcfg = diffusion.DiffusionConfig.from_config(config.diffusion)
    treedef = jax.tree.structure(models.abstract_params(model_cfg))
    channels = encoding.num_channels(model_cfg.encoding, model_cfg.num_bits)

    def denoise(params, x_t, t, image):
        return models.apply_unet(model_cfg, params, x_t, t, image)

    def fn(flat_params, images, valid, seed):
        params = jax.tree.unflatten(treedef, [flat_params[k] for k in param_keys])
        bits = diffusion.sample(
            jax.tree_util.Partial(denoise, params),
            jax.random.PRNGKey(seed),
            images,
            valid,
            dcfg,
            num_channels=channels,
            num_steps=ev.num_steps,
            guidance_weight=ev.guidance_weight,
            sampler=ev.sampler,
            var_type=ev.var_type,
            clip_denoised=ev.clip_denoised,
        )
        labels = encoding.decode(bits, encoding=model_cfg.encoding, num_bits=model_cfg.num_bits)
        if model_cfg.encoding == "analog_bits":
            probs, entropy = encoding.bit_probs(bits, labels), encoding.bit_entropy(bits)
        else:  # one-hot: normalised channel values as a distribution over classes.
            p = jnp.clip(bits, 0.0, None) + 1e-12
            p = p / p.sum(-1, keepdims=True)
            probs = jnp.take_along_axis(p, labels[..., None], -1)[..., 0]
            entropy = -(p * jnp.log(p)).sum(-1)
        return {"labels": labels.astype(jnp.int32), "probs": probs, "entropy": entropy}

    return fn


def export_sampler(
    config: ml_collections.ConfigDict,
    param_keys: Sequence[str],
    param_shapes: Mapping[str, tuple[int, ...]],
    platforms: Sequence[str] = PLATFORMS,
) -> jax.export.Exported:
    """Exports `sampler_fn` with a symbolic batch size for `platforms`."""
    (b,) = jax.export.symbolic_shape("b")
    s = config.model.image_size
    args = (
        {k: jax.ShapeDtypeStruct(tuple(param_shapes[k]), jnp.float32) for k in param_keys},
        jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
        jax.ShapeDtypeStruct((b, s, s), jnp.bool_),
        jax.ShapeDtypeStruct((), jnp.uint32),
    )
    fn = jax.jit(sampler_fn(config, param_keys))
    return jax.export.export(fn, platforms=tuple(platforms))(*args)


def export_params(
    config: ml_collections.ConfigDict,
    params: Mapping,
    out_dir: str | pathlib.Path,
    *,
    ema_params: Mapping | None = None,
    step: int | None = None,
    platforms: Sequence[str] = PLATFORMS,
) -> pathlib.Path:
    """Writes the export folder for given params (from a checkpoint or `convert_torch`).

    Args:
      config: the config the params belong to.
      params: nested float32 params of `models.init_unet`'s tree.
      out_dir: output folder (created).
      ema_params: optional EMA params (written as ema_params.npz).
      step: training step, recorded in export.json.
      platforms: jax.export lowering platforms.

    Returns:
      The output folder.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    like = models.abstract_params(config.model)
    flat = checkpointing.flatten_params(checkpointing.params_like(params, like, "params"))
    keys = list(flat)
    np.savez(out / "params.npz", **{k: np.asarray(v, np.float32) for k, v in flat.items()})
    if ema_params is not None:
        flat_ema = checkpointing.flatten_params(
            checkpointing.params_like(ema_params, like, "ema_params")
        )
        np.savez(out / "ema_params.npz", **{k: np.asarray(flat_ema[k], np.float32) for k in keys})
    (out / "config.json").write_text(config.to_json_best_effort(indent=2))

    shapes = {k: np.shape(v) for k, v in flat.items()}
    exported = export_sampler(config, keys, shapes, platforms)
    (out / SAMPLER_FILE).write_bytes(exported.serialize())
    meta = {
        "image_size": config.model.image_size,
        "encoding": config.model.encoding,
        "num_bits": config.model.num_bits,
        "num_steps": config.eval.num_steps,
        "guidance_weight": config.eval.guidance_weight,
        "sampler": config.eval.sampler,
        "platforms": list(platforms),
        "step": step,
        "imagenet_mean": list(input_pipeline.IMAGENET_MEAN),
        "imagenet_std": list(input_pipeline.IMAGENET_STD),
        "param_keys": keys,
    }
    (out / "export.json").write_text(json.dumps(meta, indent=2))
    shutil.copyfile(pathlib.Path(__file__).with_name(SCRIPT_FILE), out / SCRIPT_FILE)
    logging.info("Exported %d parameter arrays and the sampler to %s.", len(keys), out)
    return out


def export(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    out_dir: str | pathlib.Path | None = None,
    *,
    which: str = "latest",
    platforms: Sequence[str] = PLATFORMS,
) -> pathlib.Path:
    """Exports the `which` checkpoint of `workdir` (raw and, for "latest", EMA weights).

    Raises:
      FileNotFoundError: the workdir holds no such checkpoint.
    """
    params, step = checkpointing.restore_params(workdir, which=which)
    ema = None
    if which == "latest":
        ema, _ = checkpointing.restore_params(workdir, which=which, step=step, use_ema=True)
    out_dir = out_dir or epath.Path(workdir) / "export"
    params, ema = jax.device_get(params), jax.device_get(ema)
    return export_params(config, params, out_dir, ema_params=ema, step=step, platforms=platforms)
