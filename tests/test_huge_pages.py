"""huge_pages.restart_if_requested: when it restarts (only when asked), and that malloc then
gets huge pages."""

import glob
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from alexnet_jax import huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = ("glibc", "2.36")


def test_huge_page_environ_adds_the_tunable_only_where_it_can_work():
  asked = {"ALEXNET_JAX_HUGE_PAGES": "1"}
  env = huge_pages.huge_page_environ({"PATH": "/bin", **asked}, "madvise", GLIBC)
  assert env == {
      "PATH": "/bin",
      "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
      "ALEXNET_JAX_HUGE_PAGES": "restarted",
  }
  # Opt-in: unset or anything but "1" never restarts.
  assert huge_pages.huge_page_environ({"PATH": "/bin"}, "madvise", GLIBC) is None
  assert huge_pages.huge_page_environ({"ALEXNET_JAX_HUGE_PAGES": "0"}, "madvise", GLIBC) is None
  # The restarted process never restarts again, even where glibc drops GLIBC_TUNABLES.
  assert (
      huge_pages.huge_page_environ({"ALEXNET_JAX_HUGE_PAGES": "restarted"}, "madvise", GLIBC)
      is None
  )
  # Other tunables are kept, appended to with glibc's ":" separator.
  env = huge_pages.huge_page_environ(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", **asked}, "madvise", GLIBC
  )
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  # Nothing to do: already set (this also ends the restart), THP given without asking or
  # refused, a glibc without the tunable (2.35+), or another libc.
  assert (
      huge_pages.huge_page_environ(
          {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", **asked}, "madvise", GLIBC
      )
      is None
  )
  for mode in ("always", "never", None):
    assert huge_pages.huge_page_environ(asked, mode, GLIBC) is None
  assert huge_pages.huge_page_environ(asked, "madvise", ("glibc", "2.31")) is None
  assert huge_pages.huge_page_environ(asked, "madvise", ("glibc", "2.35")) is not None
  assert huge_pages.huge_page_environ(asked, "madvise", ("", "")) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert huge_pages._thp_mode(str(path)) == "madvise"
  assert huge_pages._thp_mode(str(tmp_path / "missing")) is None


# Restarts itself, then mallocs and touches 256 MiB (glibc serves that with mmap, as it does
# XLA:CPU's buffers; not NumPy, which asks for huge pages itself) and counts the page faults.
CHILD = textwrap.dedent("""
    import ctypes, json, os, resource, sys
    from alexnet_jax import huge_pages
    huge_pages.restart_if_requested()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(libc.malloc(256 * 2**20), 1, 256 * 2**20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "faults": faults,
                      "tunables": os.environ.get("GLIBC_TUNABLES", "")}))
""")


@pytest.mark.skipif(
    huge_pages.huge_page_environ(
        {"ALEXNET_JAX_HUGE_PAGES": "1"}, huge_pages._thp_mode(), platform.libc_ver()
    )
    is None,
    reason="needs glibc >= 2.35 and transparent huge pages in madvise mode",
)
def test_restart_gives_mallocs_blocks_huge_pages(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  env = {
      k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ALEXNET_JAX_HUGE_PAGES")
  }
  env["PYTHONPATH"] = REPO
  pages = 256 * 2**20 // 4096  # one fault per 4 KiB page without huge pages

  env["ALEXNET_JAX_HUGE_PAGES"] = "1"
  # Real processes: the restart's execve, its pid and the page faults of a fresh start.
  proc = subprocess.Popen(
      [sys.executable, str(script), "--flag=1", "x"], env=env, stdout=subprocess.PIPE, text=True
  )
  out = json.loads(proc.communicate(timeout=120)[0].strip().splitlines()[-1])
  assert out["pid"] == proc.pid  # restarted in place: a launcher's pid stays valid
  assert out["argv"] == ["--flag=1", "x"]
  assert out["tunables"] == "glibc.malloc.hugetlb=1"
  # 2 MiB pages: ~128 faults (640 measured), not 65536; room for some 4 KiB fallback.
  assert out["faults"] < pages / 4, out

  del env["ALEXNET_JAX_HUGE_PAGES"]  # the default: no restart
  out = json.loads(
      subprocess.run(
          [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
      )
      .stdout.strip()
      .splitlines()[-1]
  )
  assert out["tunables"] == ""
  if not _some_thp_size_always():
    assert out["faults"] > 0.9 * pages, out


def _some_thp_size_always() -> bool:
  """Multi-size THP (Linux 6.8+) set to 'always' for some size would give the opt-out
  run large pages without asking."""
  return any(
      huge_pages._thp_mode(p) == "always"
      for p in glob.glob("/sys/kernel/mm/transparent_hugepage/hugepages-*/enabled")
  )
