"""`dsb2018`: 2018 Data Science Bowl nuclei (stage 1 train), one instance map per image.

Reads Kaggle's `stage1_train` layout from the manual-download folder (nothing is downloaded):
`stage1_train/<id>/images/<id>.png` (RGBA; alpha dropped) and `stage1_train/<id>/masks/*.png`
(one binary PNG per nucleus), directly in the manual dir or under `dsb2018/` in it (the layout
of ../shared/data).

Rasterisation: start from 0 (background, a segment like any other) and paint mask k with id k + 1
in sorted file-name order; where masks overlap the later one wins. A mask file that is empty,
corrupt or all zero is skipped (logged) and takes no id, so painted ids are 1..K over the usable
masks. An image without masks (or without a `masks/` folder) is valid: all background. A mask
whose size differs from its image is an error.

Split (fixed, order-free): `validation` if sha1(<id>) mod 10 == 0, else `train`
(`common.hash_split`). On the 547-image copy in ../shared/data this gives 496 train / 51
validation.
"""

import pathlib
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from bitseg_jax.datasets import common

# Candidate folders holding `<id>/images` and `<id>/masks`, relative to the manual dir.
ROOTS = ("stage1_train", "dsb2018/stage1_train")
SPLITS = ("train", "validation")

_CITATION = """\
@article{caicedo2019nucleus,
  title={Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl},
  author={Caicedo, Juan C. and Goodman, Allen and Karhohs, Kyle W. and others},
  journal={Nature Methods}, volume={16}, pages={1247--1253}, year={2019}
}"""


def rasterise(image_hw: tuple[int, int], mask_paths: list[pathlib.Path]) -> tuple[np.ndarray, int]:
    """Paints binary nucleus masks into one instance map.

    Args:
        image_hw: (H, W) of the image.
        mask_paths: the mask PNGs, painted in this order (later wins on overlap).

    Returns:
        `(labels, num_skipped)`: uint16 `[H, W]` with 0 = background and ids 1..K for the usable
        masks, and the number of empty/corrupt/all-zero masks skipped.

    Raises:
        ValueError: a mask's size differs from the image, or more than 65,535 masks.
    """
    labels = np.zeros(image_hw, np.uint16)
    next_id, skipped = 1, 0
    for path in mask_paths:
        try:
            mask = common.load_label(path)
        except ValueError as e:
            logging.warning("dsb2018: skipping unreadable mask %s (%s)", path, e)
            skipped += 1
            continue
        common.check_same_size(image_hw, mask.shape, f"the image of {path}", str(path))
        covered = mask > 0
        if not covered.any():
            logging.warning("dsb2018: skipping all-zero mask %s", path)
            skipped += 1
            continue
        if next_id > common.MAX_ID:
            raise ValueError(f"dsb2018: {path.parent} holds more than {common.MAX_ID} masks.")
        labels[covered] = next_id
        next_id += 1
    return labels, skipped


class Dsb2018(tfds.core.GeneratorBasedBuilder):
    """DSB2018 stage-1 training nuclei, hash-split into train / validation."""

    name = "dsb2018"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    dsb2018: put Kaggle's extracted `stage1_train.zip` in the manual dir (TFDS's default
    `<data_dir>/downloads/manual/`, or `DownloadConfig(manual_dir=...)`), as
    `stage1_train/<id>/images/<id>.png` and `stage1_train/<id>/masks/*.png`, either directly
    there or under `dsb2018/`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.features(),
            homepage="https://www.kaggle.com/c/data-science-bowl-2018",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = pathlib.Path(dl_manager.manual_dir)
        for root in ROOTS:
            if (manual_dir / root).is_dir():
                ids = sorted(p.name for p in (manual_dir / root).iterdir() if p.is_dir())
                splits = {s: [i for i in ids if common.hash_split(i) == s] for s in SPLITS}
                splits = common.drop_empty_splits(self.name, splits, str(manual_dir / root))
                return {s: self._generate_examples(manual_dir / root, i) for s, i in splits.items()}
        looked = " or ".join(str(manual_dir / r) for r in ROOTS)
        raise FileNotFoundError(f"dsb2018: no {looked}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

    def _generate_examples(self, root: pathlib.Path, ids: list[str]):
        total_skipped = 0
        for image_id in ids:
            image_path = root / image_id / "images" / f"{image_id}.png"
            if not image_path.is_file():
                raise FileNotFoundError(f"dsb2018: missing image {image_path}.")
            encoded, image_hw = common.image_feature(image_path)
            labels, skipped = rasterise(image_hw, sorted((root / image_id / "masks").glob("*.png")))
            total_skipped += skipped
            yield image_id, common.example(encoded, labels[None], image_id)
        if total_skipped:
            logging.warning("dsb2018: skipped %d unusable mask files in total.", total_skipped)
