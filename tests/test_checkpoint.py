"""alexnet_jax/checkpoint.py: checkpoints damaged on disk (truncated, deleted files, a step
without its state, garbage bytes) and a disk that fills up during a save (what restores, what
is said, what is kept), and restoring beside a run in progress (never disturbs it)."""

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import checkpoint, config_checks, sharding, train_state
from tests import forkserver, tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (2, 4, 6)


def _config():
  return tiny.config()


def _mesh():
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def base():
  """(config, model, a train state on one device): created once (its init compiles ~15 s)."""
  config = _config()
  model = train_state.create_model(config, 10)
  return config, model, train_state.create_train_state(config, model, _mesh())


def _variant(state, step):
  """`state` as if at `step`: every float array shifted by `step` (distinct per step)."""
  shift = lambda x: x + step if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
  return jax.tree.map(shift, state).replace(step=jnp.asarray(step, jnp.int32))


def _saved_run(workdir, base):
  """Checkpoints at steps 2, 4, 6 whose parameters differ; returns {step: state}."""
  config, model, state0 = base
  os.makedirs(workdir)
  config_checks.record(config, workdir, {})
  manager = checkpoint.CheckpointManager(workdir, config)
  states = {}
  for step in STEPS:
    state = _variant(state0, step)
    manager.save(step, state, None, meta={"num_classes": 10})
    manager.wait()
    states[step] = jax.device_get(state)
  manager.close()
  return config, model, states


def _state_files(workdir, step):
  root = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return sorted(files, key=os.path.getsize)


def _truncate(workdir, step):
  big = _state_files(workdir, step)[-1]
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)


def _delete_file(workdir, step):
  os.remove(_state_files(workdir, step)[-1])


def _delete_state(workdir, step):
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "state"))


def _garbage(workdir, step):
  """4 KiB of random bytes in the middle of the largest data file (its size unchanged)."""
  big = _state_files(workdir, step)[-1]
  with open(big, "r+b") as f:
    f.seek(os.path.getsize(big) // 2)
    f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


DAMAGE = {
    "truncated": _truncate,
    "deleted_file": _delete_file,
    "no_state": _delete_state,
    "garbage": _garbage,
}


def _assert_params(got, want):
  flat = dict(jax.tree_util.tree_leaves_with_path(want))
  for path, leaf in jax.tree_util.tree_leaves_with_path(got):
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat[path]))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_and_is_kept(tmp_path, caplog, damage, base):
  workdir = str(tmp_path / "run")
  config, model, states = _saved_run(workdir, base)
  DAMAGE[damage](workdir, 6)

  # A notebook's restore: step 4, a warning naming step 6, nothing moved or deleted.
  with caplog.at_level(logging.WARNING):
    run = checkpoint.restore_run(workdir, train_state.restore_target())
  assert run.step == 4
  _assert_params(run.variables["params"], states[4].params)
  warned = [
      r.getMessage() for r in caplog.records if "skipping checkpoint step 6" in r.getMessage()
  ]
  assert warned, [r.getMessage() for r in caplog.records]
  if damage == "garbage":  # the files read fine: only the checksums tell
    assert "differ from the checksums recorded at save time" in warned[0], warned
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))

  # Training resumes from step 4 (momentum included) and moves step 6 aside, kept.
  manager = checkpoint.CheckpointManager(workdir, config)
  abstract = train_state.abstract_state(config, model)
  state = manager.restore_or(
      lambda: base[2], abstract, train_state.state_shardings(_mesh(), abstract)
  )
  assert int(state.step) == 4  # not 0: not started from scratch
  _assert_params(state.opt_state, states[4].opt_state)
  assert sorted(manager.all_steps()) == [2, 4]
  assert os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", "6"))
  # Its next save of step 6 works (no collision with the damaged one).
  manager.save(6, state, None, meta={"num_classes": 10})
  manager.wait()
  assert sorted(manager.all_steps()) == [2, 4, 6]
  manager.close()


def test_no_readable_checkpoint_stops_with_the_list_and_changes_nothing(tmp_path, base):
  workdir = str(tmp_path / "run")
  config, model, _ = _saved_run(workdir, base)
  _garbage(workdir, 6)
  _truncate(workdir, 4)
  _delete_state(workdir, 2)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  manager = checkpoint.CheckpointManager(workdir, config)
  abstract = train_state.abstract_state(config, model)
  with pytest.raises(checkpoint.UnreadableCheckpointsError) as e:
    manager.restore_or(lambda: base[2], abstract, train_state.state_shardings(_mesh(), abstract))
  message = str(e.value)
  for step in STEPS:
    assert f"step {step}:" in message
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))
  with pytest.raises(checkpoint.UnreadableCheckpointsError):
    checkpoint.restore_run(workdir, train_state.restore_target())


def _file(path):
  path.write_bytes(b"not a checkpoint")


def _loop(path):
  os.symlink(path.name, path)  # checkpoints/6 -> 6: ELOOP


def _dangling(path):
  os.symlink(path.parent / "gone", path)


def _link_to_a_step(path):
  os.symlink(path.parent / "4", path)  # a readable directory, but not this step's own


STRAY = {"file": _file, "loop": _loop, "dangling": _dangling, "link": _link_to_a_step}


@pytest.mark.parametrize("kind", sorted(STRAY))
def test_a_step_entry_that_is_not_a_directory_is_set_aside_and_saved_again(
    tmp_path, caplog, kind, base
):
  """checkpoints/6 replaced by a plain file or a symbolic link (a loop, dangling, to another
  step): a writer warns as for a damaged step, moves the entry itself aside unchanged, resumes
  from step 4 and saves step 6 again."""
  workdir = str(tmp_path / "run")
  config, model, states = _saved_run(workdir, base)
  entry = tmp_path / "run" / "checkpoints" / "6"
  shutil.rmtree(entry)
  STRAY[kind](entry)
  link = os.readlink(entry) if entry.is_symlink() else None
  with caplog.at_level(logging.WARNING):
    manager = checkpoint.CheckpointManager(workdir, config)
  said = [r.getMessage() for r in caplog.records]
  assert any(m.startswith("skipping checkpoint step 6 in") for m in said), said
  aside = tmp_path / "run" / "checkpoints_unreadable" / "6"
  assert any(f"moved unreadable checkpoint step 6 to {aside}" in m for m in said), said
  assert not os.path.lexists(entry)
  if link is not None:  # the link itself, as it was (its target untouched)
    assert os.readlink(aside) == link
  else:
    assert aside.read_bytes() == b"not a checkpoint"
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "4")
  abstract = train_state.abstract_state(config, model)
  state = manager.restore_or(
      lambda: base[2], abstract, train_state.state_shardings(_mesh(), abstract)
  )
  assert int(state.step) == 4
  _assert_params(state.params, states[4].params)
  manager.save(6, state, None, meta={"num_classes": 10})
  manager.wait()
  assert sorted(manager.all_steps()) == [2, 4, 6]
  assert os.path.isdir(entry) and not entry.is_symlink()
  manager.close()


def _metadata(workdir, step):
  return os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")


def test_a_changed_value_in_the_meta_item_is_detected_and_the_step_skipped(tmp_path, caplog, base):
  """top1_error 0.79 -> 0.19 in checkpoints/6/meta/metadata: the restore falls back to step 4
  (the forged value is never returned), naming the meta item."""
  config, model, state0 = base
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  config_checks.record(config, workdir, {})
  manager = checkpoint.CheckpointManager(workdir, config)
  for step in (4, 6):
    manager.save(
        step, _variant(state0, step), {"top1_error": 0.79, "top5_error": 0.25}, {"num_classes": 10}
    )
    manager.wait()
  manager.close()
  text = open(_metadata(workdir, 6)).read()
  assert '"top1_error": 0.79' in text
  with open(_metadata(workdir, 6), "w") as f:
    f.write(text.replace('"top1_error": 0.79', '"top1_error": 0.19'))
  with caplog.at_level(logging.WARNING):
    run = checkpoint.restore_run(workdir, train_state.restore_target())
  assert run.step == 4 and run.meta["eval"]["top1_error"] == 0.79
  warned = [
      r.getMessage() for r in caplog.records if "skipping checkpoint step 6" in r.getMessage()
  ]
  assert warned and "meta item" in warned[0], warned
  with pytest.raises(checkpoint.CorruptCheckpointError, match="meta item"):
    checkpoint.restore_run(workdir, train_state.restore_target(), step=6)


def test_a_checkpoint_saved_before_the_meta_was_covered_still_restores(tmp_path, monkeypatch, base):
  """A save of the earlier format (no checksum_version, no meta_sha256: the meta item as
  written before it was covered) restores, its arrays still verified."""
  config, model, state0 = base
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  config_checks.record(config, workdir, {})
  monkeypatch.setattr(checkpoint, "seal", lambda meta: meta)  # the earlier save
  manager = checkpoint.CheckpointManager(workdir, config)
  manager.save(4, _variant(state0, 4), {"top1_error": 0.5, "top5_error": 0.25}, {"num_classes": 10})
  manager.wait()
  manager.close()
  meta = json.load(open(_metadata(workdir, 4)))
  assert "checksum_version" not in meta and "meta_sha256" not in meta and meta["checksums"]
  run = checkpoint.restore_run(workdir, train_state.restore_target())
  assert run.step == 4 and run.meta["eval"]["top1_error"] == 0.5
  _assert_params(run.variables["params"], jax.device_get(_variant(state0, 4)).params)
  _garbage(workdir, 4)  # its arrays are still checked
  with pytest.raises(checkpoint.UnreadableCheckpointsError):
    checkpoint.restore_run(workdir, train_state.restore_target())


def test_checksums_are_the_same_on_any_mesh_and_see_one_flipped_bit(devices, base):
  config, model, one = base
  mesh = sharding.make_mesh(4, 2, devices=devices)
  abstract = train_state.abstract_state(config, model)
  eight = jax.device_put(one, train_state.state_shardings(mesh, abstract))
  assert len(eight.params["conv2"]["kernel"].sharding.device_set) == 8
  assert checkpoint.checksums(one) == checkpoint.checksums(eight)
  # An independent reference for one array: the same sums with NumPy's uint32 arithmetic.
  w = np.asarray(one.params["conv1"]["kernel"])
  bits = w.view(np.uint32).ravel().astype(np.uint64)
  pos = np.arange(bits.size, dtype=np.uint64)
  weight = (pos * 0x9E3779B1 % 2**32) | 1
  want = [int(bits.sum() % 2**32), int((bits * weight % 2**32).sum() % 2**32)]
  assert checkpoint.checksums(one)[".params['conv1']['kernel']"] == want
  flipped = w.copy().view(np.uint32)
  flipped.flat[123] ^= 1 << 7
  assert checkpoint.checksums({"k": flipped.view(np.float32)})["['k']"] != want


# ---- a full disk -------------------------------------------------------------------------
TINY = tiny.flags(eval_every_steps=6, checkpoint_every_steps=2, num_train_steps=6)

# Inside a private mount namespace (root, or an unprivileged user namespace): a tmpfs of
# SIZE holds the workdir; it fits one or two checkpoints of the tiny model (~7 MiB), not three.
FULL_DISK = textwrap.dedent("""\
    set -u
    mount -t tmpfs -o size=$SIZE tmpfs "$MNT" || exit 90
    cd "$REPO"
    "$PY" -m alexnet_jax.main --workdir="$MNT/w" $FLAGS >"$OUT/run1.txt" 2>&1
    echo $? >"$OUT/rc1"
    ls "$MNT/w/checkpoints" >"$OUT/ls1"
    "$PY" -c "from alexnet_jax import checkpoint, train_state; print(checkpoint.restore_run('$MNT/w', train_state.restore_target()).step)" \
        >"$OUT/restore1.txt" 2>&1
    mount -o remount,size=400M "$MNT"  # space freed
    "$PY" -m alexnet_jax.main --workdir="$MNT/w" $FLAGS >"$OUT/run2.txt" 2>&1
    echo $? >"$OUT/rc2"
    cp -a "$MNT/w" "$OUT/w"  # restored by the test itself: one Python start fewer
    """)


def _namespace_cmd():
  for cmd in (["unshare", "-m"], ["unshare", "-rm"]):
    if shutil.which("unshare"):
      probe = subprocess.run([*cmd, "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
      if probe.returncode == 0:
        return cmd
  return None


@pytest.mark.slow
def test_full_disk_stops_the_run_naming_the_space_and_rerun_resumes(tmp_path):
  ns = _namespace_cmd()
  if ns is None:
    pytest.skip("no mount namespace for a size-limited tmpfs (unshare -m / -rm refused)")
  mnt, out = tmp_path / "mnt", tmp_path / "out"
  mnt.mkdir()
  out.mkdir()
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="2",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      SIZE="14m",
      MNT=str(mnt),
      OUT=str(out),
      REPO=REPO,
      PY=sys.executable,
      FLAGS=" ".join(TINY),
  )
  r = subprocess.run([*ns, "bash", "-c", FULL_DISK], env=env, capture_output=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  run1 = (out / "run1.txt").read_text()
  assert (out / "rc1").read_text().strip() == "1", run1[-3000:]
  fatal = [line for line in run1.splitlines() if line.startswith("FATAL")]
  assert len(fatal) == 1, run1[-3000:]
  # Orbax's failed writes, quieted: no traceback (there were dozens of "Event loop is closed").
  assert "Traceback" not in run1 and "Event loop is closed" not in run1, run1[-3000:]
  assert not [line for line in run1.splitlines() if line.startswith("E")], run1[-3000:]
  assert "no space left on the device of" in fatal[0] and f"{mnt}/w/checkpoints" in fatal[0]
  assert "needs about" in fatal[0], fatal
  kept = int(re.search(r"intact \(latest: step (\d+)\)", fatal[0]).group(1))
  failed = int(re.search(r"checkpoint step (\d+) could not be written", fatal[0]).group(1))
  assert kept in (2, 4) and failed == kept + 2, fatal  # every 2 steps: the next one failed
  steps = sorted(int(n) for n in (out / "ls1").read_text().split() if n.isdigit())
  assert steps == list(range(2, kept + 1, 2))  # all earlier checkpoints still there
  assert (out / "restore1.txt").read_text().strip().splitlines()[-1] == str(kept)
  run2 = (out / "run2.txt").read_text()
  assert (out / "rc2").read_text().strip() == "0", run2[-3000:]
  assert f"at step {kept}" in run2
  assert checkpoint.restore_run(str(out / "w"), train_state.restore_target()).step == 6


def test_notebook_restore_leaves_a_running_saves_temporary_directory_alone(tmp_path, base):
  """A run saving step 8 has Orbax's temporary directory in place; restoring beside it
  (read-only) must neither delete nor touch it."""
  workdir = str(tmp_path / "run")
  _, _, states = _saved_run(workdir, base)
  in_flight = tmp_path / "run" / "checkpoints" / "8.orbax-checkpoint-tmp-1700000000"
  (in_flight / "state").mkdir(parents=True)
  (in_flight / "state" / "d").write_bytes(b"half-written")
  run = checkpoint.restore_run(workdir, train_state.restore_target())
  assert run.step == 6
  _assert_params(run.variables["params"], states[6].params)
  assert (in_flight / "state" / "d").read_bytes() == b"half-written"


# ---- restoring beside a run in progress never disturbs it (checkpoints opened read-only) --
READER_STEPS = 40  # at 80, the reader restored 65 distinct steps, from step 4 (load 7)

# A second process: restore the latest checkpoint again and again until told to stop.
READER = """
import json, os, sys, time
from alexnet_jax import checkpoint, train_state
workdir, stop, out = sys.argv[1:4]
ok, failed = [], []
while not os.path.exists(stop):
  try:
    ok.append(checkpoint.restore_run(workdir, train_state.restore_target()).step)
  except Exception as e:  # none saved yet, or a step the run's policy deleted while read
    failed.append(f"{type(e).__name__}: {e}"[:300])
    time.sleep(0.05)
json.dump({"ok": ok, "failed": failed}, open(out, "w"))
"""


@pytest.mark.slow
def test_restores_from_a_second_process_leave_a_run_saving_every_step_complete(tmp_path):
  workdir = tmp_path / "run"
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="2",
  )
  # Both in forked children of a zygote that preloaded the libraries (tests/forkserver.py).
  train = forkserver.popen(
      [
          sys.executable,
          "-m",
          "alexnet_jax.main",
          f"--workdir={workdir}",
          *tiny.flags(
              log_every_steps=20,
              eval_every_steps=1000,
              checkpoint_every_steps=1,
              keep_checkpoints=2,
              num_train_steps=READER_STEPS,
          ),
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  ckpts = workdir / "checkpoints"
  stop, out = tmp_path / "stop", tmp_path / "reader.json"
  # Its log goes to a file: a full pipe would block it until the run ends.
  with open(tmp_path / "reader.log", "w") as reader_log:
    reader = forkserver.popen(
        [sys.executable, "-c", READER, str(workdir), str(stop), str(out)],
        cwd=REPO,
        env=env,
        stdout=reader_log,
        stderr=subprocess.STDOUT,
    )
    try:
      log, _ = train.communicate(timeout=400)
    finally:
      stop.touch()
      reader.wait(timeout=120)
  reader_log = (tmp_path / "reader.log").read_text()
  assert train.returncode == 0, log[-4000:]
  assert reader.returncode == 0, reader_log[-3000:]
  got = json.load(open(out))
  # It restored while the run saved (and its policy deleted old steps), not only at the end.
  assert len(set(got["ok"])) >= 10 and min(got["ok"]) < READER_STEPS // 2, (got, reader_log[-2000:])
  assert got["ok"] == sorted(got["ok"])  # restores followed the run forward
  # Every checkpoint the run kept is complete: no temporary directory left, each restores.
  names = sorted(os.listdir(ckpts))
  assert all(n.isdigit() for n in names), names
  steps = sorted(int(n) for n in names)
  assert steps[-1] == READER_STEPS
  for s in steps:
    assert checkpoint.restore_run(str(workdir), train_state.restore_target(), s).step == s


def test_a_reader_is_not_told_that_its_directory_is_read_only(tmp_path, caplog):
  """Orbax warns "Given directory is read only" for every read-only manager; the directory
  is writable, and read-only is what a reader asked for: no such line reaches the user."""
  (tmp_path / "checkpoints").mkdir()
  with caplog.at_level("INFO"):
    checkpoint.CheckpointManager(str(tmp_path), read_only=True).close()
    logging.getLogger("absl").warning("Given directory is writable")  # others still pass
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if m.startswith("Given directory is read only")], messages
  assert "Given directory is writable" in messages


def _raised(e):
  try:
    raise e
  except BaseException as caught:  # pylint: disable=broad-except
    return caught


def test_only_full_disk_tracebacks_of_orbax_and_closed_loop_callbacks_are_quieted():
  """The filters a writer installs (the slow full-disk test sees them on the real command)."""
  full = _raised(ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"))
  other = _raised(ValueError("some other failure"))

  def record(pathname, name, error):
    exc_info = (type(error), error, error.__traceback__) if error else None
    return logging.LogRecord(name, logging.ERROR, pathname, 1, "failed", (), exc_info)

  orbax = "/site-packages/orbax/checkpoint/_src/futures/future.py"
  shown = checkpoint._not_a_full_disk_traceback
  assert not shown(record(orbax, "absl", full))
  assert not shown(record("/usr/lib/python3.11/asyncio/base_events.py", "asyncio", full))
  assert shown(record(orbax, "absl", other))  # other failures keep their traceback
  assert shown(record("/x/alexnet_jax/train.py", "absl", full))  # and the project's own lines
  assert shown(record(orbax, "absl", None))

  seen = []
  hook = checkpoint._unraisable(seen.append)
  loop = asyncio.new_event_loop()
  loop.close()
  closed = _raised_in(lambda: loop.call_soon_threadsafe(print))
  hook(types.SimpleNamespace(exc_value=closed, exc_traceback=closed.__traceback__))
  assert seen == []  # TensorStore's late completion on Orbax's closed loop: dropped
  elsewhere = _raised(RuntimeError("Event loop is closed"))  # not from call_soon_threadsafe
  for error in (elsewhere, other):
    hook(types.SimpleNamespace(exc_value=error, exc_traceback=error.__traceback__))
  assert [u.exc_value for u in seen] == [elsewhere, other]


def _raised_in(fn):
  try:
    fn()
  except BaseException as caught:  # pylint: disable=broad-except
    return caught
  raise AssertionError("did not raise")


# ---- hostile input: newer versions, steps this user cannot read ------------------------------
@pytest.mark.parametrize("field", ["checksum_version", "format_version"])
def test_a_checkpoint_from_a_newer_version_is_refused_saying_so(tmp_path, base, field):
  """Not skipped for an older step, nor set aside: refused, naming the step and the version,
  by a reader and by a trainer's manager; nothing is moved."""
  config, _, _ = base
  workdir = str(tmp_path / "run")
  _saved_run(workdir, base)
  meta = json.load(open(_metadata(workdir, 6)))
  meta[field] = 99
  meta["meta_sha256"] = checkpoint.meta_digest(meta)  # a consistent, newer meta
  json.dump(meta, open(_metadata(workdir, 6), "w"))
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  for step in (None, 6):
    with pytest.raises(checkpoint.NewerCheckpointError) as e:
      checkpoint.restore_run(workdir, train_state.restore_target(), step=step)
    text = str(e.value)
    assert "\n" not in text and f"({field} 99; this one reads up to " in text, text
    assert text.startswith(f"checkpoint step 6 in {workdir}/checkpoints was written by a newer")
  manager = checkpoint.CheckpointManager(workdir, config)
  abstract = jax.eval_shape(lambda: base[2])
  with pytest.raises(checkpoint.NewerCheckpointError):
    manager.restore_latest(abstract, jax.tree.map(lambda x: x.sharding, base[2]))
  manager.close()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))
  meta[field] = "2"  # not a version number: a damaged step, skipped
  meta["meta_sha256"] = checkpoint.meta_digest(meta)
  json.dump(meta, open(_metadata(workdir, 6), "w"))
  assert checkpoint.restore_run(workdir, train_state.restore_target()).step == 4


def _without_root_override(cmd):
  """cmd as run by a user that file permissions apply to: as it is when not root; as root,
  without the capabilities that bypass them (setpriv), or None where that is not possible."""
  if os.geteuid() != 0:
    return cmd
  if shutil.which("setpriv") is None:
    return None
  return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "--", *cmd]


# Restores each workdir in argv in turn; a line "--- WORKDIR" on stdout and on stderr before
# each, so that what each restore printed can be told apart.
READ_RUNS = (
    "import sys\n"
    "from alexnet_jax import checkpoint\n"
    "for workdir in sys.argv[1:]:\n"
    "  for stream in (sys.stdout, sys.stderr):\n"
    "    print('---', workdir, file=stream, flush=True)\n"
    "  try:\n"
    "    config, variables = checkpoint.restore(workdir)\n"
    "    print('restored', flush=True)\n"
    "  except checkpoint.UnreadableCheckpointsError as e:\n"
    "    print('FATAL:', e, flush=True)\n"
)


def _sections(text, workdirs):
  """{workdir: what was printed after its "--- WORKDIR" line, up to the next}."""
  parts, current = {}, None
  for line in text.splitlines(keepends=True):
    if line.startswith("--- ") and line[4:].rstrip("\n") in workdirs:
      current = line[4:].rstrip("\n")
      parts[current] = ""
    elif current is not None:
      parts[current] += line
  return parts


def test_a_step_or_checkpoints_this_user_cannot_read_is_handled_like_a_damaged_one(tmp_path, base):
  workdir = str(tmp_path / "run")
  _saved_run(workdir, base)
  # A copy whose whole checkpoints directory is unreadable: both restored by one process.
  closed = str(tmp_path / "closed")
  shutil.copytree(workdir, closed)
  cmd = _without_root_override([sys.executable, "-c", READ_RUNS, workdir, closed])
  if cmd is None:
    pytest.skip("root without setpriv: permissions cannot be taken away")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  os.chmod(os.path.join(workdir, "checkpoints", "6"), 0)
  os.chmod(os.path.join(closed, "checkpoints"), 0)
  try:
    # A forked child of the zygote (tests/forkserver.py); a real process under setpriv (root).
    r = forkserver.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  finally:
    os.chmod(os.path.join(workdir, "checkpoints", "6"), 0o755)
    os.chmod(os.path.join(closed, "checkpoints"), 0o755)
  assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
  out, err = _sections(r.stdout, (workdir, closed)), _sections(r.stderr, (workdir, closed))
  assert "restored" in out[workdir] and "FATAL" not in out[workdir], r.stderr[-3000:]
  assert "skipping checkpoint step 6" in err[workdir] and "Permission denied" in err[workdir]
  line = out[closed].strip()
  assert line.startswith(f"FATAL: {closed}/checkpoints cannot be read (Permission denied)"), line
  assert "\n" not in line
