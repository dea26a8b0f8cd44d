"""Prepared data: alexnet_jax.data.shard_writer (and `python -m alexnet_jax.prepare`) writes them,
alexnet_jax.data.shards reads them. The same stream as the original images, resumable
preparation, statistics from the same pass, and refusals that name what is wrong."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alexnet_jax import data as data_lib
from alexnet_jax.data import registry, shard_writer
from alexnet_jax.data import shards as shards_lib
from alexnet_jax.data import stats as stats_lib
from tests import data_helpers, forkserver
from tests.data_helpers import dataset_config, digest, encode, real_photos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("cat", "dog", "fox")
# Prepared JPEG (quality 95, full-resolution chroma) against the decoded originals, on these
# photos: the mean absolute difference per pixel stays below this many grey levels.
JPEG_MEAN_ABS_BOUND = 1.5


def _write(path, array, fmt="JPEG"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(encode(array, fmt, mode="RGB", **({"quality": 92} if fmt == "JPEG" else {})))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
  """36 good training images in 3 classes (one a TIFF, which only PIL reads), one broken JPEG,
  and 6 validation images: a folder: dataset of real photos."""
  root = tmp_path_factory.mktemp("photos") / "data"
  photos = real_photos()
  k = 0
  for c, cls in enumerate(CLASSES):
    for i in range(12):
      photo = photos[k % len(photos)]
      h, w = photo.shape[:2]
      y, x = (7 * k) % max(1, h - 300), (11 * k) % max(1, w - 320)
      crop = photo[y : y + 300 - 2 * i, x : x + 280 + 3 * i]  # portrait and landscape
      fmt = "TIFF" if (c, i) == (1, 5) else "JPEG"
      _write(root / "train" / cls / f"{i:02d}.{'tif' if fmt == 'TIFF' else 'jpg'}", crop, fmt)
      k += 1
    for i in range(2):
      _write(root / "val" / cls / f"v{i}.jpg", photos[(c + i) % len(photos)][50:330, 40:400])
  (root / "train" / "fox" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  return root


def _cfg(root, **kw):
  return dataset_config(name=f"folder:{root}", **kw)


@pytest.fixture(scope="module")
def prepared(photo_folder, tmp_path_factory):
  """The folder prepared as raw rows and as JPEG (4 images per shard: several shards)."""
  out = tmp_path_factory.mktemp("prepared")
  cfg = _cfg(photo_folder, prepared="off")
  reports = {
      fmt: shard_writer.prepare(
          cfg, str(out / fmt), fmt=fmt, jpeg_quality=95, images_per_shard=4, progress=False
      )
      for fmt in ("raw", "jpeg")
  }
  return {fmt: str(out / fmt) for fmt in reports}, reports


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
  return data_helpers.tiny_imagenet(tmp_path_factory.mktemp("imagenet"))


def _batches(cfg, n, **kw):
  kw = {"global_batch_size": 6, "seed": 3, "shard_index": 0, "num_shards": 1, **kw}
  it = data_lib.train_iterator(cfg, **kw)
  return [next(it) for _ in range(n)]


def test_prepared_batches_equal_the_raw_stream(photo_folder, prepared):
  dirs, reports = prepared
  assert all(r.complete for r in reports.values())
  assert reports["raw"].bad_files == ["train/fox/zz_broken.jpg"]  # listed; preparation completed
  raw = _batches(_cfg(photo_folder, prepared="off"), 8)  # 48 images: crosses an epoch
  exact = _batches(_cfg(photo_folder, prepared=dirs["raw"]), 8)
  jpeg = _batches(_cfg(photo_folder, prepared=dirs["jpeg"]), 8)
  for a, b, c in zip(raw, exact, jpeg):
    np.testing.assert_array_equal(b["image"], a["image"])
    np.testing.assert_array_equal(b["label"], a["label"])
    np.testing.assert_array_equal(c["label"], a["label"])
    diff = np.abs(c["image"].astype(int) - a["image"].astype(int))
    assert diff.mean() < JPEG_MEAN_ABS_BOUND, diff.mean()
    assert 0 < diff.max() < 64  # re-encoded: close, not identical


def test_statistics_of_the_preparation_equal_the_statistics_pass(photo_folder, prepared):
  dirs, _ = prepared
  want = data_lib.dataset_stats(_cfg(photo_folder, prepared="off"))
  assert want.num_images == 36 and want.bad_files == ("train/fox/zz_broken.jpg",)
  for fmt in ("raw", "jpeg"):
    got = data_lib.dataset_stats(_cfg(photo_folder, prepared=dirs[fmt]))
    for field in ("mean_image", "covariance", "eigval", "eigvec"):
      np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    assert (got.num_images, got.bad_files) == (want.num_images, want.bad_files)


def test_jpeg_quality_keeps_the_statistics_within_half_a_grey_level(photo_folder, prepared):
  """Statistics of the prepared JPEG pixels themselves against the originals': the mean image
  (RMS over its pixels) and the PCA's standard deviations, in grey levels."""
  dirs, _ = prepared

  def stats_of(cfg):
    src = data_lib.open_dataset(cfg)
    sums = stats_lib.Sums()
    pil_keys = stats_lib.source_stats(src, src.settings)["pil_keys"]  # the TIFF
    for b in src.train.canonical(None, pil_keys).batch(16).as_numpy_iterator():
      sums.add(b["image"])
    assert sums.count == 36
    return sums.stats()

  a = stats_of(_cfg(photo_folder, prepared="off"))
  b = stats_of(_cfg(photo_folder, prepared=dirs["jpeg"]))
  assert np.sqrt(np.mean((a["mean_image"] - b["mean_image"]) ** 2)) < 0.5
  assert np.abs(a["mean_image"] - b["mean_image"]).mean() < 0.5
  std_a, std_b = 255 * np.sqrt(a["eigval"]), 255 * np.sqrt(b["eigval"])
  assert np.abs(std_a - std_b).max() < 0.5, (std_a, std_b)


def test_resume_from_prepared_data_at_step_k(photo_folder, prepared, caplog):
  dirs, _ = prepared
  cfg = _cfg(photo_folder, prepared=dirs["jpeg"])
  with caplog.at_level("INFO", logger="absl"):
    data_lib.open_dataset(cfg)
  said = [r for r in caplog.records if "reading prepared shards" in r.getMessage()]
  assert len(said) == 1 and said[0].levelname == "WARNING"
  assert f"in {dirs['jpeg']} (JPEG quality 95: lossy" in said[0].getMessage()
  whole = _batches(cfg, 9)
  resumed = _batches(cfg, 4, start_step=5)
  for a, b in zip(whole[5:], resumed):
    np.testing.assert_array_equal(b["image"], a["image"])


def test_two_processes_read_disjoint_rows_that_cover_the_split(photo_folder, prepared):
  dirs, _ = prepared
  cfg = _cfg(photo_folder, prepared=dirs["raw"])
  seen = []
  for p in range(2):  # 6 global batches of 6 = one epoch of the 36 good images
    seen.append(
        [digest(x) for b in _batches(cfg, 6, shard_index=p, num_shards=2) for x in b["image"]]
    )
  assert len(seen[0]) == len(seen[1]) == 18
  assert not set(seen[0]) & set(seen[1])
  everything = {digest(x) for b in _batches(cfg, 6) for x in b["image"]}
  assert len(everything) == 36 and set(seen[0]) | set(seen[1]) == everything


def test_prepared_evaluation_equals_the_raw_one(photo_folder, prepared):
  dirs, _ = prepared
  raw = list(
      data_lib.eval_iterator(
          _cfg(photo_folder, prepared="off"), global_batch_size=4, shard_index=0, num_shards=1
      )
  )
  got = list(
      data_lib.eval_iterator(
          _cfg(photo_folder, prepared=dirs["raw"]), global_batch_size=4, shard_index=0, num_shards=1
      )
  )
  assert len(got) == len(raw) == 2
  for a, b in zip(raw, got):
    for k in ("image", "label", "mask"):
      np.testing.assert_array_equal(b[k], a[k])


def test_training_finds_prepared_data_beside_the_data(photo_folder, prepared, caplog):
  dirs, _ = prepared
  beside = registry.default_location(data_lib.Settings.of(_cfg(photo_folder)))
  assert beside.startswith(str(photo_folder))
  try:
    os.makedirs(os.path.dirname(beside))
    os.symlink(dirs["raw"], beside)
    with caplog.at_level("INFO", logger="absl"):
      src = data_lib.open_dataset(_cfg(photo_folder))  # dataset.prepared = 'auto'
    # One WARNING line names the directory and what the rows are.
    said = [r for r in caplog.records if "reading prepared shards" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert f"in {beside} (raw rows: the originals' pixels)" in said[0].getMessage()
    np.testing.assert_array_equal(
        _batches(src, 2)[1]["image"], _batches(_cfg(photo_folder, prepared="off"), 2)[1]["image"]
    )
    # Incomplete prepared data beside the data are not used: the originals are, with a warning.
    index = shards_lib.index_path(dirs["raw"], "train", 0, 10)
    os.rename(index, index + ".away")
    try:
      caplog.clear()
      src = data_lib.open_dataset(_cfg(photo_folder))
      assert src.description.startswith("image files under")
      assert any("incomplete" in r.getMessage() for r in caplog.records)
    finally:
      os.rename(index + ".away", index)
  finally:
    if os.path.lexists(beside):
      os.remove(beside)


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_tfds_imagenet2012_prepared_equals_its_records(tiny_imagenet, tmp_path):
  cfg, _, _ = tiny_imagenet
  raw_cfg = dataset_config(**{**cfg.to_dict(), "prepared": "off"})
  report = shard_writer.prepare(
      raw_cfg, str(tmp_path / "p"), fmt="raw", jpeg_quality=95, images_per_shard=4, progress=False
  )
  assert report.complete and report.bad_files == []
  pcfg = dataset_config(**{**cfg.to_dict(), "prepared": str(tmp_path / "p")})
  kw = {"global_batch_size": 2, "seed": 1, "shard_index": 0, "num_shards": 1}
  a = _batches(raw_cfg, 5, **kw)
  b = _batches(pcfg, 5, **kw)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(y["image"], x["image"])
    np.testing.assert_array_equal(y["label"], x["label"])
  resumed = _batches(pcfg, 2, start_step=3, **kw)
  np.testing.assert_array_equal(resumed[0]["image"], a[3]["image"])
  ea = list(data_lib.eval_iterator(raw_cfg, global_batch_size=2, shard_index=0, num_shards=1))
  eb = list(data_lib.eval_iterator(pcfg, global_batch_size=2, shard_index=0, num_shards=1))
  for x, y in zip(ea, eb):
    np.testing.assert_array_equal(y["image"], x["image"])
  np.testing.assert_array_equal(
      data_lib.dataset_stats(pcfg).mean_image, data_lib.dataset_stats(raw_cfg).mean_image
  )
  # Rows keep the records' file names (read from the records as they were prepared).
  src, raw_src = data_lib.open_dataset(pcfg), data_lib.open_dataset(raw_cfg)
  for split, raw_split in ((src.train, raw_src.train), (src.eval, raw_src.eval)):
    for key in split.all_keys():
      assert split.name_of(key) == raw_split.name_of(key)
  assert src.eval.name_of(src.eval.all_keys()[0]).startswith("ILSVRC2012_val_00000")


# ---- bad input ------------------------------------------------------------------------------


def test_prepared_data_of_another_dataset_size_or_class_list_are_refused(
    photo_folder, prepared, tmp_path
):
  dirs, _ = prepared
  digits = dataset_config(name="digits", data_dir=str(tmp_path), prepared=dirs["raw"])
  with pytest.raises(
      data_lib.DatasetError, match=r"dataset 'folder:.*', the config reads 'digits'"
  ):
    data_lib.open_dataset(digits)
  other = tmp_path / "other"
  for name in os.listdir(dirs["raw"]):
    os.symlink(os.path.join(dirs["raw"], name), other / name) if other.exists() else (
        other.mkdir(),
        os.symlink(os.path.join(dirs["raw"], name), other / name),
    )
  plan = json.load(open(other / "prepared.json"))
  os.remove(other / "prepared.json")
  json.dump({**plan, "image_size": 224}, open(other / "prepared.json", "w"))
  with pytest.raises(data_lib.DatasetError, match="image size 224, this code trains on 256"):
    data_lib.open_dataset(_cfg(photo_folder, prepared=str(other)))
  json.dump({**plan, "class_names": ["cat", "dog", "wolf"]}, open(other / "prepared.json", "w"))
  with pytest.raises(data_lib.DatasetError, match="only prepared: wolf; not prepared: fox"):
    data_lib.open_dataset(_cfg(photo_folder, prepared=str(other)))


def _copy(src, dst):
  os.makedirs(dst)
  for name in os.listdir(src):
    with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
      g.write(f.read())
  return dst


def test_a_damaged_shard_is_named_and_stops_the_run(photo_folder, prepared, tmp_path):
  dirs, _ = prepared
  for fmt in ("raw", "jpeg"):
    root = _copy(dirs[fmt], str(tmp_path / fmt))
    rows = shards_lib.rows_path(root, "train", 2, 10)
    with open(rows, "r+b") as f:  # one flipped byte in the middle of the shard
      f.seek(os.path.getsize(rows) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0x5A]))
    it = data_lib.train_iterator(
        _cfg(photo_folder, prepared=root), global_batch_size=6, seed=3, shard_index=0, num_shards=1
    )
    with pytest.raises(data_lib.DatasetError, match=r"train-00002-of-00010\.rows is damaged"):
      for _ in range(12):  # two epochs: every row is read
        next(it)
    with open(rows, "r+b") as f:  # truncated: refused when opened
      f.truncate(100)
    with pytest.raises(
        data_lib.DatasetError, match=r"train-00002-of-00010\.rows is damaged: 100 bytes"
    ):
      data_lib.open_dataset(_cfg(photo_folder, prepared=root))


def test_preparing_into_a_directory_of_another_preparation_is_refused(photo_folder, prepared):
  dirs, _ = prepared
  with pytest.raises(
      data_lib.DatasetError,
      match="its format, jpeg_quality differ.*format: 'raw' there, 'jpeg' now",
  ):
    shard_writer.prepare(
        _cfg(photo_folder),
        dirs["raw"],
        fmt="jpeg",
        jpeg_quality=95,
        images_per_shard=4,
        progress=False,
    )


@pytest.mark.slow
def test_an_interrupted_preparation_resumes_to_identical_shards(tmp_path):
  """The real command, killed (SIGKILL) after its first shard, then run again; against an
  uninterrupted preparation."""
  root = tmp_path / "data"
  photos = real_photos()
  for i in range(40):
    _write(
        root / CLASSES[i % 2] / f"{i:02d}.jpg",
        photos[i % len(photos)][i : i + 260, 2 * i : 2 * i + 300],
    )
  cmd = [
      sys.executable,
      "-m",
      "alexnet_jax.prepare",
      f"--config={REPO}/configs/demo.py",
      f"--config.dataset.name=folder:{root}",
      "--config.prepare.images_per_shard=3",
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = str(tmp_path / "killed")
  p = subprocess.Popen(
      cmd + [f"--output_dir={out}"],
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 120

  def finished_shards():
    return [f for f in os.listdir(out) if f.endswith(".index.npz")] if os.path.isdir(out) else []

  while time.time() < deadline and not finished_shards():
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  done = finished_shards()
  assert 1 <= len(done) < 14, done  # interrupted midway
  # The rerun in a forked child of a zygote that preloaded the libraries (tests/forkserver.py);
  # the killed run above is a real process.
  forkserver.run(cmd + [f"--output_dir={out}"], cwd=REPO, env=env, check=True, capture_output=True)
  # The uninterrupted preparation in this process, as the command calls it (one Python start
  # fewer; the command itself ran twice above).
  from configs import demo  # pylint: disable=g-import-not-at-top

  config = demo.get_config()
  config.dataset.name = f"folder:{root}"
  whole = str(tmp_path / "whole")
  shard_writer.prepare(
      config.dataset,
      whole,
      fmt=config.prepare.format,
      jpeg_quality=config.prepare.jpeg_quality,
      images_per_shard=3,
      progress=False,
  )
  names = sorted(f for f in os.listdir(whole) if f != "prepared.json")
  assert sorted(f for f in os.listdir(out) if f != "prepared.json") == names
  for name in names:
    if name.endswith(".rows"):
      assert (
          open(os.path.join(out, name), "rb").read() == open(os.path.join(whole, name), "rb").read()
      ), name
    else:
      with np.load(os.path.join(out, name)) as a, np.load(os.path.join(whole, name)) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
          np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}:{k}")


@pytest.mark.slow
def test_two_hosts_prepare_their_parts_into_one_directory(tmp_path):
  """--process_index/--process_count: each writes its shards; together they equal one
  preparation, and the digits read from them equal the digits' own stream."""
  cfg = dataset_config(name="digits", data_dir=str(tmp_path / "data"), prepared="off")
  kw = {"fmt": "raw", "jpeg_quality": 95, "images_per_shard": 400, "progress": False}
  first = shard_writer.prepare(
      cfg, str(tmp_path / "shared"), process_index=0, process_count=2, **kw
  )
  assert not first.complete and first.written == [
      "train-00000-of-00004",
      "train-00002-of-00004",
      "eval-00000-of-00001",
  ]
  with pytest.raises(data_lib.DatasetError, match="incomplete: 2 of 4 train shards missing"):
    data_lib.open_dataset(dataset_config(name="digits", prepared=str(tmp_path / "shared")))
  second = shard_writer.prepare(
      cfg, str(tmp_path / "shared"), process_index=1, process_count=2, **kw
  )
  assert second.complete and second.written == ["train-00001-of-00004", "train-00003-of-00004"]
  alone = shard_writer.prepare(cfg, str(tmp_path / "alone"), **kw)
  for name in sorted(os.listdir(tmp_path / "alone")):
    if name.endswith(".rows"):
      assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "shared" / name).read_bytes()
  assert alone.complete
  pcfg = dataset_config(
      name="digits", data_dir=str(tmp_path / "data"), prepared=str(tmp_path / "shared")
  )
  for a, b in zip(_batches(cfg, 3), _batches(pcfg, 3)):
    np.testing.assert_array_equal(b["image"], a["image"])


def test_reading_survives_evicted_files_under_parallel_reads(photo_folder, prepared, monkeypatch):
  """With one open shard file at a time, every read evicts another thread's file: the rows
  read must still be the right ones."""
  dirs, _ = prepared
  monkeypatch.setattr(shards_lib, "_MAX_OPEN_FILES", 1)
  raw = _batches(_cfg(photo_folder, prepared="off"), 8)
  for a, b in zip(raw, _batches(_cfg(photo_folder, prepared=dirs["raw"]), 8)):
    np.testing.assert_array_equal(b["image"], a["image"])


def test_rows_that_failed_when_prepared_are_excluded_whatever_the_statistics_saw(
    photo_folder, prepared
):
  dirs, _ = prepared
  cfg = _cfg(photo_folder, prepared=dirs["raw"], stats_max_images=9)  # misses the broken file
  assert data_lib.dataset_stats(cfg).bad_files == ()
  batches = _batches(cfg, 8)  # 48 rows: more than the 36 good ones, so every row is read
  assert sum(len(b["label"]) for b in batches) == 48
  # Exactly the 36 good images (those of an epoch from the complete statistics).
  good = {
      digest(x) for b in _batches(_cfg(photo_folder, prepared=dirs["raw"]), 6) for x in b["image"]
  }
  assert {digest(x) for b in batches for x in b["image"]} == good and len(good) == 36


def _small_folder(root, n=4):
  photos = real_photos()
  for c, cls in enumerate(("a", "b")):
    for i in range(n):
      _write(root / cls / f"{i}.jpg", photos[(c + i) % len(photos)][:200, :240])
  return root


def test_prepared_data_of_changed_images_are_refused_and_auto_falls_back(tmp_path, caplog):
  root = _small_folder(tmp_path / "data")
  cfg = _cfg(root, prepared="off")
  out = str(tmp_path / "p")
  shard_writer.prepare(cfg, out, fmt="raw", jpeg_quality=95, images_per_shard=4, progress=False)
  data_lib.open_dataset(_cfg(root, prepared=out))  # unchanged: accepted
  _write(root / "b" / "new.jpg", real_photos()[0][:200, :240])
  with pytest.raises(data_lib.DatasetError, match="added, removed or renamed since"):
    data_lib.open_dataset(_cfg(root, prepared=out))
  beside = registry.default_location(data_lib.Settings.of(cfg))
  os.makedirs(os.path.dirname(beside))
  os.symlink(out, beside)
  with caplog.at_level("WARNING", logger="absl"):
    src = data_lib.open_dataset(_cfg(root))  # 'auto': the originals, with a warning
  assert src.description.startswith("image files under")
  assert src.info.num_train + src.info.num_eval == 9  # the new image too
  assert any("added, removed or renamed" in r.getMessage() for r in caplog.records)


def test_shards_of_another_preparation_are_never_mixed_in(tmp_path):
  root = _small_folder(tmp_path / "data")
  cfg, out = _cfg(root, prepared="off"), str(tmp_path / "p")
  shard_writer.prepare(cfg, out, fmt="raw", jpeg_quality=95, images_per_shard=4, progress=False)
  os.remove(os.path.join(out, "prepared.json"))  # as if only the plan had been deleted
  with pytest.raises(data_lib.DatasetError, match="belongs to another preparation"):
    shard_writer.prepare(cfg, out, fmt="jpeg", jpeg_quality=95, images_per_shard=4, progress=False)


# ---- failures: a full disk, a missing shard, a damaged one under the commands' logging ----
def test_a_full_disk_while_preparing_says_what_is_needed_leaves_no_temporary_and_resumes(
    tmp_path, monkeypatch
):
  root = _small_folder(tmp_path / "data", n=6)  # 11 train images (3 shards of 4), 1 eval
  cfg, out = _cfg(root, prepared="off"), str(tmp_path / "p")
  savez, calls = np.savez, []

  def full_at_the_second_index(f, **arrays):
    calls.append(1)
    if len(calls) == 2:
      f.write(b"half an index")
      raise OSError(errno.ENOSPC, "No space left on device")
    savez(f, **arrays)

  monkeypatch.setattr(np, "savez", full_at_the_second_index)
  with pytest.raises(data_lib.DatasetError) as e:
    shard_writer.prepare(cfg, out, fmt="raw", jpeg_quality=95, images_per_shard=4, progress=False)
  monkeypatch.undo()
  m = re.fullmatch(
      r"prepared shard train-00001-of-00003 could not be written: no space left on the device "
      rf"of {re.escape(out)} \(([\d.]+) MiB free; the 3 shard\(s\) still to write and the "
      r"statistics need about ([\d.]+) MiB\)\. Free space there \(or prepare elsewhere with "
      r"--output_dir\) first\. "
      r"The shards already written are complete and kept; rerun the same command to resume\.",
      str(e.value),
  )
  assert m, str(e.value)
  assert abs(float(m.group(1)) - shutil.disk_usage(out).free / 2**20) < 200  # others write too
  names = sorted(os.listdir(out))
  assert not [n for n in names if ".tmp-" in n], names
  assert names == ["prepared.json", "train-00000-of-00003.index.npz", "train-00000-of-00003.rows"]
  before = {n: os.path.getsize(os.path.join(out, n)) for n in names}
  report = shard_writer.prepare(
      cfg, out, fmt="raw", jpeg_quality=95, images_per_shard=4, progress=False
  )
  assert report.skipped == ["train-00000-of-00003"] and report.complete
  # What the rerun wrote is what the line said it needs (rows, indexes, statistics).
  wrote = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)) - sum(before.values())
  assert abs(float(m.group(2)) * 2**20 / wrote - 1) < 0.1, (m.group(2), wrote / 2**20)
  whole = str(tmp_path / "whole")
  shard_writer.prepare(cfg, whole, fmt="raw", jpeg_quality=95, images_per_shard=4, progress=False)
  for name in os.listdir(whole):
    if name.endswith(".rows"):
      with open(os.path.join(out, name), "rb") as a, open(os.path.join(whole, name), "rb") as b:
        assert a.read() == b.read(), name


def test_a_deleted_shard_is_called_missing_and_prepare_rewrites_it(tmp_path):
  root = _small_folder(tmp_path / "data", n=6)
  cfg, out = _cfg(root, prepared="off"), str(tmp_path / "p")
  shard_writer.prepare(cfg, out, fmt="raw", jpeg_quality=95, images_per_shard=4, progress=False)
  rows = shards_lib.rows_path(out, "train", 1, 3)
  with open(rows, "rb") as f:
    original = f.read()
  os.remove(rows)
  with pytest.raises(data_lib.DatasetError) as e:
    data_lib.open_dataset(_cfg(root, prepared=out))
  assert str(e.value) == (
      f"prepared shard {rows} is missing (its index train-00001-of-00003.index.npz is there): "
      "run alexnet_jax.prepare again with the same settings; it rewrites the missing shards."
  )
  report = shard_writer.prepare(
      cfg, out, fmt="raw", jpeg_quality=95, images_per_shard=4, progress=False
  )
  assert report.written == ["train-00001-of-00003"] and report.complete
  with open(rows, "rb") as f:
    assert f.read() == original
  data_lib.open_dataset(_cfg(root, prepared=out))  # whole again


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
# A damaged prepared shard under the real command: one FATAL line, no TensorFlow traceback (the
# level JAX sets hid runtime's), and the process ends (a tf.data iterator left to the
# interpreter's shutdown hung it in 3 of 5 runs).
def test_a_damaged_shard_stops_training_with_one_line_and_no_tensorflow_traceback(tmp_path):
  from tests import tiny  # pylint: disable=g-import-not-at-top

  root = _small_folder(tmp_path / "data", n=6)
  out = str(tmp_path / "p")
  shard_writer.prepare(
      _cfg(root, prepared="off"),
      out,
      fmt="jpeg",
      jpeg_quality=95,
      images_per_shard=4,
      progress=False,
  )
  rows = shards_lib.rows_path(out, "train", 1, 3)
  with open(rows, "r+b") as f:
    f.seek(os.path.getsize(rows) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x5A]))
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
  # A real process: what TensorFlow prints depends on the log level it loaded with.
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "alexnet_jax.main",
          f"--workdir={tmp_path / 'run'}",
          *tiny.flags(num_train_steps=4),
          f"--config.dataset.name=folder:{root}",
          f"--config.dataset.prepared={out}",
      ],
      cwd=REPO,
      env=dict(env, JAX_PLATFORMS="cpu"),  # the user's shell: no TF log level set
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert r.returncode == 1, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and "PyFunc" not in r.stderr, r.stderr[-3000:]
  lines = [line for line in r.stderr.splitlines() if "train-00001-of-00003.rows" in line]
  assert len(lines) == 1 and lines[0].startswith(f"FATAL: prepared shard {rows} is damaged: row ")
  assert "fails its CRC-32" in lines[0]


# The real command on a tmpfs of 5 MiB (a private mount namespace): the plan and two train
# shards (2 raw rows, 384 KiB, and an index with its 1.5 MiB sum image) fit, the third does
# not; then the space is freed and it is rerun.
PREPARE_ON_A_FULL_DISK = """
set -u
mount -t tmpfs -o size=5m tmpfs "$MNT" || exit 90
cd "$REPO"
"$PY" -m alexnet_jax.prepare $FLAGS --output_dir="$MNT/p" >"$OUT/run1.txt" 2>&1
echo $? >"$OUT/rc1"
ls -a "$MNT/p" >"$OUT/ls1"
mount -o remount,size=64m "$MNT"
"$PY" -m alexnet_jax.prepare $FLAGS --output_dir="$MNT/p" >"$OUT/run2.txt" 2>&1
echo $? >"$OUT/rc2"
ls -a "$MNT/p" >"$OUT/ls2"
"""


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_prepare_on_a_full_disk_prints_one_fatal_line_and_the_rerun_completes(tmp_path):
  from tests.test_checkpoint import _namespace_cmd  # pylint: disable=g-import-not-at-top

  ns = _namespace_cmd()
  if ns is None:
    pytest.skip("no mount namespace for a size-limited tmpfs (unshare -m / -rm refused)")
  root = _small_folder(tmp_path / "data", n=6)
  mnt, out = tmp_path / "mnt", tmp_path / "out"
  mnt.mkdir()
  out.mkdir()
  flags = [
      "--config=configs/demo.py",
      f"--config.dataset.name=folder:{root}",
      "--config.prepare.format=raw",
      "--config.prepare.images_per_shard=2",
  ]
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      MNT=str(mnt),
      OUT=str(out),
      REPO=REPO,
      PY=sys.executable,
      FLAGS=" ".join(flags),
  )
  r = subprocess.run(
      [*ns, "bash", "-c", PREPARE_ON_A_FULL_DISK], env=env, capture_output=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  run1 = (out / "run1.txt").read_text()
  assert (out / "rc1").read_text().strip() == "1", run1[-3000:]
  assert "Traceback" not in run1, run1[-3000:]
  fatal = [line for line in run1.splitlines() if "FATAL" in line]
  assert len(fatal) == 1, run1[-3000:]
  assert re.fullmatch(
      r"FATAL: prepared shard train-0000[0-5]-of-00006 could not be written: no space left on "
      rf"the device of {re.escape(str(mnt))}/p \([\d.]+ MiB free; the \d shard\(s\) still to "
      r"write and the statistics need about [\d.]+ MiB\)\. Free space there \(or prepare elsewhere with "
      r"--output_dir\) first\. The shards already written are complete and kept; rerun the "
      r"same command to resume\.",
      fatal[0],
  ), fatal[0]
  left = (out / "ls1").read_text().split()
  assert not [n for n in left if ".tmp" in n], left  # no temporary left behind
  rows = {n[: -len(".rows")] for n in left if n.endswith(".rows")}
  assert rows == {n[: -len(".index.npz")] for n in left if n.endswith(".index.npz")}
  assert 1 <= len(rows) < 6, left
  run2 = (out / "run2.txt").read_text()
  assert (out / "rc2").read_text().strip() == "0", run2[-3000:]
  assert f"wrote {7 - len(rows)} shard(s), {len(rows)} were already there; complete" in run2
