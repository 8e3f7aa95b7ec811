"""`folder`: bring your own data, images plus one label map each.

Layout, in the manual-download folder or in `FolderConfig.path`:

    images/<stem>.<ext>       any image PIL reads (jpg, png, tif, ...; gray/RGBA/16-bit converted)
    labels/<stem>.png         one channel of integer ids, 8- or 16-bit (grayscale or palette);
                              every value is a segment, 0 included (there is no "ignore" id)

Labels are matched to images by file stem; an image without a label, a label without an image,
or a label whose size differs from its image is an error naming the file. Splits:

* If `images/validation/` (or `images/val/`) exists together with `labels/<same name>/`, those
  files are `validation`; likewise `images/test/` + `labels/test/` give `test`. The files directly
  in `images/` and `labels/` are `train`.
* Otherwise the top-level files are hash-split: `validation` if sha1(stem) mod 10 == 0, else
  `train` (`common.hash_split`; fixed and independent of file order).

A dataset in a custom folder gets its own config, and the config name picks the prepared copy:
`tfds.builder("folder", config=FolderConfig(name="cells", path="/data/cells"))`.
"""

import dataclasses
import pathlib
from typing import ClassVar

import tensorflow_datasets as tfds

from bitseg_jax.datasets import common

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Subfolder names of the optional explicit splits, in preference order -> TFDS split.
SUBFOLDER_SPLITS = {"validation": "validation", "val": "validation", "test": "test"}


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """Where the `images/` and `labels/` folders are.

    Attributes:
        path: the folder holding `images/` and `labels/`; "" reads the manual-download folder.
    """

    path: str = ""


def _files(folder: pathlib.Path, suffixes: tuple[str, ...]) -> dict[str, pathlib.Path]:
    """stem -> file for the files directly in `folder` with one of `suffixes` (case-free)."""
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes:
            if p.stem in files:
                raise ValueError(f"folder: two files with stem {p.stem!r}: {files[p.stem]}, {p}.")
            files[p.stem] = p
    return files


def _pairs(
    images_dir: pathlib.Path, labels_dir: pathlib.Path
) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
    """(stem, image, label) for every image in `images_dir`, checking the stems match."""
    images = _files(images_dir, IMAGE_SUFFIXES)
    labels = _files(labels_dir, (".png",))
    if missing := sorted(set(images) - set(labels)):
        raise FileNotFoundError(
            f"folder: {len(missing)} images in {images_dir} have no label PNG in {labels_dir}, "
            f"e.g. {images[missing[0]].name} (expected {labels_dir / (missing[0] + '.png')})."
        )
    if orphans := sorted(set(labels) - set(images)):
        raise FileNotFoundError(
            f"folder: {len(orphans)} labels in {labels_dir} have no image in {images_dir}, "
            f"e.g. {labels[orphans[0]].name}."
        )
    return [(stem, images[stem], labels[stem]) for stem in sorted(images)]


class Folder(tfds.core.GeneratorBasedBuilder):
    """Your own images and label maps (`images/`, `labels/`)."""

    name = "folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        FolderConfig(name="default", description="Reads the manual dir.")
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    folder: put `images/<stem>.<jpg|png|...>` and `labels/<stem>.png` (8- or 16-bit ids) in the
    manual dir (TFDS's default `<data_dir>/downloads/manual/`, or `DownloadConfig(manual_dir=...)`),
    or pass `config=FolderConfig(name=..., path=...)`. Optional explicit splits:
    `images/validation/` + `labels/validation/` (or `val`), `images/test/` + `labels/test/`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(description=__doc__, features=common.features())

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = self.builder_config.path
        root = pathlib.Path(path).expanduser() if path else pathlib.Path(dl_manager.manual_dir)
        images_dir, labels_dir = root / "images", root / "labels"
        if not (images_dir.is_dir() and labels_dir.is_dir()):
            raise FileNotFoundError(
                f"folder: expected {images_dir} and {labels_dir}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        splits = {}
        for sub, split in SUBFOLDER_SPLITS.items():
            if split not in splits and (images_dir / sub).is_dir() and (labels_dir / sub).is_dir():
                splits[split] = _pairs(images_dir / sub, labels_dir / sub)
        top = _pairs(images_dir, labels_dir)
        if "validation" in splits:
            splits["train"] = top
        else:
            splits["train"] = [t for t in top if common.hash_split(t[0]) == "train"]
            splits["validation"] = [t for t in top if common.hash_split(t[0]) == "validation"]
        splits = common.drop_empty_splits(self.name, splits, str(root))
        return {split: self._generate_examples(pairs) for split, pairs in splits.items()}

    def _generate_examples(self, pairs: list[tuple[str, pathlib.Path, pathlib.Path]]):
        for stem, image_path, label_path in pairs:
            encoded, image_hw = common.image_feature(image_path)
            labels = common.load_label(label_path)
            common.check_same_size(image_hw, labels.shape, str(image_path), str(label_path))
            yield stem, common.example(encoded, labels[None], stem)
