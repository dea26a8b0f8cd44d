"""Process setup shared by the entry points: huge pages for malloc, keep TensorFlow off
accelerators, and start jax.distributed when the run has several processes
(alexnet_jax/distributed.py)."""
import os
import platform
import sys


def _quiet_library_logs():
  """Orbax logs a dozen INFO lines per checkpoint through absl; keep its warnings only, so
  the run's own lines (step, loss, ETA) stay readable."""
  import logging
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= logging.WARNING or "/orbax/" not in r.pathname)


def setup(distributed=None):
  """Call first, before anything touches JAX devices.

  distributed: a `distributed.Options` (alexnet_jax.main passes its flags) to join a
  multi-process run when the flags or the environment ask for one; None: single process.
  Returns the multi-process plan, or None.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _quiet_library_logs()
  import tensorflow as tf
  # tf.data runs on the host; TF must not reserve GPU/TPU memory that JAX needs.
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None
  if distributed is None:
    return None
  from alexnet_jax import distributed as distributed_lib
  return distributed_lib.initialize(distributed)


# jaxlib 0.10.2's XLA:CPU hands convolutions to YNNPACK fusions; their weight-gradient
# convolutions ran at 11-27 GFLOP/s on a 2-core x86 CPU against 75-105 for XLA's own (Eigen)
# code: a 2.5x slower step (docs/performance.md #1). ALEXNET_JAX_YNN_CONVS=1 keeps jaxlib's
# default (the benchmark uses it to measure the difference).
_CPU_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options() -> dict | None:
  """`jax.jit(..., compiler_options=...)` for the train and eval steps on this backend."""
  import jax
  if (jax.default_backend() != "cpu" or os.environ.get("ALEXNET_JAX_YNN_CONVS") == "1"
      or "ynn_fusion_type" in os.environ.get("XLA_FLAGS", "")):
    return None
  return dict(_CPU_CONV_OPTIONS)


# XLA:CPU maps each step's temporary buffer (1.6 GB for the paper's net at batch 128) fresh
# with mmap and unmaps it after: 403k page faults a step with 4 KiB pages, 0.7 s of the
# kernel's time, and steps that ran 10-25% slower at random. glibc (>= 2.35) asks for
# transparent huge pages on its mmaps with this tunable, read once at process start
# (docs/performance.md run K).
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_mode(path: str = _THP_ENABLED) -> str | None:
  """The kernel's transparent-huge-page mode (the bracketed word), None without THP."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def huge_page_environ(environ, thp_mode, libc) -> dict | None:
  """The environment to restart this process with so that malloc's large blocks get
  transparent huge pages; None when that is already so or cannot be.

  environ: os.environ; thp_mode: _thp_mode(); libc: platform.libc_ver().
  ALEXNET_JAX_HUGE_PAGES=0 opts out.
  """
  # "0": opted out; "restarted": this is the restarted process (where glibc ignores
  # GLIBC_TUNABLES, e.g. a setuid interpreter, the tunable check alone would loop).
  if environ.get("ALEXNET_JAX_HUGE_PAGES") in ("0", "restarted"):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None  # set already (or chosen otherwise by the user): also ends the restart
  name, version = libc
  try:
    new_enough = tuple(int(v) for v in version.split(".")[:2]) >= (2, 35)
  except ValueError:
    new_enough = False
  # "always" gives huge pages without asking; "never" (or no THP) refuses them.
  if name != "glibc" or not new_enough or thp_mode != "madvise":
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGE_TUNABLE}" if tunables else HUGE_PAGE_TUNABLE
  env["ALEXNET_JAX_HUGE_PAGES"] = "restarted"
  return env


def restart_with_huge_pages():
  """The entry points' `__main__` blocks call this first: restarts the interpreter on the
  same command line (same pid) with HUGE_PAGE_TUNABLE when huge_page_environ() says so;
  else, or if the restart fails, returns and the run goes on with 4 KiB pages."""
  env = huge_page_environ(os.environ, _thp_mode(), platform.libc_ver())
  if env is None:
    return
  for stream in (sys.stdout, sys.stderr):
    if stream is not None:
      stream.flush()
  try:
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
  except OSError as e:
    print(f"alexnet_jax: could not restart with {HUGE_PAGE_TUNABLE} ({e}); going on "
          f"without huge pages", file=sys.stderr)
