"""The files of a run directory beside its checkpoints, written and read back."""

import json
import os

import numpy as np
import pytest

from alexnet_jax import data as data_lib
from alexnet_jax import facts, run_data, run_dir
from alexnet_jax.input_spec import InputSpec
from tests import tiny


def _stats(seed=0):
  rs = np.random.RandomState(seed)
  cov = rs.rand(3, 3)
  return data_lib.DatasetStats(
      mean_image=(rs.rand(256, 256, 3) * 255).astype(np.float32),
      covariance=cov @ cov.T,
      eigval=rs.rand(3).astype(np.float32),
      eigvec=np.linalg.qr(rs.randn(3, 3))[0].astype(np.float32),
      num_images=24,
      bad_files=("a/broken.jpg",),
  )


def _info(names):
  return data_lib.DatasetInfo(
      name="tiny", num_classes=len(names), num_train=24, num_eval=6, class_names=tuple(names)
  )


def test_write_then_read_what_inference_needs(tmp_path):
  workdir, stats = str(tmp_path / "run"), _stats()
  config = tiny.config(eval_crops=10)
  info = _info(["zero", "one"])
  spec = InputSpec.from_config(config, stats)
  paths = run_dir.write(workdir, config, info, stats, spec)
  assert sorted(os.path.basename(p) for p in paths) == sorted(facts.FILES)
  assert run_dir.missing(workdir) == []
  back = run_data.read_stats(workdir)
  for field in ("mean_image", "covariance", "eigval", "eigvec"):
    np.testing.assert_array_equal(getattr(back, field), getattr(stats, field))
  assert back.num_images == 24 and back.bad_files == ("a/broken.jpg",)
  assert run_dir.read_class_names(workdir) == ["zero", "one"]
  saved = run_dir.read_preprocessing(workdir)
  assert saved == {"dataset": "tiny", **spec.to_json(), "eval_crops": 10}


def test_missing_names_what_an_older_run_lacks(tmp_path):
  workdir = str(tmp_path)
  assert run_dir.missing(workdir) == list(facts.FILES)
  run_dir.write_class_names(workdir, ["a"])
  pixel = tiny.config(**{"input.mean": "pixel"})
  # A mean pixel needs no statistics: only preprocessing.json is missing.
  assert run_dir.missing(workdir, pixel) == [facts.PREPROCESSING_FILE]
  assert run_data.read_stats(workdir) is None and run_dir.read_preprocessing(workdir) is None


def test_mean_image_checked_copied_atomically(tmp_path):
  src, dst = tmp_path / "src", tmp_path / "dst"
  src.mkdir()
  dst.mkdir()
  with pytest.raises(ValueError, match="must be"):
    run_dir.write_mean_image(str(src), np.zeros((224, 224, 3)))
  mean = _stats().mean_image
  run_dir.write_mean_image(str(src), mean)
  assert run_dir.has_mean_image(str(src)) and not run_dir.has_mean_image(str(dst))
  run_dir.copy_mean_image(str(src), str(dst))
  np.testing.assert_array_equal(run_dir.read_mean_image(str(dst)), mean)
  assert sorted(os.listdir(dst)) == [facts.MEAN_IMAGE_FILE]  # no temporary file left


def test_class_names_and_names_files(tmp_path):
  (tmp_path / facts.CLASS_NAMES_FILE).write_text(json.dumps({"not": "a list"}))
  with pytest.raises(ValueError, match="JSON list of class names"):
    run_dir.read_class_names(str(tmp_path))
  (tmp_path / "names.txt").write_text("tench\ngoldfish\n\n")
  assert run_dir.read_names_file(str(tmp_path / "names.txt")) == ["tench", "goldfish", ""]


def test_read_config_names_a_directory_that_is_not_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="is .* the --workdir of a run"):
    run_dir.read_config(str(tmp_path))
