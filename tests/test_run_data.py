"""alexnet_jax/run_data.py: the data a run trains on are part of the run (training_data.json).

The issue's probes, with the real commands: a run on a folder: dataset, then
`python -m alexnet_jax.prepare` on it and a rerun (it keeps reading the originals: the
uninterrupted run's losses); a training image removed between two runs (refused with one line,
nothing written; with --allow_config_change=training_data it resumes and keeps its statistics).
The rerun also meets a step replaced by a symbolic-link loop and a step whose meta item was
edited (checkpoint.py: both set aside, the run resumes from the newest good step).
"""

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

from alexnet_jax import analysis, facts, run_data, run_dir
from alexnet_jax import data as data_lib
from alexnet_jax.data import registry, shard_writer
from alexnet_jax.input_spec import InputSpec
from configs import demo
from tests import forkserver, tiny
from tests.data_helpers import fresh_user_cache, small_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")


def _flags(root, **overrides):
  keys = {"eval_every_steps": 2, "checkpoint_every_steps": 2, "num_train_steps": 8}
  return tiny.flags(**{**keys, "dataset.name": f"folder:{root}", **overrides})


def _run(module, *args):
  cmd = [sys.executable, "-m", f"alexnet_jax.{module}", *args]
  # A forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py).
  return forkserver.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)


def _losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, facts.METRICS_FILE))]
  return {(r["step"], r["split"]): r["loss"] for r in rows}


def _files(workdir):
  """Every file of the run (but the lock, which names its holder) -> its bytes; links -> target."""
  out = {}
  for d, dirs, files in os.walk(workdir):
    for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
      path = os.path.join(d, name)
      rel = os.path.relpath(path, workdir)
      if rel != facts.LOCK_FILE:
        out[rel] = os.readlink(path) if os.path.islink(path) else open(path, "rb").read()
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A folder: dataset (12 training images in 3 classes, 3 validation images) and an
  uninterrupted 8-step run on it, by the command line (checkpoints 4, 6, 8)."""
  root = small_folder(tmp_path_factory.mktemp("photos") / "data", per_class=4)
  full = tmp_path_factory.mktemp("runs") / "full"
  r = _run("main", f"--workdir={full}", *_flags(root))
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(full / "checkpoints")) == ["4", "6", "8"]
  return root, full


@pytest.mark.slow
def test_prepare_then_rerun_keeps_the_originals_and_skips_a_looped_and_a_forged_step(
    trained, tmp_path
):
  """Checkpoints 6 (replaced by a symbolic-link loop) and 8 (top1_error edited in its meta
  item) do not verify; the data were prepared (JPEG) beside the folder after the run started.
  The rerun warns, sets both aside, resumes at 4 on the original images and logs the
  uninterrupted run's losses for steps 5-8."""
  root, full = trained
  work = tmp_path / "w"
  shutil.copytree(full, work)
  ckpts = work / "checkpoints"
  shutil.rmtree(ckpts / "6")
  os.symlink("6", ckpts / "6")
  meta = ckpts / "8" / "meta" / "metadata"
  text = meta.read_text()
  real = json.loads(text)["eval"]["top1_error"]
  forged = 0.1912
  assert real != forged
  meta.write_text(text.replace(f'"top1_error": {real!r}', f'"top1_error": {forged!r}', 1))
  assert json.loads(meta.read_text())["eval"]["top1_error"] == forged
  # A notebook's restore: never the forged step.
  loaded = analysis.load_run(str(work))
  assert loaded.step == 4 and loaded.meta["eval"]["top1_error"] != forged

  # `python -m alexnet_jax.prepare --config=configs/demo.py --config.dataset.name=folder:ROOT`,
  # in this process (one Python start fewer): the call the command makes, shards beside the
  # data. The command itself runs in tests/test_data_shards.py.
  config = demo.get_config()
  config.dataset.name = f"folder:{root}"
  shard_writer.prepare(
      config.dataset,
      None,
      fmt=config.prepare.format,
      jpeg_quality=config.prepare.jpeg_quality,
      images_per_shard=config.prepare.images_per_shard,
      progress=False,
  )
  beside = registry.default_location(data_lib.Settings.of(config.dataset))
  assert json.load(open(os.path.join(beside, "prepared.json")))["format"] == "jpeg"

  r = _run("main", f"--workdir={work}", *_flags(root))
  assert r.returncode == 0, r.stderr[-3000:]
  log = r.stderr
  assert "skipping checkpoint step 6 in" in log and "skipping checkpoint step 8 in" in log
  assert "meta item" in log
  assert f"resumed from {ckpts} at step 4" in log
  assert f"reading image files under {root}" in log and "reading prepared shards" not in log
  assert str(forged) not in log + r.stdout and "0.19" not in r.stdout
  # Both set aside as they were; both steps saved again.
  aside = work / facts.UNREADABLE_DIR
  assert os.readlink(aside / "6") == "6"
  assert json.loads((aside / "8" / "meta" / "metadata").read_text())["eval"]["top1_error"] == forged
  assert sorted(os.listdir(ckpts)) == ["4", "6", "8"]
  assert not (ckpts / "6").is_symlink() and (ckpts / "6").is_dir()
  # The uninterrupted run's losses (a resume on the JPEG rows gives others).
  want, got = _losses(full), _losses(work)
  assert sorted(got) == sorted(want)
  for key in want:
    assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key
  record = json.load(open(work / facts.DATA_FILE))
  assert record["source"] == "originals" and record["num_train"] == 12


@pytest.mark.slow
def test_a_removed_training_image_refuses_the_resume_unless_allowed(trained, tmp_path):
  """One training image gone: the same command stops with one FATAL line naming the change,
  every file of the run byte-identical; with --allow_config_change=training_data it trains
  on, keeping dataset_stats.npz as it was, and says so."""
  root, full = trained
  work = tmp_path / "w"
  shutil.copytree(full, work)
  before = _files(work)
  image = root / "train" / "a" / "3.jpg"
  os.rename(image, tmp_path / "3.jpg")  # keeps its times: put back as it was below
  try:
    # With a key that a resume may change too: config.json and its history stay as they were.
    r = _run("main", f"--workdir={work}", *_flags(root, num_train_steps=10))
    assert r.returncode != 0
    fatal = [line for line in r.stderr.splitlines() if "FATAL" in line]
    assert len(fatal) == 1, r.stderr[-3000:]
    assert fatal[0].startswith("FATAL: refusing to resume the run in")
    assert f"folder:{root} had 12 training images in 3 classes, now 11 in 3" in fatal[0]
    assert f"--allow_config_change={run_data.ALLOW}" in fatal[0]
    assert _files(work) == before

    r = _run(
        "main",
        f"--workdir={work}",
        *_flags(root, num_train_steps=10),
        f"--allow_config_change={run_data.ALLOW}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {work / 'checkpoints'} at step 8" in r.stderr
    said = re.search(r"resuming .* on other training data .*", r.stderr)
    assert said and "now 11 in 3" in said[0] and "keeps its statistics" in said[0], r.stderr
    after = _files(work)
    assert after[facts.STATS_FILE] == before[facts.STATS_FILE]
    assert {s for s, split in _losses(work) if split == "train"} == set(range(1, 11))
    record = json.loads(after[facts.DATA_FILE])
    assert record["num_train"] == 11
    assert record["stats"] == json.loads(before[facts.DATA_FILE])["stats"]
    history = [json.loads(line) for line in open(work / facts.HISTORY_FILE)]
    data_change = [f"folder:{root} had 12 training images in 3 classes, now 11 in 3"]
    assert [h["changes"] for h in history if isinstance(h.get("changes"), list)] == [data_change]
  finally:
    os.rename(tmp_path / "3.jpg", image)


# ---- in process: the source a resume reads ----------------------------------------------------
def _resumable(workdir):
  """A workdir that counts as a run to resume (a step directory)."""
  os.makedirs(os.path.join(workdir, facts.CHECKPOINT_DIR, "2"))


def test_a_run_started_on_prepared_rows_keeps_them_and_refuses_when_they_are_gone(
    tmp_path, monkeypatch
):
  """Started on raw rows beside the data ('auto'): a resume reads them; 'off' would read the
  originals (refused, naming both); the rows deleted: refused, naming them; old runs without
  a record resume on what 'auto' finds, and get one."""
  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "data", per_class=3)
  config = tiny.config(**{"dataset.name": f"folder:{root}"})
  settings = data_lib.Settings.of(config.dataset)
  beside = registry.default_location(settings)
  shard_writer.prepare(
      tiny.config(**{"dataset.name": f"folder:{root}", "dataset.prepared": "off"}).dataset,
      beside,
      fmt="raw",
      jpeg_quality=95,
      images_per_shard=4,
      progress=False,
  )
  work = str(tmp_path / "w")
  os.makedirs(work)
  start = run_data.open_for_run(config, work, resuming=False)
  assert start.record["source"] == "prepared" and start.record["prepared"]["dir"] == beside
  spec = InputSpec.from_config(config, start.stats)
  run_dir.write(work, config, start.dataset.info, start.stats, spec)
  run_data.record(work, start)
  _resumable(work)

  again = run_data.open_for_run(config, work, resuming=True)
  assert again.dataset.train.prepared and again.keep_stats and not again.changes
  np.testing.assert_array_equal(again.stats.mean_image, start.stats.mean_image)
  # The run's statistics replaced in the middle of the run (one mean value off by 1): refused.
  stats_path = os.path.join(work, facts.STATS_FILE)
  saved = open(stats_path, "rb").read()
  with np.load(stats_path) as z:
    fields = {k: z[k] for k in z.files}
  fields["mean_image"][0, 0, 0] += 1
  np.savez(stats_path, **fields)
  with pytest.raises(run_data.DataChangedError, match="statistics .* are not the ones it started"):
    run_data.open_for_run(config, work, resuming=True)
  with open(stats_path, "wb") as f:
    f.write(saved)

  off_config = tiny.config(**{"dataset.name": f"folder:{root}", "dataset.prepared": "off"})
  with pytest.raises(run_data.DataChangedError) as e:
    run_data.open_for_run(off_config, work, resuming=True)
  assert f"it read the prepared shards in {beside} (raw rows), now the original images" in str(
      e.value
  )
  assert "\n" not in str(e.value)

  shutil.rmtree(os.path.dirname(beside))
  with pytest.raises(
      run_data.DataChangedError, match=f"started on the prepared shards in {beside}"
  ):
    run_data.open_for_run(config, work, resuming=True)
  allowed = run_data.open_for_run(config, work, resuming=True, allow=[run_data.ALLOW])
  assert (
      allowed.keep_stats
      and allowed.changes
      and not getattr(allowed.dataset.train, "prepared", False)
  )

  os.remove(os.path.join(work, facts.DATA_FILE))  # a run from before the record
  old = run_data.open_for_run(config, work, resuming=True)
  assert old.record["source"] == "originals" and not old.keep_stats
  np.testing.assert_array_equal(old.stats.mean_image, start.stats.mean_image)  # raw = pixels


@pytest.mark.parametrize(
    "content, says",
    [
        (b'{"fingerprint": ', "is not valid JSON"),
        (b'["fingerprint"]', "holds a JSON list, not a JSON object"),
        (b'{"fingerprint": "x"}', "'source' is missing or not a str"),
        (
            json.dumps(
                {
                    "source": "prepared",
                    "dataset": "digits",
                    "fingerprint": "f",
                    "num_train": 1,
                    "num_eval": 1,
                    "num_classes": 2,
                    "class_names_sha256": "s",
                    "prepared": "not an object",
                }
            ).encode(),
            "lacks the directory, format or plan digest",
        ),
    ],
)
def test_a_damaged_record_of_the_training_data_is_one_line_naming_it(tmp_path, content, says):
  path = tmp_path / facts.DATA_FILE
  path.write_bytes(content)
  with pytest.raises(run_data.DataChangedError) as e:
    run_data.read(str(tmp_path))
  text = str(e.value)
  assert "\n" not in text and str(path) in text and says in text, text
  assert "restore it, or delete it" in text
