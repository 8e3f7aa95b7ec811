"""TFDS builders; importing this package registers them with TFDS.

| name | source | splits |
|---|---|---|
| `dead_leaves` | procedural, generated locally (configs `default` 128 px, `small` 64 px, `tiny` 32 px) | train, validation |
| `bsds500` | manual dir: official BSDS500 layout | train, validation (, test) |
| `dsb2018` | manual dir: Kaggle `stage1_train` layout | train, validation (hash split) |
| `entityseg` | manual dir: official COCO-style JSONs + "lr" images | train, validation, test (SPEC 2.2) |
| `folder` | your `images/` + `labels/` | train, validation (, test) |

All yield the features of `common.features()` (docs/architecture.md, "Datasets").
"""

from bitseg_jax.datasets import bsds500, dead_leaves, dsb2018, entityseg, folder
from bitseg_jax.datasets.dead_leaves import DeadLeavesConfig
from bitseg_jax.datasets.folder import FolderConfig

__all__ = [
    "DeadLeavesConfig",
    "FolderConfig",
    "bsds500",
    "dead_leaves",
    "dsb2018",
    "entityseg",
    "folder",
]
