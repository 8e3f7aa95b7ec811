"""notebooks/demo.ipynb executes headlessly end to end with a tiny setting."""

import pathlib

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "demo.ipynb"


def test_demo_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # the kernel inherits it
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    # The tiny model, 2 training steps, 2 samples: the notebook's code paths, in seconds.
    params.source = (
        f"TRAIN_STEPS = 2\nWORKDIR = {str(tmp_path / 'workdir')!r}\nEXPORT_DIR = ''\n"
        "NUM_SAMPLES = 2\nTINY = True\n"
    )
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "ARI (one sample)" in outputs and "best of 2" in outputs
    images = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]  # fmt: skip
    assert len(images) >= 3  # samples grid, entropy map, own-image panel
    assert (tmp_path / "workdir" / "config.json").is_file()
