"""One writer per workdir: training holds an exclusive lock on WORKDIR/run.lock from before it
writes anything until it exits.

The lock is an fcntl.flock on the file, so the OS drops it when its holder dies (kill -9,
out of memory): a dead local holder never blocks a rerun. The file names the holder (host,
process id, start time) for the message a second trainer stops with, and the holder rewrites
a heartbeat time in it every HEARTBEAT_SECONDS (a daemon thread).

Across hosts flock is only as good as the filesystem: NFSv4 carries it to the server, but
some mounts (NFS with local_lock, Lustre without -o flock) keep it per client or refuse it.
So a trainer that gets the flock but finds the file naming ANOTHER host also reads the
heartbeat: fresh (younger than STALE_SECONDS) means that host's trainer is alive and it
stops; stale means that trainer looks dead (a lost node), and it stops telling the user to
rerun with --break_lock once they know it is. A holder that exits (normally, with a FATAL
line or preempted) removes the file, so only a killed holder leaves it (and its name) behind;
a trainer that took the flock of a file removed meanwhile opens the new one again.

Waiting (`wait_s`, alexnet_jax.main's --lock_wait_s): a trainer that finds a live holder
waits up to that many seconds for it to exit, logging one line naming it, and takes the
lock when it is released; after the bound it stops with the same line as without waiting. The
default (`default_wait_s`) is 0 (stop at once) for a trainer started by hand, and
SLURM_WAIT_SECONDS (120 s) inside a SLURM job (SLURM_JOB_ID set): a requeued job may start
while its previous instance is still saving its last checkpoint after SIGTERM. A holder
that looks dead (a stale heartbeat) is never waited for: it will not release the lock.

Multi-process runs: only process 0 takes the lock (the processes of one run share it); if
process 0 cannot, it fails inside distributed.exit_on_error, which ends every process.
Reading a run (evaluate, predict, checkpoint.restore, analysis.load_run) takes no lock.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import json
import os
import socket
import threading
import time

from absl import logging

from alexnet_jax.facts import LOCK_FILE

HEARTBEAT_SECONDS = 30.0
STALE_FACTOR = 10  # a remote holder whose heartbeat is older than 10 intervals looks dead
STALE_SECONDS = STALE_FACTOR * HEARTBEAT_SECONDS


class RunLockedError(Exception):
  """Another trainer holds the workdir (its message is the one line main.py prints)."""


class _HeldByALiveProcess(RunLockedError):
  """The holder is running (this host's flock, or a fresh heartbeat): worth waiting for."""


SLURM_WAIT_SECONDS = 120.0
_POLL_SECONDS = 0.5


def default_wait_s(environ=None) -> float:
  """How long a trainer waits for a live holder unless told: SLURM_WAIT_SECONDS in a SLURM
  job (a requeue may overlap its previous instance's last save), else 0."""
  environ = os.environ if environ is None else environ
  return SLURM_WAIT_SECONDS if environ.get("SLURM_JOB_ID") else 0.0


@dataclasses.dataclass(frozen=True)
class Holder:
  host: str
  pid: int
  since: float  # time.time() when it took the lock
  heartbeat: float  # time.time() of its last heartbeat

  def describe(self) -> str:
    return f"process {self.pid} on host {self.host} since {_utc(self.since)}"


def _utc(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _parse(text: str) -> Holder | None:
  try:
    d = json.loads(text)
    return Holder(str(d["host"]), int(d["pid"]), float(d["since"]), float(d["heartbeat"]))
  except (ValueError, KeyError, TypeError):
    return None


def read_holder(workdir: str) -> Holder | None:
  """Who the lock file names (None: no file, an empty one, or one being rewritten)."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return _parse(f.read())
  except OSError:
    return None


class RunLock:
  """A held lock; `release` (also run at exit) removes the file and unlocks it."""

  def __init__(self, path: str, fd: int, holder: Holder, heartbeat_s: float):
    self.path, self.holder = path, holder
    self._fd = fd
    self._mutex = threading.Lock()
    self._stop = threading.Event()
    self._write(holder)
    self._thread = threading.Thread(
        target=self._beat, args=(heartbeat_s,), name="run-lock-heartbeat", daemon=True
    )
    self._thread.start()
    atexit.register(self.release)

  def _write(self, holder: Holder) -> None:
    # In place (the flock belongs to this inode, a rename would drop it); one short write.
    data = json.dumps(dataclasses.asdict(holder)).encode() + b"\n"
    # Write, then cut to length: a reader never sees the file empty.
    os.pwrite(self._fd, data, 0)
    os.ftruncate(self._fd, len(data))
    os.fsync(self._fd)

  def _beat(self, interval: float) -> None:
    while not self._stop.wait(interval):
      with self._mutex:
        if self._fd < 0:
          return
        try:
          self._write(dataclasses.replace(self.holder, heartbeat=time.time()))
        except OSError as e:  # a full or lost disk: training reports that itself
          logging.warning("could not refresh the heartbeat in %s: %s", self.path, e)

  def release(self) -> None:
    self._stop.set()
    with self._mutex:
      if self._fd < 0:
        return
      try:
        # Removed while still locked (a launch that failed before training leaves no file);
        # a trainer that opened it meanwhile finds it removed and opens the path again.
        if _names(self.path, self._fd):
          os.unlink(self.path)
        else:
          os.ftruncate(self._fd, 0)  # not ours to remove: at least it names no holder
      except OSError:
        pass
      os.close(self._fd)  # drops the flock
      self._fd = -1
    atexit.unregister(self.release)


def _how_to_proceed(h: Holder) -> str:
  return f"wait for it to finish, or stop it (`kill {h.pid}` on {h.host}) and rerun"


def acquire(
    workdir: str,
    *,
    break_lock: bool = False,
    heartbeat_s: float = HEARTBEAT_SECONDS,
    stale_s: float | None = None,
    wait_s: float = 0.0,
) -> RunLock:
  """Take WORKDIR/run.lock for this process, or raise RunLockedError naming the holder; a live
  holder is waited for up to `wait_s` seconds first."""
  deadline = time.monotonic() + max(0.0, wait_s)
  waiting = False
  while True:
    try:
      lock = _acquire_once(workdir, break_lock, heartbeat_s, stale_s)
    except _HeldByALiveProcess as e:
      left = deadline - time.monotonic()
      if left <= 0:
        text = str(e)
        if waiting:
          text = f"{text.rstrip('.')} (waited {wait_s:.0f} s for it, --lock_wait_s)."
        raise RunLockedError(text) from None
      if not waiting:
        h = read_holder(workdir)
        logging.warning(
            "%s is in use by %s: waiting up to %.0f s for it to finish (--lock_wait_s)",
            workdir,
            h.describe() if h else "another process",
            wait_s,
        )
        waiting = True
      time.sleep(min(_POLL_SECONDS, left))
      continue
    if waiting:
      logging.info("%s: the previous holder finished; took the lock", workdir)
    return lock


def _acquire_once(workdir, break_lock, heartbeat_s, stale_s) -> RunLock:
  stale_s = STALE_FACTOR * heartbeat_s if stale_s is None else stale_s
  path = os.path.join(workdir, LOCK_FILE)
  host, now = socket.gethostname(), time.time()
  fd, flocked = _open_and_flock(path)
  try:
    if flocked is False:  # held by a live process (this host, or another through NFS)
      h = _holder_of(fd)
      who = h.describe() if h else "another process (it has not named itself yet)"
      raise _HeldByALiveProcess(
          f"{workdir} is in use by another training run: {who} holds {path}; "
          + (_how_to_proceed(h) if h else "wait for it to finish, or stop it, and rerun")
          + "."
      )
    h = _holder_of(fd)
    if h is not None and not break_lock and (h.host != host or flocked is None):
      age = now - h.heartbeat
      if h.host == host and not _alive(h.pid):
        pass  # without flock: a dead local holder is known dead
      elif age <= stale_s:
        raise _HeldByALiveProcess(
            f"{workdir} is in use by another training run: {h.describe()} holds {path} "
            f"(heartbeat {age:.0f} s ago); {_how_to_proceed(h)}."
        )
      else:
        raise RunLockedError(
            f"{workdir} was locked by {h.describe()}, which looks dead: its last heartbeat in "
            f"{path} was {age:.0f} s ago (stale after {stale_s:.0f} s). If it is no longer "
            f"running, rerun with --break_lock."
        )
    if h is not None and (h.host, h.pid) != (host, os.getpid()):
      logging.warning("taking over %s from %s, which is no longer running", path, h.describe())
    return RunLock(path, fd, Holder(host, os.getpid(), now, now), heartbeat_s)
  except BaseException:
    os.close(fd)
    raise


def _open_and_flock(path: str) -> tuple[int, bool | None]:
  """(fd, _try_flock's answer) for the file `path` names: a holder removes the file when it
  exits, so a flock taken on a file removed since it was opened is dropped and the path
  opened again (else two trainers could each hold a file of the same name)."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      flocked = _try_flock(fd, path)
      if flocked is not True or _names(path, fd):
        return fd, flocked
    except BaseException:
      os.close(fd)
      raise
    os.close(fd)


def _names(path: str, fd: int) -> bool:
  """Whether `path` still names the open file `fd`."""
  try:
    a, b = os.stat(path), os.fstat(fd)
  except OSError:
    return False
  return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _try_flock(fd: int, path: str) -> bool | None:
  """True: locked; False: held by another process; None: the filesystem has no flock."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  except OSError as e:
    if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
      raise
    logging.warning("%s: no flock on this filesystem (%s); relying on the heartbeat", path, e)
    return None


def _holder_of(fd: int) -> Holder | None:
  # The holder may be rewriting its heartbeat this instant: read again before giving up.
  for _ in range(5):
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    if not text.strip():
      return None
    h = _parse(text)
    if h is not None:
      return h
    time.sleep(0.02)
  return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True
