"""What a run leaves for people: metrics.jsonl, TensorBoard events, a learning-curve PNG
and a closing summary; and the training loop's wall clock (TrainClock), which times them."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import time

import jax
import tensorflow as tf  # the TensorBoard writer (TF is already the input pipeline's)
import tqdm
from absl import logging
from matplotlib.figure import Figure
from tensorflow.core.util import event_pb2

from alexnet_jax import files, run_dir, run_lock
from alexnet_jax.facts import CURVE_FILE, FIGURES_DIR, METRICS_FILE, TENSORBOARD_DIR


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


# ---- the training clock ----------------------------------------------------------------------
# Clock fields of metrics.jsonl's rows: every row carries `time` (Unix seconds when it was
# written) and `elapsed_s` (seconds since this launch of train_and_evaluate started); train rows
# also `window_s` (the wall time their images_per_sec divides by) and `warmup` (the launch's
# first window: compilation and other one-off work); eval rows `eval_s`. Not sent to
# TensorBoard, which records each event's wall time itself.
CLOCK_FIELDS = ("time", "elapsed_s", "window_s", "warmup", "eval_s")


def _multiples(k: int, after: int, upto: int) -> int:
  """How many multiples of k lie in (after, upto]."""
  return max(upto // k - after // k, 0)


class TrainClock:
  """The wall clock of one launch of the training loop.

  A window is the steps logged together. It lasts from the end of the previous window's last
  step to the end of its own last step, read when the device has finished them: call
  `end_window` right after fetching the window's metrics (jax.device_get waits for the
  device), so the log line's timestamp and its rate agree. Evaluations and checkpoint saves
  run inside `pause(...)`, which takes their time out of the window around them.

  The first window of a launch holds compilation (or loading it from the cache) and the
  input pipeline's start: it is marked `warmup` and kept out of the steady rate and the ETA.
  The ETA is the steps left at the steady rate (all steady windows' images over their
  seconds) plus the evaluations and saves left at the mean time of those already done.
  """

  def __init__(
      self,
      *,
      batch_size: int,
      start_step: int,
      num_steps: int,
      eval_every: int,
      checkpoint_every: int,
      started: float | None = None,
      clock=time.perf_counter,
      wall=time.time,
  ):
    """started: when the launch started (a `clock()` value; default now): `elapsed_s`
    counts from it, the first window from now."""
    self._clock, self._wall = clock, wall
    self.batch_size, self.num_steps = batch_size, num_steps
    self._every = {"eval": eval_every, "save": checkpoint_every}
    self._mark = clock()
    self._start = self._mark if started is None else started
    self._step = start_step
    self._windows = 0
    self.warmup_s = 0.0
    self.steady_images, self.steady_s = 0, 0.0
    self.paused_s = {"eval": [], "save": [], "profile": []}

  def stamp(self) -> dict:
    """The clock fields every row carries: wall-clock time and seconds since the start."""
    return {"time": self._wall(), "elapsed_s": self._clock() - self._start}

  def end_window(self, step: int) -> dict:
    """Close the window that ends with `step` (its steps already finished on the device):
    {"images_per_sec", "window_s", "warmup"}."""
    now = self._clock()
    seconds = max(now - self._mark, 1e-9)
    images = (step - self._step) * self.batch_size
    warmup = self._windows == 0
    if warmup:
      self.warmup_s += seconds
    else:
      self.steady_images += images
      self.steady_s += seconds
    self._windows += 1
    self._mark, self._step = now, step
    return {"images_per_sec": images / seconds, "window_s": seconds, "warmup": warmup}

  @contextlib.contextmanager
  def pause(self, kind: str):
    """Time an evaluation ("eval"), a save ("save") or the profiler's start or end
    ("profile"), and keep it out of the windows."""
    t = self._clock()
    try:
      yield
    finally:
      dt = self._clock() - t
      self.paused_s[kind].append(dt)
      self._mark += dt

  def last_pause(self, kind: str) -> float:
    return self.paused_s[kind][-1]

  @property
  def steady_rate(self) -> float | None:
    """Images per second over the windows after the warm-up (None before the second)."""
    return self.steady_images / self.steady_s if self.steady_s > 0 else None

  def _left(self, kind: str, step: int) -> int:
    """Evaluations or saves still to come after the window ending at `step` (the one at
    `step` itself included: it runs after the window is logged)."""
    k = self._every[kind]
    n = _multiples(k, step - 1, self.num_steps)
    return n + (1 if self.num_steps % k and step <= self.num_steps else 0)

  def eta(self, step: int) -> tuple[float | None, int]:
    """(seconds to the end of the run, evaluations left that none done yet can time);
    seconds None while no steady window has been timed."""
    rate = self.steady_rate
    if rate is None:
      return None, 0
    seconds = (self.num_steps - step) * self.batch_size / rate
    untimed = 0
    for kind in ("eval", "save"):
      done, left = self.paused_s[kind], self._left(kind, step)
      if done:
        seconds += left * sum(done) / len(done)
      elif kind == "eval":
        untimed = left
    return seconds, untimed

  def eta_text(self, step: int) -> str:
    seconds, untimed = self.eta(step)
    if seconds is None:
      return "ETA after the next window"
    more = f" + {untimed} eval{'s' if untimed > 1 else ''}" if untimed else ""
    return f"ETA {format_duration(seconds)}{more}"

  def summary(self) -> str:
    """One line for the end of the launch: its time, the warm-up, the rate, the pauses."""
    total = self._clock() - self._start
    rate = self.steady_rate
    evals, saves = self.paused_s["eval"], self.paused_s["save"]
    return (
        f"{format_duration(total)} ({total:.1f} s) since the start: warm-up window "
        f"{self.warmup_s:.1f} s, "
        + (f"then {rate:.1f} img/s" if rate is not None else "no steady window")
        + f"; {len(evals)} evaluation(s) {sum(evals):.1f} s, {len(saves)} save(s) "
        f"{sum(saves):.1f} s"
    )


class StepTrace:
  """A jax.profiler trace of `num_steps` training steps into `log_dir`, the run's TensorBoard
  directory: log_dir/plugins/profile/<time>/<host>.xplane.pb for TensorBoard's profile
  plugin, and perfetto_trace.json.gz beside it for ui.perfetto.dev. Every step dispatched
  while tracing is annotated (jax.profiler.StepTraceAnnotation "train", its step number),
  which the profile plugin's step-time view reads.

  The loop calls `start(step)` once the device has finished `step` (the first window's
  last), dispatches the traced steps inside `annotate(step)`, and, when `due(step)`, waits
  for them and calls `close()`. `close` (also on the way out of an error) ends the trace."""

  def __init__(self, log_dir: str, num_steps: int, last_step: int):
    self.log_dir, self.num_steps, self._run_end = log_dir, num_steps, last_step
    self.first = self.last = None
    self.active = False
    self.written: str | None = None

  def _dirs(self) -> set:
    return set(glob.glob(os.path.join(self.log_dir, "plugins", "profile", "*")))

  def start(self, step: int) -> bool:
    """Trace the steps after `step` (the first call only, and only if steps are left)."""
    if self.num_steps <= 0 or self.first is not None or step >= self._run_end:
      return False
    self._before = self._dirs()
    jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
    self.first, self.last = step + 1, min(step + self.num_steps, self._run_end)
    self.active = True
    return True

  def annotate(self, step: int):
    if self.active:
      return jax.profiler.StepTraceAnnotation("train", step_num=step)
    return contextlib.nullcontext()

  def due(self, step: int) -> bool:
    """The last traced step was dispatched: wait for its outputs, then `close()`."""
    return self.active and step >= self.last

  def close(self) -> str | None:
    """End the trace; returns the directory it was written to (None: nothing traced)."""
    if not self.active:
      return None
    self.active = False
    jax.profiler.stop_trace()
    new = sorted(self._dirs() - self._before)
    self.written = new[-1] if new else None
    return self.written


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
            k: (
                v
                if isinstance(v, bool)
                else float(v)
                if isinstance(v, (int, float)) or hasattr(v, "dtype")
                else v
            )
            for k, v in metrics.items()
        },
    }
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    with self._tb.as_default(step=int(step)):
      for k, v in row.items():
        if k not in ("step", "split", *CLOCK_FIELDS) and isinstance(v, float):
          tf.summary.scalar(f"{split}/{k}", v)
    self._tb.flush()

  def close(self):
    """Flush and close both files (again: nothing)."""
    if self.enabled and not self._file.closed:
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
      files.write_atomically(path, lambda f: f.write("".join(k + "\n" for k in keep).encode()))
  for events in sorted(glob.glob(os.path.join(workdir, TENSORBOARD_DIR, "*tfevents*"))):
    if os.path.isfile(events):  # a FIFO or device of that name would block the reader
      _drop_events_after(events, step)


def _drop_events_after(path: str, step: int) -> None:
  """Rewrite one events file without its events past `step`. TensorBoard's own purge
  (a SessionLog.START event) is honoured only by some of its loaders; rewriting the file
  makes every reader see one value per step."""
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
