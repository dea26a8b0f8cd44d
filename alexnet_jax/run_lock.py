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

One writer even when run.lock is deleted or replaced (by hand, a cleanup script, a sync
tool): the holder also holds a flock on WORKDIR itself, which a trainer takes before
run.lock, so a second trainer stops there although run.lock is gone. The holder checks every
CHECK_SECONDS that run.lock still names the file it locked; when it does not (deleted,
replaced by another file or a symbolic link) it takes the lock back: a new run.lock naming
it, locked, renamed into place, with a warning. Where the filesystem has no directory locks
(some NFS mounts) and a second trainer took the new run.lock meanwhile, the holder instead
stops the run cleanly at its next step boundary (`check_held` raises RunLockLostError before
any metrics row or checkpoint is written), leaving the newer trainer alone. run.lock is
never a symbolic link: one found there is replaced by a regular file (a warning says so),
and a FIFO, device or directory of that name is refused.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import json
import os
import socket
import stat
import threading
import time

from absl import logging

from alexnet_jax import files
from alexnet_jax.facts import LOCK_FILE

HEARTBEAT_SECONDS = 30.0
STALE_FACTOR = 10  # a remote holder whose heartbeat is older than 10 intervals looks dead
STALE_SECONDS = STALE_FACTOR * HEARTBEAT_SECONDS
# How often the holder checks that run.lock is still the file it locked (an lstat and an
# fstat: cheap), so that a deleted or replaced one is taken back well within a heartbeat.
CHECK_SECONDS = 1.0


class RunLockedError(Exception):
  """Another trainer holds the workdir (its message is the one line main.py prints)."""


class _HeldByALiveProcess(RunLockedError):
  """The holder is running (this host's flock, or a fresh heartbeat): worth waiting for."""


class RunLockLostError(RuntimeError):
  """Another trainer took run.lock while this one held it (possible only where the
  filesystem has no directory locks): this run stops without writing more."""


_HELD = []  # this process's RunLocks (check_held looks at them)


def check_held() -> None:
  """Raise RunLockLostError if a lock this process holds was taken by another trainer: the
  writers of a run (metrics rows, checkpoint saves) call it before they write."""
  for lock in list(_HELD):
    if lock.lost:
      raise RunLockLostError(lock.lost)


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
  """Who the lock file names (None: no file, an empty one, one being rewritten, or not a
  regular file: a FIFO never blocks this)."""
  try:
    with files.open_regular(os.path.join(workdir, LOCK_FILE), max_bytes=1 << 16) as f:
      return _parse(f.read().decode(errors="replace"))
  except (OSError, files.BadFileError):
    return None


class RunLock:
  """A held lock; `release` (also run at exit) removes the file and unlocks it."""

  def __init__(
      self,
      path: str,
      fd: int,
      holder: Holder,
      heartbeat_s: float,
      dir_fd: int | None = None,
      check_s: float | None = None,
  ):
    self.path, self.holder = path, holder
    self.lost: str | None = None  # why the lock was lost to another trainer (check_held)
    self._fd, self._dir_fd = fd, dir_fd
    self._mutex = threading.Lock()
    self._stop = threading.Event()
    self._write(holder)
    check_s = min(CHECK_SECONDS if check_s is None else check_s, heartbeat_s)
    self._thread = threading.Thread(
        target=self._beat, args=(heartbeat_s, check_s), name="run-lock-heartbeat", daemon=True
    )
    self._thread.start()
    _HELD.append(self)
    atexit.register(self.release)

  def _write(self, holder: Holder, fd: int | None = None) -> None:
    # In place (the flock belongs to this inode, a rename would drop it); one short write.
    fd = self._fd if fd is None else fd
    data = json.dumps(dataclasses.asdict(holder)).encode() + b"\n"
    # Write, then cut to length: a reader never sees the file empty.
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)

  def _beat(self, interval: float, check_s: float) -> None:
    next_beat = time.monotonic() + interval
    while not self._stop.wait(check_s):
      with self._mutex:
        if self._fd < 0 or self.lost:
          return
        try:
          self._keep_path()
          if self.lost:
            return
          if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + interval
            self.holder = dataclasses.replace(self.holder, heartbeat=time.time())
            self._write(self.holder)
        except OSError as e:  # a full or lost disk: training reports that itself
          logging.warning("could not refresh the heartbeat in %s: %s", self.path, e)

  def _keep_path(self) -> None:
    """If the path no longer names the file this process locked: take it back, or (another
    process holds what is there now) mark the lock lost."""
    try:
      st = os.lstat(self.path)
    except FileNotFoundError:
      st = None
    mine = os.fstat(self._fd)
    if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
      return
    if st is None:
      what = "was deleted"
    elif stat.S_ISLNK(st.st_mode):
      what = "was replaced by a symbolic link"
    else:
      what = "was replaced by another file"
    other = _locked_by_another(self.path) if st is not None and stat.S_ISREG(st.st_mode) else None
    if other is not None:
      self.lost = (
          f"{self.path} {what} while this run held it, and another training run now holds the "
          f"new one ({other.describe() if isinstance(other, Holder) else 'unnamed yet'}): this "
          "run stopped without writing more, so that one writer remains. Rerun once the other "
          "has finished."
      )
      logging.error("%s", self.lost)
      return
    self._take_back(what)

  def _take_back(self, what: str) -> None:
    directory = os.path.dirname(self.path)
    tmp = os.path.join(directory, f".{LOCK_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      self._write(self.holder, fd)
      os.replace(tmp, self.path)  # replaces a link itself, never writes through it
    except BaseException:
      os.close(fd)
      try:
        os.remove(tmp)
      except OSError:
        pass
      raise
    os.close(self._fd)
    self._fd = fd
    logging.warning(
        "%s %s while this run held it: took it back (a new %s naming this process). %s",
        self.path,
        what,
        LOCK_FILE,
        "No second trainer could start meanwhile: it also needs the lock on the directory."
        if self._dir_fd is not None
        else "This filesystem has no directory locks: a trainer started meanwhile stops itself.",
    )

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
      if self._dir_fd is not None:
        os.close(self._dir_fd)
        self._dir_fd = None
    if self in _HELD:
      _HELD.remove(self)
    atexit.unregister(self.release)


def _locked_by_another(path: str) -> Holder | bool | None:
  """Whether another process holds a flock on the regular file at `path`: its Holder (or
  True while it has not named itself), else None."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _holder_of(fd) or True
    except OSError:
      return None
    return None
  finally:
    os.close(fd)  # also drops the shared lock just taken


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
  retries = 0
  while True:
    try:
      lock = _acquire_once(workdir, break_lock, heartbeat_s, stale_s)
    except _Retry:  # run.lock was deleted or replaced between its open and its flock
      retries += 1
      if retries > 100:
        raise RunLockedError(
            f"{os.path.join(workdir, LOCK_FILE)} keeps being deleted or replaced: stop what "
            "does it, and rerun"
        ) from None
      continue
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
  dir_fd = _lock_directory(workdir, path)
  try:
    fd = _open_lock_file(path)
  except BaseException:
    if dir_fd is not None:
      os.close(dir_fd)
    raise
  try:
    flocked = _try_flock(fd, path)
    if flocked is False:  # held by a live process (this host, or another through NFS)
      raise _in_use(workdir, path, _holder_of(fd))
    if flocked and not _names(path, fd):  # deleted or replaced since it was opened: again
      raise _Retry()
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
    return RunLock(path, fd, Holder(host, os.getpid(), now, now), heartbeat_s, dir_fd)
  except BaseException:
    os.close(fd)
    if dir_fd is not None:
      os.close(dir_fd)
    raise


class _Retry(Exception):
  """run.lock changed between its open and its flock: open it again."""


def _in_use(workdir: str, path: str, h: Holder | None) -> _HeldByALiveProcess:
  who = h.describe() if h else "another process (it has not named itself yet)"
  return _HeldByALiveProcess(
      f"{workdir} is in use by another training run: {who} holds {path}; "
      + (_how_to_proceed(h) if h else "wait for it to finish, or stop it, and rerun")
      + "."
  )


def _lock_directory(workdir: str, path: str) -> int | None:
  """A flock on the workdir itself, which a holder keeps however run.lock is deleted or
  replaced: its fd, or None where the filesystem has no directory locks."""
  fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd
  except BlockingIOError:
    os.close(fd)
    raise _in_use(workdir, path, read_holder(workdir)) from None
  except OSError as e:  # NFS emulates flock with POSIX locks, which need a writable file
    os.close(fd)
    if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
      raise
    logging.info("%s: no directory locks on this filesystem (%s)", workdir, e)
    return None


def _open_lock_file(path: str) -> int:
  """run.lock opened for reading and writing, never through a symbolic link (one there is
  replaced, with a warning) and never a FIFO, device or directory (RunLockedError)."""
  for _ in range(2):
    try:
      fd = os.open(
          path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644
      )
    except OSError as e:
      if e.errno == errno.ELOOP and os.path.islink(path):
        files.replace_symlink(path)
        continue
      if os.path.lexists(path) and not os.path.isfile(path):
        raise _not_a_file(path) from None
      raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      os.close(fd)
      raise _not_a_file(path)
    os.set_blocking(fd, True)
    return fd
  raise RunLockedError(f"{path} keeps becoming a symbolic link: remove it and rerun")


def _not_a_file(path: str) -> RunLockedError:
  fix = "a run locks only a regular file of that name; remove it and rerun"
  try:
    files.check_regular(path, error=RunLockedError, fix=fix)
  except RunLockedError as e:
    return e
  except OSError as e:
    return RunLockedError(f"cannot open {path} ({e.strerror or e}): {fix}")
  return RunLockedError(f"{path} changed while it was opened: rerun")


def _names(path: str, fd: int) -> bool:
  """Whether `path` (not followed) is the file open as `fd`."""
  try:
    st = os.lstat(path)
  except FileNotFoundError:
    return False
  mine = os.fstat(fd)
  return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


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
