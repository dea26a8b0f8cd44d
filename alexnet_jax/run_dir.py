"""Every file a run directory holds, named once, and the reading and writing of those that
are not checkpoints (checkpoint.py writes CHECKPOINT_DIR; reporting.py the metrics).

  config.json           the launch's config (config_checks.record)
  config_history.jsonl  every launch that created the run or changed its config
  run.lock              held by the training run writing here: host, pid, start, heartbeat
                        (run_lock.py; empty once it exits)
  checkpoints/          Orbax steps of the TrainState (checkpoint.py)
  checkpoints_unreadable/  steps a resume set aside because they did not verify
  metrics.jsonl         one JSON object per logged step (reporting.MetricsWriter)
  tensorboard/          the same scalars as TensorBoard events
  learning_curve.png    drawn when the run finishes
  dataset_stats.npz     the training split's statistics: the mean image that input.mean
                        'dataset' subtracts and the RGB eigen-basis of the PCA lighting
                        (data_lib.DatasetStats, every field)
  training_data.json    what identifies the training data (source: originals or which
                        prepared shards; the dataset's signature and split sizes; the SHA-256
                        of dataset_stats.npz): a resume on other data is refused (run_data.py)
  class_names.json      the label names in label order: TFDS ClassLabel names, folder names,
                        "0".."9" for digits
  preprocessing.json    the run's InputSpec (input_spec.py) without its mean image, the
                        dataset's name and the default number of eval views
  mean_image.npy        only for input.mean == 'run' (a converted net's own mean, e.g.
                        Caffe's ilsvrc_2012_mean): float32 [256, 256, 3], RGB, 0..255
  eval_<step>_<crops>crop.json  python -m alexnet_jax.evaluate's results
  figures/              python -m alexnet_jax.figures' default --out

A run copied to a machine without the dataset restores, predicts and draws its kernels from
these. Runs written before the statistics, class names and preprocessing were kept still
restore: `missing(workdir)` names what they lack, and
analysis.load_run(workdir, from_dataset=True) recomputes it from the dataset. Runs written
before training_data.json was kept resume as they did (statistics from the data, whatever
dataset.prepared='auto' finds) and get it at that resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from alexnet_jax import config_schema

if TYPE_CHECKING:
  from alexnet_jax import data as data_lib

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = "run.lock"
CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVE_FILE = "learning_curve.png"
STATS_FILE = "dataset_stats.npz"
DATA_FILE = "training_data.json"
CLASS_NAMES_FILE = "class_names.json"
PREPROCESSING_FILE = "preprocessing.json"
MEAN_IMAGE_FILE = "mean_image.npy"
FIGURES_DIR = "figures"
# The data layer's image size (data.IMAGE_SIZE): named here without importing TensorFlow, so
# that the config checks, which run before any library starts, can name the run's files.
MEAN_IMAGE_SHAPE = (256, 256, 3)
# What inference needs without the dataset (training writes them; `missing` checks them).
FILES = (STATS_FILE, CLASS_NAMES_FILE, PREPROCESSING_FILE)
# Every name a training run writes at the top of its directory.
TRAINING_NAMES = (
    CONFIG_FILE,
    HISTORY_FILE,
    LOCK_FILE,
    CHECKPOINT_DIR,
    METRICS_FILE,
    TENSORBOARD_DIR,
    CURVE_FILE,
    DATA_FILE,
    *FILES,
)


def eval_results_file(step: int, crops: int) -> str:
  return f"eval_{step}_{crops}crop.json"


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json in today's layout (config_schema.upgrade: runs written with the
  input keys under config.augment read the same)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a run?")
  with open(path) as f:
    return ml_collections.ConfigDict(config_schema.upgrade(json.load(f)))


def write_json(path: str, obj) -> None:
  """`obj` as indented JSON, written atomically."""
  _write_atomically(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write(
    workdir: str,
    config,
    info: data_lib.DatasetInfo,
    stats: data_lib.DatasetStats,
    spec,
    *,
    keep_stats: bool = False,
) -> list[str]:
  """Write FILES into `workdir` (replacing older ones); `spec`: the run's InputSpec;
  keep_stats: leave STATS_FILE as it is (a resume uses the run's own statistics).
  Returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = [os.path.join(workdir, name) for name in FILES]
  if not keep_stats:
    fields = stats_fields(stats)
    _write_atomically(paths[0], lambda f: np.savez(f, **fields))
  write_class_names(workdir, info.class_names)
  write_preprocessing(workdir, spec.to_json(), info.name, config.eval_crops)
  return paths


def stats_fields(stats) -> dict:
  """The arrays STATS_FILE holds for a data.DatasetStats, with their dtypes."""
  return {
      "mean_image": np.asarray(stats.mean_image, np.float32),
      "covariance": np.asarray(stats.covariance, np.float64),
      "eigval": np.asarray(stats.eigval, np.float32),
      "eigvec": np.asarray(stats.eigvec, np.float32),
      "num_images": np.int64(stats.num_images),
      "bad_files": np.asarray(list(stats.bad_files), dtype=str),
  }


def write_class_names(workdir: str, names) -> None:
  write_json(os.path.join(workdir, CLASS_NAMES_FILE), [str(n) for n in names])


def write_preprocessing(workdir: str, spec_json: dict, dataset: str, eval_crops: int) -> None:
  """preprocessing.json: the InputSpec's fields (InputSpec.to_json()), the dataset's name
  and the number of views evaluation averages (§4.1)."""
  write_json(
      os.path.join(workdir, PREPROCESSING_FILE),
      {"dataset": dataset, **spec_json, "eval_crops": int(eval_crops)},
  )


def missing(workdir: str, config=None) -> list[str]:
  """The run files `workdir` lacks (a run trained before training wrote them). With the
  run's (upgraded) config: the statistics only count when its inputs are centred with the
  dataset's mean image (config.input.mean == 'dataset')."""
  needed = FILES
  if config is not None and config.input.mean != "dataset":
    needed = tuple(name for name in FILES if name != STATS_FILE)
  return [name for name in needed if not os.path.exists(os.path.join(workdir, name))]


def read_stats(workdir: str) -> data_lib.DatasetStats | None:
  path = os.path.join(workdir, STATS_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as z:
    from alexnet_jax import data as data_lib  # TensorFlow: only once stats are read

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


def read_preprocessing(workdir: str) -> dict | None:
  """preprocessing.json as written (input_spec.load turns it into the InputSpec)."""
  path = os.path.join(workdir, PREPROCESSING_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    d = json.load(f)
  if not isinstance(d, dict):
    raise ValueError(f"{path} must hold a JSON object")
  return d


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


def _write_atomically(path: str, write) -> None:
  from alexnet_jax.data import settings  # TensorFlow: only once a file is written

  settings.write_atomically(path, write)
