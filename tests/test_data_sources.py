"""alexnet_jax.data.sources: folder: (mixed formats, a corrupt file, stray files, non-ASCII names,
odd folders), the real TFDS imagenet2012 builder, the embedded digits, and errors that name
what is wrong."""

import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import data as data_lib
from tests import data_helpers, forkserver
from tests.data_helpers import (
    BROKEN,
    dataset_config,
    digest,
    fresh_user_cache,
    match,
    pil_reference,
    real_photos,
    small_folder,
    write_photo,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# folder:


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  return data_helpers.mixed_folder(tmp_path_factory.mktemp("mixed"))


def test_folder_mixed_formats_skips_exactly_the_corrupt_file(mixed_folder):
  root, refs = mixed_folder
  cfg = dataset_config(name=f"folder:{root}")
  info = data_lib.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (3, 10, 3)
  assert info.class_names == ("a", "b", "c")
  stats = data_lib.dataset_stats(cfg)
  assert stats.bad_files == (BROKEN,)
  assert stats.num_images == 9
  it = data_lib.train_iterator(cfg, global_batch_size=3, seed=0, shard_index=0, num_shards=1)
  batches = [next(it) for _ in range(3)]  # one epoch of the 9 good images
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert images.dtype == np.uint8 and images.shape == (9, 256, 256, 3) and labels.dtype == np.int32
  # CMYK and lossy formats may differ from PIL by one more level in decoding.
  assert sorted(match(images, labels, refs, tol=2)) == sorted(refs)
  assert it.skipped == []  # known up front: excluded, never shifts the stream


def test_single_class_empty_class_and_empty_validation_are_named(tmp_path, monkeypatch):
  fresh_user_cache(monkeypatch, tmp_path)
  one = small_folder(tmp_path / "one", classes="a")
  with pytest.raises(
      data_lib.DatasetError, match=r"one class folder \('a'\).*at least two classes"
  ):
    data_lib.dataset_info(dataset_config(name=f"folder:{one}"))

  empty = small_folder(tmp_path / "empty", classes="ab")
  (empty / "train" / "zebra").mkdir()
  (empty / "train" / "zebra" / "readme.txt").write_text("no images")
  with pytest.raises(data_lib.DatasetError, match=rf"without images: {empty}/train/zebra"):
    data_lib.dataset_info(dataset_config(name=f"folder:{empty}"))

  no_val = small_folder(tmp_path / "noval", classes="ab", val=0)
  with pytest.raises(
      data_lib.DatasetError, match=rf"validation split of '{no_val}' is empty.*val/"
  ):
    data_lib.dataset_info(dataset_config(name=f"folder:{no_val}"))


@pytest.mark.slow
def test_empty_validation_is_one_line_from_the_command_line(tmp_path, monkeypatch):
  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "noval", classes="ab", val=0)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  # In a forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py).
  r = forkserver.run(
      [
          sys.executable,
          "-m",
          "alexnet_jax.main",
          "--config=configs/demo.py",
          f"--workdir={tmp_path / 'w'}",
          f"--config.dataset.name=folder:{root}",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  fatal = [line for line in r.stderr.splitlines() if line.startswith("FATAL")]
  assert r.returncode == 1 and len(fatal) == 1 and "validation split" in fatal[0], r.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_stray_files_ignored_with_one_warning_and_non_ascii_names_work(
    tmp_path, caplog, monkeypatch
):
  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "data", classes="ab")
  photos = real_photos()
  write_photo(root / "train" / "a" / "café.jpg", photos[3][:100, :120])
  write_photo(root / "train" / "b" / "日本の猫.png", photos[4][:80, :100], fmt="PNG")
  for name in ("notes.txt", "labels.csv", "Thumbs.db"):
    (root / "train" / "a" / name).write_text("not an image")
  cfg = dataset_config(name=f"folder:{root}")
  with caplog.at_level(logging.WARNING, logger="absl"):
    info = data_lib.dataset_info(cfg)
  warnings = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith("ignoring 3 file(s)"), warnings
  assert info.num_train == 6
  stats = data_lib.dataset_stats(cfg)
  assert stats.bad_files == () and stats.num_images == 6
  batch = next(
      data_lib.train_iterator(cfg, global_batch_size=6, seed=0, shard_index=0, num_shards=1)
  )
  for name in ("a/café.jpg", "b/日本の猫.png"):
    want = pil_reference(Image.open(root / "train" / name)).astype(int)
    assert any(np.abs(x.astype(int) - want).max() <= 2 for x in batch["image"]), name


# ---------------------------------------------------------------------------------------------
# The real TFDS imagenet2012 builder on a tiny ILSVRC-format pair of tars.


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
  return data_helpers.tiny_imagenet(tmp_path_factory.mktemp("imagenet"))


def test_imagenet2012_builder_prepares_and_pipeline_reads_labels(tiny_imagenet):
  cfg, info, expected = tiny_imagenet
  assert (info.name, info.num_classes, info.num_train, info.num_eval) == (
      "imagenet2012",
      1000,
      6,
      3,
  )
  assert info.class_names[:2] == ("n01440764", "n01443537")
  it = data_lib.train_iterator(cfg, global_batch_size=2, seed=0, shard_index=0, num_shards=1)
  got = []
  for _ in range(3):
    b = next(it)
    got += [(digest(im), int(l)) for im, l in zip(b["image"], b["label"])]
  want = sorted((d, l) for d, (s, l) in expected.items() if s == "train")
  assert sorted(got) == want
  evals = list(data_lib.eval_iterator(cfg, global_batch_size=2, shard_index=0, num_shards=1))
  assert len(evals) == 2 and evals[-1]["mask"].tolist() == [True, False]
  got_eval = sorted(
      (digest(im), int(l))
      for b in evals
      for im, l, m in zip(b["image"], b["label"], b["mask"])
      if m
  )
  assert got_eval == sorted((d, l) for d, (s, l) in expected.items() if s == "validation")
  stats = data_lib.dataset_stats(cfg)
  assert stats.num_images == 6 and stats.bad_files == ()
  assert os.path.exists(
      os.path.join(cfg["data_dir"], "alexnet_jax_stats", "imagenet2012_train.npz")
  )


def test_imagenet2012_missing_tars_fail_with_instructions(tmp_path):
  cfg = dataset_config(name="imagenet2012", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError) as e:
    data_lib.dataset_info(cfg)
  msg = str(e.value)
  manual = os.path.join(str(tmp_path / "tfds"), "downloads", "manual")
  for part in (
      "ILSVRC2012_img_train.tar",
      "ILSVRC2012_img_val.tar",
      manual,
      f"tfds build imagenet2012 --data_dir={tmp_path / 'tfds'} --manual_dir={manual}",
  ):
    assert part in msg, part


def test_unprepared_tfds_dataset_and_unknown_name_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"tfds build mnist --data_dir="):
    data_lib.dataset_info(dataset_config(name="mnist", data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="unknown dataset"):
    data_lib.dataset_info(dataset_config(name="no_such_dataset_xyz", data_dir=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data_lib.dataset_info(dataset_config(name=f"folder:{tmp_path}/missing"))


def test_dataset_mistakes_are_dataset_errors_that_say_what_was_meant(tmp_path):
  """DatasetError is what the commands print as one FATAL line; a missing one is also a
  FileNotFoundError."""
  with pytest.raises(data_lib.DatasetNotFoundError, match="does not exist"):
    data_lib.dataset_info(dataset_config(name=f"folder:{tmp_path}/missing"))
  with pytest.raises(data_lib.DatasetError, match="unknown dataset"):
    data_lib.dataset_info(dataset_config(name="no_such_dataset_xyz", data_dir=str(tmp_path)))
  (tmp_path / "photos" / "cats").mkdir(parents=True)
  with pytest.raises(data_lib.DatasetError) as e:
    data_lib.dataset_info(dataset_config(name=str(tmp_path / "photos")))
  assert f"--config.dataset.name=folder:{tmp_path / 'photos'}" in str(e.value)
  with pytest.raises(data_lib.DatasetNotFoundError) as e:
    data_lib.dataset_info(dataset_config(name=str(tmp_path / "nothing")))
  assert "looks like a path, and it does not exist" in str(e.value)
  assert "folder:PATH" in str(e.value)


# ---------------------------------------------------------------------------------------------
# The embedded default.


def test_digits_is_embedded_and_split_fixed(tmp_path):
  from sklearn.datasets import load_digits

  cfg = dataset_config(name="digits", data_dir=str(tmp_path))
  info = data_lib.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 1500, 297)
  evals = list(data_lib.eval_iterator(cfg, global_batch_size=128, shard_index=0, num_shards=1))
  assert len(evals) == 3 and sum(int(b["mask"].sum()) for b in evals) == 297
  digits = load_digits()
  first = evals[0]["image"][0]
  assert first.shape == (256, 256, 3) and (first[..., 0] == first[..., 2]).all()
  # The first validation image is one of sklearn's digits, upscaled: compare at 8x8.
  small = first[16::32, 16::32, 0].astype(float) * 16 / 255
  idx = np.argmin(((digits.images - small) ** 2).sum((1, 2)))
  assert np.abs(digits.images[idx] - small).max() < 1.5
  assert digits.target[idx] == evals[0]["label"][0]
  labels = np.concatenate([b["label"][b["mask"]] for b in evals])
  assert set(labels.tolist()) == set(range(10))


def test_digits_are_read_from_scikit_learns_file_as_load_digits_gives_them(monkeypatch):
  """digits.load_digits reads the file scikit-learn ships without importing it (1.2 s of a
  start), and gives sklearn.datasets.load_digits()'s arrays; without that file it asks
  scikit-learn itself."""
  from sklearn.datasets import load_digits

  from alexnet_jax.data import digits

  reference = load_digits()
  images, labels = digits.load_digits()
  np.testing.assert_array_equal(images, reference.images)
  np.testing.assert_array_equal(labels, reference.target)
  assert images.dtype == reference.images.dtype and labels.dtype == reference.target.dtype
  assert digits.sklearn_digits_file().endswith(
      os.path.join("sklearn", "datasets", "data", "digits.csv.gz")
  )
  monkeypatch.setattr(digits, "sklearn_digits_file", lambda: None)
  images, labels = digits.load_digits()  # the fallback: scikit-learn's own loader
  np.testing.assert_array_equal(images, reference.images)
  np.testing.assert_array_equal(labels, reference.target)


def test_an_oversized_image_is_skipped_as_undecodable_and_a_fifo_never_opened(
    tmp_path, monkeypatch, caplog
):
  """A folder dataset holding a 16000 x 16000 PNG (a bomb: 256 million pixels in 0.8 MB), a
  TIFF above a lowered limit (PIL's path) and a FIFO named like a photo: the statistics pass
  and the training stream skip the images with the undecodable files' warning, the FIFO is
  ignored as not a file; python -m alexnet_jax.prepare leaves the images out too."""
  from alexnet_jax.data import shard_writer

  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "photos", classes="ab", per_class=3, val=1)
  (root / "train" / "a" / "bomb.png").write_bytes(data_helpers.png_bomb(16000))
  os.mkfifo(root / "train" / "b" / "pipe.jpg")
  cfg = dataset_config(name=f"folder:{root}")
  with caplog.at_level(logging.WARNING):
    info = data_lib.dataset_info(cfg)
    stats = data_lib.dataset_stats(cfg)
  assert info.num_train == 7  # 6 photos and the bomb; the FIFO is not an image file
  assert stats.bad_files == (os.path.join("train", "a", "bomb.png"),) and stats.num_images == 6
  assert "train/b/pipe.jpg" in caplog.text and "not regular files" in caplog.text
  assert "declaring more than dataset.max_image_pixels) and are skipped: train/a/bomb.png" in (
      caplog.text
  )
  it = data_lib.train_iterator(cfg, global_batch_size=3, seed=0, shard_index=0, num_shards=1)
  images = np.concatenate([next(it)["image"] for _ in range(2)])  # one epoch of the 6 good ones
  assert images.shape == (6, 256, 256, 3) and it.skipped == []
  report = shard_writer.prepare(
      cfg,
      str(tmp_path / "prepared"),
      fmt="raw",
      jpeg_quality=95,
      images_per_shard=4,
      progress=False,
  )
  assert report.bad_files == [os.path.join("train", "a", "bomb.png")]
  # A lowered limit (dataset.max_image_pixels) applies to PIL's path too: a TIFF of 200 x 200
  # among photos of 90 x 120.
  os.remove(root / "train" / "a" / "bomb.png")
  Image.fromarray(real_photos()[0][:200, :200]).save(root / "train" / "a" / "big.tif")
  low = dataset_config(name=f"folder:{root}", max_image_pixels=39_999)
  assert data_lib.dataset_stats(low).bad_files[-1:] == (os.path.join("train", "a", "big.tif"),)
  assert data_lib.dataset_stats(cfg).bad_files == ()  # the default limit: decoded by PIL
