"""A two-process jax.distributed run on localhost (launch/local_multiprocess.sh) trains exactly
like the one-process run: the input pipeline gives every host its rows of the same global
batches, so parameters must agree up to the reduction order.
"""

import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
from etils import epath

from bitseg_jax import checkpointing, train
from configs import base

REPO = epath.Path(__file__).parent.parent
SCRIPT = REPO / "launch" / "local_multiprocess.sh"
NUM_PROCESSES = 2
OVERRIDES = {
    # Training only (eval/vali paths are covered by test_train); a checkpoint at the end.
    "num_vali_batches": 0,
    "eval.num_images": 0,
    "ckpt_every_steps": 100,
}


def _config(data_dir):
    config = base.get_config("tiny")
    with config.unlocked():
        config.data.data_dir = data_dir
        config.update_from_flattened_dict(OVERRIDES)
    return config


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_two_processes_match_one(tmp_path):
    import tensorflow_datasets as tfds

    import bitseg_jax.datasets.dead_leaves  # noqa: F401  (registers the builder)

    data_dir = str(tmp_path / "tfds")
    tfds.builder("dead_leaves/tiny", data_dir=data_dir).download_and_prepare()
    config = _config(data_dir)

    # Reference: the plain one-process run (8 CPU devices).
    reference = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "one")).params)

    # Two processes x 1 CPU device, through the launcher and main.py.
    workdir = tmp_path / "two"
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    env = {
        **os.environ,
        "NUM_PROCESSES": str(NUM_PROCESSES),
        "DEVICES_PER_PROCESS": "1",
        "PORT": str(20000 + os.getpid() % 20000),
        "LOG_DIR": str(tmp_path / "logs"),
        "PYTHON": "python",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--config=configs/base.py:tiny",
            f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}",
            *flags,
        ],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    log0 = (tmp_path / "logs" / "process_0.log").read_text()
    assert "JAX process 0 of 2; 1 local / 2 global devices" in log0

    params, step = checkpointing.restore_params(workdir)
    assert step == config.total_steps
    flat = checkpointing.flatten_params(params)
    for key, value in checkpointing.flatten_params(reference).items():
        # 4 Adam steps move a param by at most lr(1) + ... + lr(4) = 2e-4, and a wrong data order
        # or RNG moves most params by ~1e-4. Reduction-order noise stays ~1e-6 (largest in the
        # zero-initialised layers, whose tiny gradients Adam normalises to full-size steps).
        np.testing.assert_allclose(np.asarray(flat[key]), value, rtol=0, atol=1e-5, err_msg=key)
