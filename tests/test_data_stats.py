"""alexnet_jax.data.stats: the training split's mean image and RGB PCA against NumPy, and its
cache (beside the data, in the user cache when the data are read-only, refused when altered)."""

import logging
import os

import numpy as np
import pytest

from alexnet_jax import data as data_lib
from alexnet_jax.data import stats
from tests import data_helpers
from tests.data_helpers import dataset_config, fresh_user_cache


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  return data_helpers.mixed_folder(tmp_path_factory.mktemp("mixed"))


def test_stats_equal_numpy_and_are_cached(mixed_folder, monkeypatch):
  root, _ = mixed_folder
  cfg = dataset_config(name=f"folder:{root}")
  stats = data_lib.dataset_stats(cfg)
  it = data_lib.train_iterator(cfg, global_batch_size=9, seed=3, shard_index=0, num_shards=1)
  images = next(it)["image"].astype(np.float64)  # the 9 good images, as the pipeline makes them
  np.testing.assert_allclose(stats.mean_image, images.mean(0), atol=1e-3)
  px = images.reshape(-1, 3) / 255.0
  cov = np.cov(px.T, bias=True)
  np.testing.assert_allclose(stats.covariance, cov, rtol=1e-6, atol=1e-9)
  w, v = np.linalg.eigh(cov)
  np.testing.assert_allclose(stats.eigval, w[::-1], rtol=1e-5)
  for j in range(3):  # eigenvectors up to sign
    assert abs(abs(float(stats.eigvec[:, j] @ v[:, 2 - j])) - 1) < 1e-5
  np.testing.assert_allclose(stats.eigvec.T @ stats.eigvec, np.eye(3), atol=1e-6)
  path = data_lib.stats_cache_path(cfg)
  assert path == os.path.join(root, ".alexnet_jax_stats", "train.npz") and os.path.exists(path)
  monkeypatch.setattr(data_lib.stats, "stats_pass", lambda *a: pytest.fail("cache not used"))
  again = data_lib.dataset_stats(cfg)
  np.testing.assert_array_equal(again.mean_image, stats.mean_image)
  assert again.bad_files == stats.bad_files


def _stats_cfg(data_dir):
  return dataset_config(name="digits", data_dir=data_dir, stats_max_images=64)


def test_stats_cache_read_back_from_the_user_cache_when_data_dir_is_read_only(
    tmp_path, monkeypatch
):
  fresh_user_cache(monkeypatch, tmp_path)
  cfg = _stats_cfg("/proc/alexnet_jax_data")  # cannot be written, even by root
  first = data_lib.dataset_stats(cfg)
  cached = [f for f in os.listdir(tmp_path / "user_cache") if f.endswith("digits_train_max64.npz")]
  assert len(cached) == 1
  monkeypatch.setattr(data_lib.stats, "stats_pass", lambda *a: pytest.fail("cache not read back"))
  again = data_lib.dataset_stats(cfg)
  np.testing.assert_array_equal(again.mean_image, first.mean_image)


def test_stats_cache_with_altered_content_is_not_trusted(tmp_path, monkeypatch, caplog):
  fresh_user_cache(monkeypatch, tmp_path)
  cfg = _stats_cfg(str(tmp_path / "data"))
  first = data_lib.dataset_stats(cfg)
  path = data_lib.stats_cache_path(cfg)
  with np.load(path) as z:
    stats = {k: z[k] for k in z.files}
  stats["mean_image"] = stats["mean_image"] + 10.0  # meta and digest left as they were
  with open(path, "wb") as f:
    np.savez(f, **stats)
  with caplog.at_level(logging.WARNING, logger="absl"):
    again = data_lib.dataset_stats(cfg)
  assert any("HMAC does not verify" in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(again.mean_image, first.mean_image)  # recomputed
  # The untouched cache is read back without a pass (the HMAC verifies).
  monkeypatch.setattr(data_lib.stats, "stats_pass", lambda *a: pytest.fail("cache not used"))
  np.testing.assert_array_equal(data_lib.dataset_stats(cfg).mean_image, first.mean_image)


def test_pixel_moments_are_exact_at_the_uint8_extremes():
  """The sums behind the PCA lighting use uint16 products: exact up to 255 * 255, checked
  against int64 arithmetic on pixels at 0, 255 and random values."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(3, 256, 256, 3), dtype=np.uint8)
  x[0] = 255  # the largest products: 65025 each, 196608 of them per channel pair
  x[1, :, :, 1] = 0
  sums = stats.Sums()
  sums.add(x)
  px = x.reshape(-1, 3).astype(np.int64)
  np.testing.assert_array_equal(sums.s1, px.sum(0))
  np.testing.assert_array_equal(sums.s2, px.T @ px)
  np.testing.assert_array_equal(sums.image, x.sum(0, dtype=np.int64))
