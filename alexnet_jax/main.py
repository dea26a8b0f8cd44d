"""Train AlexNet: flags -> config -> train.train_and_evaluate.

  python -m alexnet_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m alexnet_jax.main --config=configs/paper.py --workdir=runs/paper \
      --config.optimizer.learning_rate=0.02 --config.mesh.tower=2

Re-running with the same --workdir resumes from its latest checkpoint.

Several processes (one global mesh over all their devices) start jax.distributed from the
environment (launch/multiprocess_local.sh, SLURM, TPU pods) or from flags:

  python -m alexnet_jax.main ... --coordinator_address=10.0.0.1:8476 --num_processes=2 \
      --process_id=0    # and --process_id=1 on the other host; see launch/README.md
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import distributed

config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from alexnet_jax import runtime
  # Before JAX/TF touch devices: hides accelerators from TF, starts jax.distributed.
  runtime.setup(distributed.Options.from_flags(FLAGS))
  import jax

  from alexnet_jax import train

  config = FLAGS.config
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("config:\n%s", config)
  # Multi-process: an exception ends this process at once, so the others stop too.
  distributed.exit_on_error(train.train_and_evaluate, config, FLAGS.workdir)


def parse_flags(argv):
  """absl parsing, with a misspelt --config.KEY reported as one line, not a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpfull to see help on flags.")
  except (AttributeError, KeyError) as e:  # ml_collections: the key is not in the config
    msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    sys.exit(
        f"FATAL: unknown config key in an override: {msg}. The keys are those of "
        f"the --config file (print it with --config and --helpfull, or read configs/)."
    )


if __name__ == "__main__":
  from alexnet_jax import huge_pages

  huge_pages.restart_if_requested()  # only with ALEXNET_JAX_HUGE_PAGES=1
  app.run(main, flags_parser=parse_flags)
