"""Opt-in: restart an entry point so that malloc's large blocks get transparent huge pages.

XLA:CPU maps each step's temporary buffers (1.6 GB for the paper's net at batch 128) fresh
with mmap and unmaps them after. With 4 KiB pages that is about 400k page faults a step; with
huge pages about 2k, and the CPU step is about 9% faster on a 2-core x86 VM
(docs/performance.md#huge-pages-opt-in). glibc (>= 2.35) asks for transparent huge pages on its mmaps when
started with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, read once at process start, hence the
restart. It is off unless asked for, because it replaces the process (debuggers and
profilers see an execve) and it was never measured on accelerator hosts:

  ALEXNET_JAX_HUGE_PAGES=1 python -m alexnet_jax.main ...

launch/local_devices.sh and launch/multiprocess_local.sh (CPU hosts) set it by default.
"""

import os
import platform
import sys

ENV = "ALEXNET_JAX_HUGE_PAGES"
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_mode(path: str = _THP_ENABLED) -> str | None:
  """The kernel's transparent-huge-page mode (the bracketed word), None without THP."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.index("[") + 1 : text.index("]")] if "[" in text else None


def huge_page_environ(environ, thp_mode, libc) -> dict | None:
  """The environment to restart this process with so that malloc's large blocks get
  transparent huge pages; None when that is already so or cannot be.

  environ: os.environ; thp_mode: _thp_mode(); libc: platform.libc_ver().
  Only ALEXNET_JAX_HUGE_PAGES=1 asks for it.
  """
  # "restarted" marks the restarted process: where glibc ignores GLIBC_TUNABLES (e.g. a
  # setuid interpreter), the tunable check alone would restart forever.
  if environ.get(ENV) != "1":
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
  env[ENV] = "restarted"
  return env


def restart_if_requested():
  """The entry points' `__main__` blocks call this first (never on import, so a notebook's
  process is never replaced): restarts the interpreter on the same command line (same pid)
  with HUGE_PAGE_TUNABLE when huge_page_environ() says so; else, or if the restart fails,
  returns and the run goes on with 4 KiB pages."""
  env = huge_page_environ(os.environ, _thp_mode(), platform.libc_ver())
  if env is None:
    return
  for stream in (sys.stdout, sys.stderr):
    if stream is not None:
      stream.flush()
  try:
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
  except OSError as e:
    print(
        f"alexnet_jax: could not restart with {HUGE_PAGE_TUNABLE} ({e}); going on "
        f"without huge pages",
        file=sys.stderr,
    )
