"""Host-side input pipeline (tf.data): sources, 256x256 preprocessing, per-process streams, stats.

Every image leaves the host as uint8 [256, 256, 3]: decoded, the shorter side rescaled to 256
(antialiased bilinear, like PIL's BILINEAR), the central 256x256 kept (docs/paper.md#preprocessing). Random
crops, flips, lighting and mean subtraction happen on the device (augment.py).

Sources (`dataset_config.name`):
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
  digits         the 1,797 8x8 handwritten digits that ship inside scikit-learn (no download);
                 fixed split: 1,500 train / 297 validation.

Stream semantics (what makes runs exactly resumable):
  * Sources with random access (digits, folder): epoch e is a stateless permutation of the good
    examples, seeded by (seed, e). Global batch b holds global stream positions [b*G, (b+1)*G);
    shard p reads positions [b*G + p*L, b*G + (p+1)*L) with L = G / num_shards. The global
    stream is therefore the same for any number of processes, and resuming at step N computes
    positions directly (nothing is read or decoded for skipped steps).
  * TFDS sources: shard p reads its contiguous 1/num_shards of the split (TFDS records are
    sequential). Each epoch permutes the order of the record files (stateless, seeded by
    (seed, epoch)) and shuffles records through a buffer seeded the same way. Resuming at step N
    jumps to the right epoch and skips records BEFORE decoding.
  * A split smaller than one batch wraps around: a batch then holds some images twice (with
    different augmentations); an epoch counts as one step.
  * Files found undecodable by the statistics pass (`dataset_stats`, cached) are excluded before
    the stream is built, so they never shift it. Anything else that fails to decode at run time is
    dropped by `ignore_errors`, counted and named by the iterator (`.skipped`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import tempfile
import zlib
from typing import Any, Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

log = logging.getLogger(__name__)

IMAGE_SIZE = 256

# PCA of ImageNet RGB pixels scaled to [0, 1] (docs/paper.md#pca-lighting). Columns of IMAGENET_EIGVEC are the
# eigenvectors, in the order of IMAGENET_EIGVAL (descending).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)

# What the folder source reads (lower-case extensions); anything else is ignored.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp', '.tif', '.tiff')
# The only formats the PIL fallback opens (for files TF cannot decode): never EPS, PDF and the
# like, which PIL hands to external programs (Ghostscript).
PIL_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'WEBP', 'TIFF')

AUTOTUNE = tf.data.AUTOTUNE
_STATS_VERSION = 2  # 2: the cache carries an HMAC of its content (_stats_digest)
_DIGITS_NUM_TRAIN = 1500
_KEY_SHIFT = 32  # TFDS record key = file_index << 32 | record offset in that file.
_STATS_BATCH = 32


class DatasetError(ValueError):
  """A dataset the trainer cannot use as it is; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  num_train: int
  num_eval: int
  class_names: tuple


@dataclasses.dataclass(frozen=True)
class DatasetStats:
  """Training-split statistics of the 256x256 uint8 images the pipeline produces."""

  mean_image: np.ndarray  # float32 [256, 256, 3], pixel units 0..255
  covariance: np.ndarray  # float64 [3, 3], covariance of RGB pixels scaled to [0, 1]
  eigval: np.ndarray  # float32 [3], descending
  eigvec: np.ndarray  # float32 [3, 3], columns are eigenvectors
  num_images: int  # images that went into the statistics
  bad_files: tuple  # names of training files that failed to decode (excluded from training)


# ----------------------------------------------------------------------------------------------
# Preprocessing ops (each works eagerly and inside tf.data; tests check both).


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes (JPEG, PNG, GIF, BMP, WebP) -> uint8 [H, W, 3] RGB.

  Grayscale, palette, RGBA (alpha dropped) and CMYK JPEGs all come out as RGB. JPEGs use the
  accurate integer IDCT, as PIL/libjpeg do by default (TF's default is the fast, less exact one).
  """
  data = tf.convert_to_tensor(data, tf.string)
  image = tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
  )
  image.set_shape([None, None, 3])
  return image


RESIZE_RULES = ('round', 'torchvision', 'warp')


def resize_and_center_crop(
    image: tf.Tensor, size: int = IMAGE_SIZE, rule: str = 'round'
) -> tf.Tensor:
  """uint8 [H, W, C] -> uint8 [size, size, 3]: shorter side to `size`, central size x size.

  Equal to tf.image.resize(bilinear, antialias=True) to (size, round(long * size / short))
  followed by the central crop (offset floored), but only the kept window is computed
  (ScaleAndTranslate with the crop's offset as translation). Grayscale inputs are replicated
  to RGB. rule='torchvision': its Resize(size) + CenterCrop, i.e. the long side truncated,
  int(long * size / short), and the offset rounded half to even (so that the central 224 of
  this crop is CenterCrop(224)'s window); rule='warp': both sides to `size` (Caffe's
  convert_imageset), nothing cropped.
  """
  if rule not in RESIZE_RULES:
    raise ValueError(f'dataset.resize must be one of {RESIZE_RULES}, got {rule!r}')
  image = tf.convert_to_tensor(image)
  if image.shape.rank == 2:
    image = image[..., None]
  channels = image.shape[-1]
  if channels == 1:
    image = tf.tile(image, [1, 1, 3])
  elif channels is None:
    image = tf.cond(
        tf.shape(image)[-1] == 1, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3]
    )
  else:
    image = image[..., :3]
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short = tf.minimum(h, w)
  if rule == 'warp':
    nh = nw = tf.constant(size)
  elif rule == 'torchvision':
    nh, nw = h * size // short, w * size // short
  else:
    nh = (h * size + short // 2) // short  # exactly `size` on the shorter side
    nw = (w * size + short // 2) // short
  scale = tf.cast(tf.stack([nh, nw]), tf.float32) / tf.cast(tf.stack([h, w]), tf.float32)
  offsets = tf.stack([(nh - size) // 2, (nw - size) // 2])
  if rule == 'torchvision':  # round((n - size) / 2) half to even: up when the floor is odd
    d = tf.stack([nh, nw]) - size
    offsets += tf.cast((d % 2 == 1) & (offsets % 2 == 1), offsets.dtype)
  translation = -tf.cast(offsets, tf.float32)
  out = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(image, tf.float32)[None],
      size=tf.constant([size, size]),
      scale=scale,
      translation=translation,
      kernel_type='triangle',
      antialias=True,
  )[0]
  out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
  out.set_shape([size, size, 3])
  return out


def preprocess_encoded(data: tf.Tensor, size: int = IMAGE_SIZE, rule: str = 'round') -> tf.Tensor:
  """Encoded bytes -> uint8 [size, size, 3] (decode, shorter side to size, center crop)."""
  return resize_and_center_crop(decode_image(data), size, rule)


def _pil_load(path) -> np.ndarray:
  """Fallback for formats TF cannot decode (TIFF, ...); used only for files the stats pass
  flagged, and only for PIL_FORMATS."""
  if isinstance(path, tf.Tensor):
    path = path.numpy()
  if isinstance(path, bytes):
    path = os.fsdecode(path)
  with Image.open(path, formats=PIL_FORMATS) as im:
    return np.asarray(im.convert('RGB'), np.uint8)


# EXIF orientation (tag 0x0112) -> what makes the stored pixels upright, as PIL's
# ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
# 7 transverse, 8 rotate 90 counter-clockwise.
_ORIENT = (
    lambda x: x,
    lambda x: x[:, ::-1],
    lambda x: x[::-1, ::-1],
    lambda x: x[::-1],
    lambda x: tf.transpose(x, [1, 0, 2]),
    lambda x: tf.image.rot90(x, 3),
    lambda x: tf.image.rot90(tf.transpose(x, [1, 0, 2]), 2),
    lambda x: tf.image.rot90(x, 1),
)


def exif_orientation(path: str) -> int:
  """The EXIF orientation of an image file (1 = upright, also when absent or unreadable)."""
  try:
    with Image.open(path, formats=PIL_FORMATS) as im:
      value = int(im.getexif().get(0x0112, 1))
  except Exception:  # pylint: disable=broad-except  (the decode reports bad files)
    return 1
  return value if 1 <= value <= 8 else 1


def apply_orientation(image: tf.Tensor, orientation) -> tf.Tensor:
  """uint8 [H, W, 3] as stored -> upright for EXIF `orientation` (1..8)."""
  branches = [lambda f=f: f(image) for f in _ORIENT]
  out = tf.switch_case(tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7), branches)
  out.set_shape([None, None, 3])
  return out


# ----------------------------------------------------------------------------------------------
# Config helpers.


def _get(cfg, key, default=None):
  if cfg is None:
    return default
  if isinstance(cfg, dict):
    return cfg.get(key, default)
  try:
    value = cfg.get(key, default)
  except (AttributeError, KeyError, TypeError):
    value = getattr(cfg, key, default)
  return default if value is None else value


def _sanitise(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'dataset'


def _default_tfds_dir() -> str:
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def _user_cache_dir() -> str:
  return os.path.expanduser(os.environ.get('ALEXNET_JAX_CACHE', '~/.cache/alexnet_jax'))


def _writable_dir(path: str) -> bool:
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):
      pass
    return True
  except OSError:
    return False


# ----------------------------------------------------------------------------------------------
# Sources. A split is either random access (`element(key)` loads one example from its key) or
# sequential TFDS records (`records(...)`). Keys are int64 and stable across runs.


class _RandomAccessSplit:
  random_access = True
  resize = 'round'  # dataset.resize, set by _source

  def __init__(self, labels: np.ndarray, names: list):
    self.labels = np.asarray(labels, np.int32)
    self.names = names
    self.num_examples = len(self.labels)
    self.pil_keys = np.zeros([0], np.int64)  # set from the stats cache (folder only)

  def all_keys(self) -> np.ndarray:
    return np.arange(self.num_examples, dtype=np.int64)

  def name_of(self, key: int) -> str:
    return self.names[int(key)]

  def element(self, key: tf.Tensor) -> dict:
    raise NotImplementedError

  def python_fallback(self, key: int):
    """uint8 [H, W, 3] decoded in Python for a key TF failed on, or None if nothing decodes it."""
    return None


class _ArraySplit(_RandomAccessSplit):
  """Small images held in memory (digits): 'decoding' is the resize to 256."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, names: list):
    super().__init__(labels, names)
    self.images = np.asarray(images, np.uint8)

  def element(self, key):
    image = tf.gather(tf.constant(self.images), key)
    return {
        'image': resize_and_center_crop(image, rule=self.resize),
        'label': tf.gather(tf.constant(self.labels), key),
    }


class _FileSplit(_RandomAccessSplit):
  """Image files on disk (folder:); decoded by TF, or by PIL for keys flagged by the stats pass."""

  def __init__(self, paths: list, labels: np.ndarray, root: str, exif: bool = False):
    super().__init__(labels, [os.path.relpath(p, root) for p in paths])
    self.paths = np.asarray(paths, dtype=object)
    # Bytes of the file system's encoding (os.fsencode): non-ASCII names included.
    self._path_bytes = np.asarray([os.fsencode(p) for p in paths], dtype=object)
    # 1..8 per file when turning JPEGs upright (dataset.exif_transpose), else None.
    self.orientations = np.asarray([exif_orientation(p) for p in paths], np.int32) if exif else None

  def element(self, key):
    path = tf.gather(tf.constant(self._path_bytes, tf.string), key)
    pil = tf.constant(self.pil_keys)
    is_pil = tf.reduce_any(tf.equal(pil, key)) if len(self.pil_keys) else tf.constant(False)

    def with_pil():
      image = tf.py_function(_pil_load, [path], tf.uint8)
      image.set_shape([None, None, 3])
      return image

    image = tf.cond(is_pil, with_pil, lambda: decode_image(tf.io.read_file(path)))
    if self.orientations is not None and np.any(self.orientations != 1):
      image = apply_orientation(image, tf.gather(tf.constant(self.orientations), key))
    return {
        'image': resize_and_center_crop(image, rule=self.resize),
        'label': tf.gather(tf.constant(self.labels), key),
    }

  def python_fallback(self, key):
    try:
      image = _pil_load(self.paths[int(key)])
    except Exception:  # pylint: disable=broad-except
      return None
    if self.orientations is not None and image.size:
      image = apply_orientation(image, self.orientations[int(key)]).numpy()
    return image if image.size else None


class _TfdsSplit:
  """One split of a prepared TFDS dataset, read as raw records and decoded by the pipeline."""

  random_access = False
  resize = 'round'  # dataset.resize, set by _source

  def __init__(self, builder, split: str, image_key: str, label_key: str):
    self.builder = builder
    self.split = split
    self.image_key = image_key
    self.label_key = label_key
    self.num_examples = int(builder.info.splits[split].num_examples)
    self._file_index = {
        os.path.basename(f): i for i, f in enumerate(builder.info.splits[split].filenames)
    }
    self._files = {i: f for f, i in self._file_index.items()}
    self.pil_keys = np.zeros([0], np.int64)

  def instructions(self, start: int = 0, stop: int | None = None):
    """(filenames, file indices, skip, take) of examples [start, stop) in the split's order."""
    stop = self.num_examples if stop is None else stop
    if stop <= start:
      return [], [], [], []
    fis = self.builder.info.splits[f'{self.split}[{start}:{stop}]'].file_instructions
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
    return _instruction_keys(idx, skip, take)

  def records(self, instr, order=None, with_data=True, cycle_length=16) -> tf.data.Dataset:
    """Dataset of {'key', ['data']} reading the instructions' files (in `order` if given)."""
    names, idx, skip, take = (tf.constant(np.asarray(x)) for x in _as_arrays(instr))
    n = len(instr[0])
    if order is not None:
      names, idx, skip, take = (tf.gather(x, order) for x in (names, idx, skip, take))
    files = tf.data.Dataset.from_tensor_slices((names, idx, skip, take))

    def one_file(name, fidx, s, t):
      keys = tf.data.Dataset.range(s, s + t).map(
          lambda o: tf.bitwise.left_shift(fidx, _KEY_SHIFT) + o
      )
      if not with_data:
        return keys.map(lambda k: {'key': k})
      data = tf.data.TFRecordDataset(name, buffer_size=1 << 20).skip(s).take(t)
      return tf.data.Dataset.zip(keys, data).map(lambda k, d: {'key': k, 'data': d})

    return files.interleave(
        one_file,
        cycle_length=max(1, min(cycle_length, n)),
        block_length=1,
        num_parallel_calls=AUTOTUNE if with_data else None,
        deterministic=True,
    )

  def parse(self, serialized) -> dict:
    """Serialized tf.Example -> {'image' uint8 [256,256,3], 'label' int32} (decodes the image)."""
    ex = self.builder.info.features.deserialize_example(
        serialized, decoders={self.image_key: _skip_decoding()}
    )
    return {
        'image': preprocess_encoded(ex[self.image_key], rule=self.resize),
        'label': tf.cast(ex[self.label_key], tf.int32),
    }

  def name_of(self, key: int) -> str:
    fidx, offset = int(key) >> _KEY_SHIFT, int(key) & ((1 << _KEY_SHIFT) - 1)
    fname = self._files[fidx]
    name = f'{fname}[{offset}]'
    if 'file_name' in self.builder.info.features.keys():
      path = os.path.join(os.fspath(self.builder.data_dir), fname)
      for rec in tf.data.TFRecordDataset(path).skip(offset).take(1):
        ex = self.builder.info.features.deserialize_example(
            rec, decoders={self.image_key: _skip_decoding()}
        )
        name = f"{ex['file_name'].numpy().decode()} ({name})"
    return name

  def python_fallback(self, key):
    return None


def _skip_decoding():
  return tfds.decode.SkipDecoding()


def _as_arrays(instr):
  names, idx, skip, take = instr
  return (
      np.asarray(names, dtype=object).astype(bytes),
      np.asarray(idx, np.int64),
      np.asarray(skip, np.int64),
      np.asarray(take, np.int64),
  )


def _instruction_keys(idx, skip, take) -> np.ndarray:
  parts = [
      (np.int64(i) << _KEY_SHIFT) + np.arange(s, s + t, dtype=np.int64)
      for i, s, t in zip(idx, skip, take)
  ]
  return np.sort(np.concatenate(parts)) if parts else np.zeros([0], np.int64)


@dataclasses.dataclass
class _Source:
  name: str
  class_names: tuple
  train: Any
  eval: Any
  stats_path: str  # where the training-split statistics are cached
  fingerprint: str = ''  # invalidates the stats cache when the data change

  @property
  def info(self) -> DatasetInfo:
    return DatasetInfo(
        self.name,
        len(self.class_names),
        self.train.num_examples,
        self.eval.num_examples if self.eval is not None else 0,
        tuple(self.class_names),
    )


_SOURCES: dict = {}


def _source(dataset_config) -> _Source:
  name = str(_get(dataset_config, 'name', 'imagenet2012'))
  data_dir = _get(dataset_config, 'data_dir')
  manual_dir = _get(dataset_config, 'manual_dir')
  exif = bool(_get(dataset_config, 'exif_transpose', False))
  resize = str(_get(dataset_config, 'resize', 'round'))
  if resize not in RESIZE_RULES:
    raise ValueError(f'dataset.resize must be one of {RESIZE_RULES}, got {resize!r}')
  cache_key = (name, data_dir, manual_dir, exif, resize)
  if cache_key not in _SOURCES:
    if name == 'digits':
      src = _digits_source(data_dir)
    elif name.startswith('folder:'):
      src = _folder_source(name[len('folder:') :], exif)
    else:
      src = _tfds_source(name, data_dir, manual_dir)
    if resize != 'round':  # other pixels, other statistics
      src.stats_path = src.stats_path[: -len('.npz')] + f'_{resize}.npz'
      for split in (src.train, src.eval):
        if split is not None:
          split.resize = resize
    _SOURCES[cache_key] = src
  return _SOURCES[cache_key]


def _digits_source(data_dir) -> _Source:
  digits = load_digits()  # ships inside scikit-learn: no download
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  perm = np.random.RandomState(0).permutation(len(labels))  # fixed split, never changes
  tr, ev = perm[:_DIGITS_NUM_TRAIN], perm[_DIGITS_NUM_TRAIN:]
  names = [f'digits[{i}]' for i in range(len(labels))]
  root = os.path.join(data_dir, 'alexnet_jax_stats') if data_dir else _user_cache_dir()
  return _Source(
      'digits',
      tuple(str(i) for i in range(10)),
      _ArraySplit(images[tr], labels[tr], [names[i] for i in tr]),
      _ArraySplit(images[ev], labels[ev], [names[i] for i in ev]),
      os.path.join(root, 'digits_train.npz'),
  )


def _list_classes(root: str) -> list:
  return sorted(
      d for d in os.listdir(root) if not d.startswith('.') and os.path.isdir(os.path.join(root, d))
  )


def _list_files(class_dir: str) -> tuple[list, list]:
  """(image files, other files) under class_dir, sorted; hidden ones skipped."""
  images, other = [], []
  for dirpath, dirnames, filenames in os.walk(class_dir):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for f in sorted(filenames):
      if not f.startswith('.'):
        is_image = os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        (images if is_image else other).append(os.path.join(dirpath, f))
  return images, other


def _folder_source(path: str, exif: bool = False) -> _Source:
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'dataset folder {root!r} (from "folder:{path}") does not exist; it '
        'must hold one subfolder per class, or train/ and val/ each holding '
        'one subfolder per class.'
    )
  eval_dir = next(
      (
          os.path.join(root, d)
          for d in ('val', 'validation', 'test')
          if os.path.isdir(os.path.join(root, d))
      ),
      None,
  )
  split_layout = os.path.isdir(os.path.join(root, 'train'))
  train_root = os.path.join(root, 'train') if split_layout else root
  classes = _list_classes(train_root)
  if not classes:
    raise FileNotFoundError(f'no class subfolders in {train_root!r}')
  if len(classes) < 2:
    raise DatasetError(
        f'dataset folder {train_root!r} has one class folder ({classes[0]!r}): a classifier '
        f'needs at least two classes, one subfolder each.'
    )
  splits = {'train': ([], []), 'eval': ([], [])}
  empty, ignored = [], []
  for label, cls in enumerate(classes):
    files, other = _list_files(os.path.join(train_root, cls))
    ignored += other
    if not files:
      empty.append(os.path.join(train_root, cls))
    for f in files:
      held_out = not split_layout and zlib.crc32(os.path.relpath(f, root).encode()) % 10 == 0
      part = splits['eval' if held_out else 'train']
      part[0].append(f)
      part[1].append(label)
    if split_layout and eval_dir and os.path.isdir(os.path.join(eval_dir, cls)):
      files, other = _list_files(os.path.join(eval_dir, cls))
      ignored += other
      for f in files:
        splits['eval'][0].append(f)
        splits['eval'][1].append(label)
  if empty:
    raise DatasetError(
        f'class folder(s) without images: {", ".join(empty)} (images: '
        f'{", ".join(IMAGE_EXTENSIONS)}); add images or remove the folder(s).'
    )
  if ignored:
    log.warning(
        'ignoring %d file(s) that are not images (by extension) under %s: %s%s',
        len(ignored),
        root,
        ', '.join(os.path.relpath(f, root) for f in ignored[:5]),
        ', ...' if len(ignored) > 5 else '',
    )
  if not splits['train'][0]:
    raise FileNotFoundError(f'no image files under the class folders of {train_root!r}')
  if not splits['eval'][0]:
    raise DatasetError(
        f'the validation split of {root!r} is empty: '
        + (
            f'put images in {root}/val/<class>/ beside train/.'
            if split_layout
            else f'the fixed ~10% hold-out picked none of its {len(splits["train"][0])} '
            f'images; add images, or use {root}/train/<class>/ and {root}/val/<class>/.'
        )
    )
  digest = hashlib.sha1()
  for f in splits['train'][0]:
    st = os.stat(f)
    digest.update(f'{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  suffix = '_exif' if exif else ''  # upright images have other statistics
  stats_dir = os.path.join(root, '.alexnet_jax_stats')
  if not _writable_dir(stats_dir):  # read-only data: keep the cache in the user's cache dir
    stats_dir = _user_cache_dir()
    stats_name = (
        f'folder_{_sanitise(root)}_{hashlib.sha1(os.fsencode(root)).hexdigest()[:8]}_'
        f'train{suffix}.npz'
    )
  else:
    stats_name = f'train{suffix}.npz'
  return _Source(
      f'folder:{root}',
      tuple(classes),
      _FileSplit(*splits['train'], root, exif),
      _FileSplit(*splits['eval'], root, exif),
      os.path.join(stats_dir, stats_name),
      digest.hexdigest() + suffix,
  )


def _imagenet_missing_message(manual_dir: str, data_dir: str) -> str:
  return (
      'ImageNet (imagenet2012) is not prepared and its archives are missing.\n'
      f'Put these two files into the manual directory {manual_dir}:\n'
      '  ILSVRC2012_img_train.tar  (138 GB, one tar per synset)\n'
      '  ILSVRC2012_img_val.tar    (6.3 GB, 50,000 validation JPEGs)\n'
      '(register at https://image-net.org/download-images to download them), then prepare the '
      'dataset once with\n'
      f'  tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir}\n'
      '(or let the first run prepare it). Set dataset.data_dir / dataset.manual_dir to use other '
      'directories.'
  )


def _tfds_source(name: str, data_dir, manual_dir) -> _Source:
  data_dir = os.path.expanduser(data_dir) if data_dir else _default_tfds_dir()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'unknown dataset {name!r}: use "imagenet2012", "digits", "folder:/path" or the name of a '
        f'TFDS image-classification dataset ({type(e).__name__}: {e})'
    ) from None
  if not builder.is_prepared():
    base = name.split(':')[0].split('/')[0]
    if base == 'imagenet2012':
      manual_dir = os.path.expanduser(manual_dir or os.path.join(data_dir, 'downloads', 'manual'))
      tars = [
          os.path.join(manual_dir, f)
          for f in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
      ]
      if not all(os.path.exists(t) for t in tars):
        raise FileNotFoundError(_imagenet_missing_message(manual_dir, data_dir))
      log.warning(
          'preparing imagenet2012 from %s into %s (one time; hours for the full set)',
          manual_dir,
          data_dir,
      )
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
      )
    else:
      raise FileNotFoundError(
          f'TFDS dataset {name!r} is not prepared under {data_dir} and runs never download. '
          f'Prepare it once on a machine with internet access:\n'
          f'  tfds build {name} --data_dir={data_dir}\n'
          'or point dataset.data_dir at the directory that holds it.'
      )
  info = builder.info
  image_key, label_key = info.supervised_keys or ('image', 'label')
  features = info.features
  if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
    raise ValueError(f'TFDS dataset {name!r} has no image feature {image_key!r}')
  if not isinstance(features[label_key], tfds.features.ClassLabel):
    raise ValueError(f'TFDS dataset {name!r}: {label_key!r} is not a class label')
  if 'train' not in info.splits:
    raise ValueError(f'TFDS dataset {name!r} has no train split (splits: {list(info.splits)})')
  eval_split = next((s for s in ('validation', 'test') if s in info.splits), None)
  train = _TfdsSplit(builder, 'train', image_key, label_key)
  evals = _TfdsSplit(builder, eval_split, image_key, label_key) if eval_split else None
  stats_path = os.path.join(data_dir, 'alexnet_jax_stats', f'{_sanitise(name)}_train.npz')
  fingerprint = f'{info.version}:{train.num_examples}'
  return _Source(name, tuple(features[label_key].names), train, evals, stats_path, fingerprint)


def dataset_info(dataset_config) -> DatasetInfo:
  """Locates (and for imagenet2012 with its tars present, prepares) the dataset."""
  return _source(dataset_config).info


# ----------------------------------------------------------------------------------------------
# Dataset statistics.


def _stats_path(src: _Source, max_images) -> str:
  path = src.stats_path
  if max_images:
    path = path[: -len('.npz')] + f'_max{int(max_images)}.npz'
  return path


def _eigh_descending(cov: np.ndarray):
  eigval, eigvec = np.linalg.eigh(cov)
  order = np.argsort(eigval)[::-1]
  eigval, eigvec = eigval[order], eigvec[:, order]
  # Fix the sign (lighting is symmetric in it): the largest-magnitude component is negative,
  # matching the published ImageNet basis's first vector.
  signs = -np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(3)])
  return eigval, eigvec * np.where(signs == 0, 1.0, signs)


def _elements(split, keys: tf.data.Dataset) -> tf.data.Dataset:
  """Random-access split: dataset of keys -> decoded examples with 'key' (parallel decode)."""
  return keys.map(lambda k: {'key': k, **split.element(k)}, num_parallel_calls=AUTOTUNE)


def _stats_pass(split, max_images):
  """One streaming pass over the first max_images training examples (canonical order)."""
  saved, split.pil_keys = split.pil_keys, np.zeros([0], np.int64)  # find PIL-only files afresh
  try:
    return _stats_pass_tf_first(split, max_images)
  finally:
    split.pil_keys = saved


def _stats_pass_tf_first(split, max_images):
  n = split.num_examples if not max_images else min(split.num_examples, int(max_images))
  if split.random_access:
    all_keys = split.all_keys()[:n]
    ds = _elements(split, tf.data.Dataset.from_tensor_slices(all_keys))
  else:
    instr = split.instructions(0, n)
    all_keys = _instruction_keys(*instr[1:])
    ds = split.records(instr).map(
        lambda r: {'key': r['key'], **split.parse(r['data'])}, num_parallel_calls=AUTOTUNE
    )
  ds = ds.ignore_errors().batch(_STATS_BATCH)

  def reduce(b):
    x = tf.cast(b['image'], tf.float32)
    px = tf.reshape(tf.cast(b['image'], tf.float64) / 255.0, [-1, 3])
    return {
        'key': b['key'],
        'sum': tf.reduce_sum(x, 0),
        's1': tf.reduce_sum(px, 0),
        's2': tf.matmul(px, px, transpose_a=True),
    }

  ds = ds.map(reduce, num_parallel_calls=AUTOTUNE).prefetch(2)
  total = np.zeros([IMAGE_SIZE, IMAGE_SIZE, 3], np.float64)
  s1, s2, good = np.zeros([3]), np.zeros([3, 3]), []
  for b in ds.as_numpy_iterator():
    total += b['sum']
    s1 += b['s1']
    s2 += b['s2']
    good.append(b['key'])
  good = np.concatenate(good) if good else np.zeros([0], np.int64)
  failed = np.setdiff1d(all_keys, good)
  bad, pil = [], []
  for key in failed:  # few: formats only PIL reads (TIFF, ...) count, the rest are bad files
    image = split.python_fallback(key)
    if image is None:
      bad.append(int(key))
      continue
    image = resize_and_center_crop(image, rule=split.resize).numpy().astype(np.float64)
    total += image
    px = image.reshape(-1, 3) / 255.0
    s1 += px.sum(0)
    s2 += px.T @ px
    pil.append(int(key))
  count = len(all_keys) - len(bad)
  if count == 0:
    raise ValueError('no training image could be decoded')
  npx = count * IMAGE_SIZE * IMAGE_SIZE
  mu = s1 / npx
  cov = s2 / npx - np.outer(mu, mu)  # population covariance over all pixels
  eigval, eigvec = _eigh_descending(cov)
  return dict(
      mean_image=(total / count).astype(np.float32),
      covariance=cov,
      eigval=eigval.astype(np.float32),
      eigvec=eigvec.astype(np.float32),
      num_images=np.int64(count),
      bad_keys=np.asarray(bad, np.int64),
      bad_files=np.asarray([split.name_of(k) for k in bad], dtype=str),
      pil_keys=np.asarray(pil, np.int64),
  )


def _stats_key() -> bytes:
  """This user's secret for the statistics caches' HMAC (created once, mode 0600)."""
  path = os.path.join(_user_cache_dir(), 'stats_key')
  try:
    with open(path, 'rb') as f:
      key = f.read()
    if len(key) >= 32:
      return key
  except OSError:
    pass
  key = os.urandom(32)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
      f.write(key)
  except FileExistsError:  # another process made it first
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    log.warning('cannot keep a key in %s (%s): statistics caches will not be reused', path, e)
  return key


def _stats_digest(stats: dict, key: bytes) -> str:
  """HMAC-SHA256 of every array of the cache (names, dtypes, shapes, bytes), its meta included:
  a cache is trusted only if this user wrote it for this data, unaltered."""
  h = hmac.new(key, digestmod=hashlib.sha256)
  for name in sorted(k for k in stats if k != 'digest'):
    a = np.ascontiguousarray(np.asarray(stats[name]))
    h.update(f'{name}\0{a.dtype.str}\0{a.shape}\0'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _stats_locations(src: _Source, max_images) -> list:
  """Where the cache is read from, in order: beside the data, then the user's cache dir
  (where it is written when the data's directory is read-only)."""
  path = _stats_path(src, max_images)
  tag = hashlib.sha1(os.fsencode(path)).hexdigest()[:10]
  return [path, os.path.join(_user_cache_dir(), f'{tag}_{os.path.basename(path)}')]


def _load_or_compute_stats(src: _Source, max_images) -> dict:
  locations = _stats_locations(src, max_images)
  meta = f'v{_STATS_VERSION}:{src.name}:{src.fingerprint}:{max_images}'
  key = _stats_key()
  for path in locations:
    if not os.path.exists(path):
      continue
    try:
      with np.load(path, allow_pickle=False) as z:
        stats = {k: z[k] for k in z.files}
    except Exception as e:  # pylint: disable=broad-except
      log.warning('ignoring unreadable stats cache %s (%s)', path, e)
      continue
    if str(stats.get('meta')) != meta:
      continue  # other data, or an older version: recomputed
    if str(stats.get('digest')) != _stats_digest(stats, key):
      log.warning(
          'ignoring stats cache %s: its HMAC does not verify (altered, or written by another '
          "user or with another key; the key is this user's %s)",
          path,
          os.path.join(_user_cache_dir(), 'stats_key'),
      )
      continue
    return stats
  log.info('computing dataset statistics of %s (one pass over the training split)', src.name)
  stats = _stats_pass(src.train, max_images)
  stats['meta'] = np.asarray(meta)
  stats['digest'] = np.asarray(_stats_digest(stats, key))
  for target in locations:
    directory = os.path.dirname(target)
    if _writable_dir(directory):
      fd, tmp = tempfile.mkstemp(dir=directory, suffix='.npz')
      with os.fdopen(fd, 'wb') as f:
        np.savez(f, **stats)
      os.chmod(tmp, 0o644)
      os.replace(tmp, target)  # atomic: concurrent processes never see half a file
      break
  return stats


def _train_stats(dataset_config) -> dict:
  src = _source(dataset_config)
  stats = _load_or_compute_stats(src, _get(dataset_config, 'stats_max_images'))
  src.train.pil_keys = np.asarray(stats['pil_keys'], np.int64)
  return stats


def dataset_stats(dataset_config) -> DatasetStats:
  """Mean image and RGB PCA of the training split; computed once, then read from the cache."""
  s = _train_stats(dataset_config)
  if len(s['bad_files']):
    log.warning(
        '%d training files cannot be decoded and are skipped: %s',
        len(s['bad_files']),
        ', '.join(map(str, s['bad_files'])),
    )
  return DatasetStats(
      mean_image=np.asarray(s['mean_image'], np.float32),
      covariance=np.asarray(s['covariance'], np.float64),
      eigval=np.asarray(s['eigval'], np.float32),
      eigvec=np.asarray(s['eigvec'], np.float32),
      num_images=int(s['num_images']),
      bad_files=tuple(str(x) for x in s['bad_files']),
  )


def stats_cache_path(dataset_config) -> str:
  """Where dataset_stats caches the statistics of this dataset (before any fallback)."""
  return _stats_path(_source(dataset_config), _get(dataset_config, 'stats_max_images'))


# ----------------------------------------------------------------------------------------------
# Streams.


def _shard(shard_index, num_shards):
  if shard_index is None or num_shards is None:
    shard_index = jax.process_index() if shard_index is None else shard_index
    num_shards = jax.process_count() if num_shards is None else num_shards
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'shard_index {shard_index} not in [0, {num_shards})')
  return int(shard_index), int(num_shards)


def _local_batch(global_batch_size, num_shards):
  if global_batch_size % num_shards:
    raise ValueError(
        f'global batch size {global_batch_size} is not divisible by the '
        f'{num_shards} shards (processes)'
    )
  return global_batch_size // num_shards


def _epoch_seed(seed, epoch):
  """int64 tensor seed for epoch `epoch` (tf.data shuffle takes tensor seeds)."""
  return (tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64) * 7_919 + 17) % (2**31 - 1)


def _is_in(key, sorted_keys: np.ndarray):
  if not len(sorted_keys):
    return tf.constant(False)
  table = tf.constant(sorted_keys)
  i = tf.searchsorted(table, tf.reshape(key, [1]))[0]
  return tf.logical_and(
      i < len(sorted_keys), tf.gather(table, tf.minimum(i, len(sorted_keys) - 1)) == key
  )


class _Batches:
  """Python iterator over a tf.data stream of batches; counts and names dropped examples.

  Each element carries its position `q` in this process's stream: a gap means `ignore_errors`
  dropped an image that failed to decode at run time.
  """

  def __init__(self, ds, first_q, name_of_q: Callable[[int], str], keep=('image', 'label')):
    self._it = ds.as_numpy_iterator()
    self._next_q = first_q
    self._name_of_q = name_of_q
    self._keep = keep
    self.skipped: list = []  # names of images dropped at run time

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    b = next(self._it)
    q = b['q']
    for missing in np.setdiff1d(np.arange(self._next_q, q[-1] + 1), q):
      name = self._name_of_q(int(missing))
      self.skipped.append(name)
      log.warning(
          'skipped an image that failed to decode: %s (%d skipped so far)', name, len(self.skipped)
      )
    self._next_q = int(q[-1]) + 1
    return {k: b[k] for k in self._keep}

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)


def _random_access_positions(good: np.ndarray, seed, p, count, lb):
  """Function q -> key: local stream position q of process p -> example key."""
  g = lb * count
  m = len(good)
  good_t = tf.constant(good)
  seed = int(seed)

  def key_of(q):
    q = tf.cast(q, tf.int64)
    pos = (q // lb) * g + p * lb + q % lb  # global stream position
    epoch = pos // m
    i = tf.random.experimental.index_shuffle(
        pos % m, tf.stack([tf.constant(seed, tf.int64), epoch]), tf.constant(m - 1, tf.int64)
    )
    return tf.gather(good_t, i)

  return key_of


def train_iterator(
    dataset_config,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Iterator[dict]:
  """Endless training batches of this process: {'image': uint8 [L,256,256,3], 'label': int32 [L]}.

  L = global_batch_size // num_shards; shard p holds positions [p*L, (p+1)*L) of each global
  batch (sharding.process_data_shard(mesh) gives a process its shard). `start_step=N` yields exactly what an uninterrupted run yields from its batch N+1 on.
  Returns an iterator whose `.skipped` lists images dropped at run time (known bad files are
  excluded up front and listed in dataset_stats(...).bad_files).
  """
  p, count = _shard(shard_index, num_shards)
  lb = _local_batch(global_batch_size, count)
  src = _source(dataset_config)
  split = src.train
  stats = _train_stats(dataset_config)
  bad = np.sort(np.asarray(stats['bad_keys'], np.int64))
  if len(bad):
    log.warning(
        'excluding %d undecodable training files: %s',
        len(bad),
        ', '.join(map(str, stats['bad_files'])),
    )
  q0 = int(start_step) * lb
  cache = bool(_get(dataset_config, 'cache', False))
  if split.random_access:
    good = np.setdiff1d(split.all_keys(), bad)
    key_of = _random_access_positions(good, seed, p, count, lb)
    qs = tf.data.Dataset.counter(q0)
    if cache:
      ds = qs.map(lambda q: {'q': q, 'key': key_of(q)})
    else:
      ds = qs.map(lambda q: {'q': q, **split.element(key_of(q))}, num_parallel_calls=AUTOTUNE)
    name_of_q = lambda q: split.name_of(int(key_of(q)))  # noqa: E731
  else:
    ds, name_of_q = _tfds_train_stream(dataset_config, split, bad, seed, p, count, q0, cache)
  if cache:
    return _cached_batches(ds, split, lb, q0)
  ds = ds.ignore_errors().batch(lb).prefetch(AUTOTUNE)
  return _Batches(ds, q0, name_of_q)


def _tfds_train_stream(dataset_config, split, bad, seed, p, count, q0, cache):
  n = split.num_examples
  start, stop = p * n // count, (p + 1) * n // count  # this process's contiguous share
  instr = split.instructions(start, stop)
  shard_keys = _instruction_keys(*instr[1:])
  length = len(shard_keys) - int(np.isin(bad, shard_keys).sum())  # good examples per epoch
  if length <= 0:
    raise ValueError(f'process {p} has no training examples ({n} examples, {count} processes)')
  buffer = max(1, min(int(_get(dataset_config, 'shuffle_buffer', 16384)), length))
  n_files = len(instr[0])

  def epoch(e):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n_files, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), e])
    )
    ds = split.records(instr, order=order, with_data=not cache)
    if len(bad):
      ds = ds.filter(lambda r: tf.logical_not(_is_in(r['key'], bad)))
    return ds.shuffle(buffer, seed=_epoch_seed(seed, e), reshuffle_each_iteration=False)

  e0, offset = divmod(q0, length)
  ds = (
      epoch(tf.constant(e0, tf.int64))
      .skip(offset)
      .concatenate(tf.data.Dataset.counter(e0 + 1).flat_map(epoch))
  )  # skip before decoding
  ds = ds.enumerate(q0).map(lambda q, r: {'q': q, **r})
  if not cache:
    ds = ds.map(lambda r: {'q': r['q'], **split.parse(r['data'])}, num_parallel_calls=AUTOTUNE)
  name_of_q = lambda q: f'example #{q} of process {p} in {split.split} ({split.builder.name})'  # noqa: E731
  return ds, name_of_q


def _cached_batches(key_stream: tf.data.Dataset, split, lb: int, q0: int):
  """cache=True: decode the split once into RAM, then gather batches by key (same stream)."""
  keys = split.all_keys()
  if split.random_access:
    ds = _elements(split, tf.data.Dataset.from_tensor_slices(keys))
  else:
    ds = split.records(split.instructions()).map(
        lambda r: {'key': r['key'], **split.parse(r['data'])}, num_parallel_calls=AUTOTUNE
    )
  images = np.zeros([len(keys), IMAGE_SIZE, IMAGE_SIZE, 3], np.uint8)
  labels = np.zeros([len(keys)], np.int32)
  filled = np.zeros([len(keys)], bool)
  for b in ds.ignore_errors().batch(256).as_numpy_iterator():
    rows = np.searchsorted(keys, b['key'])
    images[rows], labels[rows], filled[rows] = b['image'], b['label'], True
  for key in keys[~filled]:
    log.warning('image failed to decode; its cached copy stays black: %s', split.name_of(key))
  it = key_stream.batch(lb).prefetch(AUTOTUNE).as_numpy_iterator()

  def gen():
    for b in it:
      rows = np.searchsorted(keys, b['key'])
      yield {'image': images[rows], 'label': labels[rows]}

  return gen()


def eval_iterator(
    dataset_config,
    *,
    global_batch_size: int,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Iterator[dict]:
  """One pass over the whole validation split: {'image', 'label', 'mask'} per local batch.

  Process p reads its contiguous share of the split; every process yields the same number of
  batches (padding with mask=False), and the masked-in examples of all processes are exactly the
  split, each once. An image that fails to decode is reported and replaced by padding.
  """
  return split_iterator(
      dataset_config,
      'eval',
      global_batch_size=global_batch_size,
      shard_index=shard_index,
      num_shards=num_shards,
  )


def split_size(dataset_config, split: str, max_examples: int | None = None) -> int:
  """How many examples split_iterator(dataset_config, split, max_examples=...) covers."""
  return _covered(_split(_source(dataset_config), split), max_examples)


def _covered(split, max_examples) -> int:
  n = 0 if split is None else split.num_examples
  return min(n, int(max_examples)) if max_examples else n


def _split(src: _Source, split: str):
  if split not in ('train', 'eval'):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  return src.train if split == 'train' else src.eval


def split_iterator(
    dataset_config,
    split: str,
    *,
    global_batch_size: int,
    shard_index: int | None = None,
    num_shards: int | None = None,
    max_examples: int | None = None,
) -> Iterator[dict]:
  """One pass over a split ('train' or 'eval') in a fixed order, as eval_iterator does it.

  max_examples: cover only that many, spread over the split: evenly spaced keys of
  random-access sources (whose canonical order is class by class), a prefix of TFDS
  records (which TFDS shuffled when it prepared them).
  """
  p, count = _shard(shard_index, num_shards)
  lb = _local_batch(global_batch_size, count)
  split = _split(_source(dataset_config), split)
  n = _covered(split, max_examples)
  if n == 0:
    return iter(())
  start, stop = p * n // count, (p + 1) * n // count
  num_batches = -(-(-(-n // count)) // lb)  # ceil(ceil(n / count) / lb): same on every process
  if split.random_access:
    # Evenly spaced over the whole split (all of it when n == num_examples).
    chosen = np.unique(np.linspace(0, split.num_examples - 1, n).round().astype(np.int64))
    expected = chosen[start:stop]
    ds = _elements(split, tf.data.Dataset.from_tensor_slices(expected))
  else:
    instr = split.instructions(start, stop)
    expected = _instruction_keys(*instr[1:])
    ds = split.records(instr, cycle_length=4).map(
        lambda r: {'key': r['key'], **split.parse(r['data'])}, num_parallel_calls=AUTOTUNE
    )
  ds = ds.map(
      lambda r: {'q': r['key'], 'image': r['image'], 'label': r['label'], 'mask': tf.constant(True)}
  )
  pad = tf.data.Dataset.from_tensors(
      {
          'q': tf.constant(-1, tf.int64),
          'image': tf.zeros([IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8),
          'label': tf.constant(0, tf.int32),
          'mask': tf.constant(False),
      }
  ).repeat()
  ds = ds.ignore_errors().concatenate(pad).take(num_batches * lb).batch(lb).prefetch(AUTOTUNE)
  return _EvalBatches(ds, expected, split)


class _EvalBatches:
  """Reports validation images dropped by ignore_errors (their slots became padding)."""

  def __init__(self, ds, expected_keys, split):
    self._it = ds.as_numpy_iterator()
    self._expected = expected_keys
    self._seen = []
    self._split = split
    self.skipped: list = []

  def __iter__(self):
    return self

  def __next__(self):
    try:
      b = next(self._it)
    except StopIteration:
      seen = np.concatenate(self._seen) if self._seen else np.zeros([0], np.int64)
      for key in np.setdiff1d(self._expected, seen):
        name = self._split.name_of(int(key))
        self.skipped.append(name)
        log.warning('validation image failed to decode and was left out: %s', name)
      self._expected = np.zeros([0], np.int64)
      raise
    self._seen.append(b['q'][b['mask']])
    return {'image': b['image'], 'label': b['label'], 'mask': b['mask']}
