"""notebooks/quickstart.ipynb runs end to end (nbclient), with a short training run (QUICKSTART_STEPS)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("QUICKSTART_STEPS", "10")
    monkeypatch.setenv(
        "DREAMER_DYNAMICS_CACHE", os.environ.get("DREAMER_DYNAMICS_CACHE", str(tmp_path / "cache"))
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "copy-last ES" in text and "K=4   ES / copy-last" in text and "object accuracy" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # data frames, loss curve, two rollout grids, ES bars
