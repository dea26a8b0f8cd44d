"""How every `python -m alexnet_jax.COMMAND` starts: absl's app.run, with

- run bare (no argument at all): the command's short usage on stderr, exit status 2;
- --help / -h / --helpshort / --helpfull: the usage's synopsis, the command's description (its
  docstring, with the examples) and its flags on stdout, exit status 0
  (it answered what was asked), each flag's help on one line;
- a flag that does not parse, or a misspelt --config.KEY: one line and the usage, status 2;
- the end: the process exits as soon as its work is done (`exit_now`), without the
  interpreter's teardown.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import sys
import threading
from typing import Callable, NoReturn

from absl import app, flags, logging

from alexnet_jax import files

FLAGS = flags.FLAGS
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")
EXIT_USAGE = 2
HELP_HINT = "--help lists every flag."


def run(main: Callable, usage: str, *, bare_ok: bool = False) -> None:
  """app.run(main) with this module's usage rules; `usage`: a few lines with real examples.
  bare_ok: the command does something useful with no argument (it is then not a mistake)."""
  try:
    app.run(main, flags_parser=lambda argv: parse(argv, usage, bare_ok=bare_ok))
  except SystemExit as e:  # app.run ends with sys.exit(main(argv)), and so do FATAL lines
    exit_now(e.code)


def exit_now(code=0) -> NoReturn:
  """End the process as `sys.exit(code)` would, less the interpreter's teardown.

  What a command opened is closed by the command itself (train.train_and_evaluate closes
  its input stream, metrics files and checkpoint manager, the last save committed, before its
  summary). What is left is the interpreter's finalisation: a garbage collection of every
  object still alive, then the C++ runtimes' destructors (TensorFlow's, XLA's, tf.data
  iterators, whose destruction can wait for their autotuning thread's next wake-up, up to a
  minute): 3 to 81 s after demo runs on a loaded machine (docs/performance.md). So:
  the standard streams and absl's log are flushed, non-daemon threads are joined, the atexit
  handlers run (the run lock's release, jax.distributed's shutdown, as at a normal exit),
  and os._exit ends the process with the status sys.exit would give (a message: printed,
  status 1)."""
  if code is None:
    status = 0
  elif isinstance(code, int):
    status = code
  else:
    sys.stderr.write(f"{code}\n")
    status = 1
  main = threading.main_thread()
  for t in threading.enumerate():
    if t is not main and not t.daemon and t is not threading.current_thread():
      t.join()
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  logging.flush()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed or broken pipe: nothing more to write
      pass
  os._exit(status)


def parse(argv: list[str], usage: str, *, bare_ok: bool = False) -> list[str]:
  usage = usage.strip("\n") + "\n"
  head = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
  if not argv[1:] and not bare_ok:
    exit_with_usage(usage)
  for a in head:
    if a in HELP_FLAGS:
      _fold_help()
      full = a == "--helpfull"
      text = FLAGS.get_help() if full else FLAGS.main_module_help()
      more = "" if full else "\n--helpfull adds the flags of the libraries.\n"
      doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip("\n")
      # The usage's synopsis only: the docstring holds its examples (tests/test_cli.py).
      sys.stdout.write(f"{synopsis(usage)}\n{doc}\n\nflags:\n{text}\n{more}")
      sys.exit(0)
  try:
    return FLAGS(resolve_config_paths(argv))
  except flags.Error as e:
    _usage_error(_without_traceback(f"{e}"), usage)
  except (AttributeError, KeyError) as e:  # ml_collections: --config.KEY is not in the config
    _usage_error(_unknown_key(e), usage)
  raise AssertionError("unreachable")


def synopsis(usage: str) -> str:
  """The usage's first paragraph: its `usage: ...` line(s), without the examples."""
  return usage.strip("\n").split("\n\n", 1)[0] + "\n"


def exit_with_usage(usage: str) -> None:
  """What a bare command prints (stderr), with the one hint to --help; exit status 2."""
  sys.stderr.write(usage.strip("\n") + "\n\n" + HELP_HINT + "\n")
  sys.exit(EXIT_USAGE)


# ---- --config=NAME ------------------------------------------------------------------------
def shipped_configs_dir() -> str | None:
  """The directory of the configs that ship with alexnet_jax: the checkout's configs/, or the
  installed `configs` package (pip install puts it beside alexnet_jax)."""
  try:
    spec = importlib.util.find_spec("configs")
  except (ImportError, ValueError):
    return None
  for d in (spec.submodule_search_locations or []) if spec else []:
    if os.path.isfile(os.path.join(d, "default.py")):
      return d
  return None


def shipped_configs() -> list[str]:
  d = shipped_configs_dir()
  if d is None:
    return []
  return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".py") and not f.startswith("_"))


def resolve_config_paths(argv: list[str]) -> list[str]:
  """--config=demo, or a configs/demo.py that is not here (run from another directory):
  the shipped config of that name. An existing path is always taken as it is."""
  out = []
  for i, a in enumerate(argv):
    if i and a.startswith("--config="):
      a = "--config=" + resolve_config_path(a[len("--config=") :])
    out.append(a)
  return out


def resolve_config_path(value: str) -> str:
  path, sep, arg = value.partition(":")  # ml_collections: FILE:ARGUMENT
  if os.path.exists(path):
    if not os.path.isfile(path):  # a FIFO or device would block the loader: never opened
      raise flags.Error(
          f"--config={value}: {files.printable(path)} is {files.describe_kind(os.stat(path).st_mode)}, "
          "not a config file"
      )
    return value
  name = os.path.basename(path)
  name = name[:-3] if name.endswith(".py") else name
  d = shipped_configs_dir()
  if d and (path == name or os.path.dirname(path) in ("configs", "./configs")):
    candidate = os.path.join(d, f"{name}.py")
    if os.path.isfile(candidate):
      return candidate + sep + arg
  return value


def missing_config_hint() -> str:
  d = shipped_configs_dir()
  if d is None:
    return "give the path of a config file (the repository's configs/*.py)."
  return (
      f"the shipped configs are in {d}: pass one by name (--config=demo) or by path; "
      f"names: {', '.join(n for n in shipped_configs() if n != 'default')}."
  )


def _without_traceback(message: str) -> str:
  """ml_collections reports a ValueError or TypeError raised while a config file loads (its
  get_config's own check, e.g. an unknown `FILE:ARGUMENT`) with the whole traceback: the
  flag, the exception, and where in the config file it was raised."""
  marker = ": Error whilst parsing config file"
  if marker not in message or "Traceback (most recent call last)" not in message:
    return message
  flag, traceback = message.split(marker, 1)
  lines = traceback.splitlines()
  frames = [k for k, line in enumerate(lines) if line.lstrip().startswith('File "')]
  # The exception: the lines after the last frame and its indented source and ^ lines.
  rest = lines[frames[-1] + 1 :] if frames else lines
  exception = " ".join(x.strip() for x in rest if x.strip() and not x.startswith(" "))
  config_file = os.path.abspath(flag.partition("=")[2].partition(":")[0])
  at = ""
  for path, number in re.findall(r'File "([^"]+)", line (\d+)', traceback):
    if os.path.abspath(path) == config_file:
      at = f" ({path}, line {number})"
  return f"{flag}: the config file failed to load: {exception or lines[-1].strip()}{at}"


def _usage_error(message: str, usage: str):
  sys.stderr.write(f"FATAL: {message}\n\n{usage}")
  sys.exit(EXIT_USAGE)


def _unknown_key(e: Exception) -> str:
  """ml_collections' message for a --config.KEY the config lacks, as one sentence."""
  msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").strip()
  msg = msg.replace("' Did you mean", "'; did you mean").rstrip(".")
  end = "" if msg.endswith("?") else "."
  return (
      f"unknown config key in an override: {msg}{end} The keys are those of the --config "
      f"file (all of them: alexnet_jax/config_schema.py, or a run's config.json)."
  )


def _fold_help() -> None:
  """One line per flag's help: help strings written over several source lines keep their
  indentation, which absl would print as runs of spaces."""
  for flag in FLAGS._flags().values():  # pylint: disable=protected-access
    if flag.help:
      flag.help = " ".join(flag.help.split())
