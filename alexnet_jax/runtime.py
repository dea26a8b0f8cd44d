"""Process setup shared by the entry points: quiet library logs, JAX's persistent compilation
cache, TensorFlow kept off accelerators, and jax.distributed when the run has several
processes (alexnet_jax/distributed.py).

Every command calls `setup()` before anything compiles or touches a device, so what it sets
holds for all of them:

- Compilation cache: compiled executables are kept under
  `$ALEXNET_JAX_CACHE/jax_compilation_cache` (default `~/.cache/alexnet_jax/...`), and a
  second start of a command loads them instead of compiling. `ALEXNET_JAX_COMPILATION_CACHE=0`
  (or `--compilation_cache=false` on alexnet_jax.main) turns it off. JAX uses the cache where
  its backend can serialise executables (CPU, GPU, TPU); elsewhere it leaves it unused.
  Delete the directory to reclaim its space; it is rebuilt as commands compile.
- Quiet logs: TensorFlow's C++ INFO and WARNING lines (TF_CPP_MIN_LOG_LEVEL=2 unless the
  user set a level; among them the Python traceback of each tf.data function that fails, e.g.
  on a damaged prepared shard, which the run reports in one line), JAX's INFO line for each
  platform it probes and does not find (`Unable to initialize backend 'tpu'` on a machine
  without one) and Orbax's INFO lines per checkpoint are dropped; JAX's and Orbax's warnings
  and errors are kept. `verbose=True` (alexnet_jax.main's `--verbose`, or absl's `-v 1`)
  keeps everything.
"""

import os
import sys

import jax
from absl import logging

import alexnet_jax
from alexnet_jax import distributed as distributed_lib
from alexnet_jax import files, tf_import

ENV_COMPILATION_CACHE = "ALEXNET_JAX_COMPILATION_CACHE"
COMPILATION_CACHE_SUBDIR = "jax_compilation_cache"
# Every executable is written, however fast it compiled: JAX's default threshold (1 s) leaves
# out the demo's helpers (metric sums, the finiteness check, batch staging), each under a
# second to compile on 2 cores but seconds together; the demo's 8 entries (0.7 MB) load in
# under a second.
MIN_COMPILE_TIME_SECS = 0.0

_FALSE_WORDS = ("0", "false", "no", "off")


def setup(distributed=None, *, verbose=False, compilation_cache=None):
  """Call first, before anything touches JAX devices or compiles.

  distributed: a `distributed.Options` (alexnet_jax.main passes its flags) to join a
    multi-process run when the flags or the environment ask for one; None: single process.
  verbose: keep the libraries' INFO lines (also on with absl's -v 1 or more).
  compilation_cache: True/False to turn JAX's persistent compilation cache on/off; None:
    on unless ALEXNET_JAX_COMPILATION_CACHE says 0/false/no/off.
  Returns the multi-process plan, or None.
  """
  verbose = verbose or logging.get_verbosity() >= logging.DEBUG
  if not verbose:
    # Not setdefault: JAX has set 1 by now when the user set nothing (alexnet_jax/__init__.py),
    # and at 1 TensorFlow prints each failed map function's Python traceback as a warning.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = alexnet_jax.TF_LOG_LEVEL_GIVEN or "2"
    _quiet_library_logs()
  tf = import_tensorflow()

  # tf.data runs on the host; TF must not reserve GPU/TPU memory that JAX needs.
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None
  enable_compilation_cache(compilation_cache)
  if distributed is None:
    return None
  return distributed_lib.initialize(distributed)


def compilation_cache_dir() -> str:
  """Where the cache lives: a subdirectory of the project's cache (ALEXNET_JAX_CACHE)."""
  return os.path.join(files.user_cache_dir(), COMPILATION_CACHE_SUBDIR)


def compilation_cache_requested(enabled=None) -> bool:
  """`enabled` when given, else ALEXNET_JAX_COMPILATION_CACHE (unset: on)."""
  if enabled is not None:
    return bool(enabled)
  return os.environ.get(ENV_COMPILATION_CACHE, "1").strip().lower() not in _FALSE_WORDS


def enable_compilation_cache(enabled=None) -> str | None:
  """Turn JAX's persistent compilation cache on (or off) for this process; call before the
  first compilation. Returns the directory in use, or None when the cache is off.

  enabled: True/False; None: ALEXNET_JAX_COMPILATION_CACHE decides (unset: on). A directory
  the user gave JAX (JAX_COMPILATION_CACHE_DIR) is kept.
  """
  if not compilation_cache_requested(enabled):
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = jax.config.jax_compilation_cache_dir or compilation_cache_dir()
  try:
    os.makedirs(path, exist_ok=True)
    writable = os.access(path, os.W_OK | os.X_OK)
  except OSError:
    writable = False
  if not writable:
    logging.warning(
        "compilation cache off: %s is not a writable directory (set ALEXNET_JAX_CACHE to "
        "one, or %s=0 to silence this)",
        path,
        ENV_COMPILATION_CACHE,
    )
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
  return path


# TensorFlow's load-time C++ lines (absl's preamble, the oneDNN notice) filtered by
# TF_CPP_MIN_LOG_LEVEL, its eager Keras skipped: alexnet_jax/tf_import.py.
def import_tensorflow():
  """`import tensorflow` with its load-time C++ lines (absl's preamble, the oneDNN notice)
  filtered at TF_CPP_MIN_LOG_LEVEL (tf_import; unset: shown as they are), without Keras."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"]

  def load():
    import tensorflow as tf  # setup() loads TF here, once its log level is set

    return tf

  if any(isinstance(f, tf_import.QuietTensorFlowFinder) for f in sys.meta_path):
    return load()  # the finder filters it
  return tf_import.quietly(load)


_tf_lines_kept = tf_import.lines_kept


def _library_record_shown(record) -> bool:
  """absl handler filter: warnings and errors always; INFO lines of Orbax (a dozen per
  checkpoint) and of JAX's platform probe (one per platform it looked for and did not find,
  e.g. `Unable to initialize backend 'tpu'` on a machine without a TPU) are dropped, so the
  run's own lines (step, loss, ETA) stay readable. JAX raises for a platform it was asked to
  use (JAX_PLATFORMS) and warns when it sees hardware it has no plugin for."""
  if record.levelno >= logging.converter.STANDARD_WARNING:
    return True
  if "/orbax/" in record.pathname:
    return False
  return not (
      record.name == "jax._src.xla_bridge"
      and record.getMessage().startswith("Unable to initialize backend")
  )


def _quiet_library_logs():
  # The same function object each time: a second setup() adds no second filter.
  logging.get_absl_handler().addFilter(_library_record_shown)
