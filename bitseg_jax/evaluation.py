"""Sampling evaluation: the `Evaluator`, the named eval setups, sweeps and their plots.

This file owns SPEC 7.5 (the "gen setups"), the aggregation of SPEC 8.3 and the choice of
weights of SPEC 9.5:

* `get_sample_fn` builds (once per model config, step count, guidance weight and sampler) the
  jitted guided sampler `(params, rng, image, valid) -> x̂`: `diffusion.sample` driven by
  `models.apply_unet`. The Segmenter uses it too.
* `Evaluator` samples N segmentations per image of a split on device (batches sharded over the
  "data" mesh axis), decodes them, scores them on host with `metrics` against annotator 0's map
  (and against every annotator on multi-annotator data) and returns means.
* `SETUPS` names the paper's evaluation settings; `run_eval` restores a checkpoint, runs one
  setup (sweeps expand to one run per value) and writes `<workdir>/eval/<setup>.json` (+ a CSV
  and a figure of `sweep_plots`, in the style of the paper's Figs. 4-6, for sweeps).
"""

import csv
import dataclasses
import functools
import io
import json
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.optimize
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from bitseg_jax import (
    checkpointing,
    diffusion,
    encoding,
    input_pipeline,
    metrics,
    models,
    visualize,
)
from bitseg_jax import sharding as sharding_lib

NUM_VIS_IMAGES = 4  # images shown in `Evaluator.images`.

# --------------------------------------------------------------------------------------------
# Jitted sampler.
# --------------------------------------------------------------------------------------------

SampleFn = Callable[[Mapping, jax.Array, jax.Array, jax.Array], jax.Array]
_SAMPLE_FNS: dict[tuple, SampleFn] = {}


def get_sample_fn(
    config: ml_collections.ConfigDict, *, num_steps: int, guidance_weight: float, sampler: str
) -> SampleFn:
    """The jitted guided sampler for `config` (SPEC 7.1-7.3), cached across callers.

    Two evaluators (or the Segmenter) with the same model/diffusion config, step count, guidance
    weight and sampler share one jitted function, so the sampler compiles once per input shape.

    Args:
      config: full config; `config.model`, `config.diffusion`, `config.eval.var_type` and
        `config.eval.clip_denoised` are used.
      num_steps: sampling steps (static: each value compiles its own loop).
      guidance_weight: w of SPEC 7.1 (static: w = 0 skips the unconditional pass).
      sampler: "ddpm" | "ddim".

    Returns:
      `sample_fn(params, rng, image [B,S,S,3], valid [B,S,S] bool) -> x̂ [B,S,S,C]` float32.
    """
    apply_unet = models.apply_unet  # looked up per call so that a stand-in model gets its own fn.
    key = (
        config.model.to_json_best_effort(),
        config.diffusion.to_json_best_effort(),
        str(config.eval.var_type),
        bool(config.eval.clip_denoised),
        int(num_steps),
        float(guidance_weight),
        str(sampler),
        apply_unet,
    )
    if key not in _SAMPLE_FNS:
        model_config = config.model
        diffusion_config = diffusion.DiffusionConfig.from_config(config.diffusion)
        num_channels = encoding.num_channels(model_config.encoding, model_config.num_bits)
        var_type, clip_denoised = config.eval.var_type, config.eval.clip_denoised

        def sample_fn(params, rng, image, valid):
            def denoise_fn(x_t, t, cond_image):
                return apply_unet(model_config, params, x_t, t, cond_image)

            return diffusion.sample(
                denoise_fn,
                rng,
                image,
                valid,
                diffusion_config,
                num_channels=num_channels,
                num_steps=int(num_steps),
                guidance_weight=float(guidance_weight),
                sampler=sampler,
                var_type=var_type,
                clip_denoised=clip_denoised,
            )

        _SAMPLE_FNS[key] = jax.jit(sample_fn)
    return _SAMPLE_FNS[key]


# --------------------------------------------------------------------------------------------
# Host-side helpers.
# --------------------------------------------------------------------------------------------


def disagreement(samples: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel fraction of samples 1..N−1 that disagree with sample 0 (an uncertainty map).

    Ids are agnostic, so each sample's segments are first matched one-to-one to sample 0's by
    maximum total IoU (Hungarian, over the valid pixels); a segment left unmatched disagrees
    everywhere. 0 = every sample agrees with sample 0, 1 = none does.

    Args:
      samples: int [N, H, W] id maps, N ≥ 2.
      valid: bool [H, W] pixels to compare (default all); others get 0.

    Returns:
      float32 [H, W] in [0, 1].
    """
    samples = np.asarray(samples)
    if samples.ndim != 3 or samples.shape[0] < 2:
        raise ValueError(f"`samples` must be [N ≥ 2, H, W], got shape {samples.shape}")
    valid = np.ones(samples.shape[1:], bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != samples.shape[1:]:
        raise ValueError(f"`valid` has shape {valid.shape}, expected {samples.shape[1:]}")
    ref_ids, ref = np.unique(samples[0][valid], return_inverse=True)
    count = np.zeros(samples.shape[1:], np.float32)
    for other in samples[1:]:
        other_ids, inv = np.unique(other[valid], return_inverse=True)
        inter = np.zeros((len(other_ids), len(ref_ids)))
        np.add.at(inter, (inv, ref), 1.0)
        union = inter.sum(1, keepdims=True) + inter.sum(0, keepdims=True) - inter
        rows, cols = scipy.optimize.linear_sum_assignment(-inter / np.maximum(union, 1.0))
        mapping = np.full(len(other_ids), -1)  # -1: unmatched, never equals a ref index.
        mapping[rows] = cols
        count[valid] += mapping[inv] != ref
    return count / (samples.shape[0] - 1)


def _global_sum(values: np.ndarray) -> np.ndarray:
    """Sums a host-local array over processes (identity on one process)."""
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).sum(0)


def _host_rows(x: jax.Array, mesh) -> np.ndarray:
    """A data-sharded global array -> this process's rows as NumPy."""
    if jax.process_count() == 1:
        return np.asarray(x)
    local = multihost_utils.global_array_to_host_local_array(
        x, mesh, PartitionSpec(sharding_lib.DATA_AXIS)
    )
    return np.asarray(local)


# --------------------------------------------------------------------------------------------
# Evaluator.
# --------------------------------------------------------------------------------------------


class Evaluator:
    """Samples segmentations for a split and scores them (SPEC 8, aggregation of 8.3).

    Per (image, sample): ARI, hiou_e (the paper's IoU), hiou against annotator 0's map and the
    likelihood of SPEC 3.2; best-of-N (`max_ari`, `max_hiou_e`) over an image's samples. On
    multi-annotator data (A > 1) also every sample against every present annotator
    (`*_vs_all` = mean over annotators, `best_*_vs_all` = best annotator) and the generalised
    energy distance between the sample set and the annotator set (`ged_hiou_e`, `ged_ari`).

    The evaluator never chooses EMA params itself: `run` scores the params it is given;
    `use_ema` only records which kind `run_eval` restores.

    Attributes:
      images: after `run`, a uint8 [H, W, 3] grid of image | ground truth | samples |
        uncertainty for the first `NUM_VIS_IMAGES` images (for TensorBoard).
      best_of_n: after `run`, {"ari": [N], "hiou_e": [N]}: mean over images of the best score
        among the first n samples, n = 1..N (paper Fig. 6).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        *,
        split: str,
        num_images: int | None,
        num_samples: int,
        num_steps: int | None = None,
        guidance_weight: float | None = None,
        sampler: str | None = None,
        use_ema: bool | None = None,
        seed: int = 0,
    ):
        """Sets up an evaluation.

        Args:
          config: full config (`config.eval` supplies every default below).
          split: dataset split name, e.g. `config.data.eval_split`.
          num_images: images to evaluate (a seeded draw of the split); None = the whole split.
          num_samples: samples per image (N ≥ 1).
          num_steps: sampling steps; default `config.eval.num_steps`.
          guidance_weight: default `config.eval.guidance_weight`.
          sampler: "ddpm" | "ddim"; default `config.eval.sampler`.
          use_ema: default `config.eval.use_ema` (SPEC 9.5: raw weights).
          seed: sampling seed (also picks the images when `num_images` is set).
        """
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be ≥ 1, got {num_samples}")
        if num_images is not None and num_images < 1:
            raise ValueError(f"`num_images` must be ≥ 1 or None, got {num_images}")
        e = config.eval
        self.config = config
        self.split = split
        self.num_images = num_images
        self.num_samples = int(num_samples)
        self.num_steps = int(e.num_steps if num_steps is None else num_steps)
        self.guidance_weight = float(
            e.guidance_weight if guidance_weight is None else guidance_weight
        )
        self.sampler = str(e.sampler if sampler is None else sampler)
        self.use_ema = bool(e.use_ema if use_ema is None else use_ema)
        self.seed = int(seed)
        self.images: np.ndarray | None = None
        self.best_of_n: dict[str, list[float]] = {}
        self._encoding = config.model.encoding
        self._num_bits = config.model.num_bits

    def _batches(self) -> Iterator[dict]:
        return input_pipeline.create_eval_iterator(
            self.config, self.split, num_images=self.num_images, seed=self.seed
        )

    def run(self, params: Mapping) -> dict[str, float]:
        """Samples and scores the split with `params` (raw or EMA: the caller's choice).

        Args:
          params: model params (nested dict of arrays), e.g. `state.params`.

        Returns:
          Floats: ari, hiou_e, hiou, likelihood, max_ari, max_hiou_e, max_hiou, num_images,
          and on multi-annotator data ari_vs_all, best_ari_vs_all, hiou_e_vs_all,
          best_hiou_e_vs_all, ged_ari, ged_hiou_e.
        """
        mesh = jax.sharding.get_mesh()
        if mesh.empty:
            mesh = sharding_lib.create_mesh()
        sample_fn = get_sample_fn(
            self.config,
            num_steps=self.num_steps,
            guidance_weight=self.guidance_weight,
            sampler=self.sampler,
        )
        params = jax.device_put(params, sharding_lib.replicated(mesh))
        rng = jax.random.key(self.seed)
        sums: dict[str, np.ndarray] = {}
        vis_rows: list[list[np.ndarray]] = []

        def add(name: str, per_image: np.ndarray) -> None:
            # Everything reported is a mean over images (of per-image means over samples or
            # maxima), so a sum and a count per key aggregate exactly across batches and hosts.
            per_image = np.asarray(per_image, np.float64)
            ok = ~np.isnan(per_image)
            total = np.stack([np.where(ok, per_image, 0.0).sum(0), ok.sum(0)])
            sums[name] = sums.get(name, 0.0) + total

        for batch_index, batch in enumerate(self._batches()):
            local_b = batch["image"].shape[0]
            global_b = local_b * jax.process_count()
            if global_b % mesh.size:
                raise ValueError(
                    f"The eval batch ({global_b} images) does not split over the {mesh.size} "
                    "devices of the mesh; set config.eval.batch_size to a multiple of it."
                )
            on_device = sharding_lib.to_global(
                {k: batch[k] for k in ("image", "valid", "label")}, mesh
            )
            batch_rng = jax.random.fold_in(rng, batch_index)
            x_hats = tuple(
                sample_fn(
                    params, jax.random.fold_in(batch_rng, s), on_device["image"], on_device["valid"]
                )
                for s in range(self.num_samples)
            )
            pred, likelihood, entropy = self._decode(x_hats, on_device, mesh)
            keep = np.asarray(batch["_mask"], bool)
            if not keep.any():
                continue
            # Scored at the annotations' size E: each image's samples are cropped to their
            # content at S and nearest-upsampled to its content at E (a no-op when E = S).
            valid = np.asarray(batch["valid"], bool)[keep]
            eval_valid = np.asarray(batch["eval_valid"], bool)[keep]
            annotations = np.asarray(batch["annotations"], np.int32)[keep]
            pred = _to_eval_size(pred[keep], valid, eval_valid)
            scores = self._score(pred, annotations, eval_valid)
            scores["likelihood"] = likelihood[keep].mean(1)
            for name, value in scores.items():
                add(name, value)
            num_vis = min(int(keep.sum()), NUM_VIS_IMAGES - len(vis_rows))
            if num_vis > 0:
                vis = slice(0, num_vis)
                images = np.moveaxis(np.asarray(batch["image"])[keep][vis], -1, 1)
                images = np.moveaxis(_to_eval_size(images, valid[vis], eval_valid[vis]), 1, -1)
                entropies = _to_eval_size(entropy[keep][vis], valid[vis], eval_valid[vis])
                for i in range(num_vis):
                    vis_rows.append(
                        self._vis_row(
                            images[i], annotations[i, 0], eval_valid[i], pred[i], entropies[i]
                        )
                    )

        if not sums:
            raise ValueError(f"Split {self.split!r} gave no images to evaluate.")
        means = {}
        for name, total in sums.items():
            total = _global_sum(np.asarray(total))
            means[name] = total[0] / np.maximum(total[1], 1)
        num_images = int(_global_sum(np.asarray(sums["ari"]))[1])
        curves = {k: means.pop(f"_best_of_n_{k}") for k in ("ari", "hiou_e")}
        self.best_of_n = {k: [float(v) for v in c] for k, c in curves.items()}
        self.images = visualize.grid(vis_rows) if vis_rows else None
        results = {name: float(np.asarray(value)) for name, value in means.items()}
        results["num_images"] = float(num_images)
        return results

    def _decode(self, x_hats, on_device, mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decodes N samples of a batch; returns this host's rows: pred int32 [b, N, S, S]
        (0 outside the valid region), likelihood [b, N] and entropy [b, S, S] (NaN unless
        analog bits)."""
        if self._encoding == "rgb":  # the PDM decoder runs on host (SPEC 3.4).
            x = np.stack([_host_rows(x, mesh) for x in x_hats], axis=1)
            valid = np.broadcast_to(_host_rows(on_device["valid"], mesh)[:, None], x.shape[:-1])
            pred = np.asarray(
                encoding.decode(x, encoding="rgb", num_bits=self._num_bits, valid=valid)
            )
            nan = np.full(valid.shape[:2], np.nan)
            return np.where(valid, pred, 0), nan, np.full(valid[:, 0].shape, np.nan)
        outputs = _decode_and_score(
            x_hats,
            on_device["label"],
            on_device["valid"],
            name=self._encoding,
            num_bits=self._num_bits,
        )
        return tuple(_host_rows(x, mesh) for x in outputs)

    def _score(self, pred: np.ndarray, annotations: np.ndarray, valid: np.ndarray) -> dict:
        """Per-image scores (SPEC 8) of kept rows.

        Args:
          pred: int32 [n, N, E, E] samples, ≥ 0, at the scoring size E.
          annotations: int32 [n, A, E, E]; annotator 0 is the ground truth.
          valid: bool [n, E, E].

        Returns:
          {name: float [n]} (and [n, N] best-of-n curves under "_best_of_n_*").
        """
        n = len(pred)
        present = (annotations >= 0).any((-2, -1))  # [n, A]: absent annotators are all −1.
        # Annotator 0's −1 pixels (padding) do not count.
        m = metrics.segmentation_metrics(annotations[:, 0], pred, valid)
        out: dict[str, np.ndarray] = {}
        for key in ("ari", "hiou_e", "hiou"):
            per = np.asarray(m[key], np.float64)  # [n, N]
            out[key] = per.mean(1)
            out[f"max_{key}"] = per.max(1)
            if key in ("ari", "hiou_e"):
                out[f"_best_of_n_{key}"] = np.maximum.accumulate(per, axis=1)
        if annotations.shape[1] > 1:
            per_annot = {"ari": [], "hiou_e": []}
            for a in range(annotations.shape[1]):
                # An absent annotator (all −1) gets a stand-in map; its scores are masked below.
                gt_a = np.where(present[:, a, None, None], annotations[:, a], 0)
                m_a = metrics.segmentation_metrics(gt_a, pred, valid)
                for key, values in per_annot.items():
                    values.append(np.asarray(m_a[key], np.float64))
            for key, values in per_annot.items():
                v = np.where(present[:, :, None], np.stack(values, axis=1), np.nan)  # [n, A, N]
                out[f"{key}_vs_all"] = np.nanmean(v, axis=1).mean(1)
                out[f"best_{key}_vs_all"] = np.nanmax(v, axis=1).mean(1)
            for key in ("hiou_e", "ari"):
                out[f"ged_{key}"] = np.array(
                    [metrics.ged(pred[i], annotations[i], valid[i], distance=key) for i in range(n)]
                )
        return out

    def _vis_row(self, image, gt, valid, pred, entropy) -> list[np.ndarray]:
        """image | GT | samples | uncertainty (bit entropy, else the samples' disagreement)."""
        if self._encoding == "analog_bits":
            uncertainty, vmax = entropy, self._num_bits * float(np.log(2.0))
        elif len(pred) > 1:
            uncertainty, vmax = disagreement(pred, valid), 1.0
        else:
            uncertainty, vmax = np.zeros(valid.shape, np.float32), 1.0
        return visualize.sample_row(
            visualize.denormalize(image),
            np.where(valid, gt, -1),
            np.where(valid[None], pred, -1),
            np.where(valid, uncertainty, np.nan),
            vmax=vmax,
        )


def _to_eval_size(maps: np.ndarray, valid: np.ndarray, eval_valid: np.ndarray) -> np.ndarray:
    """maps [n, ..., S, S] -> [n, ..., E, E]: per image, the content at S (`valid` [n, S, S])
    nearest-resized to the content at E (`eval_valid` [n, E, E]), 0 outside; E = S: as is."""
    if maps.shape[-2:] == eval_valid.shape[-2:]:
        return maps
    canvas = eval_valid.shape[-2:]
    return np.stack(
        [
            visualize.resize_content(
                m, visualize.content_shape(v), visualize.content_shape(ev), canvas
            )
            for m, v, ev in zip(maps, valid, eval_valid, strict=True)
        ]
    )


@functools.partial(jax.jit, static_argnames=("name", "num_bits"))
def _decode_and_score(x_hats, label, valid, *, name: str, num_bits: int):
    """Device-side decoding (SPEC 3.1, 3.3), likelihood (3.2) and bit entropy (7.4).

    Args:
      x_hats: N arrays x̂ [b, S, S, C] (one per sample).
      label: int32 [b, S, S] the trained-on class map (after the palette).
      valid: bool [b, S, S].
      name: "analog_bits" | "onehot".
      num_bits: k.

    Returns:
      pred int32 [b, N, S, S] (0 outside `valid`), likelihood float32 [b, N] (one-hot: the
      class's channel is its probability, SPEC 3.3) and the mean over samples of the per-pixel
      bit entropy, float32 [b, S, S] (NaN for one-hot).
    """
    x = jnp.stack(x_hats, axis=1)
    v = jnp.broadcast_to(valid[:, None], x.shape[:-1])
    labels = jnp.broadcast_to(label[:, None], v.shape)
    pred = jnp.where(v, encoding.decode(x, encoding=name, num_bits=num_bits), 0)
    if name == "analog_bits":
        likelihood = encoding.likelihood(x, labels, v)
        entropy = encoding.bit_entropy(x).mean(1)
    else:
        probs = jnp.take_along_axis(x, jnp.where(v, labels, 0)[..., None], -1)[..., 0]
        likelihood = jnp.sum(jnp.clip(probs, 0.0, 1.0) * v, (-2, -1)) / jnp.maximum(
            jnp.sum(v, (-2, -1)), 1
        )
        entropy = jnp.full(valid.shape, jnp.nan)
    return pred.astype(jnp.int32), likelihood, entropy


# --------------------------------------------------------------------------------------------
# Named setups (SPEC 7.5) and sweeps.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalSetup:
    """One named evaluation (SPEC 7.5); unset fields fall back to `config.eval`.

    Attributes:
      split: "vali" | "train" | "test" (see `SPLITS`).
      num_images: images per run; None = the whole split.
      num_samples: samples per image.
      seed: sampling seed (picks the images too).
      num_steps, guidance_weight, sampler: sampler overrides.
      sweep: (Evaluator argument, values): one run per value; None = a single run.
      plot: for sweeps, the figure drawn: "steps" (Fig. 4), "guidance" (Fig. 5) or
        "best_of_n" (Fig. 6).
    """

    split: str
    num_images: int | None = None
    num_samples: int = 1
    seed: int = 0
    num_steps: int | None = None
    guidance_weight: float | None = None
    sampler: str | None = None
    sweep: tuple[str, tuple] | None = None
    plot: str | None = None


STEP_VALUES = (2, 3, 4, 5, 6, 8, 10, 20, 30, 50, 100, 200)
# SPEC 7.5's list plus 2.5, the paper's IoU optimum (SPEC A4).
GUIDANCE_VALUES = (-1.0, -0.1, 0.0, 0.1, 0.3, 1.0, 2.0, 2.5, 3.0, 10.0)
BEST_OF_N_GUIDANCE = (0.0, 0.3, 1.0, 3.0)  # Fig. 6: more guidance, less diversity.
BEST_OF_N_SAMPLES = 16

SETUPS: dict[str, EvalSetup] = {
    "vali": EvalSetup(split="vali"),
    "vali8": EvalSetup(split="vali", num_samples=8),  # the real-data tables: mean, best of 8, GED
    "test": EvalSetup(split="test"),
    "train": EvalSetup(split="train"),
    "64x3[vali]": EvalSetup(split="vali", num_images=64, num_samples=3),
    "64x3[train]": EvalSetup(split="train", num_images=64, num_samples=3),
    "sweeps[ts]": EvalSetup(
        split="vali",
        num_images=256,
        seed=123,
        guidance_weight=1.0,
        sampler="ddpm",
        sweep=("num_steps", STEP_VALUES),
        plot="steps",
    ),
    "sweeps[ts][ddim]": EvalSetup(
        split="vali",
        num_images=256,
        seed=123,
        guidance_weight=1.0,
        sampler="ddim",
        sweep=("num_steps", STEP_VALUES),
        plot="steps",
    ),
    "sweeps[gw]": EvalSetup(
        split="vali",
        num_images=256,
        seed=123,
        num_steps=8,
        sampler="ddpm",
        sweep=("guidance_weight", GUIDANCE_VALUES),
        plot="guidance",
    ),
    "bestofn": EvalSetup(
        split="vali",
        num_images=256,
        num_samples=BEST_OF_N_SAMPLES,
        seed=123,
        num_steps=8,
        sampler="ddpm",
        sweep=("guidance_weight", BEST_OF_N_GUIDANCE),
        plot="best_of_n",
    ),
}


def split_name(config: ml_collections.ConfigDict, role: str) -> str:
    """Dataset split of a setup's split role: "vali" | "train" | "test"."""
    splits = {"vali": config.data.eval_split, "train": config.data.train_split, "test": "test"}
    if role not in splits:
        raise KeyError(f"Unknown eval split role {role!r}; expected one of {sorted(splits)}.")
    return splits[role]


def get_setup(name: str) -> EvalSetup:
    """`SETUPS[name]` with a helpful KeyError."""
    if name not in SETUPS:
        raise KeyError(f"Unknown eval setup {name!r}; expected one of {sorted(SETUPS)}.")
    return SETUPS[name]


def _evaluators(config, setup: EvalSetup, use_ema: bool) -> list[tuple[object, Evaluator]]:
    """One (sweep value or None, Evaluator) per run of `setup`, with `config.eval.max_images`."""
    num_images = setup.num_images
    cap = config.eval.max_images
    if cap:
        num_images = cap if num_images is None else min(num_images, cap)
    kwargs = {
        "split": split_name(config, setup.split),
        "num_images": num_images,
        "num_samples": setup.num_samples,
        "num_steps": setup.num_steps,
        "guidance_weight": setup.guidance_weight,
        "sampler": setup.sampler,
        "use_ema": use_ema,
        "seed": setup.seed,
    }
    if setup.sweep is None:
        return [(None, Evaluator(config, **kwargs))]
    field, values = setup.sweep
    return [(v, Evaluator(config, **{**kwargs, field: v})) for v in values]


def run_eval(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    setup: str,
    step: int | None = None,
    which: str = "latest",
    tag: str = "",
) -> dict:
    """Restores a checkpoint of `workdir`, runs a named setup and writes its results.

    Writes (process 0 only) `<workdir>/eval/<name>.json`, name = `<setup>` or
    `<setup>_<tag>`, with the setup's settings, the data set and scoring size, and the
    metrics (sweeps: `"results"`, one entry per swept value), and for sweeps also `<name>.csv`
    and `<name>.png` (paper Figs. 4, 5 or 6). Single runs also write `<name>_samples.png` (the
    Evaluator's image grid). `config.eval.max_images` > 0 caps the images of every run, to
    shrink a setup.

    Args:
      config: the run's config.
      workdir: training workdir holding checkpoints.
      setup: a key of `SETUPS`.
      step: checkpoint step; None = the newest of `which`.
      which: "latest" | "best" (see `checkpointing.restore_params`).
      tag: suffix of the output files, so that evaluations of one setup on other data or at
        another size do not overwrite each other (letters, digits, ".", "-", "_").

    Returns:
      The dict written to the JSON file.
    """
    if tag and not re.fullmatch(r"[A-Za-z0-9._-]+", tag):
        raise ValueError(f"Eval tag {tag!r}: use letters, digits, '.', '-' and '_' only.")
    name = f"{setup}_{tag}" if tag else setup
    spec = get_setup(setup)
    use_ema = bool(config.eval.use_ema)
    runs = _evaluators(config, spec, use_ema)
    params, ckpt_step = checkpointing.restore_params(
        workdir, which=which, step=step, use_ema=use_ema
    )
    # Checkpoints store the U-Net's int keys as strings: back to the model's own tree (and a
    # clear error naming the parameter if the checkpoint does not fit `config.model`).
    params = checkpointing.params_like(
        params,
        models.abstract_params(config.model),
        f"the {which} checkpoint (step {ckpt_step}) of workdir {workdir}",
    )
    logging.info("Eval setup %s on %s checkpoint %d of %s.", setup, which, ckpt_step, workdir)
    record = {
        "setup": setup,
        "step": int(ckpt_step),
        "which": which,
        "use_ema": use_ema,
        "dataset": str(config.data.datasets[0]),
        "image_size": int(config.model.image_size),
        "eval_image_size": input_pipeline.eval_image_size(config),
    }
    results = []
    for value, evaluator in runs:
        scores = evaluator.run(params)
        entry = {
            "split": evaluator.split,
            "num_samples": evaluator.num_samples,
            "num_steps": evaluator.num_steps,
            "guidance_weight": evaluator.guidance_weight,
            "sampler": evaluator.sampler,
            "seed": evaluator.seed,
            **scores,
        }
        if spec.plot == "best_of_n":
            entry.update({f"best_of_n_{k}": v for k, v in evaluator.best_of_n.items()})
        logging.info("%s %s: %s", setup, "" if value is None else value, scores)
        results.append(entry)
    if spec.sweep is None:
        record.update(results[0])
    else:
        record.update({"sweep": spec.sweep[0], "values": list(spec.sweep[1]), "results": results})

    if jax.process_index() == 0:
        out_dir = epath.Path(workdir) / "eval"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2))
        if spec.sweep is None:
            if runs[0][1].images is not None:
                _write_png(out_dir / f"{name}_samples.png", runs[0][1].images)
        else:
            (out_dir / f"{name}.csv").write_text(_to_csv(results))
            figure = _sweep_figure(spec.plot, out_dir, setup, record, tag)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
            (out_dir / f"{name}.png").write_bytes(buffer.getvalue())
    return record


def _write_png(path: epath.Path, picture: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="png")
    path.write_bytes(buffer.getvalue())


def _to_csv(results: list[dict]) -> str:
    """One row per run; list-valued entries (best-of-n curves) become numbered columns."""
    rows = []
    for entry in results:
        row = {}
        for key, value in entry.items():
            if isinstance(value, list):
                row.update({f"{key}_{n + 1}": v for n, v in enumerate(value)})
            else:
                row[key] = value
        rows.append(row)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _sweep_figure(kind: str, out_dir: epath.Path, setup: str, record: dict, tag: str):
    """The sweep's figure (`sweep_plots`); the steps plot adds the other sampler's sweep when
    `out_dir` holds it (with the same tag)."""
    from bitseg_jax import sweep_plots  # matplotlib only when a sweep is plotted.

    if kind == "guidance":
        return sweep_plots.guidance(record)
    if kind == "best_of_n":
        return sweep_plots.best_of_n(record)
    curves = {}
    for name in ("sweeps[ts]", "sweeps[ts][ddim]"):
        path = out_dir / (f"{name}_{tag}.json" if tag else f"{name}.json")
        if name == setup:
            curves[SETUPS[name].sampler.upper()] = record
        elif path.exists():
            curves[SETUPS[name].sampler.upper()] = json.loads(path.read_text())
    return sweep_plots.steps(curves)
