"""What a run directory holds beside its checkpoints so that it needs no dataset to be used.

Training (process 0) writes, next to config.json and checkpoints/:

  dataset_stats.npz   the training split's statistics: the mean image that evaluation
                      subtracts and the RGB eigen-basis of the PCA lighting
                      (input_pipeline.DatasetStats, every field)
  class_names.json    the label names in label order: TFDS ClassLabel names, folder names,
                      "0".."9" for digits
  preprocessing.json  how an image becomes the network's input views (`Preprocessing`)

A run copied to a machine without the dataset restores, predicts and draws its kernels from
these. Runs written before they existed still restore: `missing(workdir)` names what they
lack, and analysis.load_run(workdir, from_dataset=True) recomputes it from the dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import numpy as np

from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib

STATS_FILE = "dataset_stats.npz"
CLASS_NAMES_FILE = "class_names.json"
PREPROCESSING_FILE = "preprocessing.json"
FILES = (STATS_FILE, CLASS_NAMES_FILE, PREPROCESSING_FILE)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """An image's way to the network (docs/paper.md#preprocessing): decoded to RGB, shorter
  side resized to `image_size` (antialiased bilinear), the central image_size square kept,
  the mean image subtracted, times `scale`, then `eval_crops` views of crop_size averaged
  (1: the center; 10: corners, center and their reflections, §4.1)."""

  image_size: int = input_pipeline.IMAGE_SIZE
  crop_size: int = model_lib.IMAGE_SHAPE[0]
  scale: float = 1.0
  eval_crops: int = 10

  @classmethod
  def from_config(cls, config) -> Preprocessing:
    return cls(scale=float(config.augment.scale), eval_crops=int(config.eval_crops))

  def check(self, source: str) -> Preprocessing:
    """This code resizes to input_pipeline.IMAGE_SIZE and the model reads IMAGE_SHAPE crops:
    a run that says otherwise cannot be reproduced here."""
    want = (input_pipeline.IMAGE_SIZE, model_lib.IMAGE_SHAPE[0])
    if (self.image_size, self.crop_size) != want:
      raise ValueError(
          f"{source}: image_size {self.image_size} / crop_size {self.crop_size}, but this "
          f"version of alexnet_jax preprocesses to {want[0]} / {want[1]}"
      )
    return self


def _write_atomically(path: str, write) -> None:
  """write(file) into a temporary file beside `path`, then rename: a reader (or a copy of
  the run) never sees half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _write_json(path: str, obj) -> None:
  _write_atomically(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write(
    workdir: str,
    config,
    info: input_pipeline.DatasetInfo,
    stats: input_pipeline.DatasetStats,
) -> list[str]:
  """Write the three files into `workdir` (replacing older ones); returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = [os.path.join(workdir, name) for name in FILES]
  fields = {
      "mean_image": np.asarray(stats.mean_image, np.float32),
      "covariance": np.asarray(stats.covariance, np.float64),
      "eigval": np.asarray(stats.eigval, np.float32),
      "eigvec": np.asarray(stats.eigvec, np.float32),
      "num_images": np.int64(stats.num_images),
      "bad_files": np.asarray(list(stats.bad_files), dtype=str),
  }
  _write_atomically(paths[0], lambda f: np.savez(f, **fields))
  _write_json(paths[1], [str(n) for n in info.class_names])
  _write_json(
      paths[2], {"dataset": info.name, **dataclasses.asdict(Preprocessing.from_config(config))}
  )
  return paths


def missing(workdir: str) -> list[str]:
  """The run files `workdir` lacks (a run trained before training wrote them)."""
  return [name for name in FILES if not os.path.exists(os.path.join(workdir, name))]


def read_stats(workdir: str) -> input_pipeline.DatasetStats | None:
  path = os.path.join(workdir, STATS_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as z:
    return input_pipeline.DatasetStats(
        mean_image=z["mean_image"],
        covariance=z["covariance"],
        eigval=z["eigval"],
        eigvec=z["eigvec"],
        num_images=int(z["num_images"]),
        bad_files=tuple(str(x) for x in z["bad_files"]),
    )


def read_class_names(workdir: str) -> tuple[str, ...] | None:
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    names = json.load(f)
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(f"{path} must hold a JSON list of class names (strings)")
  return tuple(names)


def read_preprocessing(workdir: str) -> Preprocessing | None:
  path = os.path.join(workdir, PREPROCESSING_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    d = json.load(f)
  fields = {f.name for f in dataclasses.fields(Preprocessing)}
  return Preprocessing(**{k: v for k, v in d.items() if k in fields}).check(path)
