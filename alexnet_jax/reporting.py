"""What a run leaves for people: metrics.jsonl, TensorBoard events, a learning-curve PNG
and a closing summary."""

from __future__ import annotations

import glob
import json
import os
import sys

import tensorflow as tf  # the TensorBoard writer (TF is already the input pipeline's)
import tqdm
from absl import logging
from matplotlib.figure import Figure

from alexnet_jax import files, run_dir, run_lock
from alexnet_jax.data import settings
from alexnet_jax.run_dir import CURVE_FILE, FIGURES_DIR, METRICS_FILE, TENSORBOARD_DIR


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress(iterable, *, total: int | None, desc: str, unit: str = "batch"):
  """`iterable` with a progress bar (done/total, rate and ETA) on stderr, for anything that
  scans a split; a text bar, so it reads the same in a terminal, a log and a notebook."""
  return tqdm.tqdm(
      iterable, total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0, ascii=True
  )


class MetricsWriter:
  """One JSON object per line ({"step", "split", metrics...}) plus TensorBoard scalars.

  Appends, so a resumed run continues the same files; `start_step`: the step the run
  restored (0 for a new one), past which earlier writes are dropped first (drop_after), so
  the files hold one row per (step, split). Only process 0 writes."""

  def __init__(self, workdir: str, enabled: bool = True, start_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if start_step is not None:
        drop_after(workdir, start_step)
      self._file = files.open_for_append(
          os.path.join(workdir, METRICS_FILE), "metrics", run_dir.RunFileError
      )
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, step: int, split: str, metrics: dict):
    if not self.enabled:
      return
    run_lock.check_held()  # another trainer took run.lock: no row beside its rows
    row = {
        "step": int(step),
        "split": split,
        **{
            k: (float(v) if isinstance(v, (int, float)) or hasattr(v, "dtype") else v)
            for k, v in metrics.items()
        },
    }
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    with self._tb.as_default(step=int(step)):
      for k, v in row.items():
        if k not in ("step", "split") and isinstance(v, float):
          tf.summary.scalar(f"{split}/{k}", v)
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()


def drop_after(workdir: str, step: int) -> None:
  """Remove what a run logged past `step` (a kill after the last checkpoint, a damaged
  latest step): the rows of metrics.jsonl and the TensorBoard events, each file rewritten
  atomically. A half-written last row (a kill mid-write) goes too."""
  path = os.path.join(workdir, METRICS_FILE)
  if os.path.exists(path):
    data = files.read_bytes(path, "metrics file", run_dir.MAX_METRICS_BYTES, run_dir.RunFileError)
    lines = data.decode("utf-8", errors="replace").splitlines()
    keep = []
    for line in lines:
      row = run_dir.metrics_row(line)  # not a row (half a line, other text): dropped
      if row is not None and row["step"] <= step:
        keep.append(line)
    if len(keep) != len(lines):
      files.replace_symlink(path)
      settings.write_atomically(path, lambda f: f.write("".join(k + "\n" for k in keep).encode()))
  for events in sorted(glob.glob(os.path.join(workdir, TENSORBOARD_DIR, "*tfevents*"))):
    if os.path.isfile(events):  # a FIFO or device of that name would block the reader
      _drop_events_after(events, step)


def _drop_events_after(path: str, step: int) -> None:
  """Rewrite one events file without its events past `step`. TensorBoard's own purge
  (a SessionLog.START event) is honoured only by some of its loaders; rewriting the file
  makes every reader see one value per step."""
  from tensorflow.core.util import event_pb2

  records, dropped = [], False
  try:
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      if event.step > step:
        dropped = True
      else:
        records.append(record.numpy())
  except tf.errors.DataLossError:  # a record cut by a kill mid-write
    dropped = True
  if not dropped:
    return
  # A name without "tfevents": TensorBoard never reads a leftover.
  tmp = os.path.join(os.path.dirname(path), f".rewrite-{os.getpid()}.tmp")
  with tf.io.TFRecordWriter(tmp) as w:
    for record in records:
      w.write(record)
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
  """metrics.jsonl's rows (run_dir.read_metrics); lines that are not rows are skipped with
  a warning naming the file."""
  rows, bad = run_dir.read_metrics(workdir)
  if bad:
    logging.warning(
        "%s: skipped %d line(s) that are not metrics rows", os.path.join(workdir, METRICS_FILE), bad
    )
  return rows


def plot_learning_curve(workdir: str) -> str:
  """Loss and top-1/top-5 error against step, learning-rate drops marked."""
  rows = read_metrics(workdir)
  train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])
  evals = sorted((r for r in rows if r["split"] == "eval"), key=lambda r: r["step"])
  # A bare Figure (no pyplot): no GUI backend, and a notebook's backend is left alone.
  fig = Figure(figsize=(11, 4))
  ax_loss, ax_err = fig.subplots(1, 2)
  nan = float("nan")  # a metric a row lacks (run_dir.metrics_row requires only the first)
  if train:
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], label="train loss")
    ax_err.plot(
        steps, [r.get("top1_error", nan) for r in train], label="train top-1 (batch)", alpha=0.6
    )
    drops = [
        b["step"]
        for a, b in zip(train, train[1:])
        if b.get("learning_rate", nan) < a.get("learning_rate", nan) * 0.99
    ]
    for ax in (ax_loss, ax_err):
      for i, s in enumerate(drops):
        ax.axvline(s, color="grey", ls="--", lw=1, label="lr / 10" if i == 0 else None)
  if evals:
    steps = [r["step"] for r in evals]
    ax_loss.plot(steps, [r.get("loss", nan) for r in evals], "o-", label="val loss")
    ax_err.plot(steps, [r["top1_error"] for r in evals], "o-", label="val top-1")
    ax_err.plot(steps, [r.get("top5_error", nan) for r in evals], "s-", label="val top-5")
  ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
  ax_err.set(xlabel="step", ylabel="error (fraction)", title="error", ylim=(0, 1))
  for ax in (ax_loss, ax_err):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, CURVE_FILE)
  files.replace_symlink(path)
  fig.savefig(path, dpi=100)
  return path


def finish(workdir: str, config, eval_metrics: dict) -> str:
  """Write the PNG and print the closing summary with the commands that use the run."""
  path = plot_learning_curve(workdir)
  crops = config.eval_crops
  summary = (
      f"\nfinal validation ({eval_metrics['num_images']} images, {crops} view(s)): "
      f"top-1 error {eval_metrics['top1_error']:.4f}, top-5 error "
      f"{eval_metrics['top5_error']:.4f}\n"
      f"learning curve: {path}\n"
      f"evaluate:   python -m alexnet_jax.evaluate --workdir={workdir} --crops=10\n"
      f"predict:    python -m alexnet_jax.predict --workdir={workdir} IMAGE...\n"
      f"figures:    python -m alexnet_jax.figures --workdir={workdir} "
      f"--out={os.path.join(workdir, FIGURES_DIR)}\n"
      f"in Python:  from alexnet_jax import analysis; run = analysis.load_run({workdir!r})\n"
  )
  print(summary, flush=True)
  return summary
