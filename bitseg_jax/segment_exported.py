"""Segment images with an exported bitseg-jax model; needs only jax, numpy and pillow.

`python -m bitseg_jax.main --mode=export` copies this file into the export folder, beside
`sampler.jax_exported` (the serialised `jax.export` sampler), the weights (`params.npz`,
`ema_params.npz`) and `export.json`. It must never import bitseg_jax:

  python OUT/segment_exported.py IMAGES_OR_FOLDERS... --output DIR [--weights raw|ema]
      [--seed 0] [--num-samples 1]

For every input NAME.ext it writes DIR/NAME_labels.png: the segment ids at the input's own
resolution (8-bit when they fit, else 16-bit), nearest-upsampled from the model's size with the
padding cropped off, exactly as `python -m bitseg_jax.segment` does. With --num-samples N > 1 it
also writes DIR/NAME_sample<k>_labels.png (NAME_labels.png is sample 0).

Preprocessing mirrors `bitseg_jax.input_pipeline.prepare_image` (SPEC 2.3): resize the longest
side to S with exact area averaging (OpenCV INTER_AREA / TF "area"), ImageNet normalisation, zero
padding at the bottom and right.
"""

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ExportedSegmenter:
    """The exported sampler with its weights: `(images) -> labels, probs, entropy`."""

    def __init__(self, export_dir: str | pathlib.Path, weights: str = "raw"):
        export_dir = pathlib.Path(export_dir)
        self.meta = json.loads((export_dir / "export.json").read_text())
        self.exported = jax.export.deserialize(
            bytearray((export_dir / "sampler.jax_exported").read_bytes())
        )
        weights_file = export_dir / {"raw": "params.npz", "ema": "ema_params.npz"}[weights]
        if not weights_file.is_file():
            raise FileNotFoundError(f"No {weights} weights in {export_dir}: {weights_file}.")
        with np.load(weights_file) as data:
            self.params = {k: np.asarray(data[k], np.float32) for k in self.meta["param_keys"]}
        self.image_size = int(self.meta["image_size"])

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """uint8 [H, W, 3] -> (image [S, S, 3] float32, valid [S, S] bool, content (h', w'))."""
        h, w = image.shape[:2]
        s = self.image_size
        # SPEC 2.3 step 2 (round half to even, as Python's round does).
        new_h, new_w = (s, max(1, round(w * s / h))) if h > w else (max(1, round(h * s / w)), s)
        content = np.einsum(
            "oh,hwc,pw->opc",
            area_weights(h, new_h),
            image.astype(np.float32),
            area_weights(w, new_w),
        )
        content = np.round(content)  # as a uint8 resize would (and the pipeline does)
        mean = np.asarray(self.meta["imagenet_mean"], np.float32)
        std = np.asarray(self.meta["imagenet_std"], np.float32)
        out = np.zeros((s, s, 3), np.float32)
        out[:new_h, :new_w] = (content / 255.0 - mean) / std
        valid = np.zeros((s, s), bool)
        valid[:new_h, :new_w] = True
        return out, valid, (new_h, new_w)

    def __call__(self, images: np.ndarray, valid: np.ndarray, seed: int = 0) -> dict:
        """Samples one segmentation per image.

        Args:
          images: [B, S, S, 3] float32 prepared images.
          valid: [B, S, S] bool valid regions.
          seed: sampling seed.

        Returns:
          dict of NumPy arrays: labels int32 [B, S, S], probs float32 [B, S, S] (probability of
          the decoded id, paper Eq. 3), entropy float32 [B, S, S] (nats).
        """
        out = self.exported.call(
            self.params, np.asarray(images, np.float32), np.asarray(valid, bool), np.uint32(seed)
        )
        return {k: np.asarray(v) for k, v in out.items()}


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of area resampling: overlap of each output pixel's footprint."""
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    pixel = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(lo + scale, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return (overlap / scale).astype(np.float32)


def to_input_resolution(labels: np.ndarray, content: tuple[int, int], size: tuple[int, int]):
    """Crops the padding off a [S, S] map and nearest-resizes it to the input's (H, W)."""
    h, w = size
    crop = labels[: content[0], : content[1]]
    rows = np.minimum((np.arange(h) + 0.5) * crop.shape[0] / h, crop.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * crop.shape[1] / w, crop.shape[1] - 1).astype(int)
    return crop[rows[:, None], cols[None, :]]


def save_labels(labels: np.ndarray, path: pathlib.Path) -> None:
    """Writes ids as 8-bit grayscale PNG when they fit, else 16-bit."""
    if labels.min() < 0 or labels.max() > 65535:
        raise ValueError(f"Segment ids out of PNG range for {path}: {labels.min()}..{labels.max()}")
    dtype = np.uint8 if labels.max() < 256 else np.uint16
    Image.fromarray(labels.astype(dtype)).save(path)


def _inputs(paths: list[str]) -> list[pathlib.Path]:
    files = []
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--weights", choices=("raw", "ema"), default="raw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1)
    args = parser.parse_args(argv)

    segmenter = ExportedSegmenter(pathlib.Path(__file__).resolve().parent, args.weights)
    out_dir = pathlib.Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = []
    for path in _inputs(args.inputs):
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            skipped.append(f"{path} ({e})")
            continue
        prepared, valid, content = segmenter.prepare(image)
        for k in range(args.num_samples):
            result = segmenter(prepared[None], valid[None], seed=args.seed + k)
            labels = to_input_resolution(result["labels"][0], content, image.shape[:2])
            if k == 0:
                save_labels(labels, out_dir / f"{path.stem}_labels.png")
            if args.num_samples > 1:
                save_labels(labels, out_dir / f"{path.stem}_sample{k}_labels.png")
    if skipped:
        print(f"Skipped {len(skipped)} unreadable input(s):", *skipped, sep="\n  ", file=sys.stderr)
    return 0 if len(skipped) < len(_inputs(args.inputs)) else 1


if __name__ == "__main__":
    sys.exit(main())
