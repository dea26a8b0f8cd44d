"""The digits (`dataset.name='digits'`): the 1,797 8x8 handwritten digits that ship inside
scikit-learn (no download), scaled to 0..255 and resized to 256x256; a fixed split of 1,500
train / 297 validation.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import tensorflow as tf

from alexnet_jax.data import sources
from alexnet_jax.data.preprocess import resize_and_center_crop
from alexnet_jax.data.settings import Settings
from alexnet_jax.files import user_cache_dir

NAME = "digits"
NUM_TRAIN = 1500
CLASS_NAMES = tuple(str(i) for i in range(10))
SIGNATURE = f"digits:{NUM_TRAIN}"  # the data never change


class ArraySplit(sources.RandomAccessSplit):
  """Small images held in memory (digits): 'decoding' is the resize to 256."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, names: list, resize: str):
    super().__init__(labels, names, resize)
    self.images = np.asarray(images, np.uint8)

  def element(self, key, pil_keys=sources.NO_KEYS):
    del pil_keys  # arrays need no decoder
    image = tf.gather(tf.constant(self.images), key)
    return {
        "image": resize_and_center_crop(image, rule=self.resize),
        "label": tf.gather(tf.constant(self.labels), key),
    }


def sklearn_digits_file() -> str | None:
  """The digits file inside the installed scikit-learn (found, not imported), or None."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
  return path if os.path.isfile(path) else None


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images float64 [1797, 8, 8] in 0..16, labels [1797]): sklearn.datasets.load_digits()'s
  images and target, read from the file scikit-learn ships with it (no download) without
  importing scikit-learn, which costs 1.2 s of every demo's start; through
  sklearn.datasets where that file is not found."""
  path = sklearn_digits_file()
  if path is None:
    from sklearn.datasets import load_digits as sklearn_digits  # noqa: PLC0415  (no file: ask it)

    digits = sklearn_digits()
    return digits.images, digits.target
  data = np.loadtxt(path, delimiter=",")  # what scikit-learn reads: 65 columns, label last
  return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def open_source(settings: Settings) -> sources.Source:
  data_dir, resize = settings.data_dir, settings.resize
  images, labels = load_digits()  # ships inside scikit-learn: no download
  images = np.round(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  labels = labels.astype(np.int32)
  perm = np.random.RandomState(0).permutation(len(labels))  # fixed split, never changes
  tr, ev = perm[:NUM_TRAIN], perm[NUM_TRAIN:]
  names = [f"digits[{i}]" for i in range(len(labels))]
  root = os.path.join(data_dir, "alexnet_jax_stats") if data_dir else user_cache_dir()
  return sources.Source(
      NAME,
      CLASS_NAMES,
      ArraySplit(images[tr], labels[tr], [names[i] for i in tr], resize),
      ArraySplit(images[ev], labels[ev], [names[i] for i in ev], resize),
      os.path.join(root, "digits_train.npz"),
      SIGNATURE,
      "the digits that ship inside scikit-learn",
  )


def identity(settings: Settings) -> tuple:
  del settings  # the same digits everywhere
  return CLASS_NAMES, SIGNATURE


def prepared_dir(settings: Settings) -> str:
  return sources.prepared_dir_under(settings.data_dir or user_cache_dir(), settings)


KIND = sources.SourceKind(
    form=f'"{NAME}"',
    matches=lambda name: name == NAME,
    open=open_source,
    identity=identity,
    prepared_dir=prepared_dir,
)
