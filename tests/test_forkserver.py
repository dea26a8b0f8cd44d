"""tests/forkserver.py: a forked child of the zygote runs a command as a fresh interpreter
would (its environment, working directory, streams, exit status), and falls back to a real
process where it cannot."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def _run(code, *args, **kw):
  kw.setdefault("timeout", 120)
  return forkserver.run([PY, "-c", code, *args], capture_output=True, text=True, **kw)


@pytest.fixture(autouse=True)
def _forkserver_on(monkeypatch):
  monkeypatch.delenv("FORKSERVER", raising=False)  # this file tests the fork server itself


def test_the_child_sees_its_environment_jax_options_included():
  code = (
      "import os, jax, jax.numpy as jnp; "
      "print(jnp.zeros(1).dtype, len(jax.devices()), os.environ.get('FORKSERVER_TEST'))"
  )
  env = dict(os.environ, JAX_ENABLE_X64="1", FORKSERVER_TEST="given")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
  assert forkserver.forkable([PY, "-c", code], env)
  r = _run(code, env=env)
  assert (r.returncode, r.stdout, r.stderr) == (0, "float64 3 given\n", "")
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "FORKSERVER_TEST")}
  r = _run(code, env=env)  # the next child: the zygote's own (unset) options again
  assert (r.returncode, r.stdout) == (0, "float32 8 None\n"), r.stderr


def test_exit_statuses_and_separate_streams():
  r = _run("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
  assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
  r = _run("raise ValueError('planted')")
  assert r.returncode == 1 and r.stdout == ""
  assert "Traceback (most recent call last)" in r.stderr
  assert r.stderr.rstrip().endswith("ValueError: planted")
  r = _run("import os, sys; sys.stdout.write('flushed? '); sys.stdout.flush(); os._exit(5)")
  assert (r.returncode, r.stdout) == (5, "flushed? ")
  r = _run("import sys; sys.exit('a message')")
  assert (r.returncode, r.stderr) == (1, "a message\n")
  r = _run("import atexit; atexit.register(print, 'at exit')")
  assert (r.returncode, r.stdout) == (0, "at exit\n")
  r = _run("import sys; print(sys.argv, sys.stdin.read())", "a", "b", input="typed")
  assert r.stdout == "['-c', 'a', 'b'] typed\n"


def test_the_timeout_kills_the_child_and_what_it_started(tmp_path):
  code = (
      "import subprocess, sys, time; "
      "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
      "print(p.pid, flush=True); time.sleep(300)"
  )
  start = time.monotonic()
  with pytest.raises(subprocess.TimeoutExpired) as e:
    _run(code, timeout=3)
  assert time.monotonic() - start < 60
  grandchild = int(e.value.output.split()[0])
  for _ in range(100):  # the kill reaches it at once; its parent (init) reaps it
    try:
      os.kill(grandchild, 0)
    except ProcessLookupError:
      break
    time.sleep(0.1)
  else:
    raise AssertionError(f"process {grandchild} outlived the timeout")
  assert _run("print('next')").stdout == "next\n"  # the zygote serves on


def test_cwd_module_path_and_merged_stderr(tmp_path):
  (tmp_path / "planted_module.py").write_text(
      "import os, sys\nprint(os.getcwd(), __name__, sys.argv[1:])\n"
      "print('warn', file=sys.stderr)\n"
  )
  r = forkserver.run(
      [PY, "-m", "planted_module", "x"],
      cwd=tmp_path,
      stderr=subprocess.STDOUT,
      text=True,
      timeout=120,
  )
  assert (r.returncode, r.stdout) == (0, f"{tmp_path} __main__ ['x']\nwarn\n")


def test_a_command_gives_the_same_output_forked_and_in_a_fresh_process(tmp_path):
  # The trainer loads the library, TensorFlow, JAX, Flax, Orbax and the input modules before it
  # finds that 8 devices make no mesh of 3 (what a library prints as it loads: seen both ways).
  args = [PY, "-m", "alexnet_jax.main", "--config=demo", f"--workdir={tmp_path}"]
  args += ["--config.mesh.data=3"]
  forked = forkserver.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
  fresh = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)

  # absl's log lines without their time and thread number, which no two processes share.
  def same(text):
    return re.sub(r"^([IWEF])\d{4} [\d:.]+ +\d+ ", r"\1 ", text, flags=re.M)

  assert (forked.returncode, forked.stdout, same(forked.stderr)) == (
      fresh.returncode,
      fresh.stdout,
      same(fresh.stderr),
  )
  assert "main.py" in same(fresh.stderr)  # a log line was compared
  assert fresh.returncode == 1
  assert fresh.stderr.splitlines()[-1].startswith("FATAL: mesh data=3 x tower=1 does not match")


def test_pythonpath_comes_first_and_a_stand_in_for_a_preloaded_package_runs_fresh(tmp_path):
  (tmp_path / "planted_module.py").write_text("WHERE = 'planted'\n")
  env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
  code = "import sys, planted_module; print(planted_module.WHERE, sys.path[1:3])"
  assert forkserver.forkable([PY, "-c", code], env)
  r = _run(code, env=env, cwd="/")
  assert (r.returncode, r.stdout) == (0, f"planted {[str(tmp_path), REPO]}\n"), r.stderr
  (tmp_path / "optax").mkdir()  # a package the zygote loaded: the child would use the wrong one
  (tmp_path / "optax" / "__init__.py").write_text("WHERE = 'stand-in'\n")
  assert not forkserver.forkable([PY, "-c", code], env)
  r = _run("import optax; print(optax.WHERE)", env=env, cwd="/")
  assert (r.returncode, r.stdout) == (0, "stand-in\n"), r.stderr


def test_what_the_zygote_cannot_mimic_runs_a_real_process():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", PYTHONHASHSEED="7")
  assert not forkserver.forkable([PY, "-c", "pass"], env)
  assert not forkserver.forkable([PY, "-u", "-c", "pass"])
  assert not forkserver.forkable([PY, "-c", "pass"], dict(os.environ, JAX_DEBUG_NANS="1"))
  r = _run("import os; print(os.environ['PYTHONHASHSEED'], hash('a') == hash('a'))", env=env)
  assert (r.returncode, r.stdout) == (0, "7 True\n")


def test_popen_children_overlap_and_take_signals(tmp_path):
  go = tmp_path / "go"
  code = (
      "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\nprint('went')"
  )
  waiter = forkserver.popen(
      [PY, "-c", code, str(go)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  assert not isinstance(waiter, subprocess.Popen) and waiter.poll() is None
  assert _run("print('meanwhile')").stdout == "meanwhile\n"  # a second child beside it
  with pytest.raises(subprocess.TimeoutExpired):
    waiter.wait(timeout=0.5)
  go.touch()
  assert waiter.communicate(timeout=60) == ("went\n", None) and waiter.returncode == 0
  with open(tmp_path / "log", "w") as log:
    code = "import time; print('up', flush=True); time.sleep(300)"
    sleeper = forkserver.popen([PY, "-c", code], stdout=log)
    deadline = time.monotonic() + 60
    while (tmp_path / "log").read_text() != "up\n":
      assert time.monotonic() < deadline and sleeper.poll() is None
      time.sleep(0.05)
    sleeper.kill()
    assert sleeper.wait(timeout=60) == -signal.SIGKILL
