"""The reading and writing of a run directory's files that are not checkpoints (checkpoint.py
writes facts.CHECKPOINT_DIR; reporting.py the metrics). Their names and what each holds:
facts.py.

Every reader here fails with RunFileError, one line naming the file and what is wrong (not
JSON, another kind of value, a damaged or implausible array file, a FIFO or a device in its
place), never a traceback; reads are bounded before they start (files.py). A run's own files
are never written through a symbolic link (one found is replaced, with a warning).

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
import zipfile
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from alexnet_jax import config_schema, files, input_spec
from alexnet_jax.facts import (
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    FILES,
    MEAN_IMAGE_FILE,
    MEAN_IMAGE_SHAPE,
    METRICS_FILE,
    PREPROCESSING_FILE,
    STATS_FILE,
)
from alexnet_jax.files import write_atomically
from alexnet_jax.input_spec import InputSpec

if TYPE_CHECKING:
  from alexnet_jax import data as data_lib

# dataset_stats.npz holds a 256x256x3 mean image and the names of undecodable files: 256 MiB
# is far more than any dataset's (ImageNet's: 0.8 MB).
MAX_STATS_BYTES = 256 << 20
# mean_image.npy: 256x256x3 float32 (0.8 MB), or float64 at most.
MAX_MEAN_IMAGE_BYTES = 4 << 20


class RunFileError(config_schema.ConfigError):
  """A run file that is not what it should be; the message (one line) names it and says
  what is wrong and what to do."""


def read_json(path: str, kind: type = dict, fix: str = ""):
  """A run's JSON file holding a `kind` (files.read_json), or RunFileError naming it."""
  return files.read_json(
      path, kind, what=f"run's {os.path.basename(path)}", fix=fix, error=RunFileError
  )


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json in today's layout (config_schema.upgrade: runs written with the
  input keys under config.augment read the same)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a run?")
  fix = f"it records the run in {workdir}: restore it, or use another --workdir"
  return ml_collections.ConfigDict(upgrade_config(read_json(path, dict, fix), path, fix))


def upgrade_config(d: dict, path: str, fix: str = "") -> dict:
  """config_schema.upgrade of config.json's object, or RunFileError naming the file (an
  object whose sections are not what a config holds)."""
  sections = {k.split(".")[0] for k in config_schema.keys_with() if "." in k}
  wrong = sorted(k for k in sections if k in d and not isinstance(d[k], dict))
  if wrong:
    raise RunFileError(
        f"{files.printable(path)} is not a run config: {', '.join(wrong)} must be JSON objects"
        f"{'; ' + fix if fix else ''}"
    )
  try:
    return config_schema.upgrade(d)
  except config_schema.ConfigError as e:
    raise RunFileError(f"{files.printable(path)}: {e}") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise RunFileError(
        f"{files.printable(path)} is not a run config ({type(e).__name__}: "
        f"{files.printable(str(e))[:200]}){'; ' + fix if fix else ''}"
    ) from None


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


def read_npz(path: str, shapes: dict, max_bytes: int, fix: str) -> dict:
  """{name: array} of an .npz holding (at least) the arrays named in `shapes` (None: any
  1-D shape), without pickles; each header is read and checked (shape, a numeric or text
  type, a size within what its member holds) before its array is allocated. RunFileError
  (one line naming the file) for anything else."""
  name = files.printable(path)
  try:
    with files.open_regular(path, "statistics file", max_bytes, RunFileError) as f:
      with zipfile.ZipFile(f) as z:
        members = {i.filename: i for i in z.infolist()}
        out = {}
        for key, shape in shapes.items():
          info = members.get(f"{key}.npy")
          if info is None:
            raise RunFileError(f"{name} has no array {key!r}; {fix}")
          if info.file_size > max_bytes:
            raise RunFileError(f"{name}: {key} claims {info.file_size:,} bytes; {fix}")
          with z.open(info) as member:
            out[key] = _read_npy(member, key, shape, info.file_size, name, fix)
        return out
  except RunFileError:
    raise
  except (OSError, EOFError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
    raise RunFileError(
        f"{name} cannot be read ({type(e).__name__}: {files.printable(str(e))[:200]}); {fix}"
    ) from None


def _read_npy(f, key: str, shape, size: int, name: str, fix: str) -> np.ndarray:
  fmt = np.lib.format
  version = fmt.read_magic(f)
  read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
  if version not in read_header:
    raise RunFileError(f"{name}: {key} is a .npy of version {version}; {fix}")
  got, fortran, dtype = read_header[version](f, max_header_size=10_000)
  if dtype.hasobject or dtype.kind not in "biufU":
    raise RunFileError(f"{name}: {key} has type {dtype}, not numbers or text; {fix}")
  if (shape is None and len(got) != 1) or (shape is not None and tuple(got) != shape):
    want = "a list" if shape is None else str(shape)
    raise RunFileError(f"{name}: {key} has shape {tuple(got)}, not {want}; {fix}")
  count = int(np.prod(got, dtype=object))
  if count * dtype.itemsize > size:  # more than its member holds: damaged
    raise RunFileError(f"{name}: {key} is truncated; {fix}")
  data = f.read(count * dtype.itemsize)
  if len(data) != count * dtype.itemsize:
    raise RunFileError(f"{name}: {key} is truncated; {fix}")
  a = np.frombuffer(data, dtype).reshape(got, order="F" if fortran else "C")
  return a.copy()


def read_class_names(workdir: str) -> list[str] | None:
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not os.path.exists(path):
    return None
  fix = "it must hold a JSON list of class names (strings), in label order"
  names = read_json(path, list, fix)
  if not all(isinstance(n, str) for n in names):
    raise RunFileError(f"{files.printable(path)} holds a list that is not all strings; {fix}")
  return names


def read_preprocessing(workdir: str) -> dict | None:
  """preprocessing.json as written (read_input_spec turns it into the InputSpec)."""
  path = os.path.join(workdir, PREPROCESSING_FILE)
  if not os.path.exists(path):
    return None
  return read_json(path, dict, "it must hold a JSON object (the run's InputSpec)")


# metrics.jsonl: a row per logged step, a few hundred bytes each.
MAX_METRICS_BYTES = 256 << 20
# What every row of a split carries, as a number; the other metrics, where a row has them.
METRICS_FIELDS = {"train": ("loss",), "eval": ("top1_error",)}
NUMERIC_METRICS = ("loss", "learning_rate", "top1_error", "top5_error", "images_per_sec")


def metrics_row(line: str) -> dict | None:
  """A line of metrics.jsonl as its row: an object with an integer step and a split (text);
  a 'train' row carries its loss, an 'eval' row its top-1 error, and every metric of
  NUMERIC_METRICS it has is a number.
  None for anything else (half a line left by a kill, or text that is not a row)."""
  try:
    row = json.loads(line)
  except (ValueError, RecursionError):
    return None
  if not isinstance(row, dict) or not isinstance(row.get("split"), str):
    return None
  step = row.get("step")
  if not _is_number(step) or not np.isfinite(step) or step != int(step):
    return None
  if not all(_is_number(row.get(k)) for k in METRICS_FIELDS.get(row["split"], ())):
    return None
  if not all(_is_number(row[k]) for k in NUMERIC_METRICS if k in row):
    return None
  return {**row, "step": int(step)}


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_metrics(workdir: str) -> tuple[list[dict], int]:
  """metrics.jsonl's rows in file order, and how many non-empty lines are not rows
  (metrics_row); ([], 0) without the file. RunFileError when it is not a regular file or
  implausibly large."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return [], 0
  data = files.read_bytes(path, "metrics file", MAX_METRICS_BYTES, RunFileError)
  rows, bad = [], 0
  for line in data.decode("utf-8", errors="replace").splitlines():
    if line.strip():
      row = metrics_row(line)
      if row is None:
        bad += 1
      else:
        rows.append(row)
  return rows, bad


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
  """One name per line (a trailing empty line is not a name); RunFileError for a file that
  is not regular, not UTF-8 or implausibly large."""
  data = files.read_bytes(path, "class names file", files.MAX_JSON_BYTES, RunFileError)
  try:
    return data.decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise RunFileError(
        f"{files.printable(path)} is not UTF-8 text (byte {e.start}): give one class name per "
        "line"
    ) from None


def write_mean_image(workdir: str, mean: np.ndarray) -> None:
  mean = np.asarray(mean, np.float32)
  if mean.shape != MEAN_IMAGE_SHAPE:
    raise ValueError(f"a mean image must be {MEAN_IMAGE_SHAPE} RGB, got {mean.shape}")
  path = os.path.join(workdir, MEAN_IMAGE_FILE)
  files.replace_symlink(path)
  np.save(path, mean, allow_pickle=False)


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
  fix = "restore it from the run it came from (alexnet_jax.convert --mean_file writes it)"
  try:
    with files.open_regular(path, "mean image", MAX_MEAN_IMAGE_BYTES, RunFileError) as f:
      size = os.fstat(f.fileno()).st_size
      mean = _read_npy(f, "the mean image", MEAN_IMAGE_SHAPE, size, files.printable(path), fix)
  except (OSError, EOFError, ValueError) as e:
    if isinstance(e, RunFileError):
      raise
    raise RunFileError(f"{files.printable(path)} cannot be read ({e}); {fix}") from None
  if mean.dtype.kind not in "iuf":
    raise RunFileError(f"{files.printable(path)} holds {mean.dtype}, not numbers; {fix}")
  return mean.astype(np.float32)


def copy_mean_image(src_workdir: str, dst_workdir: str) -> None:
  """Atomic (write_atomically): every process of a run may do it at once."""
  src = os.path.join(src_workdir, MEAN_IMAGE_FILE)
  with files.open_regular(src, "mean image", MAX_MEAN_IMAGE_BYTES, RunFileError) as src:
    write_atomically(
        os.path.join(dst_workdir, MEAN_IMAGE_FILE), lambda f: shutil.copyfileobj(src, f)
    )
