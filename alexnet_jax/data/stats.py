"""Training-split statistics: the mean image and the RGB PCA that lighting uses.

One streaming pass over the 256x256 uint8 images the streams produce, accumulated in exact
integers (so a preparation that sums its shards gets the same numbers bit for bit). The result
is cached beside the data (or in the user's cache dir when the data are read-only), with an
HMAC keyed by a per-user secret: a cache is trusted only if this user wrote it for these data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os

import numpy as np
from absl import logging

from alexnet_jax.data.dataset import open_dataset
from alexnet_jax.data.preprocess import MAX_IMAGE_PIXELS, resize_and_center_crop
from alexnet_jax.data.settings import (
    DatasetError,
    Settings,
    writable_dir,
)
from alexnet_jax.data.sources import Source
from alexnet_jax.facts import IMAGE_SIZE
from alexnet_jax.files import user_cache_dir, write_atomically

# Cache version 3: exact integer sums and an HMAC of the content. A cache of another version is
# recomputed.
STATS_VERSION = 3
_STATS_BATCH = 32


@dataclasses.dataclass(frozen=True)
class DatasetStats:
  """Training-split statistics of the 256x256 uint8 images the pipeline produces."""

  mean_image: np.ndarray  # float32 [256, 256, 3], pixel units 0..255
  covariance: np.ndarray  # float64 [3, 3], covariance of RGB pixels scaled to [0, 1]
  eigval: np.ndarray  # float32 [3], descending
  eigvec: np.ndarray  # float32 [3, 3], columns are eigenvectors
  num_images: int  # images that went into the statistics
  bad_files: tuple  # names of training files that failed to decode (excluded from training)


class Sums:
  """Exact integer sums of uint8 [B, 256, 256, 3] batches: what the statistics are made of."""

  def __init__(self):
    self.image = np.zeros([IMAGE_SIZE, IMAGE_SIZE, 3], np.int64)  # per-pixel sum
    self.s1 = np.zeros([3], np.int64)  # sum of RGB values
    self.s2 = np.zeros([3, 3], np.int64)  # sum of RGB outer products
    self.count = 0

  def add(self, images: np.ndarray) -> None:
    x = np.asarray(images, np.uint8).reshape([-1, IMAGE_SIZE, IMAGE_SIZE, 3])
    self.add_partial(x.sum(0, dtype=np.int64), *_moments(x), len(x))

  def add_partial(self, image, s1, s2, count) -> None:
    self.image += np.asarray(image, np.int64)
    self.s1 += np.asarray(s1, np.int64)
    self.s2 += np.asarray(s2, np.int64)
    self.count += int(count)

  def as_dict(self) -> dict:
    return {"sum_image": self.image, "s1": self.s1, "s2": self.s2, "count": np.int64(self.count)}

  def stats(self, bad_keys=(), bad_files=(), pil_keys=()) -> dict:
    """The statistics these sums make, in the cache's format."""
    if self.count == 0:
      raise DatasetError("no training image could be decoded")
    npx = self.count * IMAGE_SIZE * IMAGE_SIZE
    mu = self.s1 / (255.0 * npx)
    cov = self.s2 / (255.0**2 * npx) - np.outer(mu, mu)  # population covariance over all pixels
    eigval, eigvec = _eigh_descending(cov)
    return dict(
        mean_image=(self.image / self.count).astype(np.float32),
        covariance=cov,
        eigval=eigval.astype(np.float32),
        eigvec=eigvec.astype(np.float32),
        num_images=np.int64(self.count),
        bad_keys=np.asarray(bad_keys, np.int64),
        bad_files=np.asarray(list(bad_files), dtype=str),
        pil_keys=np.asarray(pil_keys, np.int64),
    )


def _moments(x: np.ndarray):
  """(sum of RGB values [3], sum of RGB outer products [3, 3]) of uint8 pixels, exact in int64.

  Each product of two uint8 values fits uint16 (255**2 = 65025), so a channel pair is one
  uint16 multiply summed into 64 bits: 0.7 CPU-s for the digits' 1500 images at 256x256,
  against 4.9 for a float64 Gram matrix in NumPy and 7 for the pass's former tf.float64 map."""
  px = np.asarray(x, np.uint8).reshape(-1, 3)
  c = [np.ascontiguousarray(px[:, i], np.uint16) for i in range(3)]
  s1 = np.array([v.sum(dtype=np.uint64) for v in c], np.int64)
  s2 = np.zeros([3, 3], np.int64)
  for i in range(3):
    for j in range(i, 3):
      s2[i, j] = s2[j, i] = np.multiply(c[i], c[j]).sum(dtype=np.uint64)
  return s1, s2


def _eigh_descending(cov: np.ndarray):
  eigval, eigvec = np.linalg.eigh(cov)
  order = np.argsort(eigval)[::-1]
  eigval, eigvec = eigval[order], eigvec[:, order]
  # Fix the sign (lighting is symmetric in it): the largest-magnitude component is negative,
  # matching the published ImageNet basis's first vector.
  signs = -np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(3)])
  return eigval, eigvec * np.where(signs == 0, 1.0, signs)


def stats_pass(split, max_images=None) -> dict:
  """One streaming pass over the first max_images training examples (canonical order).

  Files TF cannot decode are retried with the split's Python fallback (PIL, for formats such as
  TIFF): those become `pil_keys`, the rest `bad_keys` (excluded from training)."""
  n = split.num_examples if not max_images else min(split.num_examples, int(max_images))
  expected = split.all_keys()[:n]
  sums, good = Sums(), []
  for b in split.canonical(n).batch(_STATS_BATCH).prefetch(2).as_numpy_iterator():
    sums.add(b["image"])  # exact integer sums in NumPy, while tf.data decodes the next batch
    good.append(b["key"])
  good = np.concatenate(good) if good else np.zeros([0], np.int64)
  bad, pil = [], []
  for key in np.setdiff1d(expected, good):  # few: formats only PIL reads count, the rest are bad
    image = split.python_fallback(key)
    if image is None:
      bad.append(int(key))
      continue
    sums.add(resize_and_center_crop(image, rule=split.resize).numpy())
    pil.append(int(key))
  return sums.stats(bad, [split.name_of(k) for k in bad], pil)


# ----------------------------------------------------------------------------------------------
# The cache.


def _stats_key() -> bytes:
  """This user's secret for the statistics caches' HMAC (created once, mode 0600)."""
  path = os.path.join(user_cache_dir(), "stats_key")
  try:
    with open(path, "rb") as f:
      key = f.read()
    if len(key) >= 32:
      return key
  except OSError:
    pass
  key = os.urandom(32)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
      f.write(key)
  except FileExistsError:  # another process made it first
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    logging.warning("cannot keep a key in %s (%s): statistics caches will not be reused", path, e)
  return key


def stats_digest(stats: dict, key: bytes | None) -> str:
  """HMAC-SHA256 (SHA-256 when key is None) of every array of `stats` but 'digest' (names,
  dtypes, shapes, bytes), its meta included."""
  h = hmac.new(key, digestmod=hashlib.sha256) if key is not None else hashlib.sha256()
  for name in sorted(k for k in stats if k != "digest"):
    a = np.ascontiguousarray(np.asarray(stats[name]))
    h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save_npz(path: str, arrays: dict) -> None:
  """Writes an npz atomically: concurrent readers never see half a file."""
  write_atomically(path, lambda f: np.savez(f, **arrays))


def _stats_path(src: Source, max_images) -> str:
  path = src.stats_path
  if max_images:
    path = path[: -len(".npz")] + f"_max{int(max_images)}.npz"
  return path


def _stats_locations(src: Source, max_images) -> list:
  """Where the cache is read from, in order: beside the data, then the user's cache dir
  (where it is written when the data's directory is read-only)."""
  path = _stats_path(src, max_images)
  tag = hashlib.sha1(os.fsencode(path)).hexdigest()[:10]
  return [path, os.path.join(user_cache_dir(), f"{tag}_{os.path.basename(path)}")]


def _load_or_compute(src: Source, max_images) -> dict:
  locations = _stats_locations(src, max_images)
  meta = f"v{STATS_VERSION}:{src.name}:{src.fingerprint}:{max_images}"
  limit = getattr(src.train, "max_pixels", MAX_IMAGE_PIXELS)
  if limit != MAX_IMAGE_PIXELS:  # other images skipped, other statistics
    meta += f":max_image_pixels={limit}"
  key = _stats_key()
  for path in locations:
    if not os.path.exists(path):
      continue
    try:
      with np.load(path, allow_pickle=False) as z:
        stats = {k: z[k] for k in z.files}
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("ignoring unreadable stats cache %s (%s)", path, e)
      continue
    if str(stats.get("meta")) != meta:
      continue  # other data, or another cache version: recomputed
    if str(stats.get("digest")) != stats_digest(stats, key):
      logging.warning(
          "ignoring stats cache %s: its HMAC does not verify (altered, or written by another "
          "user or with another key; the key is this user's %s)",
          path,
          os.path.join(user_cache_dir(), "stats_key"),
      )
      continue
    return stats
  logging.info("computing dataset statistics of %s (one pass over the training split)", src.name)
  stats = stats_pass(src.train, max_images)
  stats["meta"] = np.asarray(meta)
  stats["digest"] = np.asarray(stats_digest(stats, key))
  for target in locations:
    if writable_dir(os.path.dirname(target)):
      save_npz(target, stats)
      break
  return stats


def read_prepared_stats(path: str) -> dict:
  """The statistics a preparation wrote (checked against their own SHA-256)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      stats = {k: z[k] for k in z.files}
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(
        f"the prepared statistics {path} cannot be read ({e}): run alexnet_jax.prepare again."
    ) from None
  if str(stats.get("digest")) != stats_digest(stats, None):
    raise DatasetError(
        f"the prepared statistics {path} are damaged: run alexnet_jax.prepare again."
    )
  return stats


def source_stats(src: Source, settings: Settings) -> dict:
  """The statistics of `src`'s training split as a dict (the cache's format); kept on `src`."""
  max_images = settings.stats_max_images
  if "stats" not in src.memo:
    if src.prepared_stats and not max_images:
      src.memo["stats"] = read_prepared_stats(src.prepared_stats)
    else:
      src.memo["stats"] = _load_or_compute(src, max_images)
  return src.memo["stats"]


def as_dataset_stats(s: dict) -> DatasetStats:
  return DatasetStats(
      mean_image=np.asarray(s["mean_image"], np.float32),
      covariance=np.asarray(s["covariance"], np.float64),
      eigval=np.asarray(s["eigval"], np.float32),
      eigvec=np.asarray(s["eigvec"], np.float32),
      num_images=int(s["num_images"]),
      bad_files=tuple(str(x) for x in s["bad_files"]),
  )


def dataset_stats(dataset) -> DatasetStats:
  """Mean image and RGB PCA of the training split (`dataset`: config.dataset or an opened
  Source); computed once, then read from the cache (or from the prepared data)."""
  src = open_dataset(dataset)
  s = source_stats(src, src.settings)
  if len(s["bad_files"]):
    logging.warning(
        "%d training files cannot be decoded (damaged, not images, or declaring more than "
        "dataset.max_image_pixels) and are skipped: %s",
        len(s["bad_files"]),
        ", ".join(map(str, s["bad_files"])),
    )
  return as_dataset_stats(s)


def stats_cache_path(dataset) -> str:
  """Where dataset_stats caches the statistics of this dataset (before any fallback)."""
  src = open_dataset(dataset)
  return _stats_path(src, src.settings.stats_max_images)
