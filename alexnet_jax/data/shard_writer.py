"""Writing prepared data: each split once as the paper's 256x256 centre crops, in shards.

The pixels are the streams' own (the same decode, resize rule and EXIF switch), written as JPEG
(`prepare.jpeg_quality`) or raw uint8 rows. The training split's statistics come out of the
same pass: each shard keeps the exact integer sums of its images and train_stats.npz is their
total, equal to the statistics pass bit for bit.

Resumable and parallel: decoding runs on every core (tf.data); a shard is written to a
temporary file and renamed, its index last, so a killed preparation leaves only whole shards
and the next one redoes the rest, byte for byte the same. With process_count > 1 each process
writes the shards s with s % process_count == process_index into the same directory.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import socket
import uuid
import zlib

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_jax import disk_space
from alexnet_jax.data import registry, sources
from alexnet_jax.data import shards as shards_lib
from alexnet_jax.data import stats as stats_lib
from alexnet_jax.data.preprocess import MAX_IMAGE_PIXELS, resize_and_center_crop
from alexnet_jax.data.settings import DatasetError, Settings
from alexnet_jax.facts import IMAGE_SIZE
from alexnet_jax.files import write_atomically


@dataclasses.dataclass
class Report:
  """What a preparation did."""

  root: str
  written: list  # shard stems this call wrote
  skipped: list  # shard stems already complete
  bad_files: list  # names of images that failed to decode (listed, left out)
  complete: bool  # every shard of every split is there (and train_stats.npz)


def _splits(src: sources.Source) -> dict:
  """The source's splits by their prepared name: train, eval, and test where there is one."""
  return {"train": src.train, "eval": src.eval, "test": src.test}


def make_plan(src: sources.Source, settings: Settings, fmt: str, quality: int, per_shard: int):
  if fmt not in shards_lib.FORMATS:
    raise DatasetError(f"prepare.format must be one of {shards_lib.FORMATS}, got {fmt!r}")
  if not 1 <= int(quality) <= 100:
    raise DatasetError(f"prepare.jpeg_quality must be in [1, 100], got {quality}")
  if int(per_shard) < 1:
    raise DatasetError(f"prepare.images_per_shard must be >= 1, got {per_shard}")
  splits = {}
  for name, split in _splits(src).items():
    if split is None:
      continue
    n = split.num_examples
    entry = {
        "num_examples": n,
        "num_shards": -(-n // int(per_shard)),
        "order": "random" if split.random_access else "sequential",
    }
    if not split.random_access:
      entry["files"], entry["file_lengths"] = split.file_lengths()
    splits[name] = entry
  return {
      "format_version": shards_lib.FORMAT_VERSION,
      "dataset": registry.canonical_name(src.name),
      "fingerprint": src.fingerprint,
      "signature": registry.cheap_identity(settings)[1],
      "class_names": list(src.class_names),
      "image_size": IMAGE_SIZE,
      "resize": settings.resize,
      "exif_transpose": bool(settings.exif_transpose),
      # Only when not PIL's default: the images it left out (a plan made before the key reads
      # the same).
      **(
          {"max_image_pixels": int(settings.max_image_pixels)}
          if settings.max_image_pixels != MAX_IMAGE_PIXELS
          else {}
      ),
      "format": fmt,
      "jpeg_quality": int(quality) if fmt == "jpeg" else None,
      "images_per_shard": int(per_shard),
      "splits": splits,
  }


def _write_plan(root: str, plan: dict) -> None:
  """Writes prepared.json, or checks that the one there describes the same preparation."""
  path = os.path.join(root, shards_lib.PLAN_FILE)
  if os.path.exists(path):
    old = shards_lib.read_plan(root)
    differ = [k for k in shards_lib.IDENTITY_KEYS if old.get(k) != plan.get(k)]
    if differ:
      raise DatasetError(
          f"{root} holds another preparation (its {', '.join(differ)} differ from this one: "
          + "; ".join(f"{k}: {old.get(k)!r} there, {plan.get(k)!r} now" for k in differ[:3])[:600]
          + "). Prepare into another directory (--output_dir) or delete it first."
      )
    return
  os.makedirs(root, exist_ok=True)
  plan = dict(plan, created=datetime.datetime.now(datetime.timezone.utc).isoformat())
  write_atomically(path, lambda f: f.write(json.dumps(plan, indent=1).encode()))


def _encode(image: tf.Tensor, fmt: str, quality: int) -> tf.Tensor:
  if fmt == "raw":
    return tf.constant(b"")  # raw rows are the pixels themselves
  # Full-resolution chroma: 4:2:0 would blur colour edges beyond the re-encoding bound.
  return tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=False)


class _ShardWriter:
  """One shard being written: rows into a temporary file, then renamed with its index."""

  def __init__(self, root, split, s, count, fmt, with_sums, digest):
    self.rows_path = shards_lib.rows_path(root, split, s, count)
    self.index_path = shards_lib.index_path(root, split, s, count)
    # host-pid (for the clean-up of killed runs) and a random part (hosts may share a name)
    suffix = f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    self.tmp_rows, self.tmp_index = self.rows_path + suffix, self.index_path + suffix
    self.f = open(self.tmp_rows, "wb")
    self.fmt = fmt
    self.rows: dict = {}  # key -> (label, offset, length, crc)
    self.offset = 0
    self.sums = stats_lib.Sums() if with_sums else None
    self.digest = digest
    self.renamed = self.indexed = False

  def add(self, key: int, label: int, image: np.ndarray, encoded: bytes):
    data = image.tobytes() if self.fmt == "raw" else encoded
    self.f.write(data)
    self.rows[int(key)] = (int(label), self.offset, len(data), zlib.crc32(data))
    self.offset += len(data)
    if self.sums is not None:
      self.sums.add(image)

  def close(self, keys: np.ndarray, names: list, pil_keys: list) -> None:
    self.f.flush()
    os.fsync(self.f.fileno())
    self.f.close()
    failed = (-1, 0, 0, 0)
    rows = [self.rows.get(int(k), failed) for k in keys]
    index = {
        "keys": np.asarray(keys, np.int64),
        "labels": np.asarray([r[0] for r in rows], np.int32),
        "offsets": np.asarray([r[1] for r in rows], np.int64),
        "lengths": np.asarray([r[2] for r in rows], np.int64),
        "crcs": np.asarray([r[3] for r in rows], np.uint32),
        "names": np.asarray(names, dtype=str),
        "pil_keys": np.asarray(pil_keys, np.int64),
        "data_bytes": np.int64(self.offset),
        "plan_digest": np.asarray(self.digest),
    }
    if self.sums is not None:
      index.update(self.sums.as_dict())
    os.replace(self.tmp_rows, self.rows_path)
    self.renamed = True
    with open(self.tmp_index, "wb") as f:
      np.savez(f, **index)
      f.flush()
      os.fsync(f.fileno())
    os.replace(self.tmp_index, self.index_path)  # last: the shard now counts
    self.indexed = True

  def abort(self) -> None:
    """Removes what this shard wrote (after a failure: a full disk); the shard does not count
    without its index, and the next preparation writes it again."""
    try:
      self.f.close()
    except OSError:  # its buffer cannot be written either: the file is closed all the same
      pass
    leftovers = [self.tmp_rows, self.tmp_index]
    if self.renamed and not self.indexed:
      leftovers.append(self.rows_path)
    for path in leftovers:
      try:
        os.remove(path)
      except FileNotFoundError:
        pass


def _decoded(split, keys: np.ndarray, fmt: str, quality: int) -> tf.data.Dataset:
  """{'key', 'label', 'image', 'encoded'} of `keys` (ascending canonical keys), in that order,
  decoded on every core; failures dropped."""
  if split.random_access:
    ds = tf.data.Dataset.from_tensor_slices(keys).map(
        lambda k: {"key": k, **split.element(k)}, tf.data.AUTOTUNE
    )
  else:  # sorted keys: runs of consecutive records, each within one file
    names, _ = split.file_lengths()
    starts = np.flatnonzero(np.diff(keys, prepend=keys[0] - 2) != 1)
    stops = np.append(starts[1:], len(keys))
    instr = [], [], [], []
    for i, j in zip(starts, stops):
      f, o = int(keys[i] >> sources.KEY_SHIFT), int(keys[i] & ((1 << sources.KEY_SHIFT) - 1))
      path = os.path.join(split.builder.data_dir, names[f])
      for part, value in zip(instr, (path, f, o, int(j - i))):
        part.append(value)
    ds = split.records(instr, cycle_length=1).map(
        lambda r: {"key": r["key"], **split.parse(r["data"], with_name=True)}, tf.data.AUTOTUNE
    )
  ds = ds.map(lambda r: {**r, "encoded": _encode(r["image"], fmt, quality)}, tf.data.AUTOTUNE)
  return ds.ignore_errors().prefetch(tf.data.AUTOTUNE)


def _stale_temporaries(root: str, stems: list) -> None:
  """Removes half-written shards of killed preparations on this host (never those of a live
  process, nor another host's: they may still be writing)."""
  host = socket.gethostname()
  for stem in stems:
    for path in glob.glob(os.path.join(root, glob.escape(stem) + f".*.tmp-{glob.escape(host)}-*")):
      pid = path.rsplit(".tmp-", 1)[1][len(host) + 1 :].split("-")[0]
      try:
        os.kill(int(pid), 0)
        continue  # alive: another preparation on this host is writing it
      except (ProcessLookupError, ValueError):
        os.remove(path)
      except PermissionError:
        continue  # alive, another user's


def write_stats(root: str, plan: dict) -> bool:
  """Sums the train shards' statistics into train_stats.npz; False while shards are missing."""
  entry = plan["splits"]["train"]
  count = entry["num_shards"]
  sums, bad_keys, bad_files, pil = stats_lib.Sums(), [], [], []
  for s in range(count):
    index = shards_lib.load_index(
        root, "train", s, count, shards_lib.plan_digest(plan), rows_missing_ok=True
    )
    if index is None:
      return False
    sums.add_partial(index["sum_image"], index["s1"], index["s2"], index["count"])
    failed = index["lengths"] == 0
    bad_keys += list(index["keys"][failed])
    bad_files += list(index["names"][failed])
    pil += list(index["pil_keys"])
  stats = sums.stats(bad_keys, bad_files, pil)
  stats["meta"] = np.asarray(f"prepared:{plan['dataset']}:{plan['fingerprint']}")
  stats["digest"] = np.asarray(stats_lib.stats_digest(stats, None))
  stats_lib.save_npz(os.path.join(root, shards_lib.STATS_FILE), stats)
  return True


def _prepare_split(shards: list, root, fmt, quality, digest, finish, ticks) -> None:
  """Writes `shards` (name, split, index, count, keys) of one split from ONE decoding pipeline,
  which stays busy across the shards' boundaries; rows arrive in key order, so a shard is
  complete (and `finish`ed) once the stream passes its last key."""
  name, split = shards[0][0], shards[0][1]
  first_keys = np.asarray([t[4][0] for t in shards])
  state = {"shard": -1, "writer": None, "done": {}}

  def advance(to):
    while state["shard"] < to:
      if state["writer"] is not None:
        finish(state["writer"], *shards[state["shard"]], state["done"])
      state["shard"] += 1
      _, _, s, count, _ = shards[state["shard"]]
      state["writer"] = _ShardWriter(root, name, s, count, fmt, name == "train", digest)
      state["done"] = {}

  rows = _decoded(split, np.concatenate([t[4] for t in shards]), fmt, quality)
  try:
    for r in rows.as_numpy_iterator():
      key = int(r["key"])
      advance(int(np.searchsorted(first_keys, key, side="right")) - 1)
      state["writer"].add(key, r["label"], r["image"], r["encoded"])
      # The record's own name (TFDS: reading it again later would scan its file).
      state["done"][key] = r["name"].decode() if "name" in r else None
      if ticks is not None:
        next(ticks, None)
    advance(len(shards) - 1)  # shards whose rows all failed
    finish(state["writer"], *shards[-1], state["done"])
  except BaseException:  # a full disk, Ctrl-C: no temporary left behind
    if state["writer"] is not None and not state["writer"].indexed:
      state["writer"].abort()
    raise


def _disk_full_message(root: str, plan: dict, todo: list, written: list) -> str:
  """The one line for a full disk: what is free at `root`, and about what the shards still to
  write need: their rows (raw: exactly; JPEG: at the mean row size of the shards written so
  far), their indexes (a train shard's holds its int64 sum image, 1.5 MiB) and the statistics."""
  sums_bytes = IMAGE_SIZE * IMAGE_SIZE * 3 * 8
  rows, images, need, failed = 0, 0, sums_bytes / 2, None  # train_stats.npz: a float32 mean
  for name, _, s, count, keys in todo:
    if shards_lib.shard_stem(name, s, count) not in written:
      failed = failed or shards_lib.shard_stem(name, s, count)
      images += len(keys)
      rows += 1
      need += (sums_bytes if name == "train" else 0) + 4096 + 64 * len(keys)  # the index
  per_image = float(shards_lib.ROW_BYTES)
  if plan["format"] == "jpeg":
    sizes = [0, 0]
    digest = shards_lib.plan_digest(plan)
    for name, entry in plan["splits"].items():
      for s in range(entry["num_shards"]):
        try:
          index = shards_lib.load_index(root, name, s, entry["num_shards"], digest)
        except DatasetError:
          index = None
        if index is not None:
          sizes[0] += int(index["data_bytes"])
          sizes[1] += int(np.count_nonzero(index["lengths"]))
    per_image = sizes[0] / sizes[1] if sizes[1] else per_image  # none yet: raw rows' size
  need += images * per_image
  return disk_space.message(
      f"prepared shard {failed}" if failed else shards_lib.STATS_FILE,
      root,
      f"the {rows} shard(s) still to write and the statistics need about "
      f"{disk_space.megabytes(need)}",
      "prepare elsewhere with --output_dir",
      "The shards already written are complete and kept; rerun the same command to resume.",
  )


def prepare(
    dataset_config,
    output_dir: str | None = None,
    *,
    fmt: str,
    jpeg_quality: int,
    images_per_shard: int,
    process_index: int = 0,
    process_count: int = 1,
    progress=None,
) -> Report:
  """Prepares every split of `dataset_config`'s dataset into output_dir (default: beside the
  data, where training finds it); resumes an interrupted preparation. progress: a progress
  bar (reporting.progress: the prepare command shows one), or None."""
  settings = Settings.of(dataset_config)
  if not 0 <= process_index < process_count:
    raise DatasetError(f"process_index {process_index} not in [0, {process_count})")
  src = registry.open_raw(settings)
  root = os.path.abspath(output_dir or registry.default_location(settings))
  plan = make_plan(src, settings, fmt, jpeg_quality, images_per_shard)
  try:
    _write_plan(root, plan)
  except OSError as e:
    if disk_space.is_full(e):
      raise DatasetError(
          disk_space.message(
              shards_lib.PLAN_FILE,
              root,
              "it needs a few KiB, the shards far more",
              "prepare elsewhere with --output_dir",
              "Nothing else was written.",
          )
      ) from None
    raise
  digest = shards_lib.plan_digest(plan)
  todo, skipped = [], []
  for name, entry in plan["splits"].items():
    split = _splits(src)[name]
    keys = shards_lib.split_keys(entry)
    if not np.array_equal(keys, np.sort(split.all_keys())):
      raise DatasetError(f"the {name} split of {src.name} changed while it was planned")
    count, per = entry["num_shards"], plan["images_per_shard"]
    for s in range(process_index, count, process_count):
      stem = shards_lib.shard_stem(name, s, count)
      if shards_lib.load_index(root, name, s, count, digest, rows_missing_ok=True) is not None:
        skipped.append(stem)
      else:
        todo.append((name, split, s, count, keys[s * per : (s + 1) * per]))
  _stale_temporaries(root, [shards_lib.shard_stem(t[0], t[2], t[3]) for t in todo])
  logging.info(
      "preparing %s into %s: %d shard(s) to write, %d already there (%s, %s)",
      src.name,
      root,
      len(todo),
      len(skipped),
      fmt,
      f"quality {jpeg_quality}" if fmt == "jpeg" else "uint8 rows",
  )
  total = sum(len(t[4]) for t in todo)
  ticks = bar = None
  if progress:
    bar = progress(range(total), total=total, desc="preparing", unit="image")
    ticks = iter(bar)
  bad_files, written = [], []

  def finish(writer, name, split, s, count, keys, done):
    """Closes a shard: the keys tf.data dropped go to the Python fallback, or are listed."""
    pil = []
    for key in (k for k in keys if int(k) not in done):  # few: PIL-only formats, or broken
      image = split.python_fallback(key)
      if image is None:
        bad_files.append(split.name_of(key))
        logging.warning("cannot decode %s: left out of the prepared data", split.name_of(key))
      else:
        image = resize_and_center_crop(image, rule=split.resize)
        label = split.labels[int(key)]
        writer.add(key, label, image.numpy(), _encode(image, fmt, jpeg_quality).numpy())
        pil.append(int(key))
      if ticks is not None:
        next(ticks, None)
    known = lambda k: done.get(int(k)) is not None  # noqa: E731  (a TFDS record's name)
    names = [split.record_name(k, done[int(k)]) if known(k) else split.name_of(k) for k in keys]
    writer.close(keys, names, pil)
    written.append(shards_lib.shard_stem(name, s, count))

  try:
    for name in plan["splits"]:
      shards = [t for t in todo if t[0] == name]
      if shards:
        _prepare_split(shards, root, fmt, jpeg_quality, digest, finish, ticks)
    if ticks is not None:
      for _ in ticks:
        pass
    stats_written = write_stats(root, plan)
  except OSError as e:
    if disk_space.is_full(e):
      raise DatasetError(_disk_full_message(root, plan, todo, written)) from None
    raise
  finally:
    if bar is not None:
      bar.close()  # ends its line: a FATAL line after it starts a line of its own
  complete = stats_written and all(
      shards_lib.load_index(root, name, s, e["num_shards"], digest, rows_missing_ok=True)
      is not None
      for name, e in plan["splits"].items()
      for s in range(e["num_shards"])
  )
  if bad_files:
    logging.warning(
        "%d image(s) failed to decode and are left out: %s", len(bad_files), ", ".join(bad_files)
    )
  return Report(root, written, skipped, bad_files, complete)
