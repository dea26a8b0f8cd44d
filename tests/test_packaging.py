"""pyproject.toml: the package installs and imports from any directory."""

import os
import shutil
import subprocess
import sys

import pytest

from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_package_installs_and_imports_outside_the_checkout(tmp_path):
  # Build from a copy, so that the checkout gets no build/ or egg-info.
  src = tmp_path / "src"
  shutil.copytree(
      os.path.join(REPO, "alexnet_jax"),
      src / "alexnet_jax",
      ignore=shutil.ignore_patterns("__pycache__"),
  )
  shutil.copytree(
      os.path.join(REPO, "configs"), src / "configs", ignore=shutil.ignore_patterns("__pycache__")
  )
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), src)
  site = tmp_path / "site"
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "pip",
          "install",
          "--quiet",
          "--no-deps",
          "--no-index",  # nothing is downloaded: the build uses the installed setuptools
          "--no-build-isolation",
          "--disable-pip-version-check",
          f"--target={site}",
          str(src),
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  installed = sorted(os.listdir(site / "alexnet_jax"))
  want = sorted(f for f in os.listdir(os.path.join(REPO, "alexnet_jax")) if f.endswith(".py"))
  assert [f for f in installed if f.endswith(".py")] == want
  # From a directory without the checkout, with only the installed copy on the path.
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  code = "import alexnet_jax.run_dir as m; print(m.__file__); print(m.STATS_FILE)"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  # The installed copy's runs in forked children of a zygote that preloaded the libraries
  # (tests/forkserver.py; PYTHONPATH in place as a fresh interpreter has it); pip is real.
  r = forkserver.run(
      [sys.executable, "-c", code],
      cwd=elsewhere,
      env={**env, "PYTHONPATH": str(site)},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split() == [str(site / "alexnet_jax" / "run_dir.py"), "dataset_stats.npz"]
  # The shipped configs resolve by name and by their repository path: the config loads and
  # its check runs (batch_size 0 is refused before anything starts).
  for arg in ("--config=demo", "--config=configs/demo.py"):
    r = forkserver.run(
        [sys.executable, "-m", "alexnet_jax.main", arg, f"--workdir={tmp_path / 'w'}"]
        + ["--config.batch_size=0"],
        cwd=elsewhere,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "FATAL: config.batch_size=0 is impossible: it must be a positive integer (the global "
        "batch)."
    ), r.stderr[-3000:]
  # A config that is not there says where the shipped ones are.
  r = forkserver.run(
      [sys.executable, "-m", "alexnet_jax.main", "--config=configs/nosuch.py", "--workdir=w"],
      cwd=elsewhere,
      env={**env, "PYTHONPATH": str(site)},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 1
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("FATAL: cannot load the --config file:") and "configs/nosuch.py" in line
  assert f"the shipped configs are in {site / 'configs'}" in line and line.endswith(
      "names: ablations, caffe, demo, keras_bn, lars, paper, pytorch_grouped, torchvision."
  )
