"""The reading and writing of a run directory's files that are not checkpoints (checkpoint.py
writes facts.CHECKPOINT_DIR; reporting.py the metrics). Their names and what each holds:
facts.py.

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
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from alexnet_jax import config_schema, input_spec
from alexnet_jax.facts import (
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    FILES,
    MEAN_IMAGE_FILE,
    MEAN_IMAGE_SHAPE,
    PREPROCESSING_FILE,
    STATS_FILE,
)
from alexnet_jax.files import write_atomically
from alexnet_jax.input_spec import InputSpec

if TYPE_CHECKING:
  from alexnet_jax import data as data_lib


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
  write_atomically(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


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
    write_atomically(paths[0], lambda f: np.savez(f, **fields))
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
  """preprocessing.json as written (read_input_spec turns it into the InputSpec)."""
  path = os.path.join(workdir, PREPROCESSING_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    d = json.load(f)
  if not isinstance(d, dict):
    raise ValueError(f"{path} must hold a JSON object")
  return d


def input_spec_from_config(workdir: str, config, stats=None) -> InputSpec:
  """The InputSpec `config` describes (InputSpec.from_config), with the run's own mean image
  (MEAN_IMAGE_FILE) for input.mean='run'."""
  mean = read_mean_image(workdir) if config.input.mean == "run" else None
  return InputSpec.from_config(config, stats, mean)


def read_input_spec(workdir: str, config, stats=None) -> InputSpec:
  """A run's spec: its preprocessing.json when complete, else its (upgraded) config.json;
  the mean image from `stats` ('dataset') or the run's mean_image.npy ('run')."""
  saved = read_preprocessing(workdir)
  if not input_spec.is_complete(saved):
    return input_spec_from_config(workdir, config, stats)
  kind, mean = saved["mean"], None
  if kind == "dataset" and stats is not None:
    mean = stats.mean_image
  elif kind == "run":
    mean = read_mean_image(workdir)
  return InputSpec.from_json(saved, mean, os.path.join(workdir, PREPROCESSING_FILE))


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
  """Atomic (write_atomically): every process of a run may do it at once."""
  with open(os.path.join(src_workdir, MEAN_IMAGE_FILE), "rb") as src:
    write_atomically(
        os.path.join(dst_workdir, MEAN_IMAGE_FILE), lambda f: shutil.copyfileobj(src, f)
    )
