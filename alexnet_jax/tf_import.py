"""How a process that imported alexnet_jax loads TensorFlow: quiet and without Keras.

- Quiet: `import tensorflow` anywhere (a notebook's `from alexnet_jax import analysis`, a
  command's runtime.setup) prints neither absl's preamble nor the INFO notices (oneDNN, CPU
  features). TensorFlow's shared libraries log from their load-time initialisers through
  absl's C++ logging before TensorFlow applies TF_CPP_MIN_LOG_LEVEL: each of its two
  libraries prints absl's preamble and the oneDNN INFO notice whatever the level. So the
  import runs with the process's stderr (file descriptor 2) captured, and what it printed is
  written back without the lines below the level; Python warnings and errors of the import
  pass unchanged.
- Without Keras: TensorFlow's `__init__` ends by importing Keras's optimizers (Keras 3, and
  scikit-learn with it) for registrations only Keras's own SavedModels need. The package uses
  tf.data, never Keras through TensorFlow, and that import was 2.2-2.5 s of the 8.7-9.6 s a
  command spent importing its libraries. It is skipped; `tf.keras` and `import keras` still
  load Keras in full when something asks for them. While TensorFlow loads (a few seconds,
  once per process) the skip holds for the whole process: another thread importing Keras
  in that window fails.
Imports nothing heavy: alexnet_jax/__init__.py installs the finder at no cost.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# Lines in absl's format ("I0000 00:00:1796419729.229971   29741 port.cc:153] ...": before
# absl is initialised the date and time are zero and the seconds count from the epoch),
# severity I/W/E/F = 0..3.
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
_CPP_LOG_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ ]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# The level a library import filters at when the user set none: JAX's own default (it sets
# TF_CPP_MIN_LOG_LEVEL=1 when it loads), INFO lines dropped, warnings and errors kept.
DEFAULT_LEVEL = "1"


def lines_kept(text: str, min_level: int) -> str:
  """`text` without absl's preamble and the C++ log lines below `min_level`."""
  kept = []
  for line in text.splitlines(keepends=True):
    if line.startswith(_ABSL_PREAMBLE):
      continue
    m = _CPP_LOG_LINE.match(line)
    if m and _SEVERITY[m.group(1)] < min_level:
      continue
    kept.append(line)
  return "".join(kept)


def min_level() -> int:
  try:
    return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
  except ValueError:
    return 0


# What TensorFlow's __init__ imports eagerly for Keras (keras.src.optimizers; tf_keras's with
# TF_USE_LEGACY_KERAS=1), inside a try that passes on an ImportError.
_EAGER_KERAS = ("keras.src.optimizers", "tf_keras.src.optimizers")


def without_eager_keras(load):
  """load() (TensorFlow's import) with its eager import of Keras skipped: a None in
  sys.modules makes that import fail at once, without loading Keras's package; the entries
  are removed again, so a later `import keras` or `tf.keras` loads it as usual. No effect
  once Keras is loaded."""
  blocked = [m for m in _EAGER_KERAS if m.split(".")[0] not in sys.modules and m not in sys.modules]
  for m in blocked:
    sys.modules[m] = None
  try:
    return load()
  finally:
    for m in blocked:
      if m in sys.modules and sys.modules[m] is None:
        del sys.modules[m]


def quietly(load):
  """load() (TensorFlow's import) filtered at the current level, without its eager Keras."""
  return filtered(lambda: without_eager_keras(load), min_level())


def filtered(load, level: int):
  """load() with the C++ lines it prints to stderr below `level` dropped (level 0: as is)."""
  if level <= 0:
    return load()
  sys.stderr.flush()
  try:
    captured = tempfile.TemporaryFile()
  except OSError:  # nowhere to hold the lines: they print as they come
    return load()
  with captured:
    try:
      saved = os.dup(2)
    except OSError:  # no stderr to filter
      return load()
    os.dup2(captured.fileno(), 2)
    try:
      return load()
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = lines_kept(captured.read().decode(errors="replace"), level)
      if kept:
        os.write(2, kept.encode())


class _FilteredLoader(importlib.abc.Loader):
  """TensorFlow's own loader, its module executed under `filtered`."""

  def __init__(self, loader, spec):
    self._loader, self._spec = loader, spec

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    # The module keeps TensorFlow's own loader, as if this one had never been in the way.
    self._spec.loader = module.__loader__ = self._loader
    # JAX sets the same default when it loads; the user's level (or runtime.setup's) wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL)
    quietly(lambda: self._loader.exec_module(module))


class QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """On sys.meta_path: finds `tensorflow` as Python would, and loads it `quietly`."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname != "tensorflow":
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None or spec.loader is None:
      return None
    spec.loader = _FilteredLoader(spec.loader, spec)
    return spec


def install() -> None:
  """Put the finder first on sys.meta_path, once; no effect once TensorFlow is loaded."""
  if "tensorflow" in sys.modules:
    return
  if not any(isinstance(f, QuietTensorFlowFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, QuietTensorFlowFinder())
