"""Top-1/top-5 error of a run's checkpoint, or of an ensemble of runs, on the whole
validation split (--split=test: the held-out test split of a dataset that has one, oxford17
with datasplits.mat).

  python -m alexnet_jax.evaluate --workdir=runs/demo --crops=10
  python -m alexnet_jax.evaluate --workdir=runs/a --workdir=runs/b --crops=10 [--out=F.json]

One --workdir: prints the errors and writes them to WORKDIR/eval_<step>_<crops>crop.json
(eval_<step>_<crops>crop_test.json for the test split).
Several: the softmax averaged over the runs (§6's 5-CNN ensemble; the runs must share one
class list), printed with each run's own errors, and written to --out if given.
"""

import json
import os
import sys

from absl import app, flags

from alexnet_jax import cli, files

SPLITS = ("validation", "test")
_STREAM_SPLIT = {"validation": "eval", "test": "test"}  # the data layer's names
flags.DEFINE_multi_string("workdir", None, "A run's --workdir; repeat it for an ensemble.")
flags.DEFINE_integer("crops", 10, "1 = center crop; 10 = the paper's ten views.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest; one --workdir only).")
flags.DEFINE_string("out", None, "Ensembles: also write the results to this JSON file.")
flags.DEFINE_enum(
    "split", "validation", SPLITS, "validation, or test: a dataset's held-out test split."
)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS
USAGE = """\
usage: python -m alexnet_jax.evaluate --workdir=DIR [--workdir=DIR2 ...] [--crops=1|10]

  python -m alexnet_jax.evaluate --workdir=runs/demo --crops=10
  python -m alexnet_jax.evaluate --workdir=runs/a --workdir=runs/b --crops=10 --out=ens.json
  python -m alexnet_jax.evaluate --workdir=runs/oxford17 --split=test
"""


def evaluate_checkpoint(
    workdir: str, crops: int = 10, step: int | None = None, split: str = "validation"
) -> dict:
  """{'step', 'crops', 'split', 'top1_error', 'top5_error', 'loss', 'num_images'} of a
  checkpoint on the validation split, or the dataset's test split (split='test')."""
  # After runtime.setup() in main(): importing JAX and TF here keeps them off accelerators.
  from alexnet_jax import analysis, evaluation

  if crops not in (1, 10):
    raise ValueError(f"--crops must be 1 or 10, got {crops}")
  if split not in SPLITS:
    raise ValueError(f"--split must be one of {SPLITS}, got {split!r}")
  run = analysis.load_run(workdir, step, from_dataset=True)
  eval_step = evaluation.make_eval_step(run.config, run.model, run.mesh, crops=crops)
  metrics = evaluation.evaluate(
      run.config,
      eval_step,
      run.variables,
      run.input_spec(),
      run.mesh,
      progress=True,
      split=_STREAM_SPLIT[split],
  )
  return {"step": run.step, "crops": crops, "split": split, **metrics}


def results_file(step: int, crops: int, split: str = "validation") -> str:
  """Where one run's results go: eval_<step>_<crops>crop.json, with _test for the test split
  (a name compare.py's table of validation results does not take for one)."""
  from alexnet_jax import run_dir

  name = run_dir.eval_results_file(step, crops)
  return name if split == "validation" else name[: -len(".json")] + f"_{split}.json"


def _split_words() -> str:
  """', test split' when --split=test; nothing for the validation split (the usual case)."""
  return "" if FLAGS.split == "validation" else f", {FLAGS.split} split"


def _errors(m: dict) -> str:
  return f"top-1 error {m['top1_error']:.4f}, top-5 error {m['top5_error']:.4f}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from alexnet_jax import runtime

  runtime.setup()
  from alexnet_jax import analysis
  from alexnet_jax.data import DatasetError

  workdirs = FLAGS.workdir
  if len(workdirs) > 1 and FLAGS.step is not None:
    raise app.UsageError("--step applies to a single --workdir")
  try:
    if len(workdirs) == 1:
      m = evaluate_checkpoint(workdirs[0], FLAGS.crops, FLAGS.step, FLAGS.split)
      path = os.path.join(workdirs[0], results_file(m["step"], FLAGS.crops, FLAGS.split))
      files.replace_symlink(path)  # a run's own file: never written through a link
      with open(path, "w") as f:
        json.dump(m, f, indent=2)
      print(
          f"step {m['step']}{_split_words()}, {m['num_images']} images, "
          f"{FLAGS.crops} view(s): "
          f"{_errors(m)}  ({path})"
      )
      return
    m = analysis.ensemble_evaluate(workdirs, FLAGS.crops, split=_STREAM_SPLIT[FLAGS.split])
  except (
      FileNotFoundError,
      DatasetError,
      analysis.RunError,
      analysis.checkpoint.UnreadableCheckpointsError,
      analysis.run_dir.RunFileError,
  ) as e:
    sys.exit(f"FATAL: {e}")
  for member in m["members"]:
    print(f"{member['workdir']} (step {member['step']}): {_errors(member)}")
  print(
      f"ensemble of {len(workdirs)}{_split_words()}, {m['num_images']} images, "
      f"{FLAGS.crops} view(s): "
      f"{_errors(m)}"
  )
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"workdirs": workdirs, "split": FLAGS.split, **m}, f, indent=2)
    print(f"written to {FLAGS.out}")


if __name__ == "__main__":
  from alexnet_jax import huge_pages

  huge_pages.restart_if_requested()  # only with ALEXNET_JAX_HUGE_PAGES=1
  cli.run(main, USAGE)
