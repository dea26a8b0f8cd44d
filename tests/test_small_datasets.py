"""Small and odd folders of real photos: 3 classes, fewer images than a batch, stray files,
empty folders, EXIF orientation, non-ASCII names, an EPS behind an image extension, and the
statistics cache (HMAC, read-only data)."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_images

from alexnet_jax import data as ip
from alexnet_jax import evaluation, train
from tests import tiny
from tests.data_config import dataset_config
from tests.test_input_pipeline import _pil_reference as _reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photos():
  china, flower = load_sample_images().images
  return [china, flower, skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]


def _write(path, array, fmt="JPEG", **kw):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, fmt, quality=95, **kw)


def _folder(root, classes="abc", per_class=2, val=1):
  photos = _photos()
  for c, cls in enumerate(classes):
    for i in range(per_class):
      _write(root / "train" / cls / f"{i}.jpg", photos[(c + i) % 5][40 * i : 40 * i + 90, 10:130])
    for i in range(val):
      _write(root / "val" / cls / f"v{i}.jpg", photos[(c + 2) % 5][100:180, 60:160])
  return root


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
  monkeypatch.setenv("ALEXNET_JAX_CACHE", str(tmp_path / "user_cache"))


def test_top_k_is_top_min_5_classes():
  logits = np.array([[0.1, 0.5, 0.2], [3.0, 1.0, 2.0]], np.float32)
  labels = np.array([2, 0], np.int32)
  top1, top5 = evaluation.errors(logits, labels)
  np.testing.assert_array_equal(top1, (logits.argmax(-1) != labels).astype(np.float32))
  np.testing.assert_array_equal(top5, [0.0, 0.0])  # top-3 of 3 classes holds every label


@pytest.mark.slow
def test_three_classes_fewer_images_than_a_batch_train_and_evaluate(tmp_path):
  """6 training images, batch 8: batches wrap around (every image in the first batch)."""
  root = _folder(tmp_path / "data")
  cfg = dataset_config(name=f"folder:{root}")
  info = ip.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (3, 6, 3)
  batch = next(ip.train_iterator(cfg, global_batch_size=8, seed=0, shard_index=0, num_shards=1))
  assert len(batch["image"]) == 8
  refs = {p: _reference(Image.open(p)).astype(int) for p in (root / "train").rglob("*.jpg")}
  seen = set()
  for image, label in zip(batch["image"], batch["label"]):
    (hit,) = [p for p, r in refs.items() if np.abs(image.astype(int) - r).max() <= 2]
    assert label == "abc".index(hit.parent.name)
    seen.add(hit)
  assert seen == set(refs)  # 8 slots: the 6 images, 2 of them twice

  config = tiny.config(
      num_train_steps=2,
      **{"dataset.name": f"folder:{root}", "dataset.cache": False, "mesh.data": -1},
  )
  m = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert m["num_images"] == 3 and m["top5_error"] == 0.0 and 0.0 <= m["top1_error"] <= 1.0


def test_single_class_empty_class_and_empty_validation_are_named(tmp_path):
  one = _folder(tmp_path / "one", classes="a")
  with pytest.raises(ip.DatasetError, match=r"one class folder \('a'\).*at least two classes"):
    ip.dataset_info(dataset_config(name=f"folder:{one}"))

  empty = _folder(tmp_path / "empty", classes="ab")
  (empty / "train" / "zebra").mkdir()
  (empty / "train" / "zebra" / "readme.txt").write_text("no images")
  with pytest.raises(ip.DatasetError, match=rf"without images: {empty}/train/zebra"):
    ip.dataset_info(dataset_config(name=f"folder:{empty}"))

  no_val = _folder(tmp_path / "noval", classes="ab", val=0)
  with pytest.raises(ip.DatasetError, match=rf"validation split of '{no_val}' is empty.*val/"):
    ip.dataset_info(dataset_config(name=f"folder:{no_val}"))


def test_empty_validation_is_one_line_from_the_command_line(tmp_path):
  root = _folder(tmp_path / "noval", classes="ab", val=0)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  r = subprocess.run(
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


def test_stray_files_ignored_with_one_warning_and_non_ascii_names_work(tmp_path, caplog):
  root = _folder(tmp_path / "data", classes="ab")
  photos = _photos()
  _write(root / "train" / "a" / "café.jpg", photos[3][:100, :120])
  _write(root / "train" / "b" / "日本の猫.png", photos[4][:80, :100], fmt="PNG")
  for name in ("notes.txt", "labels.csv", "Thumbs.db"):
    (root / "train" / "a" / name).write_text("not an image")
  cfg = dataset_config(name=f"folder:{root}")
  with caplog.at_level(logging.WARNING, logger=ip.sources.log.name):
    info = ip.dataset_info(cfg)
  warnings = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith("ignoring 3 file(s)"), warnings
  assert info.num_train == 6
  stats = ip.dataset_stats(cfg)
  assert stats.bad_files == () and stats.num_images == 6
  batch = next(ip.train_iterator(cfg, global_batch_size=6, seed=0, shard_index=0, num_shards=1))
  for name in ("a/café.jpg", "b/日本の猫.png"):
    want = _reference(Image.open(root / "train" / name)).astype(int)
    assert any(np.abs(x.astype(int) - want).max() <= 2 for x in batch["image"]), name


def test_pil_fallback_never_opens_eps(tmp_path):
  root = _folder(tmp_path / "data", classes="ab")
  trap = root / "train" / "a" / "trap.tif"  # an EPS behind an image extension
  trap.write_bytes(
      b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
      b"0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
  )
  assert Image.open(trap).format == "EPS"  # unrestricted, PIL would take it (to Ghostscript)
  stats = ip.dataset_stats(dataset_config(name=f"folder:{root}"))
  assert stats.bad_files == ("train/a/trap.tif",)
  with pytest.raises(Exception, match="cannot identify"):
    ip.pil_load(str(trap))


ORIENTATIONS = range(1, 9)


@pytest.mark.parametrize("exif_transpose", [False, True])
def test_exif_orientation_switch(tmp_path, exif_transpose):
  root = _folder(tmp_path / "data", classes="ab", val=0)
  photo = _photos()[2][:150, 40:260]  # 150 x 220, not symmetric
  for o in ORIENTATIONS:
    exif = Image.Exif()
    exif[0x0112] = o
    _write(root / "val" / "a" / f"o{o}.jpg", photo, exif=exif.tobytes())
  _write(root / "val" / "b" / "plain.jpg", photo)
  cfg = dataset_config(name=f"folder:{root}", exif_transpose=exif_transpose)
  batches = list(ip.eval_iterator(cfg, global_batch_size=9, shard_index=0, num_shards=1))
  images = batches[0]["image"]
  for o, image in zip(ORIENTATIONS, images):
    im = Image.open(root / "val" / "a" / f"o{o}.jpg")
    assert im.getexif()[0x0112] == o
    want = _reference(ImageOps.exif_transpose(im) if exif_transpose else im)
    assert np.abs(image.astype(int) - want.astype(int)).max() <= 2, o
  if exif_transpose:  # the views really differ (the test can tell the switch)
    assert np.abs(images[5].astype(int) - images[0].astype(int)).max() > 50


def _stats_cfg(data_dir):
  return dataset_config(name="digits", data_dir=data_dir, stats_max_images=64)


def test_stats_cache_read_back_from_the_user_cache_when_data_dir_is_read_only(
    tmp_path, monkeypatch
):
  cfg = _stats_cfg("/proc/alexnet_jax_data")  # cannot be written, even by root
  first = ip.dataset_stats(cfg)
  cached = [f for f in os.listdir(tmp_path / "user_cache") if f.endswith("digits_train_max64.npz")]
  assert len(cached) == 1
  monkeypatch.setattr(ip.stats, "stats_pass", lambda *a: pytest.fail("cache not read back"))
  again = ip.dataset_stats(cfg)
  np.testing.assert_array_equal(again.mean_image, first.mean_image)


def test_stats_cache_with_altered_content_is_not_trusted(tmp_path, monkeypatch, caplog):
  cfg = _stats_cfg(str(tmp_path / "data"))
  first = ip.dataset_stats(cfg)
  path = ip.stats_cache_path(cfg)
  with np.load(path) as z:
    stats = {k: z[k] for k in z.files}
  stats["mean_image"] = stats["mean_image"] + 10.0  # meta and digest left as they were
  with open(path, "wb") as f:
    np.savez(f, **stats)
  with caplog.at_level(logging.WARNING, logger=ip.stats.log.name):
    again = ip.dataset_stats(cfg)
  assert any("HMAC does not verify" in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(again.mean_image, first.mean_image)  # recomputed
  # The untouched cache is read back without a pass (the HMAC verifies).
  monkeypatch.setattr(ip.stats, "stats_pass", lambda *a: pytest.fail("cache not used"))
  np.testing.assert_array_equal(ip.dataset_stats(cfg).mean_image, first.mean_image)
