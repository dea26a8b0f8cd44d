r"""The paper's figures for a trained run, and its per-class errors.

  python -m alexnet_jax.figures --workdir=runs/demo --out=runs/demo/figures \
      [--num_queries=5] [--k=5] [--max_train_images=2000] [--crops=N]

Writes into --out:
  fig3_conv1_kernels.png  Fig. 3: every conv1 kernel, one block per tower (no dataset needed)
  fig4_neighbours.png     Fig. 4: validation images beside their k nearest training images by
                          Euclidean distance of fc7 features (scans up to --max_train_images)
  confusion.png           the validation split's confusion matrix
  per_class_errors.json   each class's top-1 error and image count on the validation split

The confusion matrix and the errors average the run's own eval_crops views unless --crops
says otherwise; the last line says which. Fig. 3 of a short run on grey images is colour noise,
as expected: the demo's 64 steps on digits move conv1's kernels 7% of their norm from their
random start, nearly all of it grey (a grey image gives each colour the same gradient).
"""

import sys

from absl import app, flags, logging

from alexnet_jax import cli

flags.DEFINE_string("workdir", None, "The run's --workdir.")
flags.DEFINE_string("out", None, "Directory for the PNGs and per_class_errors.json.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_integer("crops", None, "Views for the confusion matrix (default: the run's).")
flags.DEFINE_integer("num_queries", 5, "Fig. 4: validation images to query with.")
flags.DEFINE_integer("k", 5, "Fig. 4: neighbours per query.")
flags.DEFINE_integer("max_train_images", 2000, "Fig. 4: training images to scan (0 = all).")
flags.mark_flags_as_required(["workdir", "out"])
FLAGS = flags.FLAGS
USAGE = """\
usage: python -m alexnet_jax.figures --workdir=DIR --out=DIR [--num_queries=5] [--k=5]

  python -m alexnet_jax.figures --workdir=runs/demo --out=runs/demo/figures
"""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from alexnet_jax import runtime  # here: --help answers without loading JAX

  runtime.setup()
  # After runtime.setup(): TensorFlow and JAX load with its settings.
  from alexnet_jax import analysis

  try:
    r = analysis.write_figures(
        FLAGS.workdir,
        FLAGS.out,
        step=FLAGS.step,
        crops=FLAGS.crops,
        num_queries=FLAGS.num_queries,
        k=FLAGS.k,
        max_train_images=FLAGS.max_train_images,
    )
  except (
      FileNotFoundError,
      analysis.RunError,
      analysis.checkpoint.UnreadableCheckpointsError,
      analysis.run_dir.RunFileError,
  ) as e:
    sys.exit(f"FATAL: {e}")
  for path in r["paths"].values():
    print(path)
  if r["skipped"]:
    reasons = sorted(set(r["skipped"].values()))
    logging.warning("skipped %s: they need %s", ", ".join(r["skipped"]), "; ".join(reasons))
  else:
    print(f"validation: {r['num_images']} images, {r['views']}: top-1 error {r['top1_error']:.4f}")


if __name__ == "__main__":
  cli.run(main, USAGE)
