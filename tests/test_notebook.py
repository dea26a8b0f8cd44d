"""notebooks/explore_a_run.ipynb runs top to bottom against a small run trained here."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from alexnet_jax import train
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "explore_a_run.ipynb")


def test_the_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_the_notebook_executes_against_a_small_run(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = tiny.config(num_train_steps=2, **{"mesh.data": -1})
  (workdir / "config.json").write_text(config.to_json_best_effort())
  train.train_and_evaluate(config, str(workdir))
  # The kernel inherits the environment: the run, and the package from this checkout.
  monkeypatch.setenv("ALEXNET_JAX_WORKDIR", str(workdir))
  monkeypatch.setenv("ALEXNET_JAX_ENSEMBLE", os.pathsep.join([str(workdir)] * 2))
  monkeypatch.setenv("ALEXNET_JAX_MAX_TRAIN_IMAGES", "64")
  monkeypatch.setenv(
      "PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  )
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # Any cell that raises fails the test (CellExecutionError names the cell).
  NotebookClient(
      nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
  outputs = {c.id: c.outputs for c in nb.cells if c.cell_type == "code"}
  text = "".join(o.get("text", "") for o in outputs["load"])
  assert f"{workdir}: step 2, digits, 10 classes" in text
  figures = [o for name in ("fig3", "fig4", "curves", "confusion") for o in outputs[name]]
  assert sum("image/png" in o.get("data", {}) for o in figures) == 4
  ensemble = "".join(o.get("text", "") for o in outputs["ensemble"])
  assert "ensemble of 2 over 297 images" in ensemble
