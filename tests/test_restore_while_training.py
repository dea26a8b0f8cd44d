"""Restoring beside a run in progress never disturbs it (checkpoints are opened read-only)."""

import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import checkpoint, train_state
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 80

# A second process: restore the latest checkpoint again and again until told to stop.
READER = """
import json, os, sys, time
from alexnet_jax import checkpoint, train_state
workdir, stop, out = sys.argv[1:4]
ok, failed = [], []
while not os.path.exists(stop):
  try:
    ok.append(checkpoint.restore_run(workdir, train_state.restore_target()).step)
  except Exception as e:  # none saved yet, or a step the run's policy deleted while read
    failed.append(f"{type(e).__name__}: {e}"[:300])
    time.sleep(0.05)
json.dump({"ok": ok, "failed": failed}, open(out, "w"))
"""


@pytest.mark.slow
def test_restores_from_a_second_process_leave_a_run_saving_every_step_complete(tmp_path):
  workdir = tmp_path / "run"
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="2",
  )
  train = subprocess.Popen(
      [
          sys.executable,
          "-m",
          "alexnet_jax.main",
          f"--workdir={workdir}",
          *tiny.flags(
              log_every_steps=20,
              eval_every_steps=1000,
              checkpoint_every_steps=1,
              keep_checkpoints=2,
              num_train_steps=STEPS,
          ),
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  ckpts = workdir / "checkpoints"
  stop, out = tmp_path / "stop", tmp_path / "reader.json"
  # Its log goes to a file: a full pipe would block it until the run ends.
  with open(tmp_path / "reader.log", "w") as reader_log:
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(workdir), str(stop), str(out)],
        cwd=REPO,
        env=env,
        stdout=reader_log,
        stderr=subprocess.STDOUT,
    )
    try:
      log, _ = train.communicate(timeout=400)
    finally:
      stop.touch()
      reader.wait(timeout=120)
  reader_log = (tmp_path / "reader.log").read_text()
  assert train.returncode == 0, log[-4000:]
  assert reader.returncode == 0, reader_log[-3000:]
  got = json.load(open(out))
  # It restored while the run saved (and its policy deleted old steps), not only at the end.
  assert len(set(got["ok"])) >= 10 and min(got["ok"]) < STEPS // 2, (got, reader_log[-2000:])
  assert got["ok"] == sorted(got["ok"])  # restores followed the run forward
  # Every checkpoint the run kept is complete: no temporary directory left, each restores.
  names = sorted(os.listdir(ckpts))
  assert all(n.isdigit() for n in names), names
  steps = sorted(int(n) for n in names)
  assert steps[-1] == STEPS
  for s in steps:
    assert checkpoint.restore_run(str(workdir), train_state.restore_target(), s).step == s
