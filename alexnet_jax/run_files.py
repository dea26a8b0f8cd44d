"""The files a run directory holds beside config.json and checkpoints/: its class names and
the mean image its inputs are centred with. Every reader and writer of them is here.

  class_names.txt  one class name per line, in label order (written by alexnet_jax.convert)
  mean_image.npy   float32 [256, 256, 3], RGB, 0..255 pixel units; used when
                   config.augment.mean == 'run' (a converted Caffe net's ilsvrc_2012_mean)

The other input settings (mean pixel, std, channel order, crop size, resize rule) are keys of
config.json (config.augment, config.model.image_size, config.dataset.resize).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

CLASS_NAMES_FILE = "class_names.txt"
MEAN_IMAGE_FILE = "mean_image.npy"
MEAN_IMAGE_SHAPE = (256, 256, 3)


def write_class_names(workdir: str, names) -> None:
  names = [str(n) for n in names]
  bad = [n for n in names if "\n" in n or "\r" in n]
  if bad:
    raise ValueError(f"class names cannot hold line breaks: {bad[:3]}")
  with open(os.path.join(workdir, CLASS_NAMES_FILE), "w", encoding="utf-8") as f:
    f.write("".join(f"{n}\n" for n in names))


def read_class_names(workdir: str) -> list[str] | None:
  """The run's class names, or None if it has no class_names.txt."""
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not os.path.exists(path):
    return None
  return read_names_file(path)


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
        f"{path} not found: config.augment.mean='run' subtracts the mean image stored in the "
        "run directory (alexnet_jax.convert --mean_file writes it; a run started with "
        "--config.init_from copies its source's). Use augment.mean='pixel' or 'dataset' instead."
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
