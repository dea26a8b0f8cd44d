r"""Writes a dataset once as the paper's 256x256 images, in shards that training reads fast.

  python -m alexnet_jax.prepare --config=configs/paper.py
  python -m alexnet_jax.prepare --config=configs/demo.py --config.prepare.format=raw
  python -m alexnet_jax.prepare --config=configs/paper.py [--config.dataset.name=...]
      [--config.prepare.format=raw] [--output_dir=DIR] [--process_index=I --process_count=N]

By default the shards go beside the data, where training finds them (dataset.prepared='auto').
Rerun the same command after an interruption: it keeps the finished shards and writes the
rest. On several hosts, give each its --process_index (all write into the same directory).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import cli, config_checks, runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("output_dir", None, "Where to write (default: beside the data).")
flags.DEFINE_integer("process_index", 0, "This host's part of a preparation on several hosts.")
flags.DEFINE_integer("process_count", 1, "How many hosts share the preparation.")
flags.mark_flags_as_required(["config"])
USAGE = """\
usage: python -m alexnet_jax.prepare --config=CONFIG [--config.KEY=VALUE ...] [--output_dir=DIR]

  python -m alexnet_jax.prepare --config=configs/paper.py
  python -m alexnet_jax.prepare --config=configs/demo.py --config.prepare.format=raw
"""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runtime.setup()
  # After runtime.setup(): TensorFlow reads its log level when first imported.
  from alexnet_jax import reporting
  from alexnet_jax.data import DatasetError, shard_writer

  config = FLAGS.config
  problems = config_checks.problems(config)
  if problems:
    sys.exit("FATAL: " + "\n".join(problems))
  try:
    report = shard_writer.prepare(
        config.dataset,
        FLAGS.output_dir,
        fmt=config.prepare.format,
        jpeg_quality=config.prepare.jpeg_quality,
        images_per_shard=config.prepare.images_per_shard,
        process_index=FLAGS.process_index,
        process_count=FLAGS.process_count,
        progress=reporting.progress,
    )
  except (DatasetError, FileNotFoundError) as e:
    sys.exit(f"FATAL: {e}")
  logging.info(
      "%s: wrote %d shard(s), %d were already there; %s",
      report.root,
      len(report.written),
      len(report.skipped),
      "complete" if report.complete else "other processes' shards are still missing",
  )
  if report.bad_files:
    logging.warning("left out (cannot be decoded): %s", ", ".join(report.bad_files))


if __name__ == "__main__":
  cli.run(main, USAGE)
