"""The top classes of image files under a trained run, preprocessed exactly as its evaluation
preprocesses (decode to RGB, shorter side to 256, center 256, mean image, scale, views).

  python -m alexnet_jax.predict --workdir=runs/demo my_digit.png
  python -m alexnet_jax.predict --workdir=runs/torchvision --crops=10 photos/*.jpg

Views: the run's own eval_crops unless --crops says otherwise; the first line on stderr says
which (`runs/demo, step 64: 1 view(s), the run's eval_crops`).
Prints one line per image: `PATH: NAME PROBABILITY, ...`, the most probable class first.
A PATH with a space, a quote, a backslash, ": " or an unprintable character (a newline) is
printed as a JSON string ("my photo.jpg"), so that each image keeps one line of output.
Class names (the run's class_names.json) are printed with control characters escaped.
Any size and mode (grayscale, palette, RGBA, CMYK) is read. An image that cannot be read or
decoded gets one line on stderr naming it (also a FIFO or device, refused before it is
opened, and an image whose header declares more than --max_image_pixels, PIL's bomb limit by
default, never decoded); the others are still predicted, and the exit status is then 1.
Needs only the run directory, not the dataset (run_dir.py).
"""

import sys

from absl import app, flags

from alexnet_jax import cli, files

flags.DEFINE_string("workdir", None, "The run's --workdir.")
flags.DEFINE_integer(
    "crops", None, "1 = center crop; 10 = the paper's ten views (default: " "the run's eval_crops)."
)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_integer("top", 5, "How many classes to print per image.")
flags.DEFINE_integer(
    "max_image_pixels",
    None,
    "The most pixels an image may declare in its header to be decoded (default: PIL's "
    "decompression-bomb limit, 89,478,485); larger ones are named and not decoded.",
)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS
USAGE = """\
usage: python -m alexnet_jax.predict --workdir=DIR [--crops=1|10] [--top=5] IMAGE...

  python -m alexnet_jax.predict --workdir=runs/demo my_digit.png
  python -m alexnet_jax.predict --workdir=runs/torchvision --crops=10 photos/*.jpg
"""


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("give one or more image files after the flags")
  from alexnet_jax import runtime  # here: --help answers without loading JAX

  runtime.setup()
  # After runtime.setup(): TensorFlow and JAX load with its settings.
  from alexnet_jax import analysis

  try:
    run = analysis.load_run(FLAGS.workdir, FLAGS.step, from_dataset=True)
    print(f"{FLAGS.workdir}, step {run.step}: {run.views_used(FLAGS.crops)}", file=sys.stderr)
    results = analysis.predict_files(run, paths, FLAGS.crops, max_pixels=FLAGS.max_image_pixels)
    failed = 0
    for path, probs, error in results:
      if error is not None:
        failed += 1
        print(error, file=sys.stderr, flush=True)
        continue
      top = run.top_k(probs[None], FLAGS.top)[0]
      line = ", ".join(f"{files.printable(name)} {p:.4f}" for name, p in top)
      print(f"{analysis.quoted(path)}: {line}", flush=True)
  except (
      FileNotFoundError,
      analysis.RunError,
      analysis.checkpoint.UnreadableCheckpointsError,
      ValueError,
  ) as e:
    sys.exit(f"FATAL: {e}")
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, USAGE)
