r"""Published AlexNets in and out of run directories.

  python -m alexnet_jax.convert --from=torchvision --src=alexnet-owt-7be5be79.pth \
      --workdir=runs/torchvision [--class_names=FILE]
  python -m alexnet_jax.convert --from=caffe --src=bvlc_alexnet.caffemodel \
      [--mean_file=ilsvrc_2012_mean.binaryproto] --workdir=runs/caffe
  python -m alexnet_jax.convert --from=pytorch_grouped --src=grouped.pth --workdir=runs/grouped
  python -m alexnet_jax.convert --to=pytorch_grouped --workdir=runs/paper --dst=paper.pth
  python -m alexnet_jax.convert --from=keras --src=alexnet.keras --workdir=runs/keras
  python -m alexnet_jax.convert --to=keras --workdir=runs/keras_bn --dst=alexnet.weights.h5
  python -m alexnet_jax.convert --from=init --config=configs/pytorch_grouped.py \
      --workdir=runs/interop/pytorch_grouped

Import writes a run directory (config.json, a checkpoint, class_names.json, the mean image)
that evaluates and fine-tunes (--config.init_from) like a trained run; its config is the
format's preset, configs/<format>.py (keras: configs/keras_bn.py), or --config=FILE with
--config.KEY=VALUE overrides. Export writes the run's parameters as a state_dict that the
format's PyTorch module loads, or (keras) a .weights.h5 that the Keras tutorial's model reads
with model.load_weights. Keras files (.keras, .weights.h5, Keras 2's .h5) are read with h5py:
no code in them runs and Keras is not used. Nothing is downloaded. PyTorch files need torch
(pip install torch==2.13.0).

--from=init writes a run of --config's network with its initial weights (config.seed; no
--src): a format's layout tried offline, in seconds. A run whose arrays do not fit the
format's layout is refused in one line naming the first array that differs, what it holds,
what the layout needs and the config whose runs fit.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from alexnet_jax import cli

flags.DEFINE_enum(
    "from",
    None,
    ["torchvision", "caffe", "pytorch_grouped", "keras", "init"],
    "Import this format (init: --config's network with its initial weights, no --src).",
)
flags.DEFINE_enum("to", None, ["torchvision", "pytorch_grouped", "keras"], "Export to this format.")
flags.DEFINE_string("src", None, "The file to import (.pth, .caffemodel, .keras, .h5).")
flags.DEFINE_string("dst", None, "The file to export to (.pth; keras: .weights.h5).")
flags.DEFINE_string("workdir", None, "The run directory to write (import) or read (export).")
flags.DEFINE_string("class_names", None, "Import: a text file with one class name per line.")
flags.DEFINE_string("mean_file", None, "Caffe import: its mean image (.binaryproto).")
flags.DEFINE_integer("step", None, "Export: the checkpoint step (default: latest).")
flags.DEFINE_integer("num_classes", 1000, "--from=init: the network's class count.")
config_flags.DEFINE_config_file(
    "config", None, "Import: the config to write (default: configs/<format>.py).", lock_config=True
)
FLAGS = flags.FLAGS
USAGE = """\
usage: python -m alexnet_jax.convert --from=FORMAT --src=FILE --workdir=DIR
       python -m alexnet_jax.convert --to=FORMAT --workdir=DIR --dst=FILE.pth
       (FORMAT: torchvision, caffe (import only), pytorch_grouped, keras (--dst=FILE.weights.h5))
       python -m alexnet_jax.convert --from=init --config=FILE --workdir=DIR   (initial weights)

  python -m alexnet_jax.convert --from=torchvision --src=alexnet-owt-7be5be79.pth \\
      --workdir=runs/torchvision
  python -m alexnet_jax.convert --to=pytorch_grouped --workdir=runs/paper --dst=paper.pth
"""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  src_fmt, dst_fmt = FLAGS["from"].value, FLAGS.to
  if (src_fmt is None) == (dst_fmt is None):
    raise app.UsageError("give exactly one of --from (import) and --to (export)")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  if src_fmt == "init" and FLAGS.config is None:
    sys.exit("FATAL: --from=init needs --config=FILE, the network to write (e.g. --config=demo)")
  from alexnet_jax import runtime  # here: --help answers without loading JAX

  runtime.setup()
  # After runtime.setup(): JAX is imported with the accelerators it is meant to see.
  from alexnet_jax import pretrained

  try:
    if src_fmt == "init":
      out = pretrained.init_run(FLAGS.workdir, FLAGS.config, FLAGS.num_classes)
      print(
          f"initial weights (seed {FLAGS.config.seed}) -> {FLAGS.workdir}: "
          f"{out['num_params']:,} parameters, {out['num_classes']} classes"
      )
    elif src_fmt:
      if not FLAGS.src:
        raise app.UsageError("--from needs --src=FILE")
      config = FLAGS.config if FLAGS.config is not None else pretrained.preset_config(src_fmt)
      out = pretrained.import_run(
          src_fmt,
          FLAGS.src,
          FLAGS.workdir,
          config,
          class_names_file=FLAGS.class_names,
          mean_file=FLAGS.mean_file,
      )
      print(
          f"{FLAGS.src} ({src_fmt}) -> {FLAGS.workdir}: {out['num_params']:,} parameters, "
          f"{out['num_classes']} classes"
      )
    else:
      if not FLAGS.dst:
        raise app.UsageError("--to needs --dst=FILE")
      out = pretrained.export_run(
          dst_fmt, FLAGS.workdir, FLAGS.dst, pretrained.preset_config(dst_fmt), step=FLAGS.step
      )
      print(
          f"{FLAGS.workdir} (step {out['step']}) -> {FLAGS.dst} ({dst_fmt}, "
          f"{len(out['keys'])} tensors)"
      )
      if out["differences"]:
        print(
            f"note: the weights fit the {dst_fmt} layout, but this run's network differs from "
            f"configs/{pretrained.PRESETS.get(dst_fmt, dst_fmt)}.py in "
            f"{'; '.join(out['differences'])} (run value -> preset value): the "
            f"{dst_fmt} model computes this run's function only with the run's settings."
        )
  except (pretrained.ConversionError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"FATAL: {e}")


if __name__ == "__main__":
  cli.run(main, USAGE)
