"""`bsds500`: the Berkeley Segmentation Data Set 500, every annotator's partition kept.

Reads the official layout from the manual-download folder (nothing is downloaded):
`BSDS500/data/images/{train,val,test}/<id>.jpg` and `BSDS500/data/groundTruth/{train,val,test}/
<id>.mat`, or the same under `BSR/` (the layout inside `BSR_bsds500.tgz`). Splits are built from
whichever of train / val / test exist: `train`, `validation`, `test`.

Each `.mat` holds `groundTruth`, a (1, A) object array with one struct per annotator; its
`Segmentation` is an H x W map of ids 1..N (no void pixels). All A maps are kept, stacked as
`segmentations` uint16 `[A, H, W]` (A is 4 to 9 and differs between images), ids unchanged.
"""

import pathlib
from typing import ClassVar

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from bitseg_jax.datasets import common

# Candidate roots inside the manual dir, in search order.
ROOTS = ("BSDS500", "BSR/BSDS500")
# Folder name in the archive -> TFDS split.
SPLITS = {"train": "train", "val": "validation", "test": "test"}

_CITATION = """\
@article{arbelaez2011contour,
  title={Contour Detection and Hierarchical Image Segmentation},
  author={Arbelaez, Pablo and Maire, Michael and Fowlkes, Charless and Malik, Jitendra},
  journal={IEEE TPAMI}, volume={33}, number={5}, pages={898--916}, year={2011}
}"""


def read_annotations(path: pathlib.Path) -> np.ndarray:
    """Reads every annotator's map from a BSDS `.mat` file.

    Args:
        path: `groundTruth/<split>/<id>.mat`.

    Returns:
        uint16 `[A, H, W]`.

    Raises:
        ValueError: unreadable file, no `groundTruth` entry, no annotator, or maps of
            different sizes.
    """
    try:
        gt = scipy.io.loadmat(path)["groundTruth"]
        maps = [np.asarray(gt[0, k]["Segmentation"][0, 0]) for k in range(gt.shape[1])]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"bsds500: cannot read groundTruth/Segmentation from {path}: {e}") from e
    if not maps:
        raise ValueError(f"bsds500: {path} holds no annotator.")
    shapes = {m.shape for m in maps}
    if len(shapes) != 1 or maps[0].ndim != 2:
        raise ValueError(
            f"bsds500: {path} holds maps of shapes {sorted(shapes)}; expected one HxW."
        )
    return common.to_uint16(np.stack(maps), str(path))


class Bsds500(tfds.core.GeneratorBasedBuilder):
    """BSDS500 natural images with 4-9 human partitions each."""

    name = "bsds500"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    bsds500: put the official BSDS500 folders in the manual dir (TFDS's default
    `<data_dir>/downloads/manual/`, or `DownloadConfig(manual_dir=...)`), as extracted from
    BSR_bsds500.tgz: either `BSDS500/data/images/{train,val,test}/<id>.jpg` with
    `BSDS500/data/groundTruth/{train,val,test}/<id>.mat`, or the same under `BSR/`. Any of the
    three split folders may be missing; each one present becomes a split.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.features(),
            homepage="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = pathlib.Path(dl_manager.manual_dir)
        for root in ROOTS:
            data = manual_dir / root / "data"
            present = [s for s in SPLITS if (data / "images" / s).is_dir()]
            if present:
                # Only the .jpg files: the archive also carries Thumbs.db files.
                splits = {
                    SPLITS[s]: [(p, s) for p in sorted((data / "images" / s).glob("*.jpg"))]
                    for s in present
                }
                splits = common.drop_empty_splits(self.name, splits, str(data / "images"))
                return {s: self._generate_examples(data, items) for s, items in splits.items()}
        looked = ", ".join(str(manual_dir / r / "data" / "images" / "<split>") for r in ROOTS)
        raise FileNotFoundError(
            f"bsds500: no split folder found; looked for {looked} with <split> in "
            f"{sorted(SPLITS)}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )

    def _generate_examples(self, data: pathlib.Path, items: list[tuple[pathlib.Path, str]]):
        for image_path, folder_name in items:  # folder_name: train | val | test
            mat_path = data / "groundTruth" / folder_name / f"{image_path.stem}.mat"
            if not mat_path.is_file():
                raise FileNotFoundError(f"bsds500: {image_path} has no annotation {mat_path}.")
            encoded, image_hw = common.image_feature(image_path)
            maps = read_annotations(mat_path)
            common.check_same_size(image_hw, maps.shape[1:], str(image_path), str(mat_path))
            yield image_path.stem, common.example(encoded, maps, image_path.stem)
