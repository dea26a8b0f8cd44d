"""Top-1/top-5 error of a run's checkpoint, or of an ensemble of runs, on the whole
validation split (--split=test: the held-out test split of a dataset that has one, oxford17
with datasplits.mat).

  python -m alexnet_jax.evaluate --workdir=runs/demo
  python -m alexnet_jax.evaluate --workdir=runs/demo --crops=10
  python -m alexnet_jax.evaluate --workdir=runs/a --workdir=runs/b --crops=10 --out=runs/ens.json
  python -m alexnet_jax.evaluate --workdir=runs/oxford17 --split=test

Views: the run's own eval_crops (config.eval_crops: 1 in the demo, 10 in the paper's config)
unless --crops says otherwise; the output says which.
One --workdir: prints the errors and writes them to WORKDIR/eval_<step>_<crops>crop.json
(eval_<step>_<crops>crop_test.json for the test split).
Several: the softmax averaged over the runs (§6's 5-CNN ensemble; the runs must share one
class list), printed with each run's own errors on the same images, which are also written
into each run trained on the same dataset as the first (its eval file, as above, for
`python -m alexnet_jax.compare`); the ensemble's errors go to --out if given.
"""

import json
import os
import sys

from absl import app, flags

from alexnet_jax import cli, facts, files

SPLITS = ("validation", "test")
_STREAM_SPLIT = {"validation": "eval", "test": "test"}  # the data layer's names
flags.DEFINE_multi_string("workdir", None, "A run's --workdir; repeat it for an ensemble.")
flags.DEFINE_integer(
    "crops", None, "1 = center crop; 10 = the paper's ten views (default: the run's eval_crops)."
)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest; one --workdir only).")
flags.DEFINE_string("out", None, "Ensembles: also write the results to this JSON file.")
flags.DEFINE_enum(
    "split", "validation", SPLITS, "validation, or test: a dataset's held-out test split."
)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS
USAGE = """\
usage: python -m alexnet_jax.evaluate --workdir=DIR [--workdir=DIR2 ...] [--crops=1|10]

  python -m alexnet_jax.evaluate --workdir=runs/demo
  python -m alexnet_jax.evaluate --workdir=runs/demo --crops=10
  python -m alexnet_jax.evaluate --workdir=runs/a --workdir=runs/b --crops=10 --out=runs/ens.json
  python -m alexnet_jax.evaluate --workdir=runs/oxford17 --split=test
"""


def evaluate_checkpoint(
    workdir: str, crops: int | None = None, step: int | None = None, split: str = "validation"
) -> dict:
  """{'step', 'crops', 'split', 'top1_error', 'top5_error', 'loss', 'num_images', 'views'} of
  a checkpoint on the validation split, or the dataset's test split (split='test'); crops:
  1 or 10 views, None: the run's eval_crops ('views' says which was used, in words)."""
  # After runtime.setup() in main(): importing JAX and TF here keeps them off accelerators.
  from alexnet_jax import analysis, evaluation, train

  if crops is not None and crops not in facts.VIEW_COUNTS:
    raise ValueError(f"--crops must be one of {facts.VIEW_COUNTS}, got {crops}")
  if split not in SPLITS:
    raise ValueError(f"--split must be one of {SPLITS}, got {split!r}")
  run = analysis.load_run(workdir, step, from_dataset=True)
  views = run.views_used(crops)
  crops = run.crops_or_default(crops)
  eval_step = evaluation.make_eval_step(run.config, run.model, run.mesh, crops=crops)
  metrics = train.evaluate(
      run.config,
      eval_step,
      run.variables,
      run.input_spec(),
      run.mesh,
      progress=True,
      split=_STREAM_SPLIT[split],
  )
  return {"step": run.step, "crops": crops, "split": split, **metrics, "views": views}


def results_file(step: int, crops: int, split: str = "validation") -> str:
  """Where one run's results go: eval_<step>_<crops>crop.json, with _test for the test split
  (a name compare.py's table of validation results does not take for one)."""
  name = facts.eval_results_file(step, crops)
  return name if split == "validation" else name[: -len(".json")] + f"_{split}.json"


def write_results(workdir: str, m: dict, split: str = "validation") -> str:
  """One run's results file (results_file) in its workdir; returns its path."""
  path = os.path.join(workdir, results_file(m["step"], m["crops"], split))
  keys = ("step", "crops", "split", "top1_error", "top5_error", "loss", "num_images")
  result = {"split": split, **{k: m[k] for k in keys if k in m}}
  # A run's own file: written whole, never through a symbolic link.
  files.write_atomically(path, lambda f: f.write(json.dumps(result, indent=2).encode()))
  return path


def _split_words() -> str:
  """', test split' when --split=test; nothing for the validation split (the usual case)."""
  return "" if FLAGS.split == "validation" else f", {FLAGS.split} split"


def _errors(m: dict) -> str:
  return f"top-1 error {m['top1_error']:.4f}, top-5 error {m['top5_error']:.4f}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from alexnet_jax import runtime  # here: --help answers without loading JAX

  runtime.setup()
  # After runtime.setup(): TensorFlow and JAX load with its settings.
  from alexnet_jax import analysis
  from alexnet_jax.data import DatasetError

  workdirs = FLAGS.workdir
  if len(workdirs) > 1 and FLAGS.step is not None:
    raise app.UsageError("--step applies to a single --workdir")
  try:
    if len(workdirs) == 1:
      m = evaluate_checkpoint(workdirs[0], FLAGS.crops, FLAGS.step, FLAGS.split)
      path = write_results(workdirs[0], m, FLAGS.split)
      print(
          f"step {m['step']}{_split_words()}, {m['num_images']} images, {m['views']}: "
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
    if member["same_data"]:  # its own split: the result compare shows for it
      where = f"  ({write_results(member['workdir'], member, FLAGS.split)})"
    else:
      where = "  (not saved: trained on another dataset than the first run)"
    views = f", {member['crops']} view(s)" if m["crops"] is None else ""
    print(f"{member['workdir']} (step {member['step']}{views}): {_errors(member)}{where}")
  if FLAGS.crops is not None:
    views = f"{FLAGS.crops} view(s), from --crops"
  elif m["crops"] is not None:
    views = f"{m['crops']} view(s), each run's eval_crops"
  else:
    views = "each run's own eval_crops views"
  print(
      f"ensemble of {len(workdirs)}{_split_words()}, {m['num_images']} images, {views}: "
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
