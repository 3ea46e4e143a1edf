"""``examples/check_results.ipynb`` runs top to bottom, as stored, in a Jupyter kernel (nbclient)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import ROOT

NOTEBOOK = ROOT / "examples" / "check_results.ipynb"
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def execute(nb, folder: Path):
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    return client.execute()


def text_of(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def test_the_stored_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_notebook_runs_on_the_built_in_data_with_no_edits(tmp_path):
    nb = execute(nbformat.read(NOTEBOOK, as_version=4), tmp_path)
    text = text_of(nb)
    assert "study notebook-demo: 8 trials, maximizing macro_f1" in text
    assert "held-out images:" in text and "baseline #0" in text
    shown = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
             if out.output_type == "display_data" and "application/vnd.plotly.v1+json" in out.get("data", {})]
    assert len(shown) >= 4  # the report's figures, the confusion matrix, the wrong images (when any)
    assert (tmp_path / "studies" / "notebook-demo" / "holdout").is_dir()


def test_a_study_that_does_not_exist_is_the_apis_one_line_error(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    config = next(cell for cell in nb.cells if cell.cell_type == "code")
    config.source = config.source.replace('STUDY = "notebook-demo"', 'STUDY = "no-such-study"')
    with pytest.raises(nbclient.exceptions.CellExecutionError) as info:
        execute(nb, tmp_path)
    assert info.value.ename in ("StorageError", "StudyError")
    assert "\n" not in info.value.evalue and "no study" in info.value.evalue
