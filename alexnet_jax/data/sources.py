"""Where the images come from: the digits, a folder of class subfolders, Oxford-17, any TFDS
dataset.

Sources (`dataset.name`):
  imagenet2012   the real TFDS builder; prepared from ILSVRC2012_img_{train,val}.tar found in the
                 manual directory (default {data_dir}/downloads/manual).
  <tfds name>    any TFDS image-classification dataset already prepared under `data_dir`.
  folder:/path   one subfolder per class; either /path/{train,val}/<class>/... or /path/<class>/...
                 (then a fixed ~10% of each class, chosen by a hash of the file's path, is held out
                 for evaluation). Files are read by extension (IMAGE_EXTENSIONS); others are ignored
                 with one warning. At least two classes, no empty class folder and a non-empty
                 validation split are required. `dataset.exif_transpose=True` turns JPEGs upright
                 by their EXIF orientation, as PIL's ImageOps.exif_transpose (default False: the
                 paper's and TFDS's pipelines ignore EXIF).
  oxford17:/path the Oxford 17-category flowers: the published 17flowers.tgz or its extracted
                 directory; split 1 of the authors' datasplits.mat when present (its test split
                 is the Source's `test`), else a seeded 80/20 split per class (oxford17.py).
  digits         the 1,797 8x8 handwritten digits that ship inside scikit-learn (no download);
                 fixed split: 1,500 train / 297 validation.

A split is either random access (`element(key)` loads one example from its key 0..n-1) or
sequential TFDS records (`records(...)`, keys file_index << 32 | offset). Keys are int64 and
stable across runs; prepared data (shards.py) keep them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import zlib
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from sklearn.datasets import load_digits

from alexnet_jax.data.preprocess import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    RESIZE_RULES,
    apply_orientation,
    decode_image,
    exif_orientation,
    pil_load,
    preprocess_encoded,
    resize_and_center_crop,
)
from alexnet_jax.data.settings import (
    DatasetError,
    DatasetNotFoundError,
    Settings,
    default_tfds_dir,
    sanitise,
    user_cache_dir,
    writable_dir,
)

KEY_SHIFT = 32  # TFDS record key = file_index << 32 | record offset in that file.
NO_KEYS = np.zeros([0], np.int64)
_DIGITS_NUM_TRAIN = 1500


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


class ArraySplit(RandomAccessSplit):
  """Small images held in memory (digits): 'decoding' is the resize to 256."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, names: list, resize: str):
    super().__init__(labels, names, resize)
    self.images = np.asarray(images, np.uint8)

  def element(self, key, pil_keys=NO_KEYS):
    del pil_keys  # arrays need no decoder
    image = tf.gather(tf.constant(self.images), key)
    return {
        "image": resize_and_center_crop(image, rule=self.resize),
        "label": tf.gather(tf.constant(self.labels), key),
    }


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


class TfdsSplit:
  """One split of a prepared TFDS dataset, read as raw records and decoded by the pipeline."""

  random_access = False

  def __init__(
      self,
      builder,
      split: str,
      image_key: str,
      label_key: str,
      resize: str,
      max_pixels: int = MAX_IMAGE_PIXELS,
  ):
    self.resize = resize  # dataset.resize
    self.max_pixels = int(max_pixels)  # dataset.max_image_pixels
    self.builder = builder
    self.split = split
    self.image_key = image_key
    self.label_key = label_key
    self.num_examples = int(builder.info.splits[split].num_examples)
    self._file_index = {
        os.path.basename(f): i for i, f in enumerate(builder.info.splits[split].filenames)
    }
    self._files = {i: f for f, i in self._file_index.items()}

  def instructions(self, start: int = 0, stop: int | None = None):
    """(filenames, file indices, skip, take) of examples [start, stop) in the split's order."""
    stop = self.num_examples if stop is None else stop
    if stop <= start:
      return [], [], [], []
    fis = self.builder.info.splits[f"{self.split}[{start}:{stop}]"].file_instructions
    names, idx, skip, take = [], [], [], []
    for fi in fis:
      t = fi.take if fi.take is not None and fi.take >= 0 else fi.examples_in_shard - fi.skip
      if t <= 0:
        continue
      names.append(os.fspath(fi.filename))
      idx.append(self._file_index[os.path.basename(os.fspath(fi.filename))])
      skip.append(fi.skip)
      take.append(t)
    return names, idx, skip, take

  def all_keys(self) -> np.ndarray:
    _, idx, skip, take = self.instructions()
    return instruction_keys(idx, skip, take)

  def canonical(self, n: int | None = None, pil_keys=NO_KEYS) -> tf.data.Dataset:
    """{'key', 'image', 'label'} of the first n records in the split's order; failures dropped."""
    del pil_keys  # TFDS images are in formats TF decodes
    ds = self.records(self.instructions(0, n), cycle_length=4)
    return ds.map(
        lambda r: {"key": r["key"], **self.parse(r["data"])}, tf.data.AUTOTUNE
    ).ignore_errors()

  def file_lengths(self) -> tuple:
    """(file names, examples per file) of the split, in the split's order."""
    names = [os.path.basename(os.fspath(f)) for f in self.builder.info.splits[self.split].filenames]
    return names, [int(n) for n in self.builder.info.splits[self.split].shard_lengths]

  def records(self, instr, order=None, with_data=True, cycle_length=16) -> tf.data.Dataset:
    """Dataset of {'key', ['data']} reading the instructions' files (in `order` if given)."""
    if not with_data:
      return record_keys(instr, order, cycle_length)
    names, idx, skip, take = (tf.constant(np.asarray(x)) for x in as_arrays(instr))
    n = len(instr[0])
    if order is not None:
      names, idx, skip, take = (tf.gather(x, order) for x in (names, idx, skip, take))
    files = tf.data.Dataset.from_tensor_slices((names, idx, skip, take))

    def one_file(name, fidx, s, t):
      keys = tf.data.Dataset.range(s, s + t).map(
          lambda o: tf.bitwise.left_shift(fidx, KEY_SHIFT) + o
      )
      data = tf.data.TFRecordDataset(name, buffer_size=1 << 20).skip(s).take(t)
      return tf.data.Dataset.zip(keys, data).map(lambda k, d: {"key": k, "data": d})

    return files.interleave(
        one_file,
        cycle_length=max(1, min(cycle_length, n)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )

  def parse(self, serialized, with_name: bool = False) -> dict:
    """Serialized tf.Example -> {'image' uint8 [256,256,3], 'label' int32} (decodes the image);
    with_name: also 'name', the record's file_name feature ('' where it has none)."""
    ex = self.builder.info.features.deserialize_example(
        serialized, decoders={self.image_key: _skip_decoding()}
    )
    out = {
        "image": preprocess_encoded(
            ex[self.image_key], rule=self.resize, max_pixels=self.max_pixels
        ),
        "label": tf.cast(ex[self.label_key], tf.int32),
    }
    if with_name:
      out["name"] = ex["file_name"] if "file_name" in ex else tf.constant("")
    return out

  def record_name(self, key: int, file_name: str = "") -> str:
    """name_of without reading the record: its file_name (when known) and position."""
    fidx, offset = int(key) >> KEY_SHIFT, int(key) & ((1 << KEY_SHIFT) - 1)
    where = f"{self._files[fidx]}[{offset}]"
    return f"{file_name} ({where})" if file_name else where

  def name_of(self, key: int) -> str:
    """The record's file_name feature and position (reads the record: for a few keys)."""
    fidx, offset = int(key) >> KEY_SHIFT, int(key) & ((1 << KEY_SHIFT) - 1)
    file_name = ""
    if "file_name" in self.builder.info.features.keys():
      path = os.path.join(os.fspath(self.builder.data_dir), self._files[fidx])
      for rec in tf.data.TFRecordDataset(path).skip(offset).take(1):
        ex = self.builder.info.features.deserialize_example(
            rec, decoders={self.image_key: _skip_decoding()}
        )
        file_name = ex["file_name"].numpy().decode()
    return self.record_name(key, file_name)

  def python_fallback(self, key):
    return None


def _skip_decoding():
  return tfds.decode.SkipDecoding()


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


def open_raw(settings: Settings) -> Source:
  """The source `settings` names, read from its original images (never from prepared data)."""
  name, resize = settings.name, settings.resize
  if resize not in RESIZE_RULES:
    raise DatasetError(f"dataset.resize must be one of {RESIZE_RULES}, got {resize!r}")
  try:
    if name == "digits":
      src = _digits_source(settings.data_dir, resize)
    elif name.startswith("folder:"):
      src = _folder_source(name[len("folder:") :], resize, settings.exif_transpose)
    elif name.startswith("oxford17:"):
      from alexnet_jax.data import oxford17  # pylint: disable=g-import-not-at-top  (imports this)

      src = oxford17.open_source(name, resize, settings.exif_transpose)
    else:
      _refuse_paths(name)
      src = _tfds_source(name, settings.data_dir, settings.manual_dir, resize)
  except DatasetError:
    raise
  except FileNotFoundError as e:  # the messages say where the data belong: one line each
    raise DatasetNotFoundError(str(e)) from None
  except ValueError as e:
    raise DatasetError(str(e)) from None
  if resize != "round":  # other pixels, other statistics
    src.stats_path = src.stats_path[: -len(".npz")] + f"_{resize}.npz"
  for split in (src.train, src.eval, src.test):  # the limit its decoding checks
    if split is not None:
      split.max_pixels = int(settings.max_image_pixels)
  return src


def _digits_source(data_dir, resize) -> Source:
  digits = load_digits()  # ships inside scikit-learn: no download
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  perm = np.random.RandomState(0).permutation(len(labels))  # fixed split, never changes
  tr, ev = perm[:_DIGITS_NUM_TRAIN], perm[_DIGITS_NUM_TRAIN:]
  names = [f"digits[{i}]" for i in range(len(labels))]
  root = os.path.join(data_dir, "alexnet_jax_stats") if data_dir else user_cache_dir()
  return Source(
      "digits",
      tuple(str(i) for i in range(10)),
      ArraySplit(images[tr], labels[tr], [names[i] for i in tr], resize),
      ArraySplit(images[ev], labels[ev], [names[i] for i in ev], resize),
      os.path.join(root, "digits_train.npz"),
      f"digits:{_DIGITS_NUM_TRAIN}",
      "the digits that ship inside scikit-learn",
  )


def list_classes(root: str) -> list:
  return sorted(
      d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
  )


def _list_files(class_dir: str) -> tuple[list, list]:
  """(image files, other files) under class_dir, sorted; hidden ones skipped. Only regular
  files (a symbolic link to one counts) are images: a FIFO, device or socket with an image's
  name is an other file, never opened (a FIFO would block the reader)."""
  images, other = [], []
  for dirpath, dirnames, filenames in os.walk(class_dir):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for f in sorted(filenames):
      if not f.startswith("."):
        path = os.path.join(dirpath, f)
        is_image = os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and _is_file(path)
        (images if is_image else other).append(path)
  return images, other


def _is_file(path: str) -> bool:
  try:
    return stat.S_ISREG(os.stat(path).st_mode)
  except OSError:  # a dangling link: not an image to read
    return False


def folder_root(name: str) -> str:
  """'folder:/path' (or '~/path', relative) -> the folder's absolute path."""
  return os.path.abspath(os.path.expanduser(name[len("folder:") :]))


def _folder_layout(root: str) -> tuple:
  """(train root, validation dir or None): root/train and root/{val,validation,test} when
  root/train exists, else root itself and no validation dir (a hash holds out ~10%)."""
  eval_dir = next(
      (
          os.path.join(root, d)
          for d in ("val", "validation", "test")
          if os.path.isdir(os.path.join(root, d))
      ),
      None,
  )
  if os.path.isdir(os.path.join(root, "train")):
    return os.path.join(root, "train"), eval_dir
  return root, None


def _folder_source(path: str, resize: str, exif: bool) -> Source:
  root = folder_root("folder:" + path)
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'dataset folder {root!r} (from "folder:{path}") does not exist; it '
        "must hold one subfolder per class, or train/ and val/ each holding "
        "one subfolder per class."
    )
  train_root, eval_dir = _folder_layout(root)
  split_layout = train_root != root
  classes = list_classes(train_root)
  if not classes:
    raise FileNotFoundError(f"no class subfolders in {train_root!r}")
  if len(classes) < 2:
    raise DatasetError(
        f"dataset folder {train_root!r} has one class folder ({classes[0]!r}): a classifier "
        f"needs at least two classes, one subfolder each."
    )
  splits = {"train": ([], []), "eval": ([], [])}
  empty, ignored = [], []
  for label, cls in enumerate(classes):
    files, other = _list_files(os.path.join(train_root, cls))
    ignored += other
    if not files:
      empty.append(os.path.join(train_root, cls))
    for f in files:
      held_out = not split_layout and zlib.crc32(os.path.relpath(f, root).encode()) % 10 == 0
      part = splits["eval" if held_out else "train"]
      part[0].append(f)
      part[1].append(label)
    if split_layout and eval_dir and os.path.isdir(os.path.join(eval_dir, cls)):
      files, other = _list_files(os.path.join(eval_dir, cls))
      ignored += other
      for f in files:
        splits["eval"][0].append(f)
        splits["eval"][1].append(label)
  if empty:
    raise DatasetError(
        f"class folder(s) without images: {', '.join(empty)} (images: "
        f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)."
    )
  if ignored:
    logging.warning(
        "ignoring %d file(s) that are not images (by extension, or not regular files: "
        "FIFOs, devices, sockets) under %s: %s%s",
        len(ignored),
        root,
        ", ".join(os.path.relpath(f, root) for f in ignored[:5]),
        ", ..." if len(ignored) > 5 else "",
    )
  if not splits["train"][0]:
    raise FileNotFoundError(f"no image files under the class folders of {train_root!r}")
  if not splits["eval"][0]:
    raise DatasetError(
        f"the validation split of {root!r} is empty: "
        + (
            f"put images in {root}/val/<class>/ beside train/."
            if split_layout
            else f"the fixed ~10% hold-out picked none of its {len(splits['train'][0])} "
            f"images; add images, or use {root}/train/<class>/ and {root}/val/<class>/."
        )
    )
  digest = hashlib.sha1()
  for f in splits["train"][0]:
    st = os.stat(f)
    digest.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  suffix = "_exif" if exif else ""  # upright images have other statistics
  stats_dir = os.path.join(root, ".alexnet_jax_stats")
  if not writable_dir(stats_dir):  # read-only data: keep the cache in the user's cache dir
    stats_dir = user_cache_dir()
    stats_name = (
        f"folder_{sanitise(root)}_{hashlib.sha1(os.fsencode(root)).hexdigest()[:8]}_"
        f"train{suffix}.npz"
    )
  else:
    stats_name = f"train{suffix}.npz"
  return Source(
      f"folder:{root}",
      tuple(classes),
      FileSplit(*splits["train"], root, resize, exif),
      FileSplit(*splits["eval"], root, resize, exif),
      os.path.join(stats_dir, stats_name),
      digest.hexdigest() + suffix,
      f"image files under {root}",
  )


def _imagenet_missing_message(manual_dir: str, data_dir: str) -> str:
  return (
      "ImageNet (imagenet2012) is not prepared and its archives are missing.\n"
      f"Put these two files into the manual directory {manual_dir}:\n"
      "  ILSVRC2012_img_train.tar  (138 GB, one tar per synset)\n"
      "  ILSVRC2012_img_val.tar    (6.3 GB, 50,000 validation JPEGs)\n"
      "(register at https://image-net.org/download-images to download them), then prepare the "
      "dataset once with\n"
      f"  tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir}\n"
      "(or let the first run prepare it). Set dataset.data_dir / dataset.manual_dir to use other "
      "directories."
  )


def _refuse_paths(name: str) -> None:
  """A path given as dataset.name: TFDS would list its builders; say what was meant."""
  path = os.path.expanduser(name)
  if os.path.isdir(path):
    raise DatasetError(
        f"dataset.name={name!r} is a directory, not a TFDS dataset: a folder of images (one "
        f"subfolder per class) is read with --config.dataset.name=folder:{name}"
    )
  if os.sep in name and not os.path.exists(path) and name.split(os.sep)[0] in ("", ".", "..", "~"):
    raise DatasetNotFoundError(
        f"dataset.name={name!r} looks like a path, and it does not exist; a folder of images "
        f"is read with --config.dataset.name=folder:PATH (one subfolder per class)"
    )


def _tfds_source(name: str, data_dir, manual_dir, resize) -> Source:
  data_dir = os.path.expanduser(data_dir) if data_dir else default_tfds_dir()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'unknown dataset {name!r}: use "imagenet2012", "digits", "folder:/path", '
        '"oxford17:/path" or the name of a TFDS image-classification dataset '
        f"({type(e).__name__}: {e})"
    ) from None
  if not builder.is_prepared():
    base = name.split(":")[0].split("/")[0]
    if base == "imagenet2012":
      manual_dir = os.path.expanduser(manual_dir or os.path.join(data_dir, "downloads", "manual"))
      tars = [
          os.path.join(manual_dir, f)
          for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
      ]
      if not all(os.path.exists(t) for t in tars):
        raise FileNotFoundError(_imagenet_missing_message(manual_dir, data_dir))
      logging.warning(
          "preparing imagenet2012 from %s into %s (one time; hours for the full set)",
          manual_dir,
          data_dir,
      )
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
      )
    else:
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared under {data_dir} and runs never download. "
          f"Prepare it once on a machine with internet access:\n"
          f"  tfds build {name} --data_dir={data_dir}\n"
          "or point dataset.data_dir at the directory that holds it."
      )
  info = builder.info
  image_key, label_key = info.supervised_keys or ("image", "label")
  features = info.features
  if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
    raise ValueError(f"TFDS dataset {name!r} has no image feature {image_key!r}")
  if not isinstance(features[label_key], tfds.features.ClassLabel):
    raise ValueError(f"TFDS dataset {name!r}: {label_key!r} is not a class label")
  if "train" not in info.splits:
    raise ValueError(f"TFDS dataset {name!r} has no train split (splits: {list(info.splits)})")
  eval_split = next((s for s in ("validation", "test") if s in info.splits), None)
  train = TfdsSplit(builder, "train", image_key, label_key, resize)
  evals = TfdsSplit(builder, eval_split, image_key, label_key, resize) if eval_split else None
  stats_path = os.path.join(data_dir, "alexnet_jax_stats", f"{sanitise(name)}_train.npz")
  fingerprint = f"{info.version}:{train.num_examples}"
  return Source(
      name,
      tuple(features[label_key].names),
      train,
      evals,
      stats_path,
      fingerprint,
      f"TFDS records of {name} under {data_dir}",
  )


def cheap_identity(settings: Settings) -> tuple:
  """(class names, signature) of the original data, from what costs no file listing: a
  folder's class directories and their modification times (a directory's changes when a file
  is added, removed or renamed in it), a TFDS dataset's version and size. None for what cannot
  be known (the data are not here)."""
  name = settings.name
  if name == "digits":
    return tuple(str(i) for i in range(10)), f"digits:{_DIGITS_NUM_TRAIN}"
  if name.startswith("folder:"):
    root = folder_root(name)
    train_root, eval_dir = _folder_layout(root)
    if not os.path.isdir(train_root):
      return None, None
    classes = list_classes(train_root)
    digest = hashlib.sha1()
    for base in (train_root, eval_dir) if eval_dir else (train_root,):
      for cls in classes:
        path = os.path.join(base, cls)
        if os.path.isdir(path):
          digest.update(f"{os.path.relpath(path, root)}\0{os.stat(path).st_mtime_ns}\n".encode())
    return tuple(classes), digest.hexdigest()
  if name.startswith("oxford17:"):
    from alexnet_jax.data import oxford17  # pylint: disable=g-import-not-at-top  (imports this)

    try:
      return oxford17.CLASS_NAMES, oxford17.signature(oxford17.layout(name))
    except FileNotFoundError:
      return None, None
  try:
    builder = tfds.builder(
        name, data_dir=os.path.expanduser(settings.data_dir or default_tfds_dir())
    )
    if not builder.is_prepared():
      return None, None
    info = builder.info
    label_key = (info.supervised_keys or ("image", "label"))[1]
    return (
        tuple(info.features[label_key].names),
        f"{info.version}:{info.splits['train'].num_examples}",
    )
  except Exception:  # pylint: disable=broad-except  (the prepared plan is checked without it)
    return None, None
