"""SIGTERM and Ctrl-C (SIGINT) sent to real training processes: they save the step they are
in, exit 75, and rerunning the command ends with exactly the parameters of an uninterrupted
run. SLURM: the batch script requeues. Multi-process (SIGTERM to one of two processes, and to
the launcher: both save one agreed step, exit 75, and the rerun resumes from it): tests/
test_multiprocess.py::test_damaged_latest_step_fallback_and_preemption_on_two_processes."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint, preemption, train_state
from tests import forkserver, tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
RUN = tiny.flags(
    # only the signal's save comes before the end
    eval_every_steps=STEPS,
    checkpoint_every_steps=STEPS,
    num_train_steps=STEPS,
)


def _env(devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  for k in [k for k in env if k.startswith("ALEXNET_JAX_") and k != "ALEXNET_JAX_CACHE"]:
    env.pop(k)
  return env


def _start(workdir, log):
  cmd = [sys.executable, "-m", "alexnet_jax.main", f"--workdir={workdir}", *RUN]
  return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _last_logged_step(workdir) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return max((json.loads(line)["step"] for line in f if line.strip()), default=0)
  except (OSError, ValueError):
    return 0


def _signal_after(proc, workdir, step, sig, timeout=240):
  """Send `sig` once the run has logged `step`; return its exit status (bounded wait)."""
  deadline = time.monotonic() + timeout
  while _last_logged_step(workdir) < step and proc.poll() is None:
    assert time.monotonic() < deadline, "the run logged no step in time"
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before the signal"
  proc.send_signal(sig)
  try:
    return proc.wait(timeout=120)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f"{sig.name}: the run did not stop within 120 s")


def _saved_step(text, sig) -> int:
  m = re.findall(rf"stopped by {sig} after saving step (\d+)", text)
  assert m, text[-3000:]
  return int(m[-1])


@pytest.mark.slow
def test_sigterm_then_ctrl_c_then_rerun_equals_the_uninterrupted_run(tmp_path):
  # The runs that are not signalled (the reference, the last rerun) in forked children of a
  # zygote that preloaded the libraries (tests/forkserver.py); the signalled ones are real.
  full = forkserver.run(
      [sys.executable, "-m", "alexnet_jax.main", f"--workdir={tmp_path / 'full'}", *RUN],
      cwd=REPO,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert full.returncode == 0, full.stderr[-3000:]
  cut = str(tmp_path / "cut")
  logs = [tmp_path / f"log{i}.txt" for i in range(2)]

  with open(logs[0], "w") as log:
    rc = _signal_after(_start(cut, log), cut, 2, signal.SIGTERM)
  text = logs[0].read_text()
  assert rc == preemption.EXIT_PREEMPTED, text[-3000:]
  first = _saved_step(text, "SIGTERM")
  assert 2 <= first < STEPS
  assert list(checkpoint.CheckpointManager(cut, read_only=True).all_steps()) == [first]

  with open(logs[1], "w") as log:
    rc = _signal_after(_start(cut, log), cut, first + 2, signal.SIGINT)
  text = logs[1].read_text()
  assert rc == preemption.EXIT_PREEMPTED, text[-3000:]
  assert f"resumed from {os.path.join(cut, 'checkpoints')} at step {first}" in text
  second = _saved_step(text, "SIGINT")
  assert first + 2 <= second < STEPS

  cmd = [sys.executable, "-m", "alexnet_jax.main", f"--workdir={cut}", *RUN]
  last = forkserver.run(cmd, cwd=REPO, env=_env(), stderr=subprocess.STDOUT, text=True, timeout=600)
  assert last.returncode == 0, last.stdout[-3000:]
  assert f"at step {second}" in last.stdout
  want = checkpoint.restore_run(str(tmp_path / "full"), train_state.restore_target())
  got = checkpoint.restore_run(cut, train_state.restore_target())
  assert got.step == want.step == STEPS
  flat = dict(jax.tree_util.tree_leaves_with_path(want.variables))
  for path, leaf in jax.tree_util.tree_leaves_with_path(got.variables):
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat[path]))  # bit-identical
  # The metrics of every step were written once (steps of a stopped run end at its save).
  with open(os.path.join(cut, "metrics.jsonl")) as f:
    steps = [json.loads(x)["step"] for x in f if '"train"' in x]
  assert steps == list(range(1, STEPS + 1))


def _fake(path, body):
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("status, requeued", [(75, True), (0, False), (1, False)])
def test_slurm_script_requeues_exactly_when_the_run_saved_after_a_signal(
    tmp_path, status, requeued
):
  script = open(os.path.join(REPO, "launch", "slurm.sbatch")).read()
  assert re.search(r"^#SBATCH --signal=TERM@\d+$", script, re.M)
  assert re.search(r"^#SBATCH --requeue$", script, re.M)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _fake(bin_dir / "srun", f'echo "$@" > {tmp_path}/srun.txt; exit {status}\n')
  _fake(bin_dir / "scontrol", f'echo "$@" >> {tmp_path}/scontrol.txt\n')
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242")
  r = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "slurm.sbatch"), "--config=c.py", "--workdir=w"],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=60,
  )
  assert r.returncode == status, r.stderr
  assert "alexnet_task --config=c.py --workdir=w" in (tmp_path / "srun.txt").read_text()
  if requeued:
    assert (tmp_path / "scontrol.txt").read_text() == "requeue 4242\n"
  else:
    assert not (tmp_path / "scontrol.txt").exists()
