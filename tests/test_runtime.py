"""alexnet_jax.runtime: JAX's persistent compilation cache (a second start compiles nothing,
counted by JAX's own cache events) and the quiet start of a command (no library notice twice,
no platform-probe line, no config dump before training)."""

import json
import logging as std_logging
import os
import subprocess
import sys

import pytest

from alexnet_jax import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `sys.argv[1]` as a script or module with JAX's compilation-cache events counted, and
# prints the counts as the last stderr line: JAX records a cache hit or miss per compilation
# that consulted the cache.
# The counts are printed by an atexit handler: commands end through cli.exit_now, which runs
# atexit handlers but no `finally` of an outer frame.
_COUNTED = """
import atexit, collections, json, runpy, sys
from jax import monitoring
counts = collections.Counter()
monitoring.register_event_listener(lambda name, **kw: counts.update([name]))
@atexit.register
def _report():
  events = {k.rsplit("/", 1)[1]: v for k, v in counts.items() if "/compilation_cache/" in k}
  print("EVENTS " + json.dumps(events), file=sys.stderr, flush=True)
if sys.argv[1] == "-c":
  exec(sys.argv[2])
else:
  sys.argv = sys.argv[1:]
  runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

# A start of a command in miniature: runtime.setup(), then a jitted step.
_TINY_COMMAND = """
from alexnet_jax import runtime
runtime.setup()
import jax, jax.numpy as jnp
step = jax.jit(lambda w, x: jnp.tanh(x @ w).sum())
print(float(step(jnp.ones((8, 8)), jnp.full((4, 8), 0.5))))
"""

TINY_RUN = [
    "--config=configs/demo.py",
    "--config.num_train_steps=2",
    "--config.model.width=0.0625",
    "--config.eval_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.log_every_steps=1",
    "--config.max_eval_batches=1",
]


def _env(**extra):
  """The environment of a user's shell: none of conftest's settings for the test process
  (JAX_PLATFORMS would hide the platform probe, XLA_FLAGS adds 8 devices, the TF log level
  is the command's to set), the session's ALEXNET_JAX_CACHE kept."""
  env = dict(os.environ)
  for key in ("JAX_PLATFORMS", "XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "JAX_COMPILATION_CACHE_DIR"):
    env.pop(key, None)
  for key in [k for k in env if k.startswith("ALEXNET_JAX_") and k != "ALEXNET_JAX_CACHE"]:
    env.pop(key)
  env.update(extra)
  return env


def _counted(args, env, timeout=600):
  """(stderr lines, {event: count}) of `python -c _COUNTED args`, which must succeed."""
  # Real processes throughout this file (not tests/forkserver.py): a second start's cache
  # hits, and what a start prints (TensorFlow's load-time lines), are the fresh process's.
  proc = subprocess.run(
      [sys.executable, "-c", _COUNTED, *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert lines[-1].startswith("EVENTS "), proc.stderr[-3000:]
  return lines[:-1], json.loads(lines[-1][len("EVENTS ") :])


def _entries(path):
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_second_start_loads_every_executable_from_the_cache(tmp_path):
  env = _env(ALEXNET_JAX_CACHE=str(tmp_path))
  cache = os.path.join(str(tmp_path), runtime.COMPILATION_CACHE_SUBDIR)

  _, first = _counted(["-c", _TINY_COMMAND], env)
  written = _entries(cache)
  assert first.get("cache_misses", 0) >= 1, first
  assert first.get("cache_hits", 0) == 0, first
  assert first["compile_requests_use_cache"] == first["cache_misses"], first
  # Every miss was compiled and written, whatever its compile time.
  assert len(written) == first["cache_misses"], (written, first)
  assert any(name.startswith("jit__lambda") for name in written), written

  _, second = _counted(["-c", _TINY_COMMAND], env)
  assert second.get("cache_misses", 0) == 0, second
  assert second["cache_hits"] == second["compile_requests_use_cache"] == len(written), second
  assert _entries(cache) == written


@pytest.mark.slow
def test_cache_off_by_environment_writes_nothing(tmp_path):
  env = _env(ALEXNET_JAX_CACHE=str(tmp_path), ALEXNET_JAX_COMPILATION_CACHE="0")
  _, events = _counted(["-c", _TINY_COMMAND], env)
  assert events == {"task_disabled_cache": 1}, events
  assert _entries(os.path.join(str(tmp_path), runtime.COMPILATION_CACHE_SUBDIR)) == []


def test_cache_requested_by_argument_or_environment(monkeypatch):
  monkeypatch.delenv(runtime.ENV_COMPILATION_CACHE, raising=False)
  assert runtime.compilation_cache_requested() is True
  for value, expected in [("1", True), ("yes", True), ("0", False), (" NO ", False)]:
    monkeypatch.setenv(runtime.ENV_COMPILATION_CACHE, value)
    assert runtime.compilation_cache_requested() is expected, value
  # An explicit argument (main's --compilation_cache) wins over the environment.
  assert runtime.compilation_cache_requested(True) is True
  monkeypatch.setenv(runtime.ENV_COMPILATION_CACHE, "1")
  assert runtime.compilation_cache_requested(False) is False


def test_cache_lives_in_the_project_cache(monkeypatch, tmp_path):
  monkeypatch.setenv("ALEXNET_JAX_CACHE", str(tmp_path))
  assert runtime.compilation_cache_dir() == os.path.join(str(tmp_path), "jax_compilation_cache")


# What TensorFlow 2.21's two libraries print while `import tensorflow` runs (one pair per
# library), with a warning, an error and a Python warning that must get through.
_TF_IMPORT_STDERR = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796419456.208834   27654 port.cc:153] oneDNN custom operations are on.\n"
    "W0000 00:00:1796419456.300000   27654 cuda_executor.cc:12] a warning\n"
    "/x/y.py:3: UserWarning: something\n"
    "  warnings.warn('something')\n"
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796419458.242417   27654 port.cc:153] oneDNN custom operations are on.\n"
    "E1204 21:24:19.395024 139725969558400 some.cc:7] an error\n"
)


def test_tf_import_lines_filtered_by_tf_log_level():
  python_warning = "/x/y.py:3: UserWarning: something\n  warnings.warn('something')\n"
  error = "E1204 21:24:19.395024 139725969558400 some.cc:7] an error\n"
  warning = "W0000 00:00:1796419456.300000   27654 cuda_executor.cc:12] a warning\n"
  assert runtime._tf_lines_kept(_TF_IMPORT_STDERR, 2) == python_warning + error
  assert runtime._tf_lines_kept(_TF_IMPORT_STDERR, 1) == warning + python_warning + error
  assert runtime._tf_lines_kept(_TF_IMPORT_STDERR, 3) == python_warning


# A stand-in for tensorflow that prints as TF's libraries do while loading, between output of
# the import that must reach stderr in its order.
_FAKE_TF = """
import os, sys, warnings
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1796419456.208834   27654 port.cc:153] oneDNN custom operations are on.\\n")
warnings.warn("raised by the import")
os.write(2, b"E0000 00:00:1796419456.300000   27654 loader.cc:9] an error\\n")
sys.stderr.write("written by Python\\n")
os.write(2, b"I0000 00:00:1796419458.242417   27654 port.cc:153] oneDNN custom operations are on.\\n")
"""


@pytest.mark.parametrize("level", ["2", "0"])
def test_import_tensorflow_filters_only_the_load_time_lines(tmp_path, level):
  (tmp_path / "tensorflow").mkdir()
  (tmp_path / "tensorflow" / "__init__.py").write_text(_FAKE_TF)
  code = "from alexnet_jax import runtime; runtime.import_tensorflow(); print('imported')"
  env = _env(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", TF_CPP_MIN_LOG_LEVEL=level)
  proc = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert proc.returncode == 0 and proc.stdout == "imported\n", proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  error = "E0000 00:00:1796419456.300000   27654 loader.cc:9] an error"
  if level == "0":  # the user asked for every line: the output is TF's own
    assert sum("oneDNN" in line for line in lines) == 2, lines
    assert lines[0].startswith("WARNING: All log messages"), lines
  else:
    assert not any("oneDNN" in line or "absl::InitializeLog" in line for line in lines), lines
    assert lines[0].endswith("UserWarning: raised by the import"), lines
    assert lines[1:] == ['  warnings.warn("raised by the import")', error, "written by Python"]


def test_tensorflow_imported_after_alexnet_jax_is_filtered_at_the_default_level(tmp_path):
  """A notebook's `import tensorflow` (or the data layer's) after `import alexnet_jax`, with
  no level set: INFO lines and absl's preamble dropped, as JAX's default level 1 would."""
  (tmp_path / "tensorflow").mkdir()
  (tmp_path / "tensorflow" / "__init__.py").write_text(_FAKE_TF)
  code = "import alexnet_jax, tensorflow; print(tensorflow.__loader__.__class__.__name__)"
  env = _env(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
  proc = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert proc.returncode == 0 and proc.stdout == "SourceFileLoader\n", proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines[0].endswith("UserWarning: raised by the import"), lines
  error = "E0000 00:00:1796419456.300000   27654 loader.cc:9] an error"
  assert lines[1:] == ['  warnings.warn("raised by the import")', error, "written by Python"]


@pytest.mark.parametrize("module", ["alexnet_jax", "alexnet_jax.analysis"])
def test_importing_the_library_prints_nothing(module):
  """The real TensorFlow, its oneDNN notice forced on (TF_ENABLE_ONEDNN_OPTS=1: the CPUs
  where it prints it by default print it twice, with absl's preamble)."""
  env = _env(PYTHONPATH=REPO, TF_ENABLE_ONEDNN_OPTS="1")
  proc = subprocess.run(
      [sys.executable, "-c", f"import {module}"], cwd="/", env=env, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout + proc.stderr == ""


def test_tensorflow_loads_without_keras_and_keras_still_loads_when_asked():
  """TensorFlow's eager import of Keras's optimizers (Keras 3 and scikit-learn: 2.5 s of
  every start) is skipped; `import keras` and tf.keras still load Keras in full."""
  code = (
      "import sys, alexnet_jax, tensorflow as tf; "
      "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'sklearn'))); "
      "import keras; "
      "print(type(keras.optimizers.get('sgd')).__name__, type(tf.keras.layers.Dense(2)).__name__)"
  )
  proc = subprocess.run(
      [sys.executable, "-c", code],
      cwd="/",
      env=_env(PYTHONPATH=REPO),
      capture_output=True,
      text=True,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == "[]\nSGD Dense\n"


def _record(name, level, msg, pathname="/x/module.py"):
  return std_logging.LogRecord(name, level, pathname, 1, msg, (), None)


def test_library_records_shown():
  shown = runtime._library_record_shown
  probe = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
  assert not shown(_record("jax._src.xla_bridge", std_logging.INFO, probe))
  # JAX's warning that a TPU may be present without its plugin tells the user something.
  assert shown(_record("jax._src.xla_bridge", std_logging.WARNING, "A Google TPU may be..."))
  assert shown(_record("jax._src.xla_bridge", std_logging.INFO, "Initializing backend 'cpu'"))
  orbax = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not shown(_record("absl", std_logging.INFO, "Saving step 2", orbax))
  assert shown(_record("absl", std_logging.WARNING, "step 2 not saved", orbax))
  assert shown(_record("absl", std_logging.INFO, "step 1/2  loss 2.56"))


def _before_first_step(lines):
  first_step = next(i for i, line in enumerate(lines) if "] step 1/" in line)
  return lines[:first_step]


@pytest.mark.slow
def test_demo_start_is_quiet_and_a_second_start_compiles_nothing(tmp_path):
  # A compilation cache of this test's own: the session's may hold these executables.
  cache = str(tmp_path / "jax_cache")
  env = _env(JAX_COMPILATION_CACHE_DIR=cache)
  run = ["alexnet_jax.main", *TINY_RUN]

  # The cold start: quiet, and it writes every executable it compiles.
  lines, first = _counted([*run, f"--workdir={tmp_path / 'on1'}"], env)
  start = _before_first_step(lines)
  text = "\n".join(start)
  assert "oneDNN" not in text and "absl::InitializeLog" not in text, text
  assert "Unable to initialize backend" not in text, text
  config_lines = [line for line in start if "main.py" in line and "] config" in line]
  assert len(config_lines) == 1, text
  assert "configs/demo.py with checkpoint_every_steps=2" in config_lines[0], config_lines
  assert os.path.join(str(tmp_path / "on1"), "config.json") in config_lines[0], config_lines
  assert not any(line.startswith(("batch_size:", "model:", "  width:")) for line in lines), text
  assert len(start) <= 6, text
  assert first.get("cache_misses", 0) >= 3, first  # init, train step, eval step at least
  written = _entries(cache)
  assert len(written) == first["cache_misses"], (written, first)
  for step in ("jit__init_state", "jit_train_step", "jit_eval_step"):
    assert any(name.startswith(step) for name in written), (step, written)

  lines, second = _counted([*run, f"--workdir={tmp_path / 'on2'}", "--verbose"], env)
  assert second.get("cache_misses", 0) == 0, second
  assert second["cache_hits"] == second["compile_requests_use_cache"] == len(written), second
  assert _entries(cache) == written
  assert "  width: 0.0625" in lines, "--verbose logs the full config"

  # Executables loaded from the cache compute what freshly compiled ones do.
  losses = []
  for workdir in ("on1", "on2"):
    with open(tmp_path / workdir / "metrics.jsonl") as f:
      losses.append([json.loads(line)["loss"] for line in f])
  assert len(losses[0]) == 3 and losses[0] == losses[1], losses

  # --compilation_cache=false: the cache, full by now, is neither read nor written. A rerun of
  # the finished run (it restores, which compiles, and trains nothing) shows it without a third
  # training run.
  _, off = _counted([*run, f"--workdir={tmp_path / 'on1'}", "--compilation_cache=false"], env)
  assert off == {"task_disabled_cache": 1}, off
  assert _entries(cache) == written
