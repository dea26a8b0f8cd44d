"""What a run directory holds beside its checkpoints so that it needs no dataset to be used.

Training (process 0) writes, next to config.json and checkpoints/:

  dataset_stats.npz   the training split's statistics: the mean image that evaluation
                      subtracts and the RGB eigen-basis of the PCA lighting
                      (data_lib.DatasetStats, every field)
  class_names.json    the label names in label order: TFDS ClassLabel names, folder names,
                      "0".."9" for digits
  preprocessing.json  how an image becomes the network's input views (`Preprocessing`)
  mean_image.npy      only for config.input.mean == 'run' (a converted net's own mean,
                      e.g. Caffe's ilsvrc_2012_mean): float32 [256, 256, 3], RGB, 0..255

The other input settings (mean pixel, std, channel order, crop size, resize rule) are keys of
config.json (config.input, config.dataset.resize).

A run copied to a machine without the dataset restores, predicts and draws its kernels from
these. Runs written before they existed still restore: `missing(workdir)` names what they
lack, and analysis.load_run(workdir, from_dataset=True) recomputes it from the dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

from alexnet_jax import data as data_lib
from alexnet_jax import model as model_lib

STATS_FILE = "dataset_stats.npz"
CLASS_NAMES_FILE = "class_names.json"
MEAN_IMAGE_FILE = "mean_image.npy"
MEAN_IMAGE_SHAPE = (256, 256, 3)
PREPROCESSING_FILE = "preprocessing.json"
FILES = (STATS_FILE, CLASS_NAMES_FILE, PREPROCESSING_FILE)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """An image's way to the network (docs/paper.md#preprocessing): decoded to RGB, shorter
  side resized to `image_size` (antialiased bilinear), the central image_size square kept,
  the mean image subtracted, times `scale`, then `eval_crops` views of crop_size averaged
  (1: the center; 10: corners, center and their reflections, §4.1)."""

  image_size: int = data_lib.IMAGE_SIZE
  crop_size: int = model_lib.IMAGE_SHAPE[0]
  scale: float = 1.0
  eval_crops: int = 10

  @classmethod
  def from_config(cls, config) -> Preprocessing:
    return cls(
        crop_size=int(config.input.crop_size),
        scale=float(config.input.scale),
        eval_crops=int(config.eval_crops),
    )

  def check(self, source: str) -> Preprocessing:
    """This code resizes to data_lib.IMAGE_SIZE: a run that says otherwise cannot be
    reproduced here."""
    if self.image_size != data_lib.IMAGE_SIZE:
      raise ValueError(
          f"{source}: image_size {self.image_size}, but this version of alexnet_jax "
          f"preprocesses to {data_lib.IMAGE_SIZE}"
      )
    return self


def _write_json(path: str, obj) -> None:
  data_lib.settings.write_atomically(
      path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode())
  )


def write(
    workdir: str,
    config,
    info: data_lib.DatasetInfo,
    stats: data_lib.DatasetStats,
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
  data_lib.settings.write_atomically(paths[0], lambda f: np.savez(f, **fields))
  write_class_names(workdir, info.class_names)
  write_preprocessing(workdir, config, info.name)
  return paths


def write_class_names(workdir: str, names) -> None:
  _write_json(os.path.join(workdir, CLASS_NAMES_FILE), [str(n) for n in names])


def write_preprocessing(workdir: str, config, dataset: str) -> None:
  _write_json(
      os.path.join(workdir, PREPROCESSING_FILE),
      {"dataset": dataset, **dataclasses.asdict(Preprocessing.from_config(config))},
  )


def missing(workdir: str, config=None) -> list[str]:
  """The run files `workdir` lacks (a run trained before training wrote them). With the
  run's config: the statistics only count when its inputs are centred with the dataset's
  mean image (config.input.mean == 'dataset')."""
  needed = FILES
  if config is not None and config.input.mean != "dataset":
    needed = tuple(name for name in FILES if name != STATS_FILE)
  return [name for name in needed if not os.path.exists(os.path.join(workdir, name))]


def read_stats(workdir: str) -> data_lib.DatasetStats | None:
  path = os.path.join(workdir, STATS_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as z:
    return data_lib.DatasetStats(
        mean_image=z["mean_image"],
        covariance=z["covariance"],
        eigval=z["eigval"],
        eigvec=z["eigvec"],
        num_images=int(z["num_images"]),
        bad_files=tuple(str(x) for x in z["bad_files"]),
    )


def read_class_names(workdir: str) -> list[str] | None:
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    names = json.load(f)
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(f"{path} must hold a JSON list of class names (strings)")
  return names


def read_preprocessing(workdir: str) -> Preprocessing | None:
  path = os.path.join(workdir, PREPROCESSING_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    d = json.load(f)
  fields = {f.name for f in dataclasses.fields(Preprocessing)}
  return Preprocessing(**{k: v for k, v in d.items() if k in fields}).check(path)


def read_names_file(path: str) -> list[str]:
  """One name per line (a trailing empty line is not a name)."""
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def write_mean_image(workdir: str, mean: np.ndarray) -> None:
  mean = np.asarray(mean, np.float32)
  if mean.shape != MEAN_IMAGE_SHAPE:
    raise ValueError(f"a mean image must be {MEAN_IMAGE_SHAPE} RGB, got {mean.shape}")
  np.save(os.path.join(workdir, MEAN_IMAGE_FILE), mean, allow_pickle=False)


def has_mean_image(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, MEAN_IMAGE_FILE))


def read_mean_image(workdir: str) -> np.ndarray:
  path = os.path.join(workdir, MEAN_IMAGE_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: config.input.mean='run' subtracts the mean image stored in the "
        "run directory (alexnet_jax.convert --mean_file writes it; a run started with "
        "--config.init_from copies its source's). Use input.mean='pixel' or 'dataset' instead."
    )
  mean = np.load(path, allow_pickle=False)
  if mean.shape != MEAN_IMAGE_SHAPE:
    raise ValueError(f"{path} holds an array of shape {mean.shape}, not {MEAN_IMAGE_SHAPE}")
  return mean.astype(np.float32)


def copy_mean_image(src_workdir: str, dst_workdir: str) -> None:
  """Atomic (copy, then rename): every process of a run may do it at once."""
  fd, tmp = tempfile.mkstemp(dir=dst_workdir, suffix=".npy.tmp")
  os.close(fd)
  try:
    shutil.copyfile(os.path.join(src_workdir, MEAN_IMAGE_FILE), tmp)
    os.replace(tmp, os.path.join(dst_workdir, MEAN_IMAGE_FILE))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
