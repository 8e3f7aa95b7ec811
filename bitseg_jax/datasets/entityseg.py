"""`entityseg`: EntitySeg "lr" images with class-agnostic entity maps (the paper's data).

Reads the official release from the manual-download folder (nothing is downloaded), directly in
it or under `entityseg/`: `entityseg_train_lr.json`, `entityseg_val_lr.json` (COCO style) and the
image folders their `file_name`s point into (e.g. `entity_01_11580/<name>.jpg`).

Rasterisation is SPEC 2.1: per image an H x W map of zeros (0 = no annotation, an ordinary
segment downstream); the image's annotations, in JSON order, are numbered 1, 2, 3, ... and painted
in turn, later ones overwriting earlier ones. Segmentations are decoded with pycocotools: polygon
lists become one RLE per polygon at (H, W), merged by union; an RLE dict is decoded as is
(uncompressed `counts` lists are first compressed). One deliberate change from the reference:
ids are kept exact in uint16 rather than clipped to min(n, 255) (the uint8 limit of SPEC B8); more
than 65,535 annotations on one image is an error.

Splits are SPEC 2.2, computed from the JSON file lists (so they reproduce the reference exactly
even if some image files are missing): `all` = sorted union of both JSONs' file names,
target_val = round(0.1 |all|), target_test = max(target_val, |native_val|), one
`random.Random(0)`; test = native_val plus `rng.sample(sorted(train_pool - native_val),
target_test - |native_val|)`, validation = `rng.sample(sorted(train_pool - test), target_val)`,
train = the rest. A JSON entry whose image file is missing is skipped with a logged warning naming
the file, and each split's number of skipped entries is logged before it is written. An image whose pixel size
differs from its JSON entry is an error.

pycocotools is imported inside the builder (extras "entityseg": `pip install -e .[entityseg]`).
"""

import collections
import json
import pathlib
import random
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from bitseg_jax.datasets import common

# Candidate folders holding the JSONs and image folders, relative to the manual dir.
ROOTS = ("entityseg", ".")
TRAIN_JSON = "entityseg_train_lr.json"
VAL_JSON = "entityseg_val_lr.json"
SPLIT_SEED = 0  # SPEC 2.2: random.Random(0).
SPLIT_FRACTION = 0.1  # SPEC 2.2: 10% validation, at least 10% test.

_CITATION = """\
@inproceedings{qi2023high,
  title={High Quality Entity Segmentation},
  author={Qi, Lu and Kuen, Jason and Shen, Tiancheng and Gu, Jiuxiang and others},
  booktitle={ICCV}, year={2023}
}"""


def split_file_names(train_names: list[str], val_names: list[str]) -> dict[str, list[str]]:
    """SPEC 2.2: the train / validation / test file-name lists.

    Args:
        train_names: file names of the official train JSON (`train_pool`).
        val_names: file names of the official val JSON (`native_val`).

    Returns:
        `{"train": [...], "validation": [...], "test": [...]}`, each sorted.
    """
    all_names = sorted(set(train_names) | set(val_names))
    native_val = set(val_names)
    train_pool = set(train_names)
    target_val = round(SPLIT_FRACTION * len(all_names))
    target_test = max(round(SPLIT_FRACTION * len(all_names)), len(native_val))
    rng = random.Random(SPLIT_SEED)
    test = native_val | set(
        rng.sample(sorted(train_pool - native_val), target_test - len(native_val))
    )
    val = set(rng.sample(sorted(train_pool - test), target_val))
    train = set(all_names) - val - test
    return {"train": sorted(train), "validation": sorted(val), "test": sorted(test)}


def rasterise(height: int, width: int, segmentations: list, source: str) -> np.ndarray:
    """SPEC 2.1 steps 1-4 with exact ids: paint annotations 1..n in order, later wins.

    Args:
        height: H from the JSON image entry.
        width: W from the JSON image entry.
        segmentations: the image's annotations' `segmentation` fields, in JSON order (polygon
            lists or RLE dicts with compressed or uncompressed counts).
        source: the image's file name, named in errors.

    Returns:
        uint16 `[H, W]`: 0 where no annotation covers a pixel, else the number of the last
        annotation covering it.

    Raises:
        ValueError: more than 65,535 annotations, or an RLE whose size is not (H, W).
    """
    from pycocotools import mask as mask_utils  # optional dependency (extras "entityseg")

    if len(segmentations) > common.MAX_ID:
        raise ValueError(
            f"entityseg: {source} has {len(segmentations)} annotations; uint16 maps hold "
            f"at most {common.MAX_ID}."
        )
    labels = np.zeros((height, width), np.uint16)
    for number, segm in enumerate(segmentations, start=1):
        if isinstance(segm, list):  # polygons: one RLE each, merged by union
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm, dict) and "counts" in segm:
            if list(segm["size"]) != [height, width]:
                raise ValueError(
                    f"entityseg: annotation {number} of {source} has RLE size {segm['size']}, "
                    f"but the image entry says (H, W) = ({height}, {width})."
                )
            # Uncompressed counts (a list) need compressing; compressed ones decode as is.
            rle = (
                mask_utils.frPyObjects(segm, height, width)
                if isinstance(segm["counts"], list)
                else segm
            )
        else:
            raise ValueError(
                f"entityseg: annotation {number} of {source} has an unknown segmentation "
                f"format {type(segm).__name__}; expected a polygon list or an RLE dict."
            )
        mask = mask_utils.decode(rle)
        if mask.ndim == 3:
            mask = mask.any(axis=-1)
        labels[mask > 0] = number
    return labels


def _read_json(path: pathlib.Path) -> dict[str, tuple[dict, list]]:
    """file_name -> (image entry, its annotations' segmentations in JSON order)."""
    with open(path, encoding="utf-8") as f:
        coco = json.load(f)
    by_image = collections.defaultdict(list)
    for ann in coco["annotations"]:  # JSON order is kept within each image
        by_image[ann["image_id"]].append(ann["segmentation"])
    return {img["file_name"]: (img, by_image.get(img["id"], [])) for img in coco["images"]}


class Entityseg(tfds.core.GeneratorBasedBuilder):
    """EntitySeg lr images, class-agnostic entity maps, SPEC 2.2 splits."""

    name = "entityseg"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release (SPEC 2.1 with exact uint16 ids, SPEC 2.2)."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    entityseg: put the official EntitySeg v1.0 annotation files `entityseg_train_lr.json` and
    `entityseg_val_lr.json` and the "lr" image folders (`entity_01_11580/`, `entity_02_11598/`,
    `entity_03_10049/`, i.e. whatever the JSONs' `file_name`s point into) in the manual dir
    (TFDS's default `<data_dir>/downloads/manual/`, or `DownloadConfig(manual_dir=...)`),
    either directly there or under `entityseg/`. Images: https://github.com/adobe-research/EntitySeg-Dataset
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.features(),
            homepage="https://github.com/adobe-research/EntitySeg-Dataset",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = pathlib.Path(dl_manager.manual_dir)
        for root in ROOTS:
            root_dir = (manual_dir / root).resolve()
            if (root_dir / TRAIN_JSON).is_file() and (root_dir / VAL_JSON).is_file():
                break
        else:
            looked = " and ".join(str(manual_dir / r) for r in ROOTS)
            raise FileNotFoundError(
                f"entityseg: {TRAIN_JSON} and {VAL_JSON} not found in {looked}.\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        train = _read_json(root_dir / TRAIN_JSON)
        val = _read_json(root_dir / VAL_JSON)
        both = sorted(set(train) & set(val))
        if both:
            logging.warning(
                "entityseg: %d file names are in both JSONs (e.g. %s); using the val entry.",
                len(both),
                both[0],
            )
        records = {**train, **val}
        splits = {}
        for split, split_names in split_file_names(list(train), list(val)).items():
            # Missing image files are found here, before writing, so that the count is exact
            # and a split left empty is dropped rather than failing inside TFDS.
            present = []
            for name in split_names:
                if (root_dir / name).is_file():
                    present.append((name, records[name]))
                else:
                    logging.warning(
                        "entityseg %s: skipping %s: image file %s not found.",
                        split,
                        name,
                        root_dir / name,
                    )
            logging.log(
                logging.WARNING if len(present) < len(split_names) else logging.INFO,
                "entityseg %s: %d of %d images found, %d skipped (image file missing).",
                split,
                len(present),
                len(split_names),
                len(split_names) - len(present),
            )
            splits[split] = present
        splits = common.drop_empty_splits(self.name, splits, str(root_dir))
        return {split: self._generate_examples(root_dir, items) for split, items in splits.items()}

    def _generate_examples(self, root: pathlib.Path, records: list):
        for file_name, (entry, segmentations) in records:
            image_path = root / file_name
            encoded, image_hw = common.image_feature(image_path)
            json_hw = (int(entry["height"]), int(entry["width"]))
            if image_hw != json_hw:
                raise ValueError(
                    f"entityseg: image {image_path} is (H, W) = {image_hw} but its JSON entry "
                    f"says {json_hw}."
                )
            labels = rasterise(*json_hw, segmentations, file_name)
            stem = pathlib.PurePosixPath(file_name).stem
            yield file_name, common.example(encoded, labels[None], stem)
