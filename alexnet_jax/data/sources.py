"""What every dataset source shares: the Source a config opens, its splits' kinds, the keys
of TFDS-style records, and SourceKind, what each source declares (registry.py lists them).

A split is either random access (`element(key)` loads one example from its key 0..n-1) or
sequential TFDS records (`records(...)`, keys file_index << 32 | offset). Keys are int64 and
stable across runs; prepared data (shards.py) keep them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from alexnet_jax.data.preprocess import (
    MAX_IMAGE_PIXELS,
    apply_orientation,
    decode_image,
    exif_orientation,
    pil_load,
    resize_and_center_crop,
)
from alexnet_jax.data.settings import (
    DatasetError,
    Settings,
    sanitise,
)

KEY_SHIFT = 32  # TFDS record key = file_index << 32 | record offset in that file.
NO_KEYS = np.zeros([0], np.int64)


class RandomAccessSplit:
  """A split whose examples load one by one from their keys 0..n-1 (canonical order)."""

  random_access = True

  def __init__(self, labels: np.ndarray, names: list, resize: str):
    self.labels = np.asarray(labels, np.int32)
    self.names = names
    self.num_examples = len(self.labels)
    self.resize = resize  # dataset.resize
    self.max_pixels = MAX_IMAGE_PIXELS  # dataset.max_image_pixels (decoded splits)

  def all_keys(self) -> np.ndarray:
    return np.arange(self.num_examples, dtype=np.int64)

  def canonical(self, n: int | None = None, pil_keys=NO_KEYS) -> tf.data.Dataset:
    """{'key', 'image', 'label'} of the first n examples in key order; failures dropped."""
    keys = tf.data.Dataset.from_tensor_slices(self.all_keys()[:n])
    ds = keys.map(lambda k: {"key": k, **self.element(k, pil_keys)}, tf.data.AUTOTUNE)
    return ds.ignore_errors()

  def name_of(self, key: int) -> str:
    return self.names[int(key)]

  def element(self, key: tf.Tensor, pil_keys: np.ndarray = NO_KEYS) -> dict:
    """{'image': uint8 [256, 256, 3], 'label'} of `key`; `pil_keys`: the keys that only PIL
    decodes (found by the statistics pass)."""
    raise NotImplementedError

  def python_fallback(self, key: int):
    """uint8 [H, W, 3] decoded in Python for a key TF failed on, or None if nothing decodes it."""
    return None


class FileSplit(RandomAccessSplit):
  """Image files on disk (folder:); decoded by TF, or by PIL for keys flagged by the stats pass."""

  def __init__(
      self,
      paths: list,
      labels: np.ndarray,
      root: str,
      resize: str,
      exif: bool,
      max_pixels: int = MAX_IMAGE_PIXELS,
  ):
    super().__init__(labels, [os.path.relpath(p, root) for p in paths], resize)
    self.max_pixels = int(max_pixels)
    self.paths = np.asarray(paths, dtype=object)
    # Bytes of the file system's encoding (os.fsencode): non-ASCII names included.
    self._path_bytes = np.asarray([os.fsencode(p) for p in paths], dtype=object)
    # 1..8 per file when turning JPEGs upright (dataset.exif_transpose), else None.
    self.orientations = np.asarray([exif_orientation(p) for p in paths], np.int32) if exif else None

  def element(self, key, pil_keys=NO_KEYS):
    path = tf.gather(tf.constant(self._path_bytes, tf.string), key)

    def with_pil():
      image = tf.py_function(lambda p: pil_load(p, self.max_pixels), [path], tf.uint8)
      image.set_shape([None, None, 3])
      return image

    with_tf = lambda: decode_image(tf.io.read_file(path), self.max_pixels)  # noqa: E731
    if len(pil_keys):  # formats only PIL reads (TIFF, ...), found by the statistics pass
      image = tf.cond(tf.reduce_any(tf.equal(tf.constant(pil_keys), key)), with_pil, with_tf)
    else:
      image = with_tf()
    if self.orientations is not None and np.any(self.orientations != 1):
      image = apply_orientation(image, tf.gather(tf.constant(self.orientations), key))
    return {
        "image": resize_and_center_crop(image, rule=self.resize),
        "label": tf.gather(tf.constant(self.labels), key),
    }

  def python_fallback(self, key):
    try:
      image = pil_load(self.paths[int(key)], self.max_pixels)
    except Exception:  # pylint: disable=broad-except
      return None
    if self.orientations is not None and image.size:
      image = apply_orientation(image, self.orientations[int(key)]).numpy()
    return image if image.size else None


def as_arrays(instr):
  names, idx, skip, take = instr
  return (
      np.asarray(names, dtype=object).astype(bytes),
      np.asarray(idx, np.int64),
      np.asarray(skip, np.int64),
      np.asarray(take, np.int64),
  )


def instruction_keys(idx, skip, take) -> np.ndarray:
  parts = [
      (np.int64(i) << KEY_SHIFT) + np.arange(s, s + t, dtype=np.int64)
      for i, s, t in zip(idx, skip, take)
  ]
  return np.sort(np.concatenate(parts)) if parts else np.zeros([0], np.int64)


def record_keys(instr, order=None, cycle_length=16) -> tf.data.Dataset:
  """{'key'} of the instructions' records in the order a TFDS read interleaves its files
  (`order`: a permutation of the instructions' files), without reading any file."""
  _, idx, skip, take = (tf.constant(x) for x in as_arrays(instr))
  n = len(instr[0])
  if order is not None:
    idx, skip, take = (tf.gather(x, order) for x in (idx, skip, take))
  files = tf.data.Dataset.from_tensor_slices((idx, skip, take))

  def one_file(fidx, s, t):
    keys = tf.data.Dataset.range(s, s + t).map(lambda o: tf.bitwise.left_shift(fidx, KEY_SHIFT) + o)
    return keys.map(lambda k: {"key": k})

  # Sequential (no num_parallel_calls): the same round-robin as the parallel, deterministic read.
  return files.interleave(one_file, cycle_length=max(1, min(cycle_length, n)), block_length=1)


def instructions_from_lengths(names, lengths, start: int, stop: int):
  """(filenames, file indices, skip, take) of examples [start, stop) of files holding
  `lengths` examples each, concatenated in order: TFDS's file instructions for split[start:stop]."""
  out = [], [], [], []
  first = 0
  for i, (name, n) in enumerate(zip(names, lengths)):
    lo, hi = max(start, first), min(stop, first + n)
    if lo < hi:
      for part, value in zip(out, (name, i, lo - first, hi - lo)):
        part.append(value)
    first += n
  return out


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  num_train: int
  num_eval: int
  class_names: tuple
  num_test: int = 0  # a held-out test split's size (oxford17 with datasplits.mat), else 0


@dataclasses.dataclass(eq=False)
class Source:
  """An opened dataset: its class names and splits, and where its statistics live.

  Open it once (dataset.open_dataset) and pass it to the stream functions: opening lists a
  folder's files, which takes minutes for an ImageNet-sized folder.
  """

  name: str
  class_names: tuple
  train: Any
  eval: Any
  stats_path: str  # where the training-split statistics are cached
  fingerprint: str = ""  # invalidates the stats cache (and a preparation) when the data change
  description: str = ""  # what the streams read, for the log
  prepared_stats: str | None = None  # a prepared dataset's statistics file
  settings: Settings | None = None  # the config it was opened with (dataset.open_dataset)
  memo: dict = dataclasses.field(default_factory=dict, repr=False)  # this source's statistics
  test: Any = None  # a held-out test split, where the dataset has one (evaluate --split=test)

  @property
  def info(self) -> DatasetInfo:
    return DatasetInfo(
        self.name,
        len(self.class_names),
        self.train.num_examples,
        self.eval.num_examples if self.eval is not None else 0,
        tuple(self.class_names),
        self.test.num_examples if self.test is not None else 0,
    )


class UnknownDatasetError(DatasetError):
  """A dataset.name no source takes (registry.open_raw names the forms each takes)."""


@dataclasses.dataclass(frozen=True)
class SourceKind:
  """One kind of dataset.name, declared once by its module (digits.py, folder.py, oxford17.py,
  tfds_source.py) and listed in registry.py.

  form: the name as a user writes it, for messages ('"folder:/path"').
  matches(name): whether dataset.name is of this kind.
  open(settings) -> Source: the original images (never prepared data).
  identity(settings) -> (class names, signature): what identifies the data, from what costs
    no file listing; (None, None) where it cannot be known (the data are not here).
  prepared_dir(settings): where `python -m alexnet_jax.prepare` writes by default and
    training looks first (dataset.prepared='auto').
  canonical(name): the name prepared data record and are checked by (the same data, however
    the name spells them).
  changed: what a changed fingerprint means, for a refused resume (None: show the signatures).
  """

  form: str
  matches: Callable[[str], bool]
  open: Callable[[Settings], Source]
  identity: Callable[[Settings], tuple]
  prepared_dir: Callable[[Settings], str]
  canonical: Callable[[str], str] = lambda name: name
  changed: str | None = None


def prepared_variant(settings: Settings) -> str:
  """What a prepared directory's name says about the pixels: the resize rule, and _exif when
  JPEGs are turned upright."""
  return settings.resize + ("_exif" if settings.exif_transpose else "")


def prepared_dir_under(base: str, settings: Settings) -> str:
  """base/alexnet_jax_prepared/<name>_<variant>: the prepared directory of a dataset that has
  no directory of its own to put it beside (digits, TFDS)."""
  name = f"{sanitise(settings.name)}_{prepared_variant(settings)}"
  return os.path.join(os.path.expanduser(base), "alexnet_jax_prepared", name)
