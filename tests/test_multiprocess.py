"""Multi-process training on 127.0.0.1 (jax.distributed + gloo), against a single-process run.

One module fixture runs the demo config for 3 steps, tiny (width 0.125, batch 8):
  1. 2 processes x 2 CPU devices, mesh (data=2, tower=2), via launch/multiprocess_local.sh;
     worker 1 is SIGKILLed as soon as the step-1 checkpoint exists: process 0 must end
     non-zero on its own within a bounded time (heartbeat 10 s);
  2. the same command again: it must resume from the last checkpoint and finish;
  3. the reference, 1 process x 1 device (started while process 0 waits out the heartbeat);
  4. the towers split across processes: 2 processes x 1 device, mesh (data=1, tower=2).
The final parameters of all of them must agree to 1e-5 (relative), and the 2-process checkpoint
must restore in this single process on 1 device and on 8. (One process on a 2x2 mesh against
one device: tests/test_train.py::test_train_step_on_a_2x2_mesh_equals_the_single_device_step.)

A second scenario (its own test, the same mesh and compilation cache): a damaged latest
checkpoint and two preemptions (SIGTERM to one process, then to the launcher) across three
launches of one 2-process command.

Everything is bounded by timeouts and uses loopback only. A persistent compilation cache
shared by the runs keeps the restarted run from compiling again.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT = 10  # --distributed_heartbeat_timeout of the runs here
KILL_BOUND = 60  # seconds from SIGKILL of worker 1 to the end of process 0
STEPS = 3
RUN_FLAGS = [
    *tiny.flags(num_train_steps=STEPS, eval_every_steps=STEPS, checkpoint_every_steps=1),
    f"--distributed_heartbeat_timeout={HEARTBEAT}",
    "--distributed_init_timeout=120",
]

pytestmark = [pytest.mark.multiprocess]


def _env(cache_dir=None, **extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 8 devices are for this process only
  for k in list(env):
    if k.startswith("ALEXNET_JAX_") and k != "ALEXNET_JAX_CACHE":
      env.pop(k)
  env.update(
      JAX_PLATFORMS="cpu",
      PYTHON=sys.executable,
      QUIET="1",
      GRACE_SECONDS="300",
      PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
  )
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.update(extra)
  return env


def _tail(path, n=3000):
  try:
    with open(path, errors="replace") as f:
      return f.read()[-n:]
  except OSError as e:
    return f"<{e}>"


def _launch(args, env, log):
  return subprocess.Popen(
      args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
  )


def _stop(proc):
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait(proc, timeout):
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    _stop(proc)
    return None


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  """One persistent compilation cache for the module's runs (the same mesh compiles once)."""
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def digits_stats():
  """The digits' statistics in this session's cache (ALEXNET_JAX_CACHE, which the runs
  share): otherwise both processes of the first launch make the same pass at once."""
  from alexnet_jax import data as data_lib

  data_lib.dataset_stats(tiny.config(**{"dataset.cache": False}).dataset)


def _reference(name, root, cache):
  """1 process x 1 device, the runs' flags: (process, its log file)."""
  log = open(root / f"{name}.txt", "w")
  cmd = [
      os.path.join(REPO, "launch", "local_devices.sh"),
      "1",
      *RUN_FLAGS,
      f"--workdir={root / name}",
      "--config.mesh.data=1",
      "--config.mesh.tower=1",
  ]
  return _launch(cmd, _env(cache), log), log


@pytest.fixture(scope="module")
def runs(tmp_path_factory, jax_cache, digits_stats):
  root = tmp_path_factory.mktemp("mp")
  cache = jax_cache
  out = {"root": root}
  mp_dir = str(root / "two_procs")
  mp_cmd = [
      os.path.join(REPO, "launch", "multiprocess_local.sh"),
      "2",
      "2",
      *RUN_FLAGS,
      f"--workdir={mp_dir}",
      "--config.mesh.data=2",
      "--config.mesh.tower=2",
  ]
  procs, ref = [], None
  try:
    # 1. Two processes; SIGKILL worker 1 once the step-1 checkpoint is complete.
    logs1 = str(root / "logs_killed")
    with open(root / "launcher_killed.txt", "w") as log:
      proc = _launch(mp_cmd, _env(cache, LOG_DIR=logs1), log)
      procs.append(proc)
      deadline = time.monotonic() + 400
      ckpt1 = os.path.join(mp_dir, "checkpoints", "1")
      while not os.path.isdir(ckpt1) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
      out["kill"] = {"logs": logs1, "before_kill_rc": proc.poll()}
      if proc.poll() is None and os.path.isdir(ckpt1):
        with open(os.path.join(logs1, "process_1.pid")) as f:
          os.kill(int(f.read()), signal.SIGKILL)
        t_kill = time.monotonic()
        # 3. The reference, started now: process 0 mostly waits out the heartbeat.
        ref = _reference("one_proc_1dev", root, cache)
        procs.append(ref[0])
        rc = _wait(proc, KILL_BOUND + 60)
        out["kill"].update(rc=rc, seconds=time.monotonic() - t_kill)
      else:
        _stop(proc)
    out["kill"]["launcher"] = _tail(root / "launcher_killed.txt")

    # 4 (started now, waited for below). The towers split across 2 processes x 1 device
    # (data=1, tower=2): both processes hold, and must feed, the whole batch.
    towers_dir = str(root / "towers_split")
    towers_log = open(root / "launcher_towers.txt", "w")
    towers = _launch(
        [
            os.path.join(REPO, "launch", "multiprocess_local.sh"),
            "2",
            "1",
            *RUN_FLAGS,
            f"--workdir={towers_dir}",
            "--config.mesh.data=1",
            "--config.mesh.tower=2",
        ],
        _env(cache),
        towers_log,
    )
    procs.append(towers)

    # 2. The same command again: resumes from the last checkpoint.
    logs2 = str(root / "logs_resumed")
    with open(root / "launcher_resumed.txt", "w") as log:
      proc = _launch(mp_cmd, _env(cache, LOG_DIR=logs2), log)
      procs.append(proc)
      out["resume"] = {
          "rc": _wait(proc, 400),
          "logs": logs2,
          "launcher": _tail(root / "launcher_resumed.txt"),
      }
    out["two_procs"] = mp_dir

    # 3. The reference (started above if the run got as far as the kill).
    if ref is None:
      ref = _reference("one_proc_1dev", root, cache)
      procs.append(ref[0])
    out["one_proc_1dev"] = {
        "rc": _wait(ref[0], 400),
        "workdir": str(root / "one_proc_1dev"),
        "log": _tail(root / "one_proc_1dev.txt"),
    }
    ref[1].close()
    out["towers_split"] = {
        "rc": _wait(towers, 400),
        "workdir": towers_dir,
        "log": _tail(root / "launcher_towers.txt")
        + _tail(os.path.join(towers_dir, "logs", "process_0.log")),
    }
    towers_log.close()
    yield out
  finally:
    for proc in procs:
      _stop(proc)


def _params(workdir, mesh=None):
  from alexnet_jax import checkpoint

  config, variables = checkpoint.restore(workdir, mesh=mesh)
  return config, variables["params"]


def _assert_same_params(a, b, what):
  fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert len(fa) == len(fb) > 0
  for (path, x), y in zip(fa, fb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape, (what, path)
    rel = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12)
    assert rel <= 1e-5, (
        f"{what}: {jax.tree_util.keystr(path)} differs by {rel:.2e} "
        f"(relative), max |diff| {np.abs(x - y).max():.2e}"
    )


def _statuses(launcher_output):
  m = re.findall(r"exit statuses:((?: process_\d+=\d+)+)", launcher_output)
  assert m, f"no exit-status summary in the launcher's output:\n{launcher_output}"
  return {int(k): int(v) for k, v in re.findall(r"process_(\d+)=(\d+)", m[-1])}


@pytest.mark.slow
def test_killed_worker_ends_the_other_process(runs):
  k = runs["kill"]
  assert k["before_kill_rc"] is None, (
      f"the 2-process run ended before its step-1 checkpoint:\n{k['launcher']}\n"
      f"{_tail(os.path.join(k['logs'], 'process_0.log'))}"
  )
  assert "rc" in k, f"no step-1 checkpoint appeared:\n{k['launcher']}"
  assert k["rc"] is not None, (
      f"process 0 still ran {KILL_BOUND + 60} s after worker 1 was killed (hang):\n"
      f"{_tail(os.path.join(k['logs'], 'process_0.log'))}"
  )
  assert k["rc"] != 0
  assert k["seconds"] < KILL_BOUND, f"took {k['seconds']:.0f} s"
  status = _statuses(k["launcher"])
  assert status[1] == 128 + signal.SIGKILL
  # Ended by JAX (heartbeat), not by the launcher's backstop (which uses SIGKILL too).
  assert status[0] not in (0, 128 + signal.SIGKILL), status
  log0 = _tail(os.path.join(k["logs"], "process_0.log"), 20000)
  assert "detected fatal errors" in log0 or "FATAL (alexnet_jax.distributed)" in log0, log0


@pytest.mark.slow
def test_restarted_run_resumes_and_writes_from_process_0_only(runs):
  r = runs["resume"]
  log0 = _tail(os.path.join(r["logs"], "process_0.log"), 10**6)
  assert r["rc"] == 0, f"{r['launcher']}\n{log0[-3000:]}"
  assert _statuses(r["launcher"]) == {0: 0, 1: 0}
  m = re.search(r"resumed from \S+ at step (\d+)", log0)
  assert m and 1 <= int(m.group(1)) < STEPS, log0[-3000:]
  log1 = _tail(os.path.join(r["logs"], "process_1.log"), 10**6)
  assert "jax.distributed ready: process 1 of 2, 2 local / 4 global device(s)" in log1
  assert "final validation" not in log1 and "final validation" in log0

  workdir = runs["two_procs"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  keys = [(r["step"], r["split"]) for r in rows]
  # Process 0 alone writes: the resumed run appended each of its steps once (the killed run
  # may have logged a step whose checkpoint it did not finish; that one comes earlier).
  resumed_from = int(m.group(1))
  mine = [(s, "train") for s in range(resumed_from + 1, STEPS + 1)] + [(STEPS, "eval")]
  assert keys[-len(mine) :] == mine, keys
  assert keys.count((STEPS, "eval")) == 1, keys
  assert os.path.exists(os.path.join(workdir, "learning_curve.png"))
  # One TensorBoard event file per launch (the killed one and the resumed one), both from
  # process 0: a second writer would add one per launch.
  events = [f for f in os.listdir(os.path.join(workdir, "tensorboard")) if "tfevents" in f]
  assert 1 <= len(events) <= 2, events
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["mesh"] == {"data": 2, "tower": 2}


@pytest.mark.slow
def test_two_processes_match_one_process_on_1_device(runs):
  # One process on 4 devices (2x2) against 1 device: tests/test_train.py::
  # test_train_step_on_a_2x2_mesh_equals_the_single_device_step (in process, same tolerance).
  assert runs["one_proc_1dev"]["rc"] == 0, runs["one_proc_1dev"]["log"]
  assert runs["resume"]["rc"] == 0, runs["resume"]["launcher"]
  _, mp = _params(runs["two_procs"])
  _, one = _params(runs["one_proc_1dev"]["workdir"])
  _assert_same_params(mp, one, "2 processes x 2 devices vs 1 x 1")

  # The loss curves agree too (process 0's metrics of the 2-process run).
  def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}

  ref = losses(runs["one_proc_1dev"]["workdir"])
  got = losses(runs["two_procs"])
  assert sorted(ref) == sorted(got) == list(range(1, STEPS + 1))
  np.testing.assert_allclose(
      [got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)], rtol=1e-5
  )


@pytest.mark.slow
def test_towers_split_across_two_processes_match_one_device(runs):
  """mesh (data=1, tower=2) over 2 processes x 1 device: each process must feed the whole
  global batch (not half of it), and the result is the 1-device run's."""
  r = runs["towers_split"]
  assert r["rc"] == 0, r["log"]
  assert runs["one_proc_1dev"]["rc"] == 0, runs["one_proc_1dev"]["log"]
  _, split = _params(r["workdir"])
  _, one = _params(runs["one_proc_1dev"]["workdir"])
  _assert_same_params(split, one, "towers on 2 processes vs 1 device")
  with open(os.path.join(r["workdir"], "metrics.jsonl")) as f:
    evals = [json.loads(l) for l in f if '"eval"' in l]
  assert evals[-1]["num_images"] == 8  # one whole eval batch (max_eval_batches=1)


@pytest.mark.slow
def test_two_process_checkpoint_restores_in_one_process(runs, devices):
  assert runs["resume"]["rc"] == 0, runs["resume"]["launcher"]
  from alexnet_jax import sharding

  workdir = runs["two_procs"]
  config, one = _params(workdir)  # default: one device of this process
  assert config.mesh.data == 2 and config.mesh.tower == 2
  for leaf in jax.tree.leaves(one):
    assert len(leaf.sharding.device_set) == 1
  # ... and onto a mesh of any other size: 8 devices as (data=4, tower=2).
  _, eight = _params(workdir, mesh=sharding.make_mesh(4, 2, devices=devices))
  assert len(jax.tree.leaves(eight)[0].sharding.device_set) == 8
  _assert_same_params(eight, one, "restored on 8 devices vs on 1")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_unreachable_coordinator_and_missing_process_end_with_clear_errors(tmp_path):
  """A worker whose coordinator never comes up, and a coordinator whose worker never
  comes, both exit 1 with a message within the init timeout (no hang)."""
  # Process 0 serves at port0 and waits for a process 1 that never comes; process 1 looks
  # for its coordinator at port1, where nothing listens.
  ports = {0: _free_port(), 1: _free_port()}
  cmd = [
      sys.executable,
      "-m",
      "alexnet_jax.main",
      *RUN_FLAGS,
      "--distributed_init_timeout=5",
      "--config.mesh.data=-1",
      "--config.mesh.tower=1",
  ]
  procs = {}
  for pid in (0, 1):
    env = _env(
        None,
        ALEXNET_JAX_NUM_PROCESSES="2",
        ALEXNET_JAX_PROCESS_ID=str(pid),
        ALEXNET_JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{ports[pid]}",
    )
    log = open(tmp_path / f"p{pid}.txt", "w")
    procs[pid] = (
        subprocess.Popen(
            cmd + [f"--workdir={tmp_path / f'w{pid}'}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        log,
        time.monotonic(),
    )
  try:
    for pid, (proc, log, t0) in procs.items():
      rc = _wait(proc, 120)
      log.close()
      text = _tail(tmp_path / f"p{pid}.txt", 10**6)
      assert rc is not None, f"process {pid} hung:\n{text[-3000:]}"
      assert rc == 1, text[-3000:]
      expected = "did not finish within 5 s" if pid == 0 else "could not reach the JAX coordinator"
      assert expected in text, text[-3000:]
  finally:
    for proc, _, _ in procs.values():
      _stop(proc)


def _log_steps(text):
  """{step: loss} of the training lines of a log (4 decimals, as logged)."""
  return {int(k): v for k, v in re.findall(r"\] step (\d+)/\d+ .*?loss ([\d.]+)", text)}


@pytest.mark.slow
def test_damaged_latest_step_fallback_and_preemption_on_two_processes(
    jax_cache, digits_stats, tmp_path
):
  """2 processes x 2 devices, three launches of one command:
  1. SIGTERM to process 1 alone once the step-2 checkpoint exists: the notice spreads, both
     save one agreed step and exit 75;
  2. the latest step damaged (4 KiB of garbage in its largest file), the rerun: both processes
     skip it for the same older step (which they agree on), set it aside, and are preempted
     again, by a SIGTERM to the launcher (which passes it to both): both save one agreed
     step (the damaged one's number may come again);
  3. the rerun resumes from that save on both processes and finishes.
  The losses of the steps the first launch trained are those of the finished run."""
  # Room for both preemptions (the processes agree on a step a few steps ahead: the second
  # save was step 5 at load 5.6, the first step 4); launch 3 trains and saves every step left.
  steps = 20
  workdir = str(tmp_path / "w")
  cmd = [
      os.path.join(REPO, "launch", "multiprocess_local.sh"),
      "2",
      "2",
      *tiny.flags(num_train_steps=steps, eval_every_steps=steps, checkpoint_every_steps=2),
      f"--distributed_heartbeat_timeout={HEARTBEAT}",
      "--distributed_init_timeout=120",
      f"--workdir={workdir}",
      "--config.mesh.data=2",
      "--config.mesh.tower=2",
  ]
  ckpts = os.path.join(workdir, "checkpoints")

  def launch(name, stop_when=None, to_process=None):
    """(exit status, [process 0's log, process 1's log], the launcher's output); SIGTERM
    once stop_when(log 0), to the launcher or to process `to_process` alone."""
    logs = str(tmp_path / name)
    launcher = tmp_path / f"{name}.txt"
    with open(launcher, "w") as out:
      proc = _launch(cmd, _env(jax_cache, LOG_DIR=logs), out)
      try:
        if stop_when is not None:
          deadline = time.monotonic() + 300
          while proc.poll() is None and not stop_when(
              _tail(os.path.join(logs, "process_0.log"), 10**6)
          ):
            assert time.monotonic() < deadline, _tail(launcher)
            time.sleep(0.05)
          assert proc.poll() is None, f"{name} ended before SIGTERM:\n{_tail(launcher)}"
          if to_process is None:
            proc.send_signal(signal.SIGTERM)  # the launcher passes it to both processes
          else:  # that process alone: JAX's preemption service must tell the other
            with open(os.path.join(logs, f"process_{to_process}.pid")) as f:
              os.kill(int(f.read()), signal.SIGTERM)
        rc = _wait(proc, 300)
      finally:
        _stop(proc)
    texts = [_tail(os.path.join(logs, f"process_{i}.log"), 10**6) for i in (0, 1)]
    assert rc is not None, f"{name} hung:\n{_tail(launcher)}"
    return rc, texts, _tail(launcher)

  def saved(texts):
    got = [re.findall(r"stopped by .* after saving step (\d+) in ", t) for t in texts]
    assert got[0] and got[0] == got[1], (got, texts[0][-3000:])
    return int(got[0][-1])

  def resumed(texts):
    got = [re.findall(r"resumed from \S+ at step (\d+)", t) for t in texts]
    assert got[0] and got[0] == got[1], (got, texts[0][-3000:])
    return int(got[0][-1])

  # 1. Preempted after its step-2 checkpoint.
  rc, first, out = launch("first", lambda _: os.path.isdir(os.path.join(ckpts, "2")), 1)
  assert rc == 75, first[0][-3000:]
  assert _statuses(out) == {0: 75, 1: 75}
  first_saved = saved(first)
  have = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
  assert have[-1] == first_saved > 2 and len(have) >= 2, have
  latest, older = have[-1], have[-2]

  # 2. The latest step damaged: both fall back to the same older step; preempted again.
  big = max(
      (os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckpts, str(latest))) for f in fs),
      key=os.path.getsize,
  )
  with open(big, "r+b") as f:
    f.seek(os.path.getsize(big) // 2)
    f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  rc, second, out = launch(
      "second", lambda log: any(k > older for k in _log_steps(log.split("resumed from")[-1]))
  )
  assert rc == 75, second[0][-3000:]
  assert _statuses(out) == {0: 75, 1: 75}
  assert resumed(second) == older
  for text in second:  # each process says so (one that read it fine: "another process ...")
    assert f"skipping checkpoint step {latest} in " in text, text[-3000:]
  assert os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", str(latest)))
  second_saved = saved(second)
  assert second_saved > older

  # 3. Resumes from that save on both processes and finishes.
  rc, third, _ = launch("third")
  assert rc == 0, third[0][-3000:]
  assert resumed(third) == second_saved
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train] == list(range(1, steps + 1))  # once each
  losses = _log_steps(first[0])
  assert sorted(losses) == list(range(1, first_saved + 1))
  for r in train[:first_saved]:
    assert f"{r['loss']:.4f}" == losses[r["step"]], (r, losses)
