"""benchmarks.bench --profile_steps: a jax.profiler trace of the train step, and where its time goes.

trace_steps runs N steps of a contender (benchmarks/contenders.py's run(n)) under
jax.profiler, one StepTraceAnnotation per step, into log_dir (open it with
`tensorboard --logdir=LOG_DIR` (its Profile tab) or load LOG_DIR/plugins/profile/*/
perfetto_trace.json.gz in ui.perfetto.dev). op_times reads the Perfetto trace back: the
time of each XLA operation (thunk) the executor ran, per step, summed over the threads
that ran it (XLA:CPU runs independent thunks side by side, so the sum can exceed the
step's wall time). XLA:CPU's own (Eigen) convolutions run asynchronously on its intra-op
threads: their events last only as long as their launch, and their time is the part of the
step that no synchronous thunk accounts for.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

import jax


def trace_steps(run, steps: int, log_dir: str) -> str:
  """Run `run(1)` `steps` times (each blocks until its step is done) under the profiler;
  returns the directory the trace was written to."""
  before = set(glob.glob(os.path.join(log_dir, "plugins", "profile", "*")))
  jax.profiler.start_trace(log_dir, create_perfetto_trace=True)
  try:
    for i in range(steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=i):
        run(1)
  finally:
    jax.profiler.stop_trace()
  (path,) = sorted(set(glob.glob(os.path.join(log_dir, "plugins", "profile", "*"))) - before)
  return path


def op_times(path: str, steps: int, module: str = "jit_train_step") -> list[tuple[str, float]]:
  """[(HLO instruction, milliseconds per step)] of `module`'s thunks in the Perfetto trace
  under `path`, the slowest first."""
  with gzip.open(os.path.join(path, "perfetto_trace.json.gz")) as f:
    events = json.load(f)["traceEvents"]
  total = collections.Counter()
  for e in events:
    args = e.get("args") or {}
    if e.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
      total[args["hlo_op"]] += e["dur"] / 1e3  # microseconds -> ms
  return [(op, ms / steps) for op, ms in total.most_common()]


def kind(op: str) -> str:
  """An HLO instruction's kind: its name without the number XLA appends (fusion.12 ->
  fusion)."""
  return re.sub(r"\.\d+$", "", op)


def format_ops(ops: list[tuple[str, float]], step_s: float | None = None, top: int = 20) -> str:
  """The kinds' totals, then the `top` slowest instructions, in ms per step (and, given the
  step's wall time, the fraction of it)."""
  by_kind = collections.Counter()
  for op, ms in ops:
    by_kind[kind(op)] += ms
  summed = sum(ms for _, ms in ops)

  def line(name, ms):
    share = f"  {ms / 1e3 / step_s:6.3f} of the step" if step_s else ""
    return f"  {name:<48} {ms:9.1f} ms{share}"

  lines = [
      f"XLA thunks, summed over threads: {summed:.1f} ms per step (the convolutions, run "
      "asynchronously, show only their launch); by kind:"
  ]
  lines += [line(k, ms) for k, ms in by_kind.most_common(12)]
  lines.append(f"the {top} slowest instructions:")
  lines += [line(op, ms) for op, ms in ops[:top]]
  return "\n".join(lines)
