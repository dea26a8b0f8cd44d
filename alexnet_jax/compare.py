r"""A table and the learning curves of several runs, e.g. the points of a sweep.

  python -m alexnet_jax.compare runs/demo runs/demo_seed1
  python -m alexnet_jax.compare 'runs/ablations/*' --out=runs/ablations

Reads each run directory's config.json, metrics.jsonl and the eval_<step>_<N>crop.json files
of `python -m alexnet_jax.evaluate`, and prints one row per run: the config keys that differ
between the runs, the last step, the training time and images/s, the final and best
validation errors of training's evaluations, and evaluate's 1- and 10-view errors where a run
has them. The training time and images/s come from the clock times training records in each
row of metrics.jsonl; for runs logged before those existed they are estimates, marked ~. Writes the table as comparison.csv and comparison.md, and the train loss and
validation top-1 error of every run against step as comparison.png, into --out (default: the
run directories' common parent, the sweep's root for a sweep's runs). Patterns are expanded
here too (quote them for the shell to pass them on); a pattern's matches that are not
directories (this command's own outputs) are passed over.

Order: the runs as the arguments name them; a pattern's runs in the order they were created
(config_history.jsonl's first line, written by the run's first launch), so that a sweep's
runs keep the sweep's order, its baseline (the first point) first.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import glob
import json
import os
import re
import sys

from absl import flags, logging
from matplotlib.figure import Figure

from alexnet_jax import cli, files, run_dir
from alexnet_jax.facts import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, VIEW_COUNTS

EVAL_FILE_RE = re.compile(r"eval_(\d+)_(\d+)crop\.json")
OUTPUT_FILES = ("comparison.csv", "comparison.md", "comparison.png")

USAGE = """\
usage: python -m alexnet_jax.compare RUN_DIR [RUN_DIR...] [--out=DIR]

  python -m alexnet_jax.compare runs/demo runs/demo_seed1
  python -m alexnet_jax.compare 'runs/ablations/*' --out=runs/ablations

A RUN_DIR is a training run's --workdir (it holds config.json and metrics.jsonl).
Writes comparison.csv, comparison.md and comparison.png into --out (default: the runs'
common parent).
"""

FLAGS = flags.FLAGS


class NotARunError(ValueError):
  """A path that holds no run, or whose config.json cannot be read."""


@dataclasses.dataclass
class Run:
  """What compare reads of one run directory."""

  workdir: str
  config: dict  # flattened: {"model.lrn": True, ...}
  train: list[dict]  # metrics.jsonl's train rows, one per step (the last written), by step
  eval: list[dict]  # its eval rows, likewise
  evaluated: dict[int, dict]  # views -> evaluate's results file of the chosen step
  notes: list[str]
  rows: list[dict] = dataclasses.field(default_factory=list)  # every row, in the file's order


@dataclasses.dataclass
class Comparison:
  columns: list[str]
  rows: list[dict]  # column -> value (None where a run has none)
  notes: list[str]  # what the columns mean, and what a reader should know about a run
  runs: list[Run]
  names: list[str]  # the runs' names in the table and the plot


def flatten(d: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]}."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def created(workdir: str) -> tuple[float, float, str]:
  """A sort key: when the run was created (the time on the first line of its
  config_history.jsonl; else its config.json's modification time), then its config.json's
  modification time, then its path. A directory without config.json sorts last."""
  config = os.path.join(workdir, CONFIG_FILE)
  try:
    mtime = os.stat(config).st_mtime
  except OSError:
    return (float("inf"), float("inf"), workdir)
  when = mtime
  try:
    with open(os.path.join(workdir, HISTORY_FILE)) as f:
      when = datetime.datetime.fromisoformat(json.loads(f.readline())["time"]).timestamp()
  except (OSError, ValueError, KeyError, TypeError):
    pass  # no history (a converted run, an older one): config.json's time
  return (when, mtime, workdir)


def expand(patterns: list[str]) -> list[str]:
  """The run directories the arguments name, in their order: a pattern with *, ? or [ ] gives
  its matching directories in the order their runs were created (`created`), anything else
  itself. A pattern that matches nothing is kept, so that reading it names it."""
  out = []
  for p in patterns:
    if glob.has_magic(p):
      matches = sorted((m for m in glob.glob(p) if os.path.isdir(m)), key=created)
      out.extend(matches or [p])
    else:
      out.append(p)
  return list(dict.fromkeys(os.path.normpath(p) for p in out))  # named twice: one run


def _rows_by_step(rows: list[dict]) -> list[dict]:
  # A resumed run logs again the steps after its checkpoint: the last row of a step wins.
  return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def read_run(workdir: str) -> Run:
  """Raises NotARunError when `workdir` has no config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    what = "does not exist" if not os.path.exists(workdir) else "is not a run directory"
    hint = ""
    if os.path.isdir(workdir) and any(
        os.path.isfile(os.path.join(workdir, d, CONFIG_FILE)) for d in os.listdir(workdir)
    ):
      hint = f"; it holds runs: pass '{os.path.join(workdir, '*')}'"
    raise NotARunError(
        f"{workdir} {what} (a run directory holds {CONFIG_FILE} and {METRICS_FILE}, written "
        f"by python -m alexnet_jax.main --workdir=DIR){hint}"
    )
  try:
    # Today's key names, so a run recorded with older ones compares key for key. Text read
    # from the file is escaped: it is printed.
    config = _printable(flatten(run_dir.upgrade_config(run_dir.read_json(path, dict), path)))
    # A run killed while writing leaves half a line: the other rows still count.
    rows, bad = run_dir.read_metrics(workdir)
  except (OSError, run_dir.RunFileError) as e:
    raise NotARunError(
        f"{path} cannot be read ({e})" if isinstance(e, OSError) else str(e)
    ) from None
  notes = []
  if bad:
    notes.append(f"{bad} unreadable line(s) of {METRICS_FILE} skipped")
  if not os.path.exists(os.path.join(workdir, METRICS_FILE)):
    notes.append(f"no {METRICS_FILE} (a converted or unstarted run)")
  train = _rows_by_step([r for r in rows if r.get("split") == "train"])
  evals = _rows_by_step([r for r in rows if r.get("split") == "eval"])
  return Run(workdir, config, train, evals, *_evaluated(workdir, train, evals, notes), rows)


def _evaluated(workdir: str, train, evals, notes) -> tuple[dict, list]:
  """For each number of views, evaluate's results at the run's last step if it has them,
  else at the latest step it has (with a note)."""
  found: dict[int, dict[int, str]] = {}
  for name in os.listdir(workdir):
    m = EVAL_FILE_RE.fullmatch(name)
    if m:
      found.setdefault(int(m[2]), {})[int(m[1])] = os.path.join(workdir, name)
  last = max([r["step"] for r in train + evals], default=None)
  out = {}
  for views in VIEW_COUNTS:
    if views not in found:
      continue
    step = last if last in found[views] else max(found[views])
    try:
      out[views] = _eval_results(found[views][step])
    except run_dir.RunFileError as e:
      notes.append(f"its {views}-view results are skipped: {e}")
      continue
    if step != last:
      notes.append(f"its {views}-view errors are of step {step}, not of its last step {last}")
  return out, notes


def _eval_results(path: str) -> dict:
  """An evaluate results file: an object whose step is an integer and errors are numbers."""
  r = run_dir.read_json(path, dict)
  number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
  if not all(number(r.get(k)) for k in ("top1_error", "top5_error")) or (
      "step" in r and not isinstance(r["step"], int)
  ):
    raise run_dir.RunFileError(f"{files.printable(path)} is not evaluate's results")
  return r


def _printable(config: dict) -> dict:
  """Keys and text values as they print safely (files.printable)."""
  show = lambda v: files.printable(v) if isinstance(v, str) else v  # noqa: E731
  return {files.printable(k): show(v) for k, v in config.items()}


def _last_step(run: Run) -> int | None:
  steps = [r["step"] for r in run.train + run.eval]
  steps += [int(r["step"]) for r in run.evaluated.values() if "step" in r]
  return max(steps, default=None)


class Estimate(float):
  """A time figure worked out from images_per_sec alone, for a run logged before
  metrics.jsonl's rows recorded clock times (whose windows read the clock before the device
  had finished their steps): printed with a leading ~."""


def clocked(run: Run) -> bool:
  """Whether every training row records its window's wall time (window_s)."""
  return bool(run.train) and all("window_s" in r for r in run.train)


def train_seconds(run: Run) -> float | None:
  """The run's wall-clock time: for each launch (each starts at its warm-up window), the
  seconds from its start to its last row (elapsed_s), summed over the launches. An Estimate
  for runs without clock times: each window's steps x batch_size / images_per_sec, summed
  (compilation partly, saves and evaluations not counted)."""
  if clocked(run):
    total, launch = 0.0, 0.0
    for r in run.rows:
      if "elapsed_s" not in r:
        continue
      if r.get("split") == "train" and r.get("warmup"):
        total, launch = total + launch, 0.0
      launch = max(launch, float(r["elapsed_s"]))
    return total + launch
  batch = run.config.get("batch_size")
  if not run.train or not batch or any(not r.get("images_per_sec") for r in run.train):
    return None
  total, prev = 0.0, 0
  for r in run.train:
    total += (r["step"] - prev) * batch / r["images_per_sec"]
    prev = r["step"]
  return Estimate(total)


def images_per_sec(run: Run) -> float | None:
  """The steady training rate: the images of the windows after each launch's warm-up window
  over their wall-clock seconds (the warm-up windows when there is nothing else). An
  Estimate for runs without clock times: the mean of the windows' images_per_sec."""
  if clocked(run):
    steady = [r for r in run.train if not r.get("warmup")] or run.train
    seconds = sum(float(r["window_s"]) for r in steady)
    images = sum(float(r["images_per_sec"]) * float(r["window_s"]) for r in steady)
    return images / seconds if seconds > 0 else None
  mean = _mean([r["images_per_sec"] for r in run.train if "images_per_sec" in r])
  return None if mean is None else Estimate(mean)


def _mean(values: list[float]) -> float | None:
  return sum(values) / len(values) if values else None


def _names(workdirs: list[str]) -> tuple[list[str], str]:
  """Each run's path below the runs' common parent (a sweep point's name), and that
  parent."""
  paths = [os.path.abspath(w) for w in workdirs]
  parent = os.path.commonpath([os.path.dirname(p) for p in paths])
  return [os.path.relpath(p, parent) for p in paths], parent


def compare(runs: list[Run]) -> Comparison:
  names, _ = _names([r.workdir for r in runs])
  keys = sorted(set().union(*(r.config for r in runs)))
  missing = object()
  differ = [
      k for k in keys if len({json.dumps(r.config.get(k, missing), default=str) for r in runs}) > 1
  ]
  views = [v for v in VIEW_COUNTS if any(v in r.evaluated for r in runs)]
  columns = ["run", *differ, "last step", "train time (s)", "images/s"]
  columns += ["top-1 final", "top-1 best", "top-5 final", "top-5 best"]
  columns += [f"top-{k} {v}-view" for v in views for k in (1, 5)]
  rows = []
  for name, run in zip(names, runs):
    row = {"run": name, **{k: run.config.get(k) for k in differ}}
    row["last step"] = _last_step(run)
    row["train time (s)"] = train_seconds(run)
    row["images/s"] = images_per_sec(run)
    for k in (1, 5):
      errors = [r[f"top{k}_error"] for r in run.eval if f"top{k}_error" in r]
      row[f"top-{k} final"] = errors[-1] if errors else None
      row[f"top-{k} best"] = min(errors) if errors else None
    for v in views:
      for k in (1, 5):
        row[f"top-{k} {v}-view"] = run.evaluated.get(v, {}).get(f"top{k}_error")
    rows.append(row)
  notes = [
      "errors are fractions; top-1/top-5 final and best: the validation evaluations during "
      f"training ({METRICS_FILE}; each run's eval_crops views), best taken for each column "
      "on its own",
      "train time (s): the wall-clock seconds from the start of training to the last row of "
      f"{METRICS_FILE} (elapsed_s), summed over a resumed run's launches; images/s: the images "
      "of the training windows after each launch's first (compilation) window over their "
      "wall-clock seconds (window_s)",
  ]
  estimated = [n for n, r in zip(names, runs) if r.train and not clocked(r)]
  if estimated:
    notes.append(
        "~: an estimate, for runs whose metrics.jsonl records no clock time (logged by an "
        "earlier version): train time = steps x batch_size / images_per_sec summed over the "
        "windows, images/s = the windows' mean images_per_sec, both from a clock that stopped "
        "before the device finished: " + ", ".join(estimated)
    )
  warmup_only = [
      n for n, r in zip(names, runs) if clocked(r) and all(t.get("warmup") for t in r.train)
  ]
  if warmup_only:
    notes.append(
        "images/s includes compilation (only a warm-up window was logged): "
        + ", ".join(warmup_only)
    )
  if views:
    notes.append(
        "N-view: python -m alexnet_jax.evaluate --crops=N's results (eval_STEP_Ncrop.json) "
        "at the run's last step, on the whole validation split"
    )
  sizes = {n: r.eval[-1].get("num_images") for n, r in zip(names, runs) if r.eval}
  if len(set(sizes.values())) > 1:
    notes.append(
        "training's evaluations saw different numbers of validation images (max_eval_batches): "
        + ", ".join(f"{n} {int(s)}" for n, s in sizes.items() if s is not None)
    )
  notes += [f"{n}: {note}" for n, r in zip(names, runs) for note in r.notes]
  return Comparison(columns, rows, notes, runs, names)


def format_cell(column: str, value) -> str:
  if value is None:
    return "-"
  if isinstance(value, Estimate):
    return "~" + format_cell(column, float(value))
  if column.startswith("top-"):
    return f"{value:.4f}"
  if column == "train time (s)":
    return f"{value:.0f}"
  if column == "images/s":
    return f"{value:.1f}"
  if isinstance(value, str):
    return value
  return json.dumps(value)  # config values as config.json writes them: true, 0.01, [1, 2]


def text_table(c: Comparison) -> str:
  cells = [c.columns] + [[format_cell(k, row[k]) for k in c.columns] for row in c.rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(c.columns))]
  lines = ["  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip() for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def markdown(c: Comparison) -> str:
  esc = lambda s: s.replace("|", "\\|")  # noqa: E731
  lines = [f"- {n}" for n in c.notes] + [""]
  lines.append("| " + " | ".join(esc(k) for k in c.columns) + " |")
  lines.append("|" + "|".join("---" for _ in c.columns) + "|")
  for row in c.rows:
    lines.append("| " + " | ".join(esc(format_cell(k, row[k])) for k in c.columns) + " |")
  return "\n".join(lines) + "\n"


def _csv_cell(value):
  # Numbers at full precision; config values as config.json writes them; none: empty.
  if value is None:
    return ""
  if isinstance(value, (str, int, float)) and not isinstance(value, bool):
    return value
  return json.dumps(value)


def write_csv(c: Comparison, path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(c.columns)
    w.writerows([_csv_cell(row[k]) for k in c.columns] for row in c.rows)


def plot(c: Comparison) -> Figure:
  """Train loss (left) and validation top-1 error (right) against step, one line per run
  that has them, a run keeping its colour in both; one legend for both, below the panels,
  where it covers no point."""
  # A bare Figure (no pyplot): rendered by Agg, no GUI backend needed.
  fig = Figure(figsize=(12, 4.5))
  ax_loss, ax_err = fig.subplots(1, 2)
  handles = {}
  for i, (name, run) in enumerate(zip(c.names, c.runs)):
    color = f"C{i % 10}"
    if run.train:
      (handles[name],) = ax_loss.plot(
          [r["step"] for r in run.train], [r["loss"] for r in run.train], color=color, label=name
      )
    if run.eval:
      (handles[name],) = ax_err.plot(
          [r["step"] for r in run.eval],
          [r["top1_error"] for r in run.eval],
          "o-",
          color=color,
          label=name,
      )
  ax_loss.set(xlabel="step", ylabel="cross-entropy", title="train loss")
  ax_err.set(xlabel="step", ylabel="error (fraction)", title="validation top-1 error")
  for ax in (ax_loss, ax_err):
    ax.grid(alpha=0.3)
  rows = 0
  if handles:
    ncol = min(len(handles), 4)
    rows = -(-len(handles) // ncol)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=ncol,
        fontsize="small",
        frameon=False,
    )
  # The panels above the legend's rows (about 0.3 inch each, of the figure's 4.5).
  fig.tight_layout(rect=(0, min(0.06 * rows + 0.01, 0.5), 1, 1))
  return fig


def write(c: Comparison, out: str) -> list[str]:
  """comparison.csv, .md and .png in `out`; returns their paths."""
  os.makedirs(out, exist_ok=True)
  paths = [os.path.join(out, name) for name in OUTPUT_FILES]
  write_csv(c, paths[0])
  with open(paths[1], "w") as f:
    f.write(markdown(c))
  plot(c).savefig(paths[2], dpi=100)
  return paths


def _show(path: str) -> str:
  rel = os.path.relpath(path)
  return path if rel.startswith("..") else rel


def main(argv):
  workdirs = expand(argv[1:])
  if not workdirs:  # flags but no run (--out=DIR alone): as a bare run
    cli.exit_with_usage(USAGE)
  runs = []
  for w in workdirs:
    try:
      runs.append(read_run(w))
    except NotARunError as e:
      logging.warning("%s", e)
  if not runs:
    sys.exit(f"FATAL: none of {', '.join(workdirs)} could be read as a run")
  c = compare(runs)
  out = FLAGS.out or _names([r.workdir for r in runs])[1]
  for note in c.notes:
    print(f"# {note}")
  print(text_table(c))
  try:
    paths = write(c, out)
  except OSError as e:
    sys.exit(f"FATAL: cannot write the comparison into {out} ({e}); choose a directory with --out")
  print(f"written: {', '.join(_show(p) for p in paths)}")


if __name__ == "__main__":
  # Defined only when run as the command: the library is imported beside other commands'
  # flags (evaluate's --out) by tests and notebooks.
  flags.DEFINE_string("out", None, "Where to write the comparison (default: the runs' parent).")
  cli.run(main, USAGE)
