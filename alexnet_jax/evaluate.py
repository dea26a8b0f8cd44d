"""Top-1/top-5 error of a run's checkpoint on the whole validation split.

  python -m alexnet_jax.evaluate --workdir=runs/demo --crops=10

Prints the errors and writes them to WORKDIR/eval_<step>_<crops>crop.json.
"""

import json
import os

from absl import app, flags

flags.DEFINE_string("workdir", None, "The run's --workdir.")
flags.DEFINE_integer("crops", 10, "1 = center crop; 10 = the paper's ten views.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def evaluate_checkpoint(workdir: str, crops: int = 10, step: int | None = None) -> dict:
  """{'step', 'crops', 'top1_error', 'top5_error', 'loss', 'num_images'} of a checkpoint."""
  # After runtime.setup() in main(): importing JAX and TF here keeps them off accelerators.
  import jax

  from alexnet_jax import checkpoint, input_pipeline, sharding, train, train_state

  if crops not in (1, 10):
    raise ValueError(f"--crops must be 1 or 10, got {crops}")
  run = checkpoint.restore_run(workdir, step=step)
  config = run.config
  mesh = sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])
  model = train_state.create_model(config, run.meta["num_classes"])
  # The training split's mean image only when the run subtracts it (a converted net brings
  # its own mean in config.json or in the run directory).
  uses_dataset_mean = config.augment.get("mean", "dataset") == "dataset"
  stats = input_pipeline.dataset_stats(config.dataset) if uses_dataset_mean else None
  mean, std = train.input_mean_and_std(config, stats, workdir)
  eval_step = train.make_eval_step(config, model, mesh, crops=crops)
  metrics = train.evaluate(
      config, eval_step, run.variables["params"], jax.device_put(mean), mesh, std=std
  )
  return {"step": run.step, "crops": crops, **metrics}


def main(argv):
  del argv
  from alexnet_jax import runtime

  runtime.setup()
  m = evaluate_checkpoint(FLAGS.workdir, FLAGS.crops, FLAGS.step)
  path = os.path.join(FLAGS.workdir, f"eval_{m['step']}_{FLAGS.crops}crop.json")
  with open(path, "w") as f:
    json.dump(m, f, indent=2)
  print(
      f"step {m['step']}, {m['num_images']} images, {FLAGS.crops} view(s): "
      f"top-1 error {m['top1_error']:.4f}, top-5 error {m['top5_error']:.4f}  ({path})"
  )


if __name__ == "__main__":
  from alexnet_jax import huge_pages

  huge_pages.restart_if_requested()  # only with ALEXNET_JAX_HUGE_PAGES=1
  app.run(main)
