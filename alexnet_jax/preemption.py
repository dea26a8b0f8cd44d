"""Stopping at a step boundary on SIGTERM or SIGINT, with a committed checkpoint.

SLURM (`--signal`, preemption, `scancel`), Cloud TPU maintenance events and Kubernetes send
SIGTERM some time before they kill a job; Ctrl-C sends SIGINT. Inside the training loop
(`Watcher`), either signal lets the step in flight finish; the run then saves that step,
waits until the checkpoint is committed and stops with `Preempted`, which
`python -m alexnet_jax.main` turns into exit status EXIT_PREEMPTED (75). Rerunning the same
command resumes from that step exactly. A second Ctrl-C stops at once (KeyboardInterrupt,
nothing saved beyond the last checkpoint).

Several processes must save the same step (an Orbax save is collective). There the signal
goes to JAX's preemption service, which `jax.distributed.initialize` starts (its own SIGTERM
handler; SIGINT is passed on to it as SIGTERM): the notice reaches every process, and
`multihost_utils.reached_preemption_sync_point(step)` becomes true on all of them at the same
step (the largest step any process had reached, plus one).

Outside the training loop (dataset statistics, compilation before the first step, after the
last save) the signals keep their default effect: nothing would be saved there.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax._src import distributed as jax_distributed  # the only place JAX keeps its state
from jax.experimental import multihost_utils

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry" (requeue).
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run saved `step` after a signal and stopped; rerun the same command to resume."""

  def __init__(self, step: int, reason: str, workdir: str):
    super().__init__(
        f"stopped by {reason} after saving step {step} in {workdir} (exit status "
        f"{EXIT_PREEMPTED}); rerun the same command to resume from step {step}."
    )
    self.step, self.reason, self.workdir = step, reason, workdir


def _jax_preemption_service():
  """JAX's preemption sync manager, started by jax.distributed.initialize (None if absent)."""
  state = jax_distributed.global_state
  return state.preemption_sync_manager if state.client is not None else None


class Watcher:
  """`with Watcher() as w: ... if w.should_stop(step): save, wait, raise Preempted`.

  Call `should_stop` once per training step, with the step just dispatched, on every
  process: multi-process runs agree on the step through JAX's sync point protocol.
  """

  def __init__(self):
    self.reason: str | None = None  # name of the first signal received (this process)
    self._previous = {}
    self._multiprocess = jax.process_count() > 1
    self._synced = self._multiprocess and _jax_preemption_service() is not None

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      logging.warning("training outside the main thread: SIGTERM/SIGINT are not caught")
      return self
    if self._synced:
      # JAX's C++ handler owns SIGTERM here (a Python handler would replace it).
      self._install(signal.SIGINT, self._forward_to_jax)
    elif self._multiprocess:
      logging.warning(
          "JAX's preemption service is off (jax_enable_preemption_service): SIGTERM and "
          "SIGINT end this multi-process run without a final checkpoint."
      )
    else:
      for s in SIGNALS:
        self._install(s, self._note)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def _install(self, sig, handler):
    self._previous[sig] = signal.getsignal(sig)
    signal.signal(sig, handler)

  def _note(self, signum, frame):
    name = signal.Signals(signum).name
    if self.reason is not None and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt  # the second Ctrl-C: stop now
    if self.reason is None:
      self.reason = name
      logging.warning(
          "%s received: finishing this step, saving it, then stopping with status %d "
          "(Ctrl-C again stops at once, without saving).",
          name,
          EXIT_PREEMPTED,
      )

  def _forward_to_jax(self, signum, frame):
    self._note(signum, frame)
    signal.raise_signal(signal.SIGTERM)  # to JAX's handler, which tells every process

  def should_stop(self, step: int) -> bool:
    if self._synced:
      if multihost_utils.reached_preemption_sync_point(step):
        self.reason = self.reason or "a preemption notice (SIGTERM to one of the processes)"
        return True
      return False
    return self.reason is not None
