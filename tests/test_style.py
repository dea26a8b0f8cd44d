"""One formatter and one import order over the tree (configured in pyproject.toml)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)


def test_the_tree_is_formatted_with_pyink():
  r = _run("pyink", "--check", ".")
  assert r.returncode == 0, f"run `pyink .` to format:\n{r.stderr}"


def test_imports_are_sorted_and_nothing_is_unused():
  r = _run("ruff", "check", ".")
  assert r.returncode == 0, f"run `ruff check --fix .`:\n{r.stdout}"
