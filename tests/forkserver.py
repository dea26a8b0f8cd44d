"""`python -m alexnet_jax.COMMAND` (or `-c CODE`, or a script) without a fresh interpreter's
imports: a drop-in for the tests' `subprocess.run([sys.executable, ...])`.

Each fresh interpreter imports TensorFlow, JAX, Flax and Orbax again, about 8-10 s of CPU on
2 busy cores, before the command does anything. Here one process per test process (the
zygote, started at the first call) imports those third-party libraries once, without
touching a JAX backend, tf.data or the package, then forks a child per call. The child takes
the environment, working directory, standard streams and argv it is given, runs the module as
`python -m` would (runpy), and exits with the status a fresh interpreter would give (a
SystemExit's code; 1 and the traceback on stderr for an uncaught exception; os._exit codes,
which commands end with through alexnet_jax.cli.exit_now, kept). The package itself is
imported by the child, fresh, after its environment is in place.

What the preloaded libraries read from the environment when they load is the catch:
- JAX's JAX_* options: the child sets the few below (IMPORT_TIME_JAX) from its own
  environment; any other JAX_* variable that differs from the zygote's runs a real process.
- TensorFlow's and Python's own load-time variables (TF_*, PYTHON*, ...: IMPORT_TIME): a
  difference from the zygote's runs a real process. So does TF_CPP_MIN_LOG_LEVEL=1 given
  explicitly (alexnet_jax/__init__.py takes a 1 for JAX's own default once JAX is loaded).
- PYTHONPATH: put on the child's sys.path as a fresh interpreter puts it, unless a folder it
  adds holds a package the zygote loaded (a stand-in: a real process).
- XLA_FLAGS and the rest are read when a backend starts, in the child: as in a fresh process.
- What a library prints as it loads went to the zygote's stderr (nowhere): tests/
  test_forkserver.py runs a trainer's start both ways and compares what it printed.
Without fork, with FORKSERVER=0, or when the zygote cannot start or dies, every call is a real
subprocess.run: the tests never depend on the trick for their outcome. Tests whose point is the fresh
process itself (signals, jax.distributed, "a second start loads from the compilation cache",
"importing prints nothing", resource limits, pip) keep calling subprocess.

  r = forkserver.run([sys.executable, "-m", "alexnet_jax.main", ...], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

# What the zygote loads: what the commands import from outside the package, and more (not
# torch or h5py, which the package loads only when asked: tests/test_imports.py DEFERRABLE).
# Its plain `import tensorflow` also loads Keras and scikit-learn, which a command's does not
# (alexnet_jax/tf_import.py): a forked child has them loaded, faster, with the same results.
PRELOAD = (
    # Where it is installed, before TensorFlow, as alexnet_jax/__init__.py loads it.
    "triton",
    "numpy",
    "scipy",
    "PIL.Image",
    # JAX first, as a command loads them: it sets TF_CPP_MIN_LOG_LEVEL=1 when none is set.
    "jax",
    "jax.numpy",
    "tensorflow",
    "tensorflow_datasets",
    "flax",
    "flax.linen",
    "optax",
    "orbax.checkpoint",
    "ml_collections",
    "ml_collections.config_flags",
    "absl.app",
    "absl.flags",
    "absl.logging",
    "sklearn",
    "matplotlib",
)
# Variables a preloaded library or the interpreter reads when it starts: the child's must be
# the zygote's (else a real process runs).
IMPORT_TIME = ("PYTHON", "TF_", "TENSORFLOW", "MPL", "LD_", "MALLOC", "OMP_", "KMP_", "TFDS_")
IMPORT_TIME_NAMES = ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "LANG", "LC_ALL", "LC_CTYPE")
# JAX options read from JAX_* at import, which the child re-applies from its environment:
# name -> (type, default when unset).
IMPORT_TIME_JAX = {
    "JAX_ENABLE_X64": (bool, False),
    "JAX_PLATFORMS": (str, None),
    "JAX_COMPILATION_CACHE_DIR": (str, None),
}
_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")
_HERE = os.path.abspath(__file__)
# The environment the zygote starts with: the test process's as it was when the tests were
# collected (conftest's settings in place), not what the test that happens to start it changed.
_ENV_AT_IMPORT = dict(os.environ)


def run(
    args,
    *,
    cwd=None,
    env=None,
    timeout=None,
    input=None,  # noqa: A002 (subprocess.run's name)
    capture_output=False,
    text=False,
    check=False,
    stdout=None,
    stderr=None,
):
  """subprocess.run(args, ...) for `[sys.executable, "-m" MODULE | "-c" CODE | SCRIPT, ...]`
  in a forked child of the zygote. The output is always captured (capture_output is taken
  for granted); stderr=subprocess.STDOUT merges it into stdout. Returns a
  subprocess.CompletedProcess; raises subprocess.TimeoutExpired (the child's process group
  killed) or, with check, CalledProcessError, as subprocess.run does."""
  del capture_output, stdout  # always captured
  merge = stderr == subprocess.STDOUT
  env = dict(os.environ if env is None else env)
  cwd = os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd()
  args = [os.fspath(a) for a in args]
  server = _server() if _forkable_args(args) else None
  if server is None or not server.alive() or not _forkable(args, env, server):
    r = _subprocess(args, cwd, env, timeout, input, text, merge)
  else:
    r = server.run(args, cwd, env, timeout, input, text, merge)
    if r is None:  # the zygote died: a real process, same semantics
      r = _subprocess(args, cwd, env, timeout, input, text, merge)
  if check:
    r.check_returncode()
  return r


def forkable(args, env=None) -> bool:
  """Whether run(args, env=env) would run in a forked child (not a real process)."""
  args = list(map(os.fspath, args))
  server = _server() if _forkable_args(args) else None
  env = dict(os.environ if env is None else env)
  return server is not None and server.alive() and _forkable(args, env, server)


def popen(args, *, cwd=None, env=None, stdout=None, stderr=None, text=False):
  """subprocess.Popen(args, ...) for what run() takes, in a forked child of the zygote: an
  object with pid, returncode, poll(), wait(timeout), communicate(timeout), send_signal(),
  terminate() and kill(), as subprocess.Popen's; a real subprocess.Popen where run() would
  start a real process. stdout, stderr: subprocess.PIPE (communicate() returns it), DEVNULL,
  STDOUT (stderr), an open file, or None (this process's own stream)."""
  env = dict(os.environ if env is None else env)
  cwd = os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd()
  args = [os.fspath(a) for a in args]
  server = _server() if _forkable_args(args) else None
  if server is not None and server.alive() and _forkable(args, env, server):
    tmp = tempfile.mkdtemp(prefix="forkserver_")
    out = _target(stdout, 1, os.path.join(tmp, "out"))
    err = out if stderr == subprocess.STDOUT else _target(stderr, 2, os.path.join(tmp, "err"))
    try:
      pid = server.start(args, cwd, env, os.devnull, out, err)
    except EOFError:
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      pipes = (
          out if stdout == subprocess.PIPE else None,
          err if stderr == subprocess.PIPE else None,
      )
      return _Forked(server, args, pid, tmp, pipes, text)
  return subprocess.Popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text)


def _target(stream, fd, pipe_path) -> str:
  """The path a child opens for `stream` (see popen)."""
  if stream == subprocess.PIPE:
    return pipe_path
  if stream == subprocess.DEVNULL:
    return os.devnull
  if stream is None:
    return f"/proc/{os.getpid()}/fd/{fd}"
  return f"/proc/{os.getpid()}/fd/{stream.fileno()}"


class _Forked:
  """popen's handle on a forked child (the subset of subprocess.Popen the tests use)."""

  def __init__(self, server, args, pid, tmp, pipes, text):
    self._server, self.args, self.pid = server, args, pid
    self._tmp, self._pipes, self._text = tmp, pipes, text
    self.returncode = None

  def poll(self):
    if self.returncode is None:
      self.returncode = self._server.wait(self.pid, 0)
    return self.returncode

  def wait(self, timeout=None):
    if self.returncode is None:
      self.returncode = self._server.wait(self.pid, timeout)
      if self.returncode is None:
        raise subprocess.TimeoutExpired(self.args, timeout)
    return self.returncode

  def communicate(self, input=None, timeout=None):  # noqa: A002
    assert input is None, "popen's children read /dev/null"
    self.wait(timeout)
    got = tuple(None if p is None else _read(p, self._text) for p in self._pipes)
    shutil.rmtree(self._tmp, ignore_errors=True)
    return got

  def send_signal(self, sig):
    if self.poll() is None:
      os.kill(self.pid, sig)

  def terminate(self):
    self.send_signal(signal.SIGTERM)

  def kill(self):
    self.send_signal(signal.SIGKILL)


def _subprocess(args, cwd, env, timeout, input, text, merge):  # noqa: A002
  err = subprocess.STDOUT if merge else subprocess.PIPE
  return subprocess.run(
      args,
      cwd=cwd,
      env=env,
      timeout=timeout,
      input=input,
      text=text,
      stdout=subprocess.PIPE,
      stderr=err,
  )


def _pythonpath(value) -> list[str]:
  return [p for p in (value or "").split(os.pathsep) if p]


def _shadows(pythonpath, zygote_pythonpath, loaded) -> bool:
  """Whether a folder the child's PYTHONPATH adds holds a package the zygote loaded (a
  stand-in that a fresh interpreter would import instead)."""
  for folder in set(_pythonpath(pythonpath)) - set(_pythonpath(zygote_pythonpath)):
    try:
      names = {n.split(".")[0] for n in os.listdir(folder)}
    except OSError:
      continue
    if names & loaded:
      return True
  return False


def _forkable_args(args) -> bool:
  """`python -m MODULE ...`, `python -c CODE ...` or `python SCRIPT.py ...`, no option."""
  if len(args) < 2 or args[0] != sys.executable:
    return False
  if args[1] in ("-m", "-c"):
    return len(args) >= 3
  return not args[1].startswith("-") and args[1].endswith(".py")


def _forkable(args, env, server) -> bool:
  if not _forkable_args(args):
    return False
  zygote_env, loaded, env_loaded = server.env, server.loaded, server.env_loaded
  for k in set(env) | set(zygote_env):
    if env.get(k) == zygote_env.get(k):
      continue
    if k not in zygote_env and env.get(k) == env_loaded.get(k):
      continue  # what a preloaded library sets when unset (TensorFlow: KMP_*, TF2_BEHAVIOR)
    if k == "PYTHONPATH":
      if _shadows(env.get(k), zygote_env.get(k), loaded):
        return False
      continue
    if k.startswith(IMPORT_TIME) or k in IMPORT_TIME_NAMES:
      return False
    if k.startswith("JAX_") and k not in IMPORT_TIME_JAX:
      return False
  if env.get("TF_CPP_MIN_LOG_LEVEL") == "1":
    return False
  for k, (kind, _) in IMPORT_TIME_JAX.items():
    if kind is bool and k in env and env[k].lower() not in _TRUE + _FALSE:
      return False
  return True


class _Server:
  """The zygote, as seen from the test process: its pipes, the environment it started with,
  and the exit statuses it reported. Its children may overlap (popen)."""

  def __init__(self):
    self.env = _ENV_AT_IMPORT
    self.lock = threading.RLock()
    self.proc = subprocess.Popen(
        [sys.executable, _HERE, "--zygote"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=self.env,
        cwd="/",
        bufsize=0,
    )
    self.ready = None  # set by the first call: the zygote's "ready" line read
    self.loaded = set()  # the top-level packages the zygote loaded
    self.env_loaded = {}  # its environment once they had loaded (what they set when unset)
    self.exits = {}  # pid -> exit status, reported and not yet claimed
    self._buffer = b""

  def _message(self, timeout):
    """The zygote's next message (a dict), or None on timeout; EOFError if it died."""
    fd = self.proc.stdout.fileno()
    deadline = None if timeout is None else time.monotonic() + timeout
    while b"\n" not in self._buffer:
      left = None if deadline is None else max(deadline - time.monotonic(), 0)
      if not select.select([fd], [], [], left)[0]:
        return None
      data = os.read(fd, 1 << 16)
      if not data:
        raise EOFError
      self._buffer += data
    line, self._buffer = self._buffer.split(b"\n", 1)
    return json.loads(line)

  def _next(self, timeout, want):
    """The next message with key `want`; exit reports met on the way are kept."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
      left = None if deadline is None else max(deadline - time.monotonic(), 0)
      msg = self._message(left)
      if msg is None or want in msg:
        return msg
      if "exit" in msg:
        self.exits[msg["exit"]] = msg["status"]

  def alive(self) -> bool:
    with self.lock:
      if self.ready is None:
        try:
          msg = self._message(600)
          self.ready = msg is not None and msg.get("ready") is True
          self.loaded = set(msg["loaded"]) if self.ready else set()
          self.env_loaded = msg["env"] if self.ready else {}
        except (EOFError, ValueError, TypeError, KeyError):
          self.ready = False
      return bool(self.ready) and self.proc.poll() is None

  def start(self, args, cwd, env, stdin, stdout, stderr) -> int:
    """Forks a child for args; its pid. OSError/EOFError/ValueError: the zygote is gone."""
    request = {"args": args, "cwd": cwd, "env": env, "stdin": stdin}
    request.update(stdout=stdout, stderr=stderr)
    with self.lock:
      try:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        msg = self._next(60, "pid")
        if msg is None:
          raise EOFError
        return msg["pid"]
      except (EOFError, OSError, ValueError):
        self.ready = False
        raise EOFError from None

  def wait(self, pid, timeout):
    """The child's exit status, or None past `timeout` (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while pid not in self.exits:
      left = None if deadline is None else max(deadline - time.monotonic(), 0)
      with self.lock:
        if pid in self.exits:
          break
        # Short reads, so that another waiter's report is never held up behind this one.
        msg = self._next(0.2 if left is None else min(left, 0.2), "exit")
        if msg is not None:
          self.exits[msg["exit"]] = msg["status"]
      if msg is None and deadline is not None and time.monotonic() >= deadline:
        return None
    return self.exits.pop(pid)

  def run(self, args, cwd, env, timeout, input, text, merge):  # noqa: A002
    with tempfile.TemporaryDirectory(prefix="forkserver_") as tmp:
      paths = {k: os.path.join(tmp, k) for k in ("in", "out", "err")}
      if input is not None:
        with open(paths["in"], "wb") as f:
          f.write(input.encode() if isinstance(input, str) else input)
      stdin = paths["in"] if input is not None else os.devnull
      err_path = paths["out"] if merge else paths["err"]
      try:
        pid = self.start(args, cwd, env, stdin, paths["out"], err_path)
        status = self.wait(pid, timeout)
        if status is None:  # past the timeout: the child and what it started, killed
          _kill_group(pid)
          self.wait(pid, 60)
          out, err = _read(paths["out"], text), _read(paths["err"], text)
          raise subprocess.TimeoutExpired(args, timeout, output=out, stderr=err)
      except (EOFError, OSError, ValueError):
        self.ready = False
        return None
      out = _read(paths["out"], text)
      err = None if merge else _read(paths["err"], text)
      return subprocess.CompletedProcess(args, status, out, err)

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


def _kill_group(pid):
  for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
    try:
      kill()
    except OSError:
      pass


def _read(path, text):
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    data = b""
  return data.decode(errors="replace").replace("\r\n", "\n") if text else data


_SERVER: _Server | None = None
_SERVER_PID = None


def _server() -> _Server | None:
  """This process's zygote, started at the first call; None without os.fork, or with
  FORKSERVER=0 in the environment (every run a real process: to compare, or to rule it out)."""
  global _SERVER, _SERVER_PID
  if not hasattr(os, "fork") or os.environ.get("FORKSERVER") == "0":
    return None
  if _SERVER is None or _SERVER_PID != os.getpid():
    _SERVER, _SERVER_PID = _Server(), os.getpid()
    atexit.register(_SERVER.close)
  return _SERVER


# The zygote: runs as `python tests/forkserver.py --zygote`.


def _zygote():
  import gc
  import importlib
  import importlib.util

  protocol_in, protocol_out = os.dup(0), os.dup(1)
  null = os.open(os.devnull, os.O_RDWR)
  os.dup2(null, 0)
  os.dup2(null, 1)
  os.close(null)
  zygote_env = dict(os.environ)
  for name in PRELOAD:
    if name == "triton" and importlib.util.find_spec(name) is None:
      continue
    try:
      importlib.import_module(name)
    except Exception:  # noqa: BLE001 (a broken optional library: the child imports it as it can)
      pass
  gc.collect()
  gc.freeze()  # the preloaded objects stay shared with the children (no copy on write)
  loaded = sorted({m.split(".")[0] for m in sys.modules})
  _send(protocol_out, {"ready": True, "loaded": loaded, "env": dict(os.environ)})
  children, buffer = set(), b""
  while True:
    # Requests as they come; a 0.05 s poll for children's exits while any runs.
    if select.select([protocol_in], [], [], 0.05 if children else None)[0]:
      data = os.read(protocol_in, 1 << 16)
      if not data:  # the test process is gone
        return
      buffer += data
      while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
          os.close(protocol_in)
          os.close(protocol_out)
          _child(request, zygote_env)  # never returns
        try:
          os.setpgid(pid, pid)
        except OSError:  # the child did it first
          pass
        children.add(pid)
        _send(protocol_out, {"pid": pid})
    while children:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if pid == 0:
        break
      children.discard(pid)
      _send(protocol_out, {"exit": pid, "status": os.waitstatus_to_exitcode(status)})


def _send(fd, msg):
  data = json.dumps(msg).encode() + b"\n"
  while data:
    data = data[os.write(fd, data) :]


def _child(request, zygote_env):
  status = 1
  try:
    try:
      os.setpgid(0, 0)
    except OSError:
      pass
    for fd, path, flags in (
        (0, request["stdin"], os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND),
    ):
      opened = os.open(path, flags, 0o600)
      os.dup2(opened, fd)
      os.close(opened)
    os.chdir(request["cwd"])
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    if "numpy" in sys.modules:  # NumPy's global generator, seeded afresh as in a new process
      sys.modules["numpy"].random.seed()
    _apply_jax_options(env, zygote_env)
    status = _main(request["args"], env, zygote_env)
  except BaseException:  # noqa: BLE001 (the forkserver's own failure: say it, status 1)
    import traceback

    traceback.print_exc()
  os._exit(status)


def _apply_jax_options(env, zygote_env):
  import jax

  for k, (kind, default) in IMPORT_TIME_JAX.items():
    if env.get(k) == zygote_env.get(k):
      continue
    value = env.get(k)
    if value is None:
      value = default
    elif kind is bool:
      value = value.lower() in _TRUE
    jax.config.update(k.lower(), value)
  # jax/__init__.py's own default, as if JAX loaded now (after alexnet_jax/__init__.py read
  # the level the user gave).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def _main(args, env, zygote_env) -> int:
  """Run args[1:] as `python` would in a fresh process; the exit status."""
  import runpy
  import types

  kind, rest = args[1], args[2:]
  main = types.ModuleType("__main__")
  main.__dict__["__builtins__"] = __builtins__
  sys.modules["__main__"] = main
  sys.orig_argv = list(args)
  # The interpreter's path after its first entry: the child's PYTHONPATH, then the rest.
  ours = _pythonpath(zygote_env.get("PYTHONPATH"))
  given = [os.path.abspath(p) for p in _pythonpath(env.get("PYTHONPATH"))]
  sys.path[1:] = given + [p for p in sys.path[1:] if p not in ours]
  status = 0
  try:
    if kind == "-m":
      sys.argv = ["-m", *rest[1:]]
      sys.path[0] = os.getcwd()
      runpy._run_module_as_main(rest[0], alter_argv=True)  # noqa: SLF001 (what -m runs)
    elif kind == "-c":
      sys.argv = ["-c", *rest[1:]]
      sys.path[0] = ""
      exec(compile(rest[0], "<string>", "exec"), main.__dict__)  # noqa: S102
    else:
      script = os.path.abspath(kind)
      sys.argv = [kind, *rest]
      sys.path[0] = os.path.dirname(os.path.realpath(script))
      main.__dict__["__file__"] = kind
      with open(script, "rb") as f:
        source = f.read()
      exec(compile(source, kind, "exec"), main.__dict__)  # noqa: S102
  except SystemExit as e:
    status = _exit_status(e.code)
  except KeyboardInterrupt:
    _finish()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
  except BaseException:  # noqa: BLE001 (as the interpreter: traceback, status 1)
    sys.excepthook(*sys.exc_info())
    status = 1
  _finish()
  return status


def _exit_status(code) -> int:
  if code is None:
    return 0
  if isinstance(code, int):
    return code
  try:
    sys.stderr.write(f"{code}\n")
  except (OSError, ValueError):
    pass
  return 1


def _finish():
  """What the interpreter does at exit before its teardown: wait for non-daemon threads, run
  the atexit handlers, flush the standard streams."""
  try:
    threading._shutdown()  # noqa: SLF001
  except BaseException:  # noqa: BLE001
    pass
  atexit._run_exitfuncs()  # noqa: SLF001
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
  _zygote()
