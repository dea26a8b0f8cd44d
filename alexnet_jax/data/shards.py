"""Reading prepared data: the paper's 256x256 images written once (alexnet_jax.prepare).

A prepared directory holds, per split, shards `{split}-SSSSS-of-NNNNN.rows` (the rows' bytes:
JPEG, or raw uint8 256x256x3) and `.index.npz` (per row: the source's key, label, file name,
byte offset, length and CRC-32), `prepared.json` (the plan: dataset, class names, image size,
resize rule, format, rows per shard, and for TFDS sources the record files' lengths) and
`train_stats.npz` (the training statistics, summed from the shards' exact integer sums).

Rows keep the source's keys, so a stream over prepared data is the raw stream with its decoder
replaced: the same keys in the same order (random-access permutations, or the TFDS file order
and shuffle buffer recomputed from the plan without reading a record). A shard counts only once
its index exists (written after its rows, both by atomic rename). Every row's CRC is checked
the first time a process reads it: a damaged shard stops the run with its name.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zlib

import numpy as np
import tensorflow as tf

from alexnet_jax import files
from alexnet_jax.data import registry
from alexnet_jax.data.preprocess import MAX_IMAGE_PIXELS
from alexnet_jax.data.settings import (
    DatasetError,
    Settings,
)
from alexnet_jax.data.sources import (
    Source,
    instruction_keys,
    instructions_from_lengths,
    record_keys,
)
from alexnet_jax.facts import IMAGE_SIZE

PLAN_FILE = "prepared.json"
STATS_FILE = "train_stats.npz"
FORMAT_VERSION = 1
FORMATS = ("jpeg", "raw")
ROW_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3
_MAX_OPEN_FILES = 256
_READ_BATCH = 64


# The plan's keys that make two preparations the same; every shard's index carries their digest.
IDENTITY_KEYS = (
    "format_version",
    "dataset",
    "fingerprint",
    "signature",
    "class_names",
    "image_size",
    "resize",
    "exif_transpose",
    "format",
    "jpeg_quality",
    "images_per_shard",
    "splits",
)


def plan_digest(plan: dict) -> str:
  identity = {k: plan.get(k) for k in IDENTITY_KEYS}
  return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class PreparedDataError(DatasetError):
  """Prepared data that cannot be read as they are (damaged, incomplete or for other data)."""


def shard_stem(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}"


def read_plan(root: str) -> dict:
  path = os.path.join(root, PLAN_FILE)
  try:
    plan = files.read_json(
        path,
        dict,
        what="plan of prepared data",
        fix="run alexnet_jax.prepare again.",
        error=PreparedDataError,
    )
  except PreparedDataError:
    raise
  except FileNotFoundError:
    raise PreparedDataError(
        f"no prepared data at {root} (no {PLAN_FILE}): write them with\n"
        f"  python -m alexnet_jax.prepare --config=CONFIG --output_dir={root}"
    ) from None
  except (OSError, ValueError) as e:
    raise PreparedDataError(
        f"{path} cannot be read ({e}): run alexnet_jax.prepare again."
    ) from None
  plan = plan if isinstance(plan, dict) else {}
  missing = [k for k in IDENTITY_KEYS if k not in plan]
  if missing or plan["format_version"] != FORMAT_VERSION:
    raise PreparedDataError(
        f"{path} is not a plan this code reads (format version {plan.get('format_version')}, "
        f"this code reads {FORMAT_VERSION}; missing: {', '.join(missing) or 'nothing'}): "
        "prepare again into another directory."
    )
  return plan


def split_keys(entry: dict) -> np.ndarray:
  """Every key of a planned split, sorted (the canonical order the shards follow)."""
  if entry["order"] == "random":
    return np.arange(entry["num_examples"], dtype=np.int64)
  names, lengths = entry["files"], entry["file_lengths"]
  _, idx, skip, take = instructions_from_lengths(names, lengths, 0, sum(lengths))
  return instruction_keys(idx, skip, take)


def index_path(root, split, s, count):
  return os.path.join(root, shard_stem(split, s, count) + ".index.npz")


def rows_path(root, split, s, count):
  return os.path.join(root, shard_stem(split, s, count) + ".rows")


def load_index(
    root: str, split: str, s: int, count: int, digest: str, *, rows_missing_ok: bool = False
) -> dict | None:
  """A complete shard's index (its rows file present at the size it records, written for the
  plan whose plan_digest is `digest`), else None (no index, or with rows_missing_ok, an index
  whose rows file is gone: what a preparation redoes)."""
  path = index_path(root, split, s, count)
  try:
    with np.load(path, allow_pickle=False) as z:
      index = {k: z[k] for k in z.files}
  except FileNotFoundError:
    return None
  except Exception as e:  # pylint: disable=broad-except
    raise PreparedDataError(
        f"prepared shard {path} is damaged ({e}): delete it and run alexnet_jax.prepare again "
        "(it redoes the missing shards)."
    ) from None
  if str(index.get("plan_digest")) != digest:
    raise PreparedDataError(
        f"prepared shard {path} belongs to another preparation than {root}/{PLAN_FILE} (another "
        "dataset, format or setting): prepare into an empty directory."
    )
  rows = rows_path(root, split, s, count)
  if not os.path.exists(rows):
    if rows_missing_ok:
      return None
    raise PreparedDataError(
        f"prepared shard {rows} is missing (its index {os.path.basename(path)} is there): run "
        "alexnet_jax.prepare again with the same settings; it rewrites the missing shards."
    )
  size = os.path.getsize(rows)
  if size != int(index["data_bytes"]):
    raise PreparedDataError(
        f"prepared shard {rows} is damaged: {size} bytes, its index says "
        f"{int(index['data_bytes'])}; delete it and its .index.npz and run alexnet_jax.prepare "
        "again (it redoes the missing shards)."
    )
  return index


class PreparedSplit:
  """One prepared split: the source split's keys and labels, rows read from the shards."""

  prepared = True

  def __init__(self, root: str, split: str, entry: dict, plan: dict):
    self.root, self.split, self.entry = root, split, entry
    self.format = plan["format"]
    self.digest = plan_digest(plan)
    self.resize = plan["resize"]
    self.random_access = entry["order"] == "random"
    count = entry["num_shards"]
    indexes, missing = [], []
    for s in range(count):
      index = load_index(root, split, s, count, self.digest)
      if index is None:
        missing.append(s)
      indexes.append(index)
    if missing:
      raise PreparedDataError(
          f"the prepared data at {root} are incomplete: {len(missing)} of {count} {split} "
          f"shards missing ({', '.join(shard_stem(split, s, count) for s in missing[:5])}"
          f"{', ...' if len(missing) > 5 else ''}); run alexnet_jax.prepare again: it resumes."
      )
    # File names stay in the shards' indexes until asked for (ImageNet's take 150 MB).
    cat = lambda k: np.concatenate([ix[k] for ix in indexes])  # noqa: E731
    self.keys = cat("keys")
    self.labels = cat("labels").astype(np.int32)
    self.offsets = cat("offsets")
    self.lengths = cat("lengths")
    self.crcs = cat("crcs")
    self.shard_of_row = np.concatenate(
        [np.full(len(ix["keys"]), s, np.int32) for s, ix in enumerate(indexes)]
    )
    expected = split_keys(entry)
    if not np.array_equal(self.keys, expected):
      raise PreparedDataError(
          f"the prepared {split} shards at {root} do not hold the {len(expected)} rows their "
          "plan lists: run alexnet_jax.prepare into an empty directory."
      )
    self.num_examples = len(self.keys)
    self.bad_keys = self.keys[self.lengths == 0]
    self._verified = np.zeros(self.num_examples, bool)
    self._files: dict = {}
    self._lock = threading.Lock()

  # ---- the layout the streams follow (the source split's) -----------------------------------

  def all_keys(self) -> np.ndarray:
    return self.keys

  def name_of(self, key: int) -> str:
    return self._name(self._rows(np.asarray([key]))[0])

  def _name(self, row: int) -> str:
    shard = int(self.shard_of_row[row])
    first = int(np.searchsorted(self.shard_of_row, shard))
    index = load_index(self.root, self.split, shard, self.entry["num_shards"], self.digest)
    return str(index["names"][row - first])

  def instructions(self, start: int = 0, stop: int | None = None):
    entry = self.entry
    stop = self.num_examples if stop is None else stop
    return instructions_from_lengths(entry["files"], entry["file_lengths"], start, stop)

  def records(self, instr, order=None, with_data=False, cycle_length=16) -> tf.data.Dataset:
    if with_data:
      raise ValueError("prepared rows are read by key (examples/batches), not as records")
    return record_keys(instr, order, cycle_length)

  def python_fallback(self, key):
    return None

  # ---- reading rows ---------------------------------------------------------------------------

  def _rows(self, keys: np.ndarray) -> np.ndarray:
    rows = np.searchsorted(self.keys, keys)
    rows = np.minimum(rows, self.num_examples - 1)
    if not np.array_equal(self.keys[rows], keys):
      raise PreparedDataError(f"keys {keys[self.keys[rows] != keys][:5]} are not in {self.root}")
    return rows

  def _file(self, shard: int):
    """The shard's rows file, opened once. Evicting only drops the cache's reference: a file
    another map thread is reading from stays open until that thread lets go of it."""
    with self._lock:
      f = self._files.get(shard)
      if f is None:
        if len(self._files) >= _MAX_OPEN_FILES:
          self._files.clear()
        count = self.entry["num_shards"]
        f = self._files[shard] = open(rows_path(self.root, self.split, shard, count), "rb", 0)
      return f

  def _check(self, row: int, data) -> None:
    if self._verified[row]:
      return
    if zlib.crc32(data) != int(self.crcs[row]):
      count = self.entry["num_shards"]
      shard = int(self.shard_of_row[row])
      raise PreparedDataError(
          f"prepared shard {rows_path(self.root, self.split, shard, count)} is damaged: row "
          f"{row} ({self._name(row)}) fails its CRC-32. Delete the shard and its .index.npz and "
          "run alexnet_jax.prepare again (it redoes the missing shards)."
      )
    self._verified[row] = True

  def _read_raw(self, keys: np.ndarray):
    rows = self._rows(keys)
    out = np.empty([len(rows), IMAGE_SIZE, IMAGE_SIZE, 3], np.uint8)
    for i, r in enumerate(rows):
      self._missing(r)
      view = memoryview(out[i]).cast("B")
      f = self._file(int(self.shard_of_row[r]))  # held: stays open while read
      n = os.preadv(f.fileno(), [view], int(self.offsets[r]))
      if n != ROW_BYTES:
        self._short(r)
      self._check(r, view)
    return out, self.labels[rows]

  def _read_encoded(self, keys: np.ndarray):
    rows = self._rows(keys)
    out = []
    for r in rows:
      self._missing(r)
      f = self._file(int(self.shard_of_row[r]))  # held: stays open while read
      data = os.pread(f.fileno(), int(self.lengths[r]), int(self.offsets[r]))
      if len(data) != self.lengths[r]:
        self._short(r)
      self._check(r, data)
      out.append(data)
    return np.asarray(out, dtype=object), self.labels[rows]

  def _missing(self, r):
    if self.lengths[r] == 0:
      raise PreparedDataError(f"{self._name(r)} failed to decode when it was prepared: no row")

  def _short(self, r):
    shard = int(self.shard_of_row[r])
    raise PreparedDataError(
        f"prepared shard {rows_path(self.root, self.split, shard, self.entry['num_shards'])} is "
        "shorter than its index says: run alexnet_jax.prepare again."
    )

  def _read(self, keys):
    """tf: int64 [n] keys -> {'image' uint8 [n,256,256,3] or 'data' string [n], 'label'}."""
    if self.format == "raw":
      image, label = tf.numpy_function(self._read_raw, [keys], [tf.uint8, tf.int32])
      image.set_shape([None, IMAGE_SIZE, IMAGE_SIZE, 3])
      return {"image": image, "label": tf.ensure_shape(label, [None])}
    data, label = tf.numpy_function(self._read_encoded, [keys], [tf.string, tf.int32])
    return {"data": tf.ensure_shape(data, [None]), "label": tf.ensure_shape(label, [None])}

  @staticmethod
  def _decode(r: dict) -> dict:
    r = dict(r)
    image = tf.io.decode_jpeg(r.pop("data"), channels=3, dct_method="INTEGER_ACCURATE")
    r["image"] = tf.ensure_shape(image, [IMAGE_SIZE, IMAGE_SIZE, 3])
    return r

  def examples(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Elements with a 'key' -> the same elements with 'image' and 'label', in order."""
    ds = ds.batch(_READ_BATCH).map(lambda b: {**b, **self._read(b["key"])}, tf.data.AUTOTUNE)
    ds = ds.unbatch()
    if self.format == "jpeg":
      ds = ds.map(self._decode, tf.data.AUTOTUNE)
    return ds

  def batches(self, ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Elements with a 'key' -> batches of batch_size with 'image' and 'label' (raw rows are
    read straight into the batch: one copy)."""
    if self.format == "raw":
      return ds.batch(batch_size).map(lambda b: {**b, **self._read(b["key"])}, tf.data.AUTOTUNE)
    return self.examples(ds).batch(batch_size)

  def canonical(self, n: int | None = None, pil_keys=None) -> tf.data.Dataset:
    del pil_keys
    keys = self.keys[:n]
    keys = keys[self.lengths[: len(keys)] > 0]
    return self.examples(tf.data.Dataset.from_tensor_slices({"key": keys}))


def open_prepared(root: str, settings: Settings, identity: tuple) -> Source:
  """The prepared data at `root` as a Source, refused (PreparedDataError naming the mismatch)
  when they were made from other data or with other settings than `settings`; `identity`:
  the original data's (class names, signature) where known (registry.cheap_identity)."""
  root = os.path.abspath(os.path.expanduser(root))
  plan = read_plan(root)
  class_names, signature = identity
  mismatches = []
  if plan["dataset"] != registry.canonical_name(settings.name):
    mismatches.append(f"dataset {plan['dataset']!r}, the config reads {settings.name!r}")
  if plan["image_size"] != IMAGE_SIZE:
    mismatches.append(f"image size {plan['image_size']}, this code trains on {IMAGE_SIZE}")
  if plan["resize"] != settings.resize:
    mismatches.append(f"dataset.resize {plan['resize']!r}, the config says {settings.resize!r}")
  limit = plan.get("max_image_pixels", MAX_IMAGE_PIXELS)
  if limit != settings.max_image_pixels:
    mismatches.append(
        f"dataset.max_image_pixels {limit}, the config says {settings.max_image_pixels}"
    )
  if plan["exif_transpose"] != bool(settings.exif_transpose):
    mismatches.append(
        f"dataset.exif_transpose {plan['exif_transpose']}, the config says "
        f"{bool(settings.exif_transpose)}"
    )
  if class_names is not None and tuple(plan["class_names"]) != tuple(class_names):
    extra = sorted(set(plan["class_names"]) - set(class_names))
    lacking = sorted(set(class_names) - set(plan["class_names"]))
    mismatches.append(
        f"another class list ({len(plan['class_names'])} classes, the data have "
        f"{len(class_names)}"
        + (f"; only prepared: {', '.join(extra[:5])}" if extra else "")
        + (f"; not prepared: {', '.join(lacking[:5])}" if lacking else "")
        + ("; same classes in another order" if not extra and not lacking else "")
        + ")"
    )
  elif signature is not None and plan["signature"] != signature:
    mismatches.append(
        "the data as they were then: images were added, removed or renamed since, or another "
        "version was prepared (run alexnet_jax.prepare again, into an empty directory)"
    )
  if mismatches:
    raise PreparedDataError(
        f"the prepared data at {root} were made with " + "; ".join(mismatches) + ". Prepare this "
        "dataset into another directory (alexnet_jax.prepare --output_dir=...) or point "
        "dataset.prepared at the right one."
    )
  splits = {name: PreparedSplit(root, name, entry, plan) for name, entry in plan["splits"].items()}
  stats = os.path.join(root, STATS_FILE)
  if not os.path.exists(stats):
    raise PreparedDataError(
        f"the prepared data at {root} have no {STATS_FILE}: run alexnet_jax.prepare again "
        "(every shard is there; it only sums their statistics)."
    )
  return Source(
      plan["dataset"],
      tuple(plan["class_names"]),
      splits["train"],
      splits.get("eval"),
      os.path.join(root, "stats_cache.npz"),
      plan["fingerprint"],
      (
          f"prepared shards in {root} ("
          + (
              f"JPEG quality {plan.get('jpeg_quality', '?')}: lossy, so pixels differ slightly "
              "from the originals'"
              if plan["format"] == "jpeg"
              else "raw rows: the originals' pixels"
          )
          + ")"
      ),
      prepared_stats=stats,
      test=splits.get("test"),
  )
