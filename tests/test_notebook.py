"""notebooks/results_tour.ipynb executes from start to end (with a run given), so that it cannot go stale."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plots import depth_samples
from test_tables import make_run

# the notebook tools are test extras: a machine without them (the GPU one) skips this module, not fails to collect
nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

REPO = Path(__file__).parent.parent
NOTEBOOK = REPO / "notebooks" / "results_tour.ipynb"


def test_results_tour_notebook_executes(tmp_path, monkeypatch):
    rows = [("niah_single_2", "string_match_all", n, v) for n, v in ((1024, 100.0), (4096, 61.0))]
    run = make_run(tmp_path / "run", label="nb-run", rows=[*rows, ("piqa", "acc", None, 70.0)],
                   samples={"niah_single_2": depth_samples(10)})
    monkeypatch.setenv("GDN2_RUNS", str(run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # stored without outputs
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for o in outputs)
    assert "**Table 3.**" in text and "nb-run †" in text and "**61.0**" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # length, common sense, depth heatmap, throughput
