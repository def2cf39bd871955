"""notebooks/inspect_rewards.ipynb runs top to bottom (nbclient, the .venv's ipykernel) on test data."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.helpers.paths import ROOT as REPO
from tests.helpers.scored import write_scored_dir

NOTEBOOK = REPO / "notebooks" / "inspect_rewards.ipynb"


def test_inspect_rewards_notebook_executes(tmp_path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    _, rows = write_scored_dir(str(tmp_path / "scored"), n_prompts=3, n_responses=4, seed=7, fail_every=5)
    # A kernelspec pointing at the interpreter running the tests (the .venv), found via JUPYTER_PATH only.
    spec = tmp_path / "jupyter" / "kernels" / "lr-jax-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "lr_jax test", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("LR_SCORED_DIR", str(tmp_path / "scored"))
    monkeypatch.setenv("LR_MIN_RESPONSES", "3")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="lr-jax-test", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert f"{len(rows)} responses for 3 prompts" in text
    assert len(pngs) == 2  # distributions + pair gaps
    scored = [r for r in rows if r["scores"]["reward"] is not None]
    best = max(scored, key=lambda r: r["scores"]["reward"])
    worst = min(scored, key=lambda r: r["scores"]["reward"])
    for r in (best, worst):
        assert f"response {r['id']} · prompt {r['prompt_id']}" in html
        statement = r["trace"]["faithfulness"]["statements"][0]["text"]
        assert statement.replace("<", "&lt;").replace(">", "&gt;").replace(" & ", " &amp; ") in html
    assert "&lt;script&gt;" in html and "<script>alert" not in html
