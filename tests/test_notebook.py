"""notebooks/explore_a_run.ipynb runs top to bottom against a small run trained here."""

import os
import shutil
import tomllib

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


def test_the_readme_installs_what_the_notebook_needs():
  """`pip install -e ".[notebook]"` (or requirements-notebook.txt) brings JupyterLab and the
  kernel, pinned; the README's notebook paragraph says so with the command that opens it."""
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  pins = dict(p.split("==") for p in extras["notebook"])
  assert set(pins) == {"jupyterlab", "ipykernel"} and all(pins.values()), pins
  with open(os.path.join(REPO, "requirements-dev.txt")) as f:  # the kernel the tests run
    assert f"ipykernel=={pins['ipykernel']}" in f.read().split()
  with open(os.path.join(REPO, "requirements-notebook.txt")) as f:
    assert "-e .[notebook]" in f.read().splitlines()
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  paragraph = readme[readme.index("**The notebook**") : readme.index("## Pretrained weights")]
  assert '\n    pip install -e ".[notebook]"\n' in paragraph
  assert "\n    jupyter lab notebooks/explore_a_run.ipynb\n" in paragraph


@pytest.mark.slow
def test_the_notebook_executes_against_a_small_run(tmp_path, monkeypatch):
  workdir = tmp_path / "runs" / "run"
  workdir.mkdir(parents=True)
  config = tiny.config(num_train_steps=2, **{"mesh.data": -1})
  (workdir / "config.json").write_text(config.to_json_best_effort())
  train.train_and_evaluate(config, str(workdir))
  # A second run beside it, trained on the same data: the ensemble finds it by itself.
  shutil.copytree(workdir, tmp_path / "runs" / "run_copy")
  # As the README runs it: `pip install -e .` puts this checkout on the kernel's path (here
  # PYTHONPATH does the same), and JupyterLab starts the kernel in the notebook's directory.
  monkeypatch.setenv("ALEXNET_JAX_WORKDIR", str(workdir))
  monkeypatch.delenv("ALEXNET_JAX_ENSEMBLE", raising=False)
  monkeypatch.setenv("ALEXNET_JAX_MAX_TRAIN_IMAGES", "64")
  monkeypatch.setenv(
      "PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  )
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # the user's shell sets none
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # Any cell that raises fails the test (CellExecutionError names the cell).
  NotebookClient(
      nb,
      timeout=240,
      kernel_name="python3",
      resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}},
  ).execute()
  outputs = {c.id: c.outputs for c in nb.cells if c.cell_type == "code"}
  text = "".join(o.get("text", "") for o in outputs["load"])
  assert f"{workdir}: step 2, digits, 10 classes" in text
  # A quiet import: nothing on stderr while the library and TensorFlow load.
  assert not [o for o in outputs["load"] if o.get("name") == "stderr"], outputs["load"]
  figures = [o for name in ("fig3", "fig4", "curves", "confusion") for o in outputs[name]]
  assert sum("image/png" in o.get("data", {}) for o in figures) == 4
  predicted = "".join(o.get("text", "") for o in outputs["predict"])
  assert "1 view(s), the run's eval_crops" in predicted
  ensemble = "".join(o.get("text", "") for o in outputs["ensemble"])
  assert "ensemble of 2 over 297 images, 1 view(s)" in ensemble
  assert f"{tmp_path / 'runs' / 'run_copy'} (step 2)" in ensemble
