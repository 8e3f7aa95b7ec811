"""Shared test setup: 8 virtual CPU devices, fast compiles, TF kept off accelerators.

This runs before any test module imports jax, so the backend starts with the settings below.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_disable_most_optimizations", True)

import tensorflow as tf

tf.config.set_visible_devices([], "GPU")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
PARITY_DIR = SHARED / "parity"


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """../shared/data, or a clean skip where it is absent (a fresh clone elsewhere)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    """../shared/parity (the authors' PyTorch outputs), or a clean skip where it is absent."""
    if not (PARITY_DIR / "manifest.json").is_file():
        pytest.skip(f"parity fixtures not found at {PARITY_DIR}")
    return PARITY_DIR
