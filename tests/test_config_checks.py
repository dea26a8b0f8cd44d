"""Impossible configs and changed configs on resume, through the real command line: one line
naming the key, before any device work, and nothing already written is touched."""

import json
import os
import sys

import pytest

from alexnet_jax import config_checks
from configs import demo
from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*flags, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, "-m", "alexnet_jax.main", *flags]
  # A forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py).
  return forkserver.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _fatal_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("FATAL")]


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("--config.batch_size=0", "config.batch_size=0", "positive integer"),
        ("--config.batch_size=-8", "config.batch_size=-8", "positive integer"),
        ("--config.optimizer.learning_rate=-0.01", "optimizer.learning_rate=-0.01", "> 0"),
        ("--config.eval_crops=3", "config.eval_crops=3", "1 (center crop) or 10"),
        ("--config.model.width=0", "config.model.width=0", "> 0"),
        ("--config.model.initializer=xavier", "model.initializer='xavier'", "'paper', 'he'"),
        ("--config.optimizer.schedule=cosine", "schedule='cosine'", "'plateau', 'step'"),
        ("--config.input.channel_order=grb", "config.input.channel_order='grb'", "'rgb', 'bgr'"),
        ("--config.model.variant=vgg", "config.model.variant='vgg'", "'paper', 'one_gpu'"),
    ],
)
def test_impossible_value_is_one_line_naming_the_key_before_any_device_work(
    tmp_path, override, key, allowed
):
  workdir = tmp_path / "w"
  r = _main("--config=configs/demo.py", f"--workdir={workdir}", override)
  assert r.returncode == 1, r.stderr[-2000:]
  lines = _fatal_lines(r.stderr)
  assert len(lines) == 1 and key in lines[0] and allowed in lines[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  # Nothing was started or written: no config.json, no checkpoints, no TensorFlow/JAX logs.
  assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()


def test_workdir_that_is_a_file_or_cannot_be_written(tmp_path):
  afile = tmp_path / "notes.txt"
  afile.write_text("mine")
  r = _main("--config=configs/demo.py", f"--workdir={afile}")
  assert r.returncode == 1 and "is a file, not a directory" in r.stderr, r.stderr[-2000:]
  assert afile.read_text() == "mine"
  # /proc refuses new directories even to root: a real unwritable place.
  r = _main("--config=configs/demo.py", "--workdir=/proc/alexnet_jax_run")
  lines = _fatal_lines(r.stderr)
  assert r.returncode == 1 and len(lines) == 1 and "cannot be written" in lines[0], r.stderr


def test_missing_config_file_is_one_line(tmp_path):
  r = _main("--config=configs/no_such_config.py", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 1
  lines = _fatal_lines(r.stderr)
  assert len(lines) == 1 and "no_such_config.py" in lines[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr


def _recorded_run(workdir, **overrides):
  """A workdir as a run leaves it: config.json and a finished checkpoint step."""
  config = demo.get_config()
  for k, v in overrides.items():
    config[k] = v
  os.makedirs(workdir / "checkpoints" / "2")
  config_checks.record(config, str(workdir), {})
  return config


def test_resume_refuses_shape_and_data_changes_naming_them_and_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  _recorded_run(workdir)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  r = _main(
      "--config=configs/demo.py",
      f"--workdir={workdir}",
      "--config.batch_size=64",
      "--config.dataset.name=folder:/data/other",
      "--config.model.width=0.5",
      "--config.num_train_steps=500",  # safe: not named
  )
  assert r.returncode == 1, r.stderr[-2000:]
  (line,) = _fatal_lines(r.stderr)
  for key in ("batch_size (32 -> 64)", "dataset.name ('digits' -> 'folder:/data/other')"):
    assert key in line, line
  assert "model.width (0.25 -> 0.5)" in line and "num_train_steps (" not in line
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def test_resume_change_that_alters_training_needs_allow_config_change():
  config = demo.get_config()
  config.optimizer.learning_rate = 0.02
  with pytest.raises(config_checks.ConfigError, match="--allow_config_change=optimizer"):
    _check_against_recorded(config)
  changes = _check_against_recorded(config, allow=["optimizer.learning_rate"])
  assert changes == {"optimizer.learning_rate": (0.001, 0.02)}
  config.seed = 1  # never, whatever is allowed
  with pytest.raises(config_checks.ConfigError, match=r"seed \(0 -> 1\)"):
    _check_against_recorded(config, allow=["optimizer.learning_rate", "seed"])


def _check_against_recorded(config, allow=()):
  import tempfile
  from pathlib import Path

  with tempfile.TemporaryDirectory() as d:
    _recorded_run(Path(d) / "w")
    return config_checks.resume_changes(config, os.path.join(d, "w"), allow)


def test_safe_changes_are_accepted_and_recorded_in_the_history(tmp_path):
  workdir = tmp_path / "w"
  _recorded_run(workdir)
  config = demo.get_config()
  config.num_train_steps = 500
  config.eval_crops = 10
  config.mesh.tower = 2
  changes = config_checks.resume_changes(config, str(workdir))
  assert changes == {
      "eval_crops": (1, 10),
      "mesh.tower": (1, 2),
      "num_train_steps": (64, 500),
  }
  config_checks.record(config, str(workdir), changes)
  assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 500
  history = [json.loads(x) for x in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert [h["event"] for h in history] == ["created", "resumed with changes"]
  assert history[1]["changes"]["num_train_steps"] == {"from": 64, "to": 500}
  # Without checkpoints there is nothing to resume: any change is accepted.
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  config_checks.record(demo.get_config(), str(fresh), {})
  config.model.width = 0.5
  assert "model.width" in config_checks.resume_changes(config, str(fresh))


def test_every_shipped_config_is_valid():
  from configs import ablations, caffe, default, paper, pytorch_grouped, torchvision

  for module in (default, demo, paper, ablations, torchvision, caffe, pytorch_grouped):
    assert config_checks.problems(module.get_config()) == [], module.__name__
