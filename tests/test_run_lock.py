"""One writer per workdir (run_lock.py): a second trainer stops at once naming the holder, a
holder killed with SIGKILL never blocks the rerun, and a remote holder is judged by its
heartbeat."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from alexnet_jax import facts, run_lock
from tests import forkserver, tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Takes the lock with the library function, says so, then holds it until killed.
HOLD = (
    "import sys, time\n"
    "from alexnet_jax import run_lock\n"
    "lock = run_lock.acquire(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)
# Tries once: prints the error and exits 3, or prints 'acquired'.
TRY = (
    "import sys\n"
    "from alexnet_jax import run_lock\n"
    "try:\n"
    "  run_lock.acquire(sys.argv[1])\n"
    "except run_lock.RunLockedError as e:\n"
    "  print(e); sys.exit(3)\n"
    "print('acquired')\n"
)


def _python(code, workdir, **kw):
  return [sys.executable, "-c", code, str(workdir)], dict(cwd=REPO, **kw)


# The holders (HOLD*) are real processes: the tests kill them. The rest run in forked children
# of a zygote that preloaded the libraries (tests/forkserver.py).
def _try_from_another_process(workdir):
  cmd, kw = _python(TRY, workdir)
  return forkserver.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def test_acquire_refuses_a_second_process_naming_the_holder_then_releases(tmp_path):
  lock = run_lock.acquire(str(tmp_path))
  held = run_lock.read_holder(str(tmp_path))
  assert (held.host, held.pid) == (socket.gethostname(), os.getpid())
  r = _try_from_another_process(tmp_path)
  assert r.returncode == 3, r.stdout + r.stderr
  assert f"process {os.getpid()} on host {socket.gethostname()} since " in r.stdout
  assert f"`kill {os.getpid()}` on {socket.gethostname()}" in r.stdout
  lock.release()
  assert not (tmp_path / facts.LOCK_FILE).exists()  # a clean exit leaves no lock file
  r = _try_from_another_process(tmp_path)
  assert (r.returncode, r.stdout.strip()) == (0, "acquired"), r.stderr


def test_a_holder_killed_with_sigkill_does_not_block_the_rerun(tmp_path):
  cmd, kw = _python(HOLD, tmp_path, stdout=subprocess.PIPE, text=True)
  holder = subprocess.Popen(cmd, **kw)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(run_lock.RunLockedError, match=rf"process {holder.pid} on host "):
      run_lock.acquire(str(tmp_path))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  # The file still names the dead holder; the OS dropped its flock.
  assert run_lock.read_holder(str(tmp_path)).pid == holder.pid
  lock = run_lock.acquire(str(tmp_path))
  assert run_lock.read_holder(str(tmp_path)).pid == os.getpid()
  lock.release()


def _remote(tmp_path, heartbeat_age):
  now = time.time()
  record = {
      "host": "other-node",
      "pid": 4242,
      "since": now - 3600,
      "heartbeat": now - heartbeat_age,
  }
  (tmp_path / facts.LOCK_FILE).write_text(json.dumps(record))


def test_a_remote_holder_is_judged_by_its_heartbeat(tmp_path):
  """Where flock does not reach across hosts, the other host's file is all there is."""
  _remote(tmp_path, heartbeat_age=5)
  with pytest.raises(
      run_lock.RunLockedError, match=r"process 4242 on host other-node .*heartbeat 5 s ago"
  ):
    run_lock.acquire(str(tmp_path), heartbeat_s=30)
  _remote(tmp_path, heartbeat_age=301)  # past 10 intervals of 30 s
  with pytest.raises(run_lock.RunLockedError, match=r"looks dead.*301 s ago.*--break_lock"):
    run_lock.acquire(str(tmp_path), heartbeat_s=30)
  lock = run_lock.acquire(str(tmp_path), heartbeat_s=0.05, break_lock=True)
  first = run_lock.read_holder(str(tmp_path))
  assert (first.host, first.pid) == (socket.gethostname(), os.getpid())
  time.sleep(0.5)
  later = run_lock.read_holder(str(tmp_path))
  assert later.since == first.since and later.heartbeat > first.heartbeat + 0.1
  lock.release()


def test_a_lock_file_removed_between_open_and_flock_is_opened_again(tmp_path, monkeypatch):
  """A holder exiting removes run.lock: a trainer that opened it just before and then took
  the flock of the removed file must not count as holding the run (a third trainer would
  create a new run.lock beside it)."""
  path = tmp_path / facts.LOCK_FILE
  path.write_text("")
  calls, real = [], run_lock._try_flock

  def holder_exits_first(fd, p):
    if not calls:
      os.unlink(p)  # the holder's release, between this trainer's open and its flock
    calls.append(os.fstat(fd).st_ino)
    return real(fd, p)

  monkeypatch.setattr(run_lock, "_try_flock", holder_exits_first)
  lock = run_lock.acquire(str(tmp_path))
  try:
    assert len(calls) == 2  # opened again (the number may be the freed inode's, reused)
    assert os.stat(path).st_ino == calls[1] == os.fstat(lock._fd).st_ino
    assert run_lock.read_holder(str(tmp_path)).pid == os.getpid()
  finally:
    lock.release()


def test_a_run_that_fails_before_training_leaves_no_lock_file(tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  r = forkserver.run(
      [
          sys.executable,
          "-m",
          "alexnet_jax.main",
          f"--workdir={workdir}",
          *tiny.flags(),
          f"--config.dataset.name=folder:{tmp_path / 'no_such_dataset'}",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert r.stderr.strip().splitlines()[-1].startswith("FATAL: dataset folder"), r.stderr[-3000:]
  assert not (workdir / facts.LOCK_FILE).exists(), os.listdir(workdir)


def test_a_second_trainer_stops_at_once_naming_the_holder_and_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  lock = run_lock.acquire(str(workdir), heartbeat_s=3600.0)  # the file stays as it is
  before = {p.name: p.read_bytes() for p in workdir.iterdir()}
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  t = time.monotonic()
  try:
    r = forkserver.run(
        [sys.executable, "-m", "alexnet_jax.main", f"--workdir={workdir}", *tiny.flags()],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - t
    after = {p.name: p.read_bytes() for p in workdir.iterdir()}
  finally:
    lock.release()
  assert r.returncode != 0
  fatal = [line for line in r.stderr.splitlines() if "FATAL" in line]
  assert len(fatal) == 1, r.stderr[-3000:]
  assert fatal[0].startswith(f"FATAL: {workdir} is in use by another training run: process ")
  assert f"{os.getpid()} on host {socket.gethostname()}" in fatal[0]
  assert "Traceback" not in r.stderr
  # Nothing written: no config.json, metrics or checkpoints; the lock file as it was.
  assert after == before and set(after) == {facts.LOCK_FILE}
  assert took < 60, took  # no dataset, model or compilation first


# Takes the lock, says so, releases it after argv[2] seconds (a requeued job's previous instance
# finishing its save), then lingers.
HOLD_THEN_RELEASE = (
    "import sys, time\n"
    "from alexnet_jax import run_lock\n"
    "lock = run_lock.acquire(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "lock.release()\n"
    "print('released', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.mark.parametrize("release_after, wait_s", [(2.0, 30.0), (600.0, 1.5)])
def test_a_live_holder_is_waited_for_up_to_the_bound(tmp_path, caplog, release_after, wait_s):
  cmd, kw = _python(HOLD_THEN_RELEASE, tmp_path, stdout=subprocess.PIPE, text=True)
  holder = subprocess.Popen(cmd + [str(release_after)], **kw)
  try:
    assert holder.stdout.readline().strip() == "locked"
    t = time.monotonic()
    with caplog.at_level("INFO", logger="absl"):
      if release_after < wait_s:
        lock = run_lock.acquire(str(tmp_path), wait_s=wait_s)
        took = time.monotonic() - t
        assert holder.stdout.readline().strip() == "released"
        assert run_lock.read_holder(str(tmp_path)).pid == os.getpid()
        lock.release()
        assert 1.0 <= took < release_after + 5, took
      else:
        with pytest.raises(run_lock.RunLockedError) as e:
          run_lock.acquire(str(tmp_path), wait_s=wait_s)
        took = time.monotonic() - t
        assert wait_s <= took < wait_s + 5, took
        assert f"process {holder.pid} on host {socket.gethostname()} since " in str(e.value)
        assert str(e.value).endswith(f"(waited {wait_s:.0f} s for it, --lock_wait_s).")
        assert "\n" not in str(e.value)
  finally:
    holder.kill()
    holder.wait(timeout=60)
  waits = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
  assert len(waits) == 1, waits  # one line, however long it waits
  assert waits[0].startswith(
      f"{tmp_path} is in use by process {holder.pid} on host {socket.gethostname()} since "
  )
  assert waits[0].endswith(f"waiting up to {wait_s:.0f} s for it to finish (--lock_wait_s)")


def test_a_slurm_job_waits_by_default_a_shell_does_not():
  assert run_lock.default_wait_s({"SLURM_JOB_ID": "4242"}) == run_lock.SLURM_WAIT_SECONDS == 120
  assert run_lock.default_wait_s({}) == 0


# ---- hostile input: run.lock deleted, replaced, a link or a FIFO ------------------------------
# Holds the lock; argv[2] == "nodirlock": as on a filesystem without directory locks. Prints
# "locked", then "lost: <reason>" once check_held raises.
HOLD_AND_WATCH = (
    "import sys, time\n"
    "from alexnet_jax import run_lock\n"
    "if sys.argv[2] == 'nodirlock':\n"
    "  run_lock._lock_directory = lambda workdir, path: None\n"
    "lock = run_lock.acquire(sys.argv[1], heartbeat_s=float(sys.argv[3]))\n"
    "print('locked', flush=True)\n"
    "while True:\n"
    "  try:\n"
    "    run_lock.check_held()\n"
    "  except run_lock.RunLockLostError as e:\n"
    "    print('lost:', e, flush=True); break\n"
    "  time.sleep(0.05)\n"
    "time.sleep(600)\n"
)


def _hold(tmp_path, mode="dirlock", heartbeat_s=30.0):
  cmd, kw = _python(HOLD_AND_WATCH, tmp_path, stdout=subprocess.PIPE, text=True)
  holder = subprocess.Popen(cmd + [mode, str(heartbeat_s)], **kw)
  assert holder.stdout.readline().strip() == "locked"
  return holder


def _wait_for(predicate, timeout=10.0):
  t = time.monotonic()
  while time.monotonic() - t < timeout:
    if predicate():
      return time.monotonic() - t
    time.sleep(0.05)
  raise AssertionError("timed out")


def _names_pid(tmp_path, pid):
  h = run_lock.read_holder(str(tmp_path))
  return h is not None and h.pid == pid and not os.path.islink(tmp_path / facts.LOCK_FILE)


@pytest.mark.parametrize("how", ["deleted", "replaced", "symlink"])
def test_a_deleted_or_replaced_run_lock_is_taken_back_and_no_second_trainer_starts(tmp_path, how):
  """The holder keeps a lock on the directory: a second process stops although run.lock is
  gone or another file; the holder puts its own run.lock back within a check interval
  (CHECK_SECONDS, well within a heartbeat of 30 s), and a link's target is never written."""
  lock_path = tmp_path / facts.LOCK_FILE
  outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
  outside.write_text("not the run's")
  holder = _hold(tmp_path)
  try:
    if how == "deleted":
      os.remove(lock_path)
    elif how == "replaced":
      (tmp_path / "other").write_text("")
      os.replace(tmp_path / "other", lock_path)
    else:
      os.symlink(outside, tmp_path / "link")
      os.replace(tmp_path / "link", lock_path)
    r = _try_from_another_process(tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"{tmp_path} is in use by another training run" in r.stdout
    took = _wait_for(lambda: _names_pid(tmp_path, holder.pid))
    assert took < 3 * run_lock.CHECK_SECONDS + 2, took
    r = _try_from_another_process(tmp_path)
    assert r.returncode == 3 and f"process {holder.pid} on host " in r.stdout, r.stdout
    assert outside.read_text() == "not the run's"
  finally:
    holder.kill()
    holder.wait(timeout=60)
  assert run_lock.read_holder(str(tmp_path)).pid == holder.pid
  lock = run_lock.acquire(str(tmp_path))  # the killed holder blocks nothing
  lock.release()


def test_a_second_trainer_never_starts_beside_a_holder_whose_run_lock_was_deleted(tmp_path):
  """The real command: run.lock deleted under a holder, a trainer started at once stops with
  one FATAL line and writes nothing."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  holder = _hold(workdir)
  try:
    os.remove(workdir / facts.LOCK_FILE)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    r = forkserver.run(
        [sys.executable, "-m", "alexnet_jax.main", f"--workdir={workdir}", *tiny.flags()],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    names = {p.name for p in workdir.iterdir()}
  finally:
    holder.kill()
    holder.wait(timeout=60)
  fatal = [line for line in r.stderr.splitlines() if "FATAL" in line]
  assert r.returncode != 0 and len(fatal) == 1, r.stderr[-3000:]
  assert fatal[0].startswith(f"FATAL: {workdir} is in use by another training run: ")
  assert names <= {facts.LOCK_FILE}, names  # no config.json, metrics or checkpoints


def test_without_directory_locks_the_holder_stops_writing_once_another_trainer_took_run_lock(
    tmp_path, monkeypatch
):
  """Where the filesystem has no directory locks, a trainer started while run.lock was gone
  takes a new one; the holder notices within a check interval and its writers stop
  (check_held raises RunLockLostError before a metrics row), so one writer remains."""
  from alexnet_jax import reporting

  monkeypatch.setattr(run_lock, "_lock_directory", lambda workdir, path: None)
  # The holder's check runs by hand here: a newcomer slow to start (a loaded machine) must
  # not find the lock taken back before it looked.
  monkeypatch.setattr(run_lock, "CHECK_SECONDS", 600.0)
  lock = run_lock.acquire(str(tmp_path), heartbeat_s=600.0)
  writer = reporting.MetricsWriter(str(tmp_path))
  writer.write(1, "train", {"loss": 1.0})
  os.remove(tmp_path / facts.LOCK_FILE)
  other = _hold(tmp_path, "nodirlock")  # took the new run.lock before the holder looked
  try:
    with lock._mutex:  # pylint: disable=protected-access
      lock._keep_path()  # what the heartbeat thread does every CHECK_SECONDS
    assert lock.lost is not None
    with pytest.raises(run_lock.RunLockLostError, match=rf"process {other.pid} on host "):
      writer.write(2, "train", {"loss": 0.5})
    rows = (tmp_path / facts.METRICS_FILE).read_text().splitlines()
    assert [json.loads(x)["step"] for x in rows] == [1]
    assert run_lock.read_holder(str(tmp_path)).pid == other.pid  # left alone
    assert other.poll() is None
  finally:
    writer.close()
    lock.release()
    other.kill()
    other.wait(timeout=60)


def test_without_directory_locks_the_newcomer_stops_when_the_holder_takes_run_lock_back(
    tmp_path, monkeypatch
):
  """The other order, both sides real: the holder puts its run.lock back over a newcomer's
  file (the newcomer came in the moment before); the newcomer's check sees a file another
  process holds and stops writing, the holder goes on."""
  monkeypatch.setattr(run_lock, "_lock_directory", lambda workdir, path: None)
  lock = run_lock.acquire(str(tmp_path), heartbeat_s=600.0)  # checks every 600 s: by hand here
  os.remove(tmp_path / facts.LOCK_FILE)
  newcomer = _hold(tmp_path, "nodirlock")
  try:
    lock._take_back("was deleted")  # pylint: disable=protected-access
    line = newcomer.stdout.readline()
    assert line.startswith(
        f"lost: {tmp_path / facts.LOCK_FILE} was replaced by another file "
    ), line
    assert f"process {os.getpid()} on host " in line
    assert run_lock.read_holder(str(tmp_path)).pid == os.getpid()
    run_lock.check_held()  # the holder is not lost
  finally:
    newcomer.kill()
    newcomer.wait(timeout=60)
    lock.release()


def test_a_symbolic_link_as_run_lock_is_replaced_and_its_target_left_alone(tmp_path, caplog):
  outside = tmp_path.parent / f"{tmp_path.name}-victim.txt"
  outside.write_text("precious\n")
  os.symlink(outside, tmp_path / facts.LOCK_FILE)
  lock = run_lock.acquire(str(tmp_path))
  try:
    assert outside.read_text() == "precious\n"
    assert not os.path.islink(tmp_path / facts.LOCK_FILE)
    assert run_lock.read_holder(str(tmp_path)).pid == os.getpid()
    assert "was a symbolic link" in caplog.text
  finally:
    lock.release()
  assert outside.read_text() == "precious\n"


def test_a_fifo_or_directory_as_run_lock_is_refused_with_one_line(tmp_path):
  os.mkfifo(tmp_path / facts.LOCK_FILE)
  with pytest.raises(run_lock.RunLockedError) as e:
    run_lock.acquire(str(tmp_path))
  assert str(e.value).startswith(f"{tmp_path / facts.LOCK_FILE} is a FIFO (named pipe), not a")
  assert "remove it and rerun" in str(e.value) and "\n" not in str(e.value)
  assert run_lock.read_holder(str(tmp_path)) is None  # a reader never blocks on it either
  os.remove(tmp_path / facts.LOCK_FILE)
  os.mkdir(tmp_path / facts.LOCK_FILE)
  with pytest.raises(run_lock.RunLockedError, match=r"is a directory, not a regular file"):
    run_lock.acquire(str(tmp_path))
