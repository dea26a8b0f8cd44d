r"""Train AlexNet: flags -> config -> train.train_and_evaluate.

  python -m alexnet_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m alexnet_jax.main --config=configs/paper.py --workdir=runs/paper \
      --config.optimizer.learning_rate=0.02 --config.mesh.tower=2

Re-running with the same --workdir resumes from its latest checkpoint; overrides that would
change the parameter shapes or the data are refused (each key's resume rule is declared in
alexnet_jax/config_schema.py). A resume reads the data the run started with and keeps its
statistics; other data (images added or removed, prepared shards instead of the originals)
are refused unless --allow_config_change=training_data (WORKDIR/training_data.json,
alexnet_jax/run_data.py).
SIGTERM or Ctrl-C saves the current step and exits with status 75 (alexnet_jax/preemption.py).
One trainer per workdir: a second one stops naming the holder of WORKDIR/run.lock, at once or
after waiting --lock_wait_s for it (default 120 s in a SLURM job, else 0; alexnet_jax/run_lock.py).

The log starts with one line naming the config file and its overrides; the full config is in
WORKDIR/config.json (--verbose also logs it, with the libraries' INFO lines). Compiled steps
are cached under ~/.cache/alexnet_jax/jax_compilation_cache ($ALEXNET_JAX_CACHE), so a second
start loads them instead of compiling; --compilation_cache=false or
ALEXNET_JAX_COMPILATION_CACHE=0 turns that off (alexnet_jax/runtime.py).

Several processes (one global mesh over all their devices) start jax.distributed from the
environment (launch/multiprocess_local.sh, SLURM, TPU pods) or from flags:

  python -m alexnet_jax.main ... --coordinator_address=10.0.0.1:8476 --num_processes=2 \
      --process_id=0    # and --process_id=1 on the other host; see launch/README.md
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import cli, config_checks, distributed, files, run_lock, runtime

config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.DEFINE_list(
    "allow_config_change",
    [],
    "Keys (or 'prefix.*') a resumed run may change although they change the training, e.g. "
    "optimizer.learning_rate. Shape- and data-changing keys are refused regardless. "
    "'training_data': resume although the training data differ from those the run started "
    "with (WORKDIR/training_data.json); the run keeps its statistics.",
)
flags.DEFINE_bool(
    "verbose",
    False,
    "Also log the full config and the libraries' INFO lines (TensorFlow's start-up notices, "
    "JAX's platform probe, Orbax's checkpoint steps). The config is in WORKDIR/config.json "
    "either way.",
)
flags.DEFINE_bool(
    "break_lock",
    False,
    "Take WORKDIR/run.lock although another host's trainer holds it, when its heartbeat is "
    "stale and you know it is no longer running (a lost node). A live holder on this host "
    "is never overridden.",
)
flags.DEFINE_float(
    "lock_wait_s",
    None,
    "Seconds to wait for another live trainer holding WORKDIR/run.lock to finish before "
    "stopping (default: 120 inside a SLURM job, where a requeue may overlap the previous "
    "instance's last save; 0 otherwise).",
)
flags.DEFINE_bool(
    "compilation_cache",
    None,
    "JAX's persistent compilation cache under $ALEXNET_JAX_CACHE/jax_compilation_cache, so a "
    "second start loads the compiled steps instead of compiling them (default: on, unless "
    f"{runtime.ENV_COMPILATION_CACHE}=0).",
)
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()
FLAGS = flags.FLAGS
USAGE = """\
usage: python -m alexnet_jax.main --config=CONFIG --workdir=DIR [--config.KEY=VALUE ...]

  python -m alexnet_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m alexnet_jax.main --config=configs/paper.py --workdir=runs/paper \\
      --config.optimizer.learning_rate=0.02

Trains, or resumes from DIR's latest checkpoint. Every config key: alexnet_jax/config_schema.py.
"""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _loaded_config()
  try:  # before any device work, and before anything is written
    config_checks.validate(config)
    config_checks.check_workdir(FLAGS.workdir)
    changes = config_checks.resume_changes(config, FLAGS.workdir, FLAGS.allow_config_change)
  except config_checks.ConfigError as e:
    sys.exit(f"FATAL: {e}")
  # Before JAX/TF touch devices or compile: hides accelerators from TF, turns the
  # compilation cache on, starts jax.distributed.
  runtime.setup(
      distributed.Options.from_flags(FLAGS),
      verbose=FLAGS.verbose,
      compilation_cache=FLAGS.compilation_cache,
  )
  if jax.process_index() == 0:
    # One writer per workdir, held until exit; multi-process: process 0 holds it for the run,
    # and exit_on_error ends every process if it cannot.
    distributed.exit_on_error(_lock, FLAGS.workdir, FLAGS.break_lock, FLAGS.lock_wait_s)
  for key, (old, new) in changes.items():
    logging.warning("config changed on resume: %s %r -> %r", files.printable(key), old, new)
  logging.info("%s", _config_line(FLAGS.workdir))
  if FLAGS.verbose or logging.level_debug():
    logging.info("config:\n%s", config)
  # Multi-process: an exception ends this process at once, so the others stop too.
  sys.exit(distributed.exit_on_error(_train, config, FLAGS.workdir, changes))


def _loaded_config():
  """FLAGS.config, or one FATAL line if its file could not be loaded (ml_collections defers
  that error to the first access)."""
  try:
    config = FLAGS.config
    config.keys()
  except OSError as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "Errno" in line), " ".join(lines))
    sys.exit(f"FATAL: cannot load the --config file: {reason}; {cli.missing_config_hint()}")
  return config


def _config_line(workdir) -> str:
  """One line naming the --config file, its overrides and where the full config is."""
  overrides = config_flags.get_override_values(FLAGS["config"])
  flat = ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
  return (
      f"config {config_flags.get_config_filename(FLAGS['config'])}"
      + (f" with {flat}" if flat else "")
      + f"; all keys in {os.path.join(workdir, config_checks.CONFIG_FILE)} (--verbose logs them)"
  )


_held = []  # the run's lock, kept open until the process exits


def _lock(workdir, break_lock, wait_s) -> None:
  wait_s = run_lock.default_wait_s() if wait_s is None else wait_s
  try:
    _held.append(run_lock.acquire(workdir, break_lock=break_lock, wait_s=wait_s))
  except run_lock.RunLockedError as e:
    sys.exit(f"FATAL: {e}")


def _train(config, workdir, changes) -> int:
  """train_and_evaluate -> the exit status; known failures as one FATAL line."""
  # After runtime.setup() in main(): TensorFlow and JAX load with its settings.
  from alexnet_jax import checkpoint, preemption, train
  from alexnet_jax import data as data_lib

  try:
    # config.json is written once the training data are accepted (a refused resume writes
    # nothing).
    train.train_and_evaluate(config, workdir, allow=FLAGS.allow_config_change, changes=changes)
  except preemption.Preempted as e:
    logging.warning("%s", e)
    return preemption.EXIT_PREEMPTED
  except (
      checkpoint.CheckpointSaveError,
      checkpoint.UnreadableCheckpointsError,
      config_checks.ConfigError,
      data_lib.DatasetError,
      run_lock.RunLockLostError,
      train.NonFiniteLossError,
  ) as e:
    sys.exit(f"FATAL: {e}")
  return 0


if __name__ == "__main__":
  from alexnet_jax import huge_pages

  huge_pages.restart_if_requested()  # only with ALEXNET_JAX_HUGE_PAGES=1
  cli.run(main, USAGE)
