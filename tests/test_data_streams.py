"""alexnet_jax.data.streams: per-process training and evaluation batches that are disjoint,
complete, exactly resumable and independent of the process count; decode failures at run time;
splits smaller than a batch."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax import data as data_lib
from tests import data_helpers
from tests.data_helpers import (
    BROKEN,
    dataset_config,
    digest,
    encode,
    fresh_user_cache,
    match,
    pil_reference,
    small_folder,
)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  return data_helpers.mixed_folder(tmp_path_factory.mktemp("mixed"))


def test_folder_runtime_decode_failure_is_counted_and_named(mixed_folder):
  root, refs = mixed_folder
  cfg = dataset_config(name=f"folder:{root}", stats_max_images=9)  # the scan misses the broken file
  assert data_lib.dataset_stats(cfg).bad_files == ()
  it = data_lib.train_iterator(cfg, global_batch_size=3, seed=1, shard_index=0, num_shards=1)
  batches = [next(it) for _ in range(4)]
  first9 = np.concatenate([b["image"] for b in batches])[:9]
  labels = np.concatenate([b["label"] for b in batches])[:9]
  assert sorted(match(first9, labels, refs, tol=2)) == sorted(refs)
  assert it.skipped == [BROKEN] and it.num_skipped == 1
  # Exactly the stream with the broken image alone left out, in order (its whole batch was
  # dropped by tf.data and decoded again image by image).
  src = data_lib.open_dataset(cfg)
  split, pil = src.train, data_lib.stats.source_stats(src, src.settings)["pil_keys"]
  key_of = data_lib.streams._random_access_positions(split.all_keys(), 1, 0, 1, 3)
  keys = [k for k in (int(key_of(q)) for q in range(13)) if split.name_of(k) != BROKEN][:12]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), split.labels[keys])
  for image, key in zip(np.concatenate([b["image"] for b in batches]), keys):
    want = next(
        iter(
            tf.data.Dataset.from_tensors(np.int64(key)).map(
                lambda k: split.element(k, pil)["image"]
            )
        )
    )
    np.testing.assert_array_equal(image, want.numpy())


def test_folder_eval_covers_every_image_once(mixed_folder):
  root, _ = mixed_folder
  batches = list(
      data_lib.eval_iterator(
          dataset_config(name=f"folder:{root}"), global_batch_size=2, shard_index=0, num_shards=1
      )
  )
  assert len(batches) == 2
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.tolist() == [True, True, True, False]
  assert sorted(np.concatenate([b["label"] for b in batches])[mask].tolist()) == [0, 1, 2]


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
  """32 solid-colour PNGs in 3 classes; pixel (0, 0) identifies the image.

  With no train/ folder, the ~10% held out for evaluation are the files with
  crc32(relative path) % 10 == 0: here img10 and img22, leaving 30 for training.
  """
  root = tmp_path_factory.mktemp("colors")
  for i in range(32):
    d = root / f"class{i % 3}"
    d.mkdir(exist_ok=True)
    rgb = np.zeros((12, 20, 3), np.uint8) + np.array([8 * i, 255 - 8 * i, 77], np.uint8)
    (d / f"img{i:02d}.png").write_bytes(encode(rgb, "PNG"))
  (root / "class0" / ".hidden.png").write_bytes(b"not an image")  # hidden files are ignored
  return str(root)


def _ids(batch):
  return (batch["image"][:, 0, 0, 0].astype(int) // 8).tolist()


def test_process_streams_disjoint_cover_split_and_match_single_process(color_folder):
  cfg = dataset_config(name=f"folder:{color_folder}")
  info = data_lib.dataset_info(cfg)
  n = info.num_train
  assert (n, info.num_eval, info.num_classes) == (30, 2, 3)
  streams = [
      data_lib.train_iterator(cfg, global_batch_size=6, seed=5, shard_index=p, num_shards=2)
      for p in range(2)
  ]
  single = data_lib.train_iterator(cfg, global_batch_size=6, seed=5, shard_index=0, num_shards=1)
  steps = 3 * n // 6 + 2
  local = [[next(s) for _ in range(steps)] for s in streams]
  glob = [next(single) for _ in range(steps)]
  order = []
  for t in range(steps):
    for p in range(2):
      assert local[p][t]["image"].shape == (3, 256, 256, 3)
      # Labels follow the images (class = id % 3).
      assert [i % 3 for i in _ids(local[p][t])] == local[p][t]["label"].tolist()
    # Process p holds positions [3p, 3p+3) of the global batch, whatever the process count.
    assert _ids(local[0][t]) + _ids(local[1][t]) == _ids(glob[t])
    order += _ids(local[0][t]) + _ids(local[1][t])
  train_ids = sorted(order[:n])
  assert len(set(train_ids)) == n  # each training image exactly once in epoch 0 ...
  assert sorted(order[n : 2 * n]) == train_ids and sorted(order[2 * n : 3 * n]) == train_ids
  assert order[:n] != order[n : 2 * n]  # ... reshuffled every epoch
  assert set(train_ids) == set(range(32)) - {10, 22}
  per_process = [sum((_ids(b) for b in local[p][: n // 6]), []) for p in range(2)]
  assert len(set(per_process[0])) == len(set(per_process[1])) == n // 2
  assert not set(per_process[0]) & set(per_process[1])
  assert set(per_process[0]) | set(per_process[1]) == set(train_ids)
  # Exact resume, including across an epoch boundary.
  for start in (1, n // 6 + 1, steps - 2):
    resumed = data_lib.train_iterator(
        cfg, global_batch_size=6, seed=5, start_step=start, shard_index=1, num_shards=2
    )
    np.testing.assert_array_equal(next(resumed)["image"], local[1][start]["image"])
  other_seed = data_lib.train_iterator(
      cfg, global_batch_size=6, seed=6, shard_index=0, num_shards=1
  )
  assert _ids(next(other_seed)) != _ids(glob[0])
  with pytest.raises(ValueError, match="divisible"):
    data_lib.train_iterator(cfg, global_batch_size=5, seed=0, shard_index=0, num_shards=2)


def test_padded_eval_mask_counts_every_image_once(color_folder, mixed_folder):
  cfg = dataset_config(name=f"folder:{color_folder}")
  per_process = [
      list(data_lib.eval_iterator(cfg, global_batch_size=4, shard_index=p, num_shards=2))
      for p in range(2)
  ]
  assert [len(b) for b in per_process] == [1, 1]
  seen = [i for batches in per_process for b in batches for i, m in zip(_ids(b), b["mask"]) if m]
  assert sorted(seen) == [10, 22]
  # Uneven shares (3 images, 2 processes: 1 and 2): same number of batches, padding masked out.
  cfg = dataset_config(name=f"folder:{mixed_folder[0]}")
  per_process = [
      list(data_lib.eval_iterator(cfg, global_batch_size=2, shard_index=p, num_shards=2))
      for p in range(2)
  ]
  assert [len(b) for b in per_process] == [2, 2]
  masks = [np.concatenate([b["mask"] for b in batches]).tolist() for batches in per_process]
  assert masks == [[True, False], [True, True]]
  labels = [int(l) for batches in per_process for b in batches for l in b["label"][b["mask"]]]
  assert sorted(labels) == [0, 1, 2]  # each validation image (one per class) exactly once
  for batches in per_process:
    for b in batches:
      assert b["image"].shape == (1, 256, 256, 3) and b["mask"].dtype == bool
      assert (b["image"][~b["mask"]] == 0).all()


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
  return data_helpers.tiny_imagenet(tmp_path_factory.mktemp("imagenet"))


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_imagenet2012_process_shards_and_resume(tiny_imagenet):
  cfg, _, expected = tiny_imagenet
  streams = [
      data_lib.train_iterator(cfg, global_batch_size=2, seed=3, shard_index=p, num_shards=2)
      for p in range(2)
  ]
  local = [[digest(next(s)["image"][0]) for _ in range(7)] for s in streams]
  train = {d for d, (s, _) in expected.items() if s == "train"}
  # 3 steps = one epoch: each process reads its own 3 images; together the split once.
  assert not set(local[0][:3]) & set(local[1][:3])
  assert set(local[0][:3]) | set(local[1][:3]) == train
  assert set(local[0][3:6]) == set(local[0][:3])  # the next epoch: same share, again once
  for start in (2, 4):  # resume within an epoch and after crossing into the next one
    resumed = data_lib.train_iterator(
        cfg, global_batch_size=2, seed=3, start_step=start, shard_index=1, num_shards=2
    )
    assert [digest(next(resumed)["image"][0]) for _ in range(2)] == local[1][start : start + 2]
  evals = [
      list(data_lib.eval_iterator(cfg, global_batch_size=2, shard_index=p, num_shards=2))
      for p in range(2)
  ]
  assert len(evals[0]) == len(evals[1]) == 2  # same count on every process (collectives)
  assert sum(int(b["mask"].sum()) for e in evals for b in e) == 3


def test_a_global_tensorflow_seed_changes_nothing(tiny_imagenet):
  """tf.random.set_seed (or keras.utils.set_random_seed) in the same process neither breaks
  the stream (TensorFlow pairs an op seed with a set global one) nor changes its order."""
  import tensorflow as tf

  cfg, _, _ = tiny_imagenet

  def order():
    s = data_lib.train_iterator(cfg, global_batch_size=2, seed=3, start_step=1)
    return [digest(next(s)["image"][0]) for _ in range(5)]

  before = order()
  tf.random.set_seed(1234)
  try:
    assert order() == before
  finally:
    tf.random.set_seed(None)


# ---------------------------------------------------------------------------------------------
# A split smaller than one batch.


def test_three_classes_fewer_images_than_a_batch_wrap_around(monkeypatch, tmp_path):
  """6 training images, batch 8: batches wrap around (every image in the first batch)."""
  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "data")
  cfg = dataset_config(name=f"folder:{root}")
  info = data_lib.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (3, 6, 3)
  batch = next(
      data_lib.train_iterator(cfg, global_batch_size=8, seed=0, shard_index=0, num_shards=1)
  )
  assert len(batch["image"]) == 8
  refs = {p: pil_reference(Image.open(p)).astype(int) for p in (root / "train").rglob("*.jpg")}
  seen = set()
  for image, label in zip(batch["image"], batch["label"]):
    (hit,) = [p for p, r in refs.items() if np.abs(image.astype(int) - r).max() <= 2]
    assert label == "abc".index(hit.parent.name)
    seen.add(hit)
  assert seen == set(refs)  # 8 slots: the 6 images, 2 of them twice


def test_a_cached_split_streams_the_batches_decoding_per_batch_gives():
  """dataset.cache=True decodes the split into memory once and gathers each batch by key
  (the demo reads batch by batch instead): the same images and labels, batch for batch,
  also from a resumed position."""
  streams = {}
  for cache in (True, False):
    cfg = dataset_config(name="digits", cache=cache)
    for start in (0, 50):  # 50 steps of 32: past the first epoch of 1,500
      it = data_lib.train_iterator(cfg, global_batch_size=32, seed=3, start_step=start)
      try:
        streams[cache, start] = [next(it) for _ in range(3)]
      finally:
        it.close()
  for start in (0, 50):
    for a, b in zip(streams[True, start], streams[False, start]):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(streams[True, 0][0]["image"], streams[True, 50][0]["image"])
