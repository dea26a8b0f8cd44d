"""oxford17: the published 17flowers.tgz and datasplits.mat (written by tests/data_helpers in the
authors' layout): labels by the 80-per-class rule, the .mat's split 1 (its test split read by
evaluate --split=test), the seeded fallback, the archive extracted once, the one-line error,
training, evaluation and preparation on it."""

import io
import json
import os
import re
import shutil
import tarfile
import time

import jax
import numpy as np
import pytest

from alexnet_jax import data as data_lib
from alexnet_jax import evaluate, sharding, train
from alexnet_jax.data import oxford17, registry, shard_writer
from tests import data_helpers, tiny
from tests.data_helpers import dataset_config, digest

# The dataset's published class list, in label order.
CLASS_NAMES = (
    "Daffodil", "Snowdrop", "Lily Valley", "Bluebell", "Crocus", "Iris", "Tigerlily", "Tulip",
    "Fritillary", "Sunflower", "Daisy", "Colts' Foot", "Dandelion", "Cowslip", "Buttercup",
    "Windflower", "Pansy",
)  # fmt: skip
# A handful of 1-based image indices and their labels, counted by hand (80 per class).
HAND_LABELS = {1: 0, 80: 0, 81: 1, 160: 1, 400: 4, 641: 8, 800: 9, 1040: 12, 1281: 16, 1360: 16}


def _cfg(path, **kw):
  return dataset_config(name=f"oxford17:{path}", **kw)


def _indices(split) -> np.ndarray:
  """1-based image indices of a split, from its files' names."""
  return np.asarray([int(re.fullmatch(r"image_(\d{4})\.jpg", n).group(1)) for n in split.names])


@pytest.fixture(scope="module")
def references(oxford17_data):
  """{digest of the 256x256 image: index} of the train (trn1) and test (tst1) images, decoded
  from the JPEGs' bytes."""
  s = oxford17_data["splits"]
  wanted = np.concatenate([s["trn1"], s["tst1"]])
  return data_helpers.oxford17_references({int(i): oxford17_data["jpegs"][int(i)] for i in wanted})


def test_labels_and_splits_follow_the_published_layout(oxford17_data):
  src = data_lib.open_dataset(_cfg(oxford17_data["tgz"]))
  info = src.info
  assert (info.num_classes, info.num_train, info.num_eval, info.num_test) == (17, 680, 340, 340)
  assert info.class_names == CLASS_NAMES
  mat = oxford17_data["splits"]
  labels = {}
  for split, var in ((src.train, "trn1"), (src.eval, "val1"), (src.test, "tst1")):
    idx = _indices(split)
    assert sorted(idx.tolist()) == sorted(mat[var].tolist()), var  # the .mat's set, exactly
    assert len(idx) == len(set(idx.tolist()))
    labels.update(zip(idx.tolist(), split.labels.tolist()))
    # 40/20/20 per class, as the .mat holds them.
    assert np.bincount(split.labels, minlength=17).tolist() == [len(idx) // 17] * 17
  assert len(labels) == 1360
  for i, label in HAND_LABELS.items():
    assert labels[i] == label, i
  assert all(labels[i] == (i - 1) // 80 for i in labels)


def test_the_archive_its_directory_and_the_extracted_directory_give_the_same_examples(
    oxford17_data,
):
  opened = [
      data_lib.open_dataset(_cfg(p))
      for p in (oxford17_data["tgz"], oxford17_data["tgz"].parent, oxford17_data["extracted"])
  ]
  first = opened[0]
  # One name for one archive, however it is spelled: prepared data beside it are found by it.
  assert first.name == opened[1].name == f"oxford17:{oxford17_data['tgz']}"
  assert opened[2].name == f"oxford17:{oxford17_data['extracted'] / 'jpg'}"
  for src in opened[1:]:
    for a, b in ((first.train, src.train), (first.eval, src.eval), (first.test, src.test)):
      assert a.names == b.names
      np.testing.assert_array_equal(a.labels, b.labels)
  for key in (0, 339):  # the same pixels, from the extracted cache and from the user's copy
    want = data_lib.preprocess_encoded(oxford17_data["jpegs"][int(_indices(first.eval)[key])])
    for src in (first, opened[2]):
      np.testing.assert_array_equal(src.eval.element(key)["image"].numpy(), want.numpy())


def test_the_archive_is_extracted_once_and_a_killed_extraction_is_never_read(
    oxford17_data, tmp_path, monkeypatch
):
  archive = tmp_path / "copy" / "17flowers.tgz"
  archive.parent.mkdir()
  shutil.copy(oxford17_data["tgz"], archive)
  cache = archive.parent / ".alexnet_jax_oxford17"
  cache.mkdir()
  # What a killed extraction leaves: a temporary directory with some of the images.
  stale = cache / ".tmp-killed"
  (stale / "jpg").mkdir(parents=True)
  (stale / "jpg" / "image_0001.jpg").write_bytes(b"half")
  old = time.time() - 2 * 3600
  os.utime(stale, (old, old))
  src = data_lib.open_dataset(_cfg(archive))
  assert not stale.exists()
  done = [d for d in os.listdir(cache)]
  assert len(done) == 1 and done[0].startswith("17flowers.tgz-"), done
  assert len(os.listdir(cache / done[0] / "jpg")) == 1361  # the images and files.txt
  assert (cache / done[0] / "jpg" / "image_1360.jpg").read_bytes() == oxford17_data["jpegs"][1360]

  def no_reading(*args, **kwargs):
    raise AssertionError("the archive was read again")

  monkeypatch.setattr(oxford17.tarfile, "open", no_reading)
  again = data_lib.open_dataset(_cfg(archive))
  assert again.train.names == src.train.names and os.listdir(cache) == done


def test_without_datasplits_mat_a_seeded_80_20_split_per_class(oxford17_data):
  a = data_lib.open_dataset(_cfg(oxford17_data["nomat"]))
  b = data_lib.open_dataset(_cfg(oxford17_data["nomat"] / "17flowers.tgz"))
  assert (a.info.num_train, a.info.num_eval, a.info.num_test, a.test) == (1088, 272, 0, None)
  assert np.bincount(a.train.labels).tolist() == [64] * 17
  assert np.bincount(a.eval.labels).tolist() == [16] * 17
  train, held = _indices(a.train), _indices(a.eval)
  assert sorted(np.concatenate([train, held]).tolist()) == list(range(1, 1361))
  np.testing.assert_array_equal(a.train.labels, (train - 1) // 80)
  # Deterministic: the same split every time, and the one this code has always made (another
  # would silently change what cached statistics and prepared data were made of).
  assert a.train.names == b.train.names and a.eval.names == b.eval.names
  assert held[:16].tolist() == [10, 13, 22, 26, 37, 38, 40, 45, 47, 48, 59, 65, 66, 68, 71, 77]
  with pytest.raises(data_lib.DatasetError, match="no test split"):
    data_lib.split_size(a, "test")


def test_the_signature_identifies_the_split_and_the_archive(oxford17_data, tmp_path):
  (tmp_path / "d").mkdir()
  shutil.copy(oxford17_data["tgz"], tmp_path / "d" / "17flowers.tgz")
  settings = data_lib.Settings.of(_cfg(tmp_path / "d"))
  names, seeded = registry.cheap_identity(settings)
  assert names == CLASS_NAMES and "seeded" in seeded
  shutil.copy(oxford17_data["mat"], tmp_path / "d" / "datasplits.mat")
  _, split1 = registry.cheap_identity(settings)
  assert split1 != seeded and "datasplits.mat" in split1
  os.utime(tmp_path / "d" / "17flowers.tgz", (1, 1))  # another archive
  assert registry.cheap_identity(settings)[1] != split1


def test_a_missing_archive_says_in_one_line_what_to_download_and_where(tmp_path):
  for path, expected, where in (
      (tmp_path / "flowers", tmp_path / "flowers" / "17flowers.tgz", tmp_path / "flowers"),
      (tmp_path / "x" / "17flowers.tgz", tmp_path / "x" / "17flowers.tgz", tmp_path / "x"),
  ):
    with pytest.raises(data_lib.DatasetNotFoundError) as e:
      data_lib.dataset_info(_cfg(path))
    msg = str(e.value)
    assert "\n" not in msg
    for part in (
        f"{expected} does not exist",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/",
        "Visual Geometry Group",
        "datasplits.mat",
        f"put them in {where}",
    ):
      assert part in msg, (part, msg)
  assert registry.cheap_identity(data_lib.Settings.of(_cfg(tmp_path / "flowers"))) == (None, None)


def test_a_damaged_or_incomplete_archive_is_named(oxford17_data, tmp_path):
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "17flowers.tgz").write_bytes(b"\x1f\x8b" + b"not gzip" * 100)
  with pytest.raises(data_lib.DatasetError, match=r"17flowers.tgz cannot be extracted.*damaged"):
    data_lib.dataset_info(_cfg(tmp_path / "bad"))
  (tmp_path / "short").mkdir()
  with tarfile.open(tmp_path / "short" / "17flowers.tgz", "w:gz") as tar:
    tar.add(oxford17_data["extracted"] / "jpg" / "image_0001.jpg", "jpg/image_0001.jpg")
  with pytest.raises(data_lib.DatasetError, match=r"lacks 1359 of .* 1360 images \(image_0002"):
    data_lib.dataset_info(_cfg(tmp_path / "short"))
  for d in ("bad", "short"):  # nothing half-extracted stays
    assert os.listdir(tmp_path / d / ".alexnet_jax_oxford17") == []


def test_evaluation_of_the_test_split_reads_exactly_the_mat_test_images(
    oxford17_data, references, devices
):
  config = tiny.config(
      eval_batch_size=40,
      **{"dataset.name": f"oxford17:{oxford17_data['tgz']}", "mesh.data": -1},
  )
  mesh = sharding.make_mesh(8, 1, devices=devices)
  got = []

  def eval_step(params, batch, spec):  # records what it is given; nothing to compile
    del params, spec
    batch = jax.device_get(batch)
    got.extend(
        (references[digest(im)], int(label))
        for im, label, m in zip(batch["image"], batch["label"], batch["mask"])
        if m
    )
    zero = np.float32(0)
    return {
        "top1_errors": zero,
        "top5_errors": zero,
        "loss_sum": zero,
        "count": batch["mask"].sum(),
    }

  m = train.evaluate(config, eval_step, None, None, mesh, split="test")
  assert m["num_images"] == 340
  want = sorted((int(i), (int(i) - 1) // 80) for i in oxford17_data["splits"]["tst1"])
  assert sorted(got) == want


@pytest.mark.slow  # ~45 s: compiling the train and eval steps on the 8-device mesh
def test_a_short_training_run_sees_only_the_train_split_and_evaluate_reads_the_test_split(
    oxford17_data, references, tmp_path, monkeypatch
):
  config = tiny.config(
      num_train_steps=2,
      eval_every_steps=2,
      checkpoint_every_steps=2,
      max_eval_batches=1,
      **{
          "dataset.name": f"oxford17:{oxford17_data['tgz']}",
          "dataset.cache": False,
          "mesh.data": -1,
      },
  )
  seen, splits_read = [], []
  train_iterator, split_iterator = data_lib.train_iterator, data_lib.split_iterator

  def recording_train(*args, **kwargs):
    for batch in train_iterator(*args, **kwargs):
      seen.append(batch)
      yield batch

  def recording_split(dataset, split, **kwargs):
    splits_read.append(split)
    return split_iterator(dataset, split, **kwargs)

  monkeypatch.setattr(data_lib, "train_iterator", recording_train)
  monkeypatch.setattr(data_lib, "split_iterator", recording_split)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json_best_effort())  # as main.py writes it
  train.train_and_evaluate(config, str(workdir))
  trn1 = set(oxford17_data["splits"]["trn1"].tolist())
  images = np.concatenate([b["image"] for b in seen[:2]])
  labels = np.concatenate([b["label"] for b in seen[:2]])
  assert len(images) == 16
  for im, label in zip(images, labels):
    i = references.get(digest(im))
    assert i in trn1 and label == (i - 1) // 80, i
  assert json.loads((workdir / "class_names.json").read_text()) == list(CLASS_NAMES)

  splits_read.clear()
  m = evaluate.evaluate_checkpoint(str(workdir), crops=1, split="test")
  assert splits_read == ["test"]
  assert (m["split"], m["num_images"], m["step"]) == ("test", 340, 2)
  assert 0.0 <= m["top1_error"] <= 1.0
  assert evaluate.results_file(2, 1, "test") == "eval_2_1crop_test.json"
  assert evaluate.results_file(2, 1) == "eval_2_1crop.json"


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_prepare_writes_the_train_validation_and_test_splits(oxford17_data, tmp_path):
  raw_cfg = _cfg(oxford17_data["tgz"], prepared="off")
  report = shard_writer.prepare(
      raw_cfg,
      str(tmp_path / "prep"),
      fmt="jpeg",
      jpeg_quality=95,
      images_per_shard=512,
      progress=False,
  )
  assert report.complete and report.bad_files == []
  plan = json.loads((tmp_path / "prep" / "prepared.json").read_text())
  assert {k: v["num_examples"] for k, v in plan["splits"].items()} == {
      "train": 680,
      "eval": 340,
      "test": 340,
  }
  assert plan["class_names"] == list(CLASS_NAMES)
  assert plan["signature"] == registry.cheap_identity(data_lib.Settings.of(raw_cfg))[1]
  raw = data_lib.open_dataset(raw_cfg)
  prepared = data_lib.open_dataset(_cfg(oxford17_data["tgz"], prepared=str(tmp_path / "prep")))
  assert prepared.train.prepared and prepared.test.prepared
  for a, b in ((raw.train, prepared.train), (raw.eval, prepared.eval), (raw.test, prepared.test)):
    np.testing.assert_array_equal(a.all_keys(), b.all_keys())
    np.testing.assert_array_equal(a.labels, b.labels)
  assert prepared.test.name_of(5) == raw.test.name_of(5)
  kw = {"global_batch_size": 20, "shard_index": 0, "num_shards": 1, "max_examples": 20}
  want = next(iter(data_lib.split_iterator(raw, "test", **kw)))
  got = next(iter(data_lib.split_iterator(prepared, "test", **kw)))
  np.testing.assert_array_equal(got["label"], want["label"])
  diff = np.abs(got["image"].astype(int) - want["image"].astype(int))
  assert diff.mean() < 1.5, diff.mean()  # re-encoded as JPEG: close, not identical


# ---- hostile input: archives and splits bounded before anything is read ----------------------
def _tgz_with(path, members):
  """A .tgz holding `members`: (TarInfo, data bytes or None) each; a header may claim more
  bytes than follow it (only its header is what a reader must look at)."""
  import gzip

  raw = io.BytesIO()
  for info, data in members:
    raw.write(info.tobuf(tarfile.GNU_FORMAT))
    if data:
      raw.write(data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
  raw.write(b"\0" * tarfile.RECORDSIZE)
  with gzip.open(path, "wb", compresslevel=1) as f:
    f.write(raw.getvalue())
  return path


def _info(name, size, kind=tarfile.REGTYPE):
  info = tarfile.TarInfo(name)
  info.size, info.type = size, kind
  return info


def _refused(archive, match):
  """extracted() refuses `archive` with one line, quickly and within bounded memory, leaving
  nothing extracted beside it."""
  import tracemalloc

  tracemalloc.start()
  t = time.monotonic()
  try:
    with pytest.raises(data_lib.DatasetError) as e:
      oxford17.extracted(str(archive))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  text = str(e.value)
  assert "\n" not in text and str(archive) in text and re.search(match, text), text
  assert peak < 64 << 20, peak
  assert time.monotonic() - t < 60
  cache = archive.parent / ".alexnet_jax_oxford17"
  assert not cache.exists() or os.listdir(cache) == [], os.listdir(cache)


def test_an_archive_member_claiming_a_gigabyte_is_refused_before_it_is_read(tmp_path):
  archive = _tgz_with(
      tmp_path / "17flowers.tgz", [(_info("jpg/image_0001.jpg", 1 << 30), b"\xff\xd8" * 1000)]
  )
  _refused(archive, r"holds a member of 1,073,741,824 bytes \(jpg/image_0001.jpg\), more than")


def test_a_real_deflate_bomb_member_is_refused_from_its_header(tmp_path):
  """A valid archive whose files.txt inflates to 100 MB of zeros (100 KB compressed)."""
  archive = tmp_path / "17flowers.tgz"

  class Zeros:

    def read(self, n):
      return b"\0" * n

  with tarfile.open(archive, "w:gz", compresslevel=9) as tar:
    tar.addfile(_info("jpg/files.txt", 100 << 20), Zeros())
  assert os.path.getsize(archive) < 1 << 20
  _refused(archive, r"holds a member of 104,857,600 bytes")


def test_a_long_name_header_claiming_a_gigabyte_is_never_read(tmp_path):
  """tarfile reads a GNU long name whole, at the size its header claims: refused first."""
  archive = _tgz_with(
      tmp_path / "17flowers.tgz",
      [(_info("././@LongLink", 1 << 30, tarfile.GNUTYPE_LONGNAME), b"x" * 4096)],
  )
  _refused(archive, r"asks for a read of 1,073,741,824 bytes at once")


def test_an_archive_of_too_many_entries_is_refused(tmp_path):
  members = [(_info(f"jpg/x{i}", 0), None) for i in range(oxford17.MAX_MEMBERS + 1)]
  archive = _tgz_with(tmp_path / "17flowers.tgz", members)
  _refused(archive, r"holds more than 20,000 entries")


def test_a_splits_file_whose_variables_claim_too_much_is_refused_before_loading(tmp_path):
  import tracemalloc

  from scipy import io as scipy_io

  path = tmp_path / oxford17.SPLITS_FILE
  big = np.zeros((1, 5_000_000))  # 40 MB of float64, a few kB compressed
  scipy_io.savemat(
      path, {"trn1": big, "val1": big[:, :10], "tst1": big[:, :10]}, do_compression=True
  )
  del big
  assert os.path.getsize(path) < 1 << 20
  tracemalloc.start()
  try:
    with pytest.raises(data_lib.DatasetError, match=r"trn1 has shape \(1, 5000000\), more than"):
      oxford17.read_splits(str(path))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 16 << 20, peak
  path.write_bytes(b"\0" * (oxford17.MAX_SPLITS_BYTES + 1))
  with pytest.raises(data_lib.DatasetError, match=r"more than a datasplits.mat can be"):
    oxford17.read_splits(str(path))


def test_a_fifo_in_place_of_an_extracted_image_is_refused_naming_it(oxford17_data, tmp_path):
  images = tmp_path / "jpg"
  shutil.copytree(oxford17_data["extracted"] / "jpg", images)
  os.remove(images / "image_0007.jpg")
  os.mkfifo(images / "image_0007.jpg")
  with pytest.raises(data_lib.DatasetError) as e:
    data_lib.open_dataset(_cfg(tmp_path, prepared="off"))
  assert str(e.value).startswith(f"{images / 'image_0007.jpg'} is a FIFO (named pipe), not a")


@pytest.mark.slow
@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tgz"])
def test_fuzz_the_archive_reader_ends_in_its_error_or_extracts_what_the_archive_holds(
    tmp_path, compressed
):
  """Mutations of a valid archive (1,360 small members and files.txt; plain and gzipped):
  extracted() raises DatasetError (one line) or extracts exactly the images and files.txt
  that Python's tarfile reads from the same bytes; peak of tracked memory bounded."""
  import gzip

  import hypothesis

  from tests import fuzz

  raw = io.BytesIO()
  with tarfile.open(fileobj=raw, mode="w") as tar:
    for i in range(1, oxford17.NUM_IMAGES + 1):
      data = f"jpeg {i}".encode()
      info = _info(f"jpg/{oxford17.image_name(i)}", len(data))
      tar.addfile(info, io.BytesIO(data))
    tar.addfile(_info("jpg/files.txt", 5), io.BytesIO(b"list\n"))
  valid = gzip.compress(raw.getvalue(), compresslevel=1) if compressed else raw.getvalue()
  counter = iter(range(10**6))

  def reference(data):
    """{name: bytes} of the members extracted() writes, read by tarfile from memory."""
    out = {}
    opened = gzip.GzipFile(fileobj=io.BytesIO(data)) if compressed else io.BytesIO(data)
    with tarfile.open(fileobj=opened, mode="r:") as tar:
      for m in tar:
        base = os.path.basename(m.name)
        if m.isfile() and (re.fullmatch(r"image_\d{4}\.jpg", base) or base == "files.txt"):
          out[base] = tar.extractfile(m).read()
    return out

  def extract(data):
    d = tmp_path / str(next(counter))
    d.mkdir()
    archive = fuzz.write_file(d / "17flowers.tgz", data)
    images = oxford17.extracted(archive)
    return {n: fuzz.read_file(os.path.join(images, n)) for n in os.listdir(images)}

  assert extract(valid) == reference(valid)

  @fuzz.settings(examples=60)
  @hypothesis.given(data=fuzz.mutated(valid))
  def run(data):
    out = fuzz.check(lambda: extract(data), data_lib.DatasetError, max_peak=16 << 20)
    if isinstance(out, dict):
      assert out == reference(data)

  run()
