"""The bottom layer: the facts several layers share (facts.py) and the file helpers (files.py)."""

import os

import numpy as np
import pytest

from alexnet_jax import facts, files


def test_every_run_file_name_is_distinct_and_plain():
  names = [v for k, v in vars(facts).items() if k.isupper() and k.endswith(("_FILE", "_DIR"))]
  assert len(names) == len(set(names)) >= 12
  assert all(os.sep not in n and n == n.strip() for n in names)
  assert set(facts.FILES) <= set(facts.TRAINING_NAMES)
  assert facts.eval_results_file(125, 10) == "eval_125_10crop.json"
  # The docstring's table names every file.
  for name in names:
    assert name in facts.__doc__, name


def test_the_image_facts_agree():
  assert facts.MEAN_IMAGE_SHAPE == (256, 256, 3) == (facts.IMAGE_SIZE, facts.IMAGE_SIZE, 3)
  # The eigen-basis is orthonormal (columns), its values descending.
  vec = facts.IMAGENET_EIGVEC.astype(np.float64)
  np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=2e-4)
  assert list(facts.IMAGENET_EIGVAL) == sorted(facts.IMAGENET_EIGVAL, reverse=True)
  assert facts.VIEW_COUNTS == (1, 10)  # §4.1: the center crop, or the paper's ten views


def test_write_atomically_replaces_the_file_whole(tmp_path):
  path = str(tmp_path / "a.json")
  files.write_atomically(path, lambda f: f.write(b"first"))
  assert open(path, "rb").read() == b"first"
  assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
  files.write_atomically(path, lambda f: f.write(b"second"))
  assert open(path, "rb").read() == b"second"
  assert os.listdir(tmp_path) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "a.json")
  files.write_atomically(path, lambda f: f.write(b"kept"))

  def fail(f):
    f.write(b"half")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    files.write_atomically(path, fail)
  assert open(path, "rb").read() == b"kept"
  assert os.listdir(tmp_path) == ["a.json"]


def test_the_user_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("ALEXNET_JAX_CACHE", str(tmp_path / "cache"))
  assert files.user_cache_dir() == str(tmp_path / "cache")
  monkeypatch.delenv("ALEXNET_JAX_CACHE")
  assert files.user_cache_dir() == os.path.expanduser("~/.cache/alexnet_jax")
