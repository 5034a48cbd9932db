"""Execute notebooks/quickstart.ipynb top to bottom with nbclient, on a tiny model and on the default model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import save_tiny_long_context_llama  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def run_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str | None) -> nbformat.NotebookNode:
    """Run the notebook in a fresh kernel of this interpreter; the kernel inherits this process's environment."""
    # `python3` resolves to this interpreter (jupyter_client substitutes sys.executable for "python"), and the
    # repository goes on PYTHONPATH so the notebook imports this checkout even when the package is not installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if model is not None:
        monkeypatch.setenv("LITESTAGE_MODEL", model)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return notebook


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_is_valid_and_has_no_stored_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_runs_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = save_tiny_long_context_llama(tmp_path / "tiny")
    text = outputs_text(run_notebook(tmp_path, monkeypatch, str(model_dir)))
    assert "[recall]" in text and "[analysis]" in text and "[summary]" in text
    assert "stage" in text and "prefill s" in text  # the timing table
    assert "skipped attn[1] mlp[0]" in text and "skipped full model" in text
    assert "same stage texts as the chain: True" in text  # the stages as LangGraph nodes


@pytest.mark.integration
def test_notebook_runs_on_the_default_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITESTAGE_MODEL", raising=False)
    text = outputs_text(run_notebook(tmp_path, monkeypatch, None))
    assert "Answer:" in text and "prefill s" in text and "skipped attn[1] mlp[0]" in text
    assert "same stage texts as the chain: True" in text
