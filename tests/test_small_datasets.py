"""Training and evaluation on a dataset of 3 classes with fewer images than a batch: the top-5
error over fewer than 5 classes, and a 2-step run through train_and_evaluate."""

import numpy as np
import pytest

from alexnet_jax import train
from tests.data_helpers import fresh_user_cache, small_folder


def test_top_k_is_top_min_5_classes():
  logits = np.array([[0.1, 0.5, 0.2], [3.0, 1.0, 2.0]], np.float32)
  labels = np.array([2, 0], np.int32)
  top1, top5 = train._errors(logits, labels)
  np.testing.assert_array_equal(top1, (logits.argmax(-1) != labels).astype(np.float32))
  np.testing.assert_array_equal(top5, [0.0, 0.0])  # top-3 of 3 classes holds every label


@pytest.mark.slow
def test_three_classes_fewer_images_than_a_batch_train_and_evaluate(monkeypatch, tmp_path):
  """6 training images, batch 8 (tests/test_data_streams.py checks the batches' contents)."""
  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "data")
  from tests.test_train import tiny_config

  config = tiny_config(num_train_steps=2, **{"dataset.name": f"folder:{root}", "mesh.data": -1})
  config.dataset.cache = False
  m = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert m["num_images"] == 3 and m["top5_error"] == 0.0 and 0.0 <= m["top1_error"] <= 1.0
