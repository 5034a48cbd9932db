"""Execute notebooks/quickstart.ipynb top to bottom with nbclient, on a tiny model and on the default model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import byte_tokenizer  # noqa: E402

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
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=False,
    )
    model_dir = tmp_path / "tiny"
    LlamaForCausalLM(config).eval().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    text = outputs_text(run_notebook(tmp_path, monkeypatch, str(model_dir)))
    assert "[recall]" in text and "[analysis]" in text and "[summary]" in text
    assert "stage" in text and "prefill s" in text  # the timing table
    assert "skipped attn[1] mlp[0]" in text and "skipped full model" in text


@pytest.mark.integration
def test_notebook_runs_on_the_default_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITESTAGE_MODEL", raising=False)
    text = outputs_text(run_notebook(tmp_path, monkeypatch, None))
    assert "Answer:" in text and "prefill s" in text and "skipped attn[1] mlp[0]" in text
