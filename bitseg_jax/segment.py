r"""Segment your own images: the `Segmenter` API and the `python -m bitseg_jax.segment` CLI.

Python:

  from bitseg_jax import Segmenter
  segmenter = Segmenter.from_workdir("/path/to/workdir")           # latest raw checkpoint
  out = segmenter(image_uint8, num_samples=4, steps=8, guidance=1.0)
  out["labels"]        # int32 [4, H, W] segment ids at the input's resolution

Command line (INPUTS are image files or folders of images):

  python -m bitseg_jax.segment (--workdir=DIR [--which=latest|best] | --export=DIR) \
      [--use-ema] [--num-samples=N] [--steps=S] [--guidance=W] [--seed=0] INPUTS... --output=OUT

For every input NAME.ext it writes OUT/NAME_labels.png (grayscale segment ids: 8-bit, or
16-bit when an id exceeds 255), OUT/NAME_overlay.png, OUT/NAME_uncertainty.png and, with N > 1,
OUT/NAME_sample<k>_labels.png for k = 0..N-1 (NAME_labels.png is sample 0). The uncertainty
picture shows the bit entropy of sample 0 for N = 1 and the samples' disagreement for N > 1
(dark = certain, bright = uncertain). Unreadable images are skipped and listed at the end;
the exit status is non-zero only if nothing was segmented (2 if the model cannot be loaded).

The image is resized (longest side to `config.model.image_size`) and padded exactly as in
training (`input_pipeline.prepare_image`); the sampled maps are cropped to the valid region
and nearest-upsampled back to the input's size.
"""

import argparse
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from bitseg_jax import checkpointing, encoding, evaluation, input_pipeline, models, visualize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class Segmenter:
    """A trained model, ready to segment uint8 RGB images of any size (SPEC 7).

    Build it with `from_workdir` (a training run) or `from_export` (an exported model folder). Sampling runs on the first local device; the jitted sampler is shared with the
    Evaluator and compiles once per (number of samples, steps, guidance weight).
    """

    def __init__(
        self, config: ml_collections.ConfigDict, params: Mapping, *, source: str = "params"
    ):
        """Wraps `params` of the model described by `config`.

        Args:
          config: the run's config (`config.model`, `config.diffusion`, `config.eval`).
          params: nested param dict matching `config.model`.
          source: where the params came from, named in errors.

        Raises:
          ValueError: naming the first parameter that does not fit `config.model`.
        """
        # Checkpoints and .npz files store the U-Net's int keys as strings: back to the model's
        # own tree, checking every parameter against `config.model` on the way.
        params = checkpointing.params_like(params, models.abstract_params(config.model), source)
        self.config = config
        self.source = source
        self.params = jax.device_put(params, jax.local_devices()[0])

    @classmethod
    def from_workdir(
        cls, workdir: str | pathlib.Path, *, which: str = "latest", use_ema: bool = False
    ) -> "Segmenter":
        """Loads the config and a checkpoint of a training workdir.

        Args:
          workdir: the training run's workdir (holds config.json and checkpoints).
          which: "latest" (regular checkpoint) or "best" (best by `config.eval.best_metric`).
          use_ema: the EMA params instead of the raw ones (SPEC 9.5; "latest" only).

        Raises:
          FileNotFoundError: `workdir` has no config.json or no such checkpoint.
          ValueError: the checkpoint does not fit the workdir's config (names the parameter).
        """
        config = checkpointing.load_config(workdir)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        params, step = checkpointing.restore_params(
            workdir, which=which, use_ema=use_ema, sharding=device
        )
        kind = "EMA" if use_ema else "raw"
        return cls(
            config,
            params,
            source=f"the {which} checkpoint (step {step}, {kind} params) of workdir {workdir}",
        )

    @classmethod
    def from_export(cls, path: str | pathlib.Path, *, use_ema: bool = False) -> "Segmenter":
        """Loads an exported model folder (`python -m bitseg_jax.main --mode=export`).

        Reads its `config.json` and `params.npz` (or `ema_params.npz`); sampling then runs the
        Python model, so steps and guidance stay free (the folder's `jax.export`ed sampler,
        used by its own `segment_exported.py`, has them fixed at export time).

        Args:
          path: the export folder.
          use_ema: load `ema_params.npz` instead of `params.npz`.

        Raises:
          FileNotFoundError: naming the missing file.
          ValueError: the weights do not fit the folder's config (names the parameter).
        """
        folder = pathlib.Path(path)
        weights = folder / ("ema_params.npz" if use_ema else "params.npz")
        for needed in (folder / "config.json", weights):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"{needed} not found: is {folder} a folder written by "
                    "`python -m bitseg_jax.main --mode=export`?"
                )
        config = checkpointing.config_from_json(json.loads((folder / "config.json").read_text()))
        params = checkpointing.load_npz_params(weights, models.abstract_params(config.model))
        return cls(config, params, source=f"weights file {weights}")

    def __call__(
        self,
        image: np.ndarray,
        *,
        num_samples: int = 1,
        steps: int = 8,
        guidance: float = 1.0,
        seed: int = 0,
    ) -> dict[str, np.ndarray]:
        """Samples `num_samples` segmentations of one image.

        Args:
          image: uint8 [H, W, 3] RGB.
          num_samples: N independent samples (different noise).
          steps: sampling steps (SPEC 7.1); the sampler is `config.eval.sampler`.
          guidance: classifier-free guidance weight w.
          seed: sampling seed.

        Returns:
          `labels` int32 [N, H, W] segment ids; `probs` float32 [N, H, W], the probability of
          each pixel's decoded id under the factorised bit distribution (Eq. 3);
          `entropy` float32 [N, H, W], that distribution's entropy in nats (0 = certain,
          num_bits · ln 2 = uniform) (both NaN for the one-hot and RGB encodings, which have
          no bit distribution); and for N > 1 `disagreement` float32 [H, W], the fraction
          of samples 1..N-1 whose segment, after matching ids to sample 0's by Hungarian IoU,
          differs from sample 0's at the pixel (see `evaluation.disagreement`).
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"`image` must be uint8 [H, W, 3], got {image.dtype}{image.shape}")
        if num_samples < 1 or steps < 1:
            raise ValueError(f"need num_samples ≥ 1 and steps ≥ 1, got {num_samples}, {steps}")
        model = self.config.model
        x, valid = input_pipeline.prepare_image(image, model.image_size)
        x, valid = np.asarray(x, np.float32), np.asarray(valid, bool)
        sample_fn = evaluation.get_sample_fn(
            self.config,
            num_steps=int(steps),
            guidance_weight=float(guidance),
            sampler=self.config.eval.sampler,
        )
        x_hat = sample_fn(
            self.params,
            jax.random.key(seed),
            np.repeat(x[None], num_samples, axis=0),
            np.repeat(valid[None], num_samples, axis=0),
        )
        batch_valid = np.repeat(valid[None], num_samples, axis=0)
        labels = np.asarray(
            encoding.decode(
                x_hat, encoding=model.encoding, num_bits=model.num_bits, valid=batch_valid
            )
        ).astype(np.int32)
        if model.encoding == "analog_bits":
            probs = np.asarray(encoding.bit_probs(x_hat, np.maximum(labels, 0)), np.float32)
            entropy = np.asarray(encoding.bit_entropy(x_hat), np.float32)
        else:  # Eq. 3 and the bit entropy are defined for analog bits only.
            probs = entropy = np.full(labels.shape, np.nan, np.float32)
        # The content sits top-left (SPEC 2.3 step 4): crop it, then back to the input's size.
        h, w = visualize.content_shape(valid)
        size = image.shape[:2]

        def restore(maps: np.ndarray) -> np.ndarray:
            return visualize.resize_content(maps, (h, w), size)

        out = {"labels": restore(labels), "probs": restore(probs), "entropy": restore(entropy)}
        if num_samples > 1:
            out["disagreement"] = visualize.resize_nearest(
                evaluation.disagreement(labels[:, :h, :w]), size
            )
        return out


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def _label_png(labels: np.ndarray) -> Image.Image:
    """Grayscale ids: 8-bit when they fit, else 16-bit."""
    if labels.min() < 0 or labels.max() > 65535:
        raise ValueError(
            f"segment ids must lie in [0, 65535], got [{labels.min()}, {labels.max()}]"
        )
    dtype = np.uint8 if labels.max() < 256 else np.uint16
    return Image.fromarray(labels.astype(dtype))


def _find_images(inputs: Sequence[str]) -> tuple[list[pathlib.Path], list[str]]:
    """Expands folders (their image files, sorted); returns (files, problems)."""
    files, problems = [], []
    for name in inputs:
        path = pathlib.Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{path}: folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


def _read_rgb(path: pathlib.Path) -> np.ndarray:
    """uint8 [H, W, 3]: grayscale replicated, alpha dropped, 16-bit scaled to 8-bit."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, np.float64)
            scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
            return np.repeat(np.round(arr * scale).astype(np.uint8)[..., None], 3, axis=-1)
        return np.asarray(img.convert("RGB"), np.uint8)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bitseg_jax.segment",
        description="Segment images with a trained bitseg-jax model.",
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training workdir to load")
    source.add_argument("--export", help="exported model folder to load instead")
    parser.add_argument("--output", required=True, help="folder for the PNG outputs")
    parser.add_argument(
        "--which", default="latest", choices=checkpointing.WHICH, help="workdir checkpoint"
    )
    parser.add_argument("--use-ema", action="store_true", help="EMA params (not with best)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (see the module docstring)."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.num_samples < 1 or args.steps < 1:
        print("error: --num-samples and --steps must be ≥ 1", file=sys.stderr)
        return 2
    try:
        if args.export:
            segmenter = Segmenter.from_export(args.export, use_ema=args.use_ema)
        else:
            segmenter = Segmenter.from_workdir(args.workdir, which=args.which, use_ema=args.use_ema)
    except (FileNotFoundError, ValueError) as err:
        where = f"--export={args.export}" if args.export else f"--workdir={args.workdir}"
        print(f"error: cannot load a model from {where}: {err}", file=sys.stderr)
        return 2
    out_dir = pathlib.Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = _find_images(args.inputs)
    vmax_entropy = segmenter.config.model.num_bits * float(np.log(2.0))
    done, names = 0, set()
    for path in files:
        if path.stem in names:
            skipped.append(f"{path}: another input already wrote outputs named {path.stem}_*")
            continue
        try:
            image = _read_rgb(path)
        except (OSError, ValueError) as err:  # PIL: UnidentifiedImageError is an OSError.
            skipped.append(f"{path}: unreadable image ({err})")
            continue
        names.add(path.stem)
        out = segmenter(
            image,
            num_samples=args.num_samples,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
        )
        labels = out["labels"]
        _label_png(labels[0]).save(out_dir / f"{path.stem}_labels.png")
        visualize.save_png(
            out_dir / f"{path.stem}_overlay.png", visualize.overlay(image, labels[0])
        )
        if args.num_samples > 1:
            uncertainty = visualize.uncertainty_map(out["disagreement"], vmax=1.0)
            for k, sample in enumerate(labels):
                _label_png(sample).save(out_dir / f"{path.stem}_sample{k}_labels.png")
        else:
            uncertainty = visualize.uncertainty_map(out["entropy"][0], vmax=vmax_entropy)
        visualize.save_png(out_dir / f"{path.stem}_uncertainty.png", uncertainty)
        done += 1
        print(f"{path} -> {out_dir / path.stem}_*.png")
    if skipped:
        print(f"Skipped {len(skipped)} input(s):", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
    print(f"Segmented {done} image(s) into {out_dir}.")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
