"""Train AlexNet: flags -> config -> train.train_and_evaluate.

  python -m alexnet_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m alexnet_jax.main --config=configs/paper.py --workdir=runs/paper \
      --config.optimizer.learning_rate=0.02 --config.mesh.tower=2

Re-running with the same --workdir resumes from its latest checkpoint.
"""
import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from alexnet_jax import runtime
  runtime.setup()  # before JAX/TF touch devices: hides accelerators from TF, multi-process
  import jax
  from alexnet_jax import train

  config = FLAGS.config
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("config:\n%s", config)
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
