"""Execute notebooks/reproduce_benchmarks.ipynb with nbclient on the committed sample results (and a stub run)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_bench_runner import StubExecutor, points, questions  # noqa: E402

from litestage_chain.bench.records import RECORDS_FILE, RecordStore  # noqa: E402
from litestage_chain.bench.results import rebuild_report, write_run  # noqa: E402
from litestage_chain.bench.runner import run_points  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "reproduce_benchmarks.ipynb"
SAMPLE = REPO / "benchmarks" / "results" / "sample"


def run_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, results: Path) -> nbformat.NotebookNode:
    """Run the notebook in a fresh kernel of this interpreter, pointed at `results` through its environment."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LITESTAGE_BENCH_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    """All text and markdown output, and how many PNG images were displayed."""
    parts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            parts.append(output.get("text", "") or data.get("text/markdown", "") or data.get("text/plain", ""))
            images += "image/png" in data
    return "\n".join(parts), images


def test_notebook_is_valid_and_has_no_stored_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def test_sample_results_hold_no_question_text() -> None:
    records = (SAMPLE / RECORDS_FILE).read_text(encoding="utf-8")
    assert records.strip(), "the committed sample has records"
    assert '"question"' not in records and '"text"' not in records


def test_notebook_reproduces_the_committed_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, images = outputs(run_notebook(tmp_path, monkeypatch, SAMPLE))
    assert "| full | full |" in text and "| litestage | litestage |" in text
    assert "table reproduced from" in text
    assert images >= 3, "accuracy vs speedup, per-stage sensitivity and tokens vs skipped sub-layers"


def test_notebook_reads_a_folder_of_benchmark_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "results"
    for benchmark in ("toy_a", "toy_b"):
        folder = root / benchmark
        stub, qs = StubExecutor(), questions(3)
        write_run(folder, {"benchmark": benchmark, "split": "dev", "questions": 3, "model": "stub"}, points(),
                  stub.identity, [q.id for q in qs])
        run_points(stub, points(), qs, RecordStore(folder / RECORDS_FILE), progress=False)
        rebuild_report(folder, plots=False)
    text, images = outputs(run_notebook(tmp_path, monkeypatch, root))
    assert "toy_a (dev, 3 questions)" in text and "toy_b (dev, 3 questions)" in text
    assert text.count("table reproduced from") == 2 and images == 6
