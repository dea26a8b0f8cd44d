"""The train/eval steps, checkpoints and the command line against independent references."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import (
    augment,
    checkpoint,
    evaluation,
    facts,
    sharding,
    train,
    train_state,
    train_step,
)
from alexnet_jax.input_spec import InputSpec
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mesh(data, tower):
  return sharding.make_mesh(data, tower, devices=jax.devices()[: data * tower])


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "image": rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, (n,), dtype=np.int32),
  }


def _inputs(config):
  """A random mean image and lighting basis: (InputSpec, augment.Lighting)."""
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  stats = types.SimpleNamespace(mean_image=rng.uniform(0, 255, (256, 256, 3)))
  lighting = augment.Lighting(
      jnp.asarray([0.2, 0.02, 0.005], jnp.float32), jnp.asarray(q, jnp.float32)
  )
  return InputSpec.from_config(config, stats), lighting


def _two_steps(config, mesh):
  """(initial state, state after two steps, their metrics), fetched to the host."""
  model = train_state.create_model(config, 10)
  state = train_state.create_train_state(config, model, mesh)
  init = jax.device_get(state)  # before the step donates it
  step = train_step.make_train_step(config, model, mesh, steps_per_epoch=10)
  spec, lighting = jax.device_put(_inputs(config), sharding.replicated(mesh))
  for i in range(2):
    state, metrics = step(state, evaluation.global_batch(mesh, _batch(seed=i)), spec, lighting)
  return init, jax.device_get(state), jax.device_get(metrics)


@pytest.mark.slow
def test_train_step_on_a_2x2_mesh_equals_the_single_device_step():
  config = tiny.config(**{"model.dropout_rate": 0.5})  # He init: well-scaled gradients
  init, want_state, want_m = _two_steps(config, _mesh(1, 1))
  _, got_state, got_m = _two_steps(config, _mesh(2, 2))
  assert int(got_state.step) == 2
  for k in ("loss", "top1_error", "learning_rate", "grad_norm"):
    assert got_m[k] == pytest.approx(want_m[k], rel=1e-5), k
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want_state.params))
  for path, leaf in jax.tree_util.tree_leaves_with_path(got_state.params):
    assert _rel(leaf, flat_want[path]) < 1e-5, jax.tree_util.keystr(path)
  # The step really trains: parameters moved, and the velocity holds the last update.
  assert _rel(got_state.params["fc8"]["kernel"], init.params["fc8"]["kernel"]) > 1e-4


def _save_run(workdir, config, state, step, num_classes=10):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, facts.CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort())
  manager = checkpoint.CheckpointManager(workdir, config)
  manager.save(
      step, state, {"top1_error": 0.5, "top5_error": 0.1}, meta={"num_classes": num_classes}
  )
  manager.wait()
  manager.close()


@pytest.mark.slow
def test_restore_on_one_device_returns_what_a_4x2_mesh_saved(tmp_path):
  config = tiny.config(**{"mesh.data": 4, "mesh.tower": 2})
  mesh = _mesh(4, 2)
  model = train_state.create_model(config, 10)
  state = train_state.create_train_state(config, model, mesh, jax.random.key(7))
  assert len(state.params["fc6"]["kernel"].sharding.device_set) == 8
  _save_run(str(tmp_path), config, state, 3)
  restored_config, variables = checkpoint.restore(str(tmp_path))
  assert restored_config.model.width == 0.125
  want = jax.device_get(state.params)
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]):
    assert len(leaf.sharding.device_set) == 1
    np.testing.assert_array_equal(
        np.asarray(leaf), dict(jax.tree_util.tree_leaves_with_path(want))[path]
    )
  # The notebook can run the model on what it restored (jitted: one compile, not one per
  # operation).
  logits = jax.jit(train_state.create_model(restored_config, 10).apply)(
      variables, jnp.zeros((1, 224, 224, 3))
  )
  assert logits.shape == (1, 10) and np.all(np.isfinite(logits))


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_half_written_checkpoint_is_ignored_with_a_warning(tmp_path, caplog):
  config = tiny.config()
  mesh = _mesh(1, 1)
  model = train_state.create_model(config, 10)
  state = train_state.create_train_state(config, model, mesh)
  _save_run(str(tmp_path), config, state, 2)
  # A save killed half-way leaves Orbax's temporary directory with partial contents.
  partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "d").write_bytes(b"\x00" * 10)
  with caplog.at_level(logging.WARNING):
    manager = checkpoint.CheckpointManager(str(tmp_path), config)
  assert manager.latest_step() == 2
  assert any(
      "4.orbax-checkpoint-tmp-1234" in r.getMessage()
      and "not a complete checkpoint" in r.getMessage()
      for r in caplog.records
  )
  abstract = train_state.abstract_state(config, model)
  restored = manager.restore(abstract, train_state.state_shardings(mesh, abstract))
  np.testing.assert_array_equal(
      np.asarray(restored.params["conv1"]["kernel"]), np.asarray(state.params["conv1"]["kernel"])
  )


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
  """(config, workdir, what it returned) of an uninterrupted 4-step run (evaluated and saved
  at 2 and 4): trained once, copied by the tests that rerun or resume it."""
  config = tiny.config(num_train_steps=4, **{"mesh.data": -1})
  workdir = tmp_path_factory.mktemp("four_steps")
  return config, workdir, train.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(four_steps, tmp_path):
  """The finished 4-step run (four_steps, copied) resumed with a learning rate that explodes
  it: the run stops naming its last good checkpoint, and every checkpoint holds finite
  parameters, step 4's untouched."""
  good, run, _ = four_steps
  shutil.copytree(run, tmp_path / "run")
  workdir = str(tmp_path / "run")
  mesh = _mesh(8, 1)
  model = train_state.create_model(good, 10)
  abstract = train_state.abstract_state(good, model)
  manager = checkpoint.CheckpointManager(workdir, good)
  assert manager.latest_step() == 4
  before = manager.restore(abstract, train_state.state_shardings(mesh, abstract), 4)
  bad = tiny.config(
      num_train_steps=12,
      checkpoint_every_steps=1,
      eval_every_steps=100,
      **{"mesh.data": -1, "optimizer.learning_rate": 1e12},
  )
  with pytest.raises(
      train.NonFiniteLossError, match=r"non-finite.*last good checkpoint in .* is step"
  ):
    train.train_and_evaluate(bad, workdir)
  manager = checkpoint.CheckpointManager(workdir, good)
  steps = manager.all_steps()
  assert 4 in steps and max(steps) < 12
  for s in steps:  # every checkpoint that was written holds finite parameters
    st = manager.restore(abstract, train_state.state_shardings(mesh, abstract), s)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(st.params))
  again = manager.restore(abstract, train_state.state_shardings(mesh, abstract), 4)
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # untouched


@pytest.mark.slow
def test_rerunning_a_finished_run_appends_nothing(four_steps, tmp_path):
  config, run, first = four_steps
  shutil.copytree(run, tmp_path / "run")
  workdir = tmp_path / "run"
  metrics = (workdir / "metrics.jsonl").read_text()
  events = sorted(p.name for p in (workdir / "tensorboard").iterdir())
  again = train.train_and_evaluate(config, str(workdir))
  assert (workdir / "metrics.jsonl").read_text() == metrics
  rows = [json.loads(line) for line in metrics.splitlines()]
  assert [r["step"] for r in rows if r["split"] == "eval"] == [2, 4]
  assert sorted(p.name for p in (workdir / "tensorboard").iterdir()) == events
  # The final evaluation is the one the last checkpoint recorded, not a re-run.
  assert again == first
  # run_dir names everything the run wrote (config.json: main.py writes it).
  wrote = set(os.listdir(workdir))
  assert set(facts.FILES) <= wrote <= set(facts.TRAINING_NAMES) - {facts.CONFIG_FILE}


@pytest.mark.slow
def test_resume_drops_the_rows_logged_past_the_restored_step(four_steps, tmp_path):
  """A kill after step 4 was logged but before it was saved (here: its checkpoint removed,
  and half a row appended): the rerun restores step 2 and metrics.jsonl and TensorBoard
  end with one row per (step, split), the uninterrupted run's losses."""
  config, run, _ = four_steps
  full = [json.loads(line) for line in open(run / "metrics.jsonl")]
  shutil.copytree(run, tmp_path / "run")
  workdir = tmp_path / "run"
  shutil.rmtree(workdir / facts.CHECKPOINT_DIR / "4")
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "split": "tra')  # cut mid-write
  train.train_and_evaluate(config, str(workdir))
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  keys = [(r["step"], r["split"]) for r in rows]
  assert sorted(keys) == sorted((r["step"], r["split"]) for r in full)
  assert len(set(keys)) == len(keys) == 6  # train 1-4, eval 2 and 4
  assert {(r["step"], r["split"]): r["loss"] for r in rows} == {
      (r["step"], r["split"]): r["loss"] for r in full
  }
  seen = []
  for path in (workdir / facts.TENSORBOARD_DIR).iterdir():
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      seen += [(v.tag, event.step) for v in event.summary.value]
  assert sorted(seen) == sorted(set(seen))  # each scalar once per step
  assert {s for tag, s in seen if tag == "train/loss"} == {1, 2, 3, 4}


def _clock(ticks, **kw):
  """A reporting.TrainClock whose perf_counter returns `ticks` in turn (then the last)."""
  from alexnet_jax import reporting

  it = iter(ticks)
  last = [0.0]

  def now():
    last[0] = next(it, last[0])
    return last[0]

  return reporting.TrainClock(
      batch_size=8, clock=now, wall=lambda: 1e9 + last[0], **{"eval_every": 10, **kw}
  )


def test_non_finite_loss_names_the_step_where_it_happened(tmp_path):
  """A window of steps 7..10 (resumed runs included) whose second loss is NaN: step 8."""
  run = types.SimpleNamespace(
      manager=types.SimpleNamespace(latest_step=lambda: 4),
      workdir=str(tmp_path),
      config=types.SimpleNamespace(batch_size=8),
      steps_per_epoch=10,
      num_steps=20,
      log=lambda *a: None,
  )
  window = [{"loss": v, "learning_rate": 0.01} for v in (2.0, float("nan"), 3.0, 1e30)]
  clock = _clock([0.0, 1.0], start_step=6, num_steps=20, checkpoint_every=20)
  with pytest.raises(train.NonFiniteLossError, match=r"at step 8;.*checkpoint in .* is step 4"):
    train.summarize_window(run, 10, window, clock)
  # Steps 9-10 after the window of 7..8: 2 steps x 8 images in 2 s (the clock reads 1, 3).
  clock = _clock([0.0, 1.0, 3.0, 3.0], start_step=6, num_steps=20, checkpoint_every=20)
  steps = [{"loss": 1.0, "top1_error": 0.5, "learning_rate": 0.1}] * 2
  first = train.summarize_window(run, 8, steps, clock)
  m = train.summarize_window(
      run,
      10,
      [
          {"loss": 2.0, "top1_error": 0.5, "learning_rate": 0.1},
          {"loss": 4.0, "top1_error": 0.0, "learning_rate": 0.01},
      ],
      clock,
  )
  assert first["warmup"] is True and first["window_s"] == 1.0
  assert m == {
      "loss": 3.0,
      "top1_error": 0.25,
      "learning_rate": 0.01,
      "images_per_sec": 8.0,
      "epoch": 1.0,
      "window_s": 2.0,
      "warmup": False,
      "time": 1e9 + 3.0,
      "elapsed_s": 3.0,
  }


@pytest.mark.slow
def test_a_slowed_step_reports_the_rate_of_the_wall_clock(tmp_path, monkeypatch):
  """Every step waits DELAY s on the device (a host callback inside its computation, so the
  host dispatches ahead of it as it does of a real slow step). Each window after the warm-up
  must report its images over the wall time between the ends of its last step and the
  previous window's, as the callback's own clock saw them, and so no more than
  batch / DELAY images/s."""
  from jax.experimental import io_callback

  from alexnet_jax import reporting

  delay, ends = 0.5, []

  def slow(x):
    time.sleep(delay)
    ends.append(time.perf_counter())
    return x

  real = train.make_train_step

  def make_slow_step(*args, **kwargs):
    step = real(*args, **kwargs)

    @jax.jit
    def slowed(state, batch, spec, lighting):
      state, metrics = step(state, batch, spec, lighting)
      loss = io_callback(slow, jax.ShapeDtypeStruct((), jnp.float32), metrics["loss"])
      return state, {**metrics, "loss": loss}

    return slowed

  monkeypatch.setattr(train, "make_train_step", make_slow_step)
  monkeypatch.setattr(evaluation, "compiler_options", lambda: None)  # the step is nested
  config = tiny.config(
      num_train_steps=12,
      log_every_steps=4,
      eval_every_steps=12,
      checkpoint_every_steps=12,
      **{"mesh.data": -1},
  )
  train.train_and_evaluate(config, str(tmp_path))
  rows = [r for r in reporting.read_metrics(str(tmp_path)) if r["split"] == "train"]
  assert [(r["step"], r["warmup"]) for r in rows] == [(4, True), (8, False), (12, False)]
  assert len(ends) == 12
  for prev, r in zip(rows, rows[1:]):
    wall = ends[r["step"] - 1] - ends[prev["step"] - 1]
    assert r["window_s"] == pytest.approx(wall, abs=0.15), (r, wall)
    assert r["images_per_sec"] == pytest.approx(4 * 8 / r["window_s"], rel=1e-9)
    assert r["images_per_sec"] < 8 / delay
    assert r["time"] - prev["time"] == pytest.approx(r["window_s"], abs=0.15)


@pytest.mark.slow
def test_profile_steps_traces_the_steps_after_the_first_window(tmp_path):
  """profile_steps=2 with one step a window: steps 2 and 3 are traced into the run's
  TensorBoard directory, as TensorBoard's profile plugin (the .xplane.pb, read back with
  jax.profiler.ProfileData) and Perfetto (perfetto_trace.json.gz) read them."""
  import gzip

  config = tiny.config(
      num_train_steps=4,
      eval_every_steps=4,
      checkpoint_every_steps=4,
      profile_steps=2,
      **{"mesh.data": -1},
  )
  train.train_and_evaluate(config, str(tmp_path))
  (traced,) = (tmp_path / facts.TENSORBOARD_DIR / "plugins" / "profile").iterdir()
  (xplane,) = traced.glob("*.xplane.pb")
  host = jax.profiler.ProfileData.from_file(str(xplane)).find_plane_with_name("/host:CPU")
  steps = {
      dict(e.stats)["step_num"]: e.start_ns
      for line in host.lines
      for e in line.events
      if e.name == "train"
  }
  assert sorted(steps) == [2, 3]
  # The device's work: XLA's executor threads ran after step 2 was dispatched.
  xla = [e.start_ns for line in host.lines if "XLA" in line.name for e in line.events]
  assert any(t > steps[2] for t in xla)
  with gzip.open(traced / "perfetto_trace.json.gz") as f:
    events = json.load(f)["traceEvents"]
  assert sorted(e["args"]["step_num"] for e in events if e.get("name") == "train") == ["2", "3"]
  # The traced steps' window is still timed, the profiler's start and end left out.
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]


def test_eta_is_the_steady_rate_plus_the_evaluations_left_at_their_measured_time():
  """100 steps of 8 images, evaluated every 25 (4 evaluations) and saved at the end; logged
  at steps 25, 50 and 75. The warm-up window (60 s) counts in neither the rate nor the ETA."""
  clock = _clock(
      [0.0, 60.0, 70.0, 70.0, 75.0, 85.0],  # start, windows 25 and 50, the eval at 50, window 75
      start_step=0,
      num_steps=100,
      eval_every=25,
      checkpoint_every=100,
  )
  assert clock.end_window(25) == {"images_per_sec": 200 / 60, "window_s": 60.0, "warmup": True}
  assert clock.eta(25) == (None, 0)
  assert clock.end_window(50) == {"images_per_sec": 20.0, "window_s": 10.0, "warmup": False}
  # 50 steps x 8 images at 20 img/s; the evaluations at 50, 75 and 100 are not timed yet.
  assert clock.eta(50) == (20.0, 3)
  assert clock.eta_text(50) == "ETA 0m20s + 3 evals"
  with clock.pause("eval"):  # 70 -> 75: out of the next window
    pass
  assert clock.end_window(75) == {"images_per_sec": 20.0, "window_s": 10.0, "warmup": False}
  # 25 steps at 20 img/s, and two evaluations (75, 100) of 5 s each.
  assert clock.eta(75) == (10.0 + 2 * 5.0, 0)
  assert clock.steady_rate == 20.0


# ---- the command line --------------------------------------------------------------------
def _main(workdir, *flags, env_devices=1, timeout=300, **popen):
  env = dict(
      os.environ,
      XLA_FLAGS=f"--xla_force_host_platform_device_count={env_devices}",
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="2",
  )
  cmd = [
      sys.executable,
      "-m",
      "alexnet_jax.main",
      f"--workdir={workdir}",
      *flags,
  ]
  if popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, **popen)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_unknown_override_key_exits_non_zero_naming_it(tmp_path):
  r = _main(tmp_path / "w", *tiny.flags(), "--config.optimizer.learning_rat=0.1", timeout=120)
  assert r.returncode != 0
  assert "learning_rat" in r.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_wrong_typed_override_exits_non_zero_naming_it(tmp_path):
  r = _main(tmp_path / "w", *tiny.flags(), "--config.batch_size=sixty-four", timeout=120)
  assert r.returncode != 0
  assert "batch_size" in r.stderr


TINY = tiny.flags(eval_every_steps=2, checkpoint_every_steps=2, num_train_steps=6)


@pytest.mark.slow
def test_resume_after_kill_ends_with_the_uninterrupted_parameters(tmp_path):
  full = _main(tmp_path / "full", *TINY)
  assert full.returncode == 0, full.stderr[-3000:]
  # Kill -9 the second run once its first checkpoint exists, then start it again.
  proc = _main(tmp_path / "cut", *TINY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = tmp_path / "cut" / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and not (
      ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())
  ):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert killed_at and killed_at[-1] < 6, killed_at
  # The killed run's lock file still names it; the OS dropped its flock, so the rerun goes on.
  assert json.loads((tmp_path / "cut" / facts.LOCK_FILE).read_text())["pid"] == proc.pid
  resumed = _main(tmp_path / "cut", *TINY)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stderr
  _, want = checkpoint.restore(str(tmp_path / "full"))
  _, got = checkpoint.restore(str(tmp_path / "cut"))
  flat = dict(jax.tree_util.tree_leaves_with_path(want["params"]))
  for path, leaf in jax.tree_util.tree_leaves_with_path(got["params"]):
    np.testing.assert_allclose(np.asarray(leaf), np.asarray(flat[path]), rtol=1e-6, atol=1e-7)
  # And the run wrote what the README promises.
  rows = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
  assert {r["split"] for r in rows} == {"train", "eval"}
  assert {"loss", "learning_rate", "images_per_sec"} <= set(rows[0])
  assert any("top1_error" in r and "top5_error" in r for r in rows if r["split"] == "eval")
  assert (tmp_path / "full" / "learning_curve.png").stat().st_size > 10_000
  assert json.load(open(tmp_path / "full" / "config.json"))["batch_size"] == 8
  assert not (tmp_path / "full" / facts.LOCK_FILE).exists()  # a clean exit removes it


def _seconds_after_last_line(cmd) -> tuple[int, str, float]:
  """Run `cmd` (stdout and stderr on one pipe): (exit status, output, seconds from its last
  line to the end of the process, when the pipe closes)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines, last = [], time.monotonic()
  for line in p.stdout:
    last = time.monotonic()
    lines.append(line.decode(errors="replace"))
  end = time.monotonic()
  return p.wait(), "".join(lines), end - last


@pytest.mark.slow
def test_commands_end_within_2s_of_their_last_line_on_busy_cores(tmp_path):
  """Two busy loops keep both cores loaded. Training, evaluate and predict each end within
  2 s of their last line (nothing is left to the interpreter's teardown: cli.exit_now), and
  what the run wrote is complete: the checkpoint committed, every row of metrics.jsonl, the
  TensorBoard events readable, the lock file cleared."""
  from PIL import Image

  workdir = tmp_path / "w"
  image = tmp_path / "digit.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(image)
  busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
  try:
    python = [sys.executable, "-m"]
    runs = {
        "train": python
        + ["alexnet_jax.main", f"--workdir={workdir}"]
        + tiny.flags(num_train_steps=3, eval_every_steps=3, checkpoint_every_steps=3),
        "evaluate": python + ["alexnet_jax.evaluate", f"--workdir={workdir}", "--crops=1"],
        "predict": python + ["alexnet_jax.predict", f"--workdir={workdir}", str(image)],
    }
    ended = {name: _seconds_after_last_line(cmd) for name, cmd in runs.items()}
  finally:
    for b in busy:
      b.kill()
      b.wait()
  for name, (status, out, seconds) in ended.items():
    assert status == 0, (name, out[-3000:])
    assert seconds < 2.0, (name, seconds, out[-1000:])
  assert "in Python:  from alexnet_jax import analysis" in ended["train"][1]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [(r["step"], r["split"]) for r in rows] == [
      (1, "train"),
      (2, "train"),
      (3, "train"),
      (3, "eval"),
  ]
  events = list((workdir / facts.TENSORBOARD_DIR).glob("*tfevents*"))
  steps = {
      e.step for path in events for e in tf.compat.v1.train.summary_iterator(str(path)) if e.step
  }
  assert steps == {1, 2, 3}
  assert not (workdir / facts.LOCK_FILE).exists()  # a clean exit removes it
  assert (workdir / "eval_3_1crop.json").exists()


def test_checkpoints_keep_the_latest_k_and_the_best(tmp_path):
  manager = checkpoint.CheckpointManager(str(tmp_path), keep=2)
  errors = {1: 0.5, 2: 0.1, 3: 0.6, 4: 0.7, 5: 0.8}  # step 2 is the best by top-1 error
  for step, err in errors.items():
    manager.save(step, {"w": jnp.full((3,), float(step))}, {"top1_error": err})
    manager.wait()
  assert sorted(manager.all_steps()) == [2, 4, 5]
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  best = manager.restore({"w": jax.ShapeDtypeStruct((3,), jnp.float32)}, {"w": one}, 2)
  np.testing.assert_array_equal(np.asarray(best["w"]), [2.0, 2.0, 2.0])
  manager.close()


@pytest.mark.slow
def test_three_classes_fewer_images_than_a_batch_train_and_evaluate(monkeypatch, tmp_path):
  """6 training images, batch 8 (tests/test_data_streams.py checks the batches' contents):
  the run trains, and its top-5 error over 3 classes is 0."""
  from tests.data_helpers import fresh_user_cache, small_folder

  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "data")
  config = tiny.config(
      num_train_steps=2,
      **{"dataset.name": f"folder:{root}", "dataset.cache": False, "mesh.data": -1},
  )
  m = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert m["num_images"] == 3 and m["top5_error"] == 0.0 and 0.0 <= m["top1_error"] <= 1.0
