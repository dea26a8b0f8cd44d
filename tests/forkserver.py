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
- XLA_FLAGS and the rest are read when a backend starts, in the child: as in a fresh process.
Without fork, or when the zygote cannot start or dies, every call is a real subprocess.run:
the tests never depend on the trick for their outcome. Tests whose point is the fresh
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
import signal
import subprocess
import sys
import tempfile
import threading

# What the zygote loads: what the commands import from outside the package (not torch,
# keras or h5py, which the package loads only when asked: tests/test_imports.py DEFERRABLE).
PRELOAD = (
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
  server = _server()
  if server is None or not server.alive() or not _forkable(args, env, server.env, server.loaded):
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
  server = _server()
  env = dict(os.environ if env is None else env)
  return (
      server is not None
      and server.alive()
      and _forkable(list(map(os.fspath, args)), env, server.env, server.loaded)
  )


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
      stdin=None if input is not None else subprocess.DEVNULL,
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


def _forkable(args, env, zygote_env, loaded) -> bool:
  if len(args) < 2 or args[0] != sys.executable:
    return False
  if args[1] in ("-m", "-c"):
    if len(args) < 3:
      return False
  elif args[1].startswith("-") or not args[1].endswith(".py"):
    return False
  for k in set(env) | set(zygote_env):
    if env.get(k) == zygote_env.get(k):
      continue
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
  """The zygote, as seen from the test process: its pipes and the environment it started
  with. Calls are serialised (one child at a time)."""

  def __init__(self):
    self.env = dict(os.environ)
    self.lock = threading.Lock()
    self.proc = subprocess.Popen(
        [sys.executable, _HERE, "--zygote"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=self.env,
        cwd="/",
    )
    self.ready = None  # set by the first call: the zygote's "ready" line read
    self.loaded = set()  # the top-level packages the zygote loaded

  def _line(self, timeout):
    """The zygote's next message (a dict), or None on timeout; EOFError if it died."""
    fd = self.proc.stdout.fileno()
    if timeout is not None:
      ready, _, _ = select.select([fd], [], [], max(timeout, 0))
      if not ready:
        return None
    line = self.proc.stdout.readline()
    if not line:
      raise EOFError
    return json.loads(line)

  def alive(self) -> bool:
    if self.ready is None:
      try:
        msg = self._line(600)
        self.ready = msg is not None and msg.get("ready") is True
        self.loaded = set(msg["loaded"]) if self.ready else set()
      except (EOFError, ValueError, TypeError, KeyError):
        self.ready = False
    return self.ready and self.proc.poll() is None

  def run(self, args, cwd, env, timeout, input, text, merge):  # noqa: A002
    with self.lock, tempfile.TemporaryDirectory(prefix="forkserver_") as tmp:
      if not self.alive():
        return None
      paths = {k: os.path.join(tmp, k) for k in ("in", "out", "err")}
      if input is not None:
        with open(paths["in"], "wb") as f:
          f.write(input.encode() if isinstance(input, str) else input)
      request = {
          "args": args,
          "cwd": cwd,
          "env": env,
          "stdin": paths["in"] if input is not None else os.devnull,
          "stdout": paths["out"],
          "stderr": paths["out"] if merge else paths["err"],
      }
      try:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        pid = self._line(60)["pid"]
        msg = self._line(timeout)
        if msg is None:  # past the timeout: the child and what it started, killed
          for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, 9)):
            try:
              target()
            except OSError:
              pass
          self._line(60)
          out, err = _read(paths["out"], text), _read(paths["err"], text)
          raise subprocess.TimeoutExpired(args, timeout, output=out, stderr=err)
      except (EOFError, OSError, TypeError, ValueError):
        self.ready = False
        return None
      out = _read(paths["out"], text)
      err = None if merge else _read(paths["err"], text)
      return subprocess.CompletedProcess(args, msg["status"], out, err)

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


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
  """This process's zygote, started at the first call; None without os.fork."""
  global _SERVER, _SERVER_PID
  if not hasattr(os, "fork"):
    return None
  if _SERVER is None or _SERVER_PID != os.getpid():
    _SERVER, _SERVER_PID = _Server(), os.getpid()
    atexit.register(_SERVER.close)
  return _SERVER


# The zygote: runs as `python tests/forkserver.py --zygote`.


def _zygote():
  import gc
  import importlib

  protocol_in, protocol_out = os.dup(0), os.dup(1)
  null = os.open(os.devnull, os.O_RDWR)
  os.dup2(null, 0)
  os.dup2(null, 1)
  os.close(null)
  zygote_env = dict(os.environ)
  for name in PRELOAD:
    try:
      importlib.import_module(name)
    except ImportError:
      pass
  gc.collect()
  gc.freeze()  # the preloaded objects stay shared with the children (no copy on write)
  reader = os.fdopen(protocol_in, "rb")
  writer = os.fdopen(protocol_out, "wb", buffering=0)
  loaded = sorted({m.split(".")[0] for m in sys.modules})
  writer.write(json.dumps({"ready": True, "loaded": loaded}).encode() + b"\n")
  for line in reader:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      reader.close()
      writer.close()
      _child(request, zygote_env)  # never returns
    try:
      os.setpgid(pid, pid)
    except OSError:  # the child did it first
      pass
    writer.write(json.dumps({"pid": pid}).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    writer.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


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
