"""The files of a run directory beside its checkpoints, written and read back, and damaged,
replaced by FIFOs or symbolic links (one line naming the file, nothing written through a link)."""

import io
import json
import os
import re

import numpy as np
import pytest

from alexnet_jax import data as data_lib
from alexnet_jax import facts, run_data, run_dir
from alexnet_jax.input_spec import InputSpec
from tests import tiny


def _stats(seed=0):
  rs = np.random.RandomState(seed)
  cov = rs.rand(3, 3)
  return data_lib.DatasetStats(
      mean_image=(rs.rand(256, 256, 3) * 255).astype(np.float32),
      covariance=cov @ cov.T,
      eigval=rs.rand(3).astype(np.float32),
      eigvec=np.linalg.qr(rs.randn(3, 3))[0].astype(np.float32),
      num_images=24,
      bad_files=("a/broken.jpg",),
  )


def _info(names):
  return data_lib.DatasetInfo(
      name="tiny", num_classes=len(names), num_train=24, num_eval=6, class_names=tuple(names)
  )


def test_write_then_read_what_inference_needs(tmp_path):
  workdir, stats = str(tmp_path / "run"), _stats()
  config = tiny.config(eval_crops=10)
  info = _info(["zero", "one"])
  spec = InputSpec.from_config(config, stats)
  paths = run_dir.write(workdir, config, info, stats, spec)
  assert sorted(os.path.basename(p) for p in paths) == sorted(facts.FILES)
  assert run_dir.missing(workdir) == []
  back = run_data.read_stats(workdir)
  for field in ("mean_image", "covariance", "eigval", "eigvec"):
    np.testing.assert_array_equal(getattr(back, field), getattr(stats, field))
  assert back.num_images == 24 and back.bad_files == ("a/broken.jpg",)
  assert run_dir.read_class_names(workdir) == ["zero", "one"]
  saved = run_dir.read_preprocessing(workdir)
  assert saved == {"dataset": "tiny", **spec.to_json(), "eval_crops": 10}


def test_missing_names_what_an_older_run_lacks(tmp_path):
  workdir = str(tmp_path)
  assert run_dir.missing(workdir) == list(facts.FILES)
  run_dir.write_class_names(workdir, ["a"])
  pixel = tiny.config(**{"input.mean": "pixel"})
  # A mean pixel needs no statistics: only preprocessing.json is missing.
  assert run_dir.missing(workdir, pixel) == [facts.PREPROCESSING_FILE]
  assert run_data.read_stats(workdir) is None and run_dir.read_preprocessing(workdir) is None


def test_mean_image_checked_copied_atomically(tmp_path):
  src, dst = tmp_path / "src", tmp_path / "dst"
  src.mkdir()
  dst.mkdir()
  with pytest.raises(ValueError, match="must be"):
    run_dir.write_mean_image(str(src), np.zeros((224, 224, 3)))
  mean = _stats().mean_image
  run_dir.write_mean_image(str(src), mean)
  assert run_dir.has_mean_image(str(src)) and not run_dir.has_mean_image(str(dst))
  run_dir.copy_mean_image(str(src), str(dst))
  np.testing.assert_array_equal(run_dir.read_mean_image(str(dst)), mean)
  assert sorted(os.listdir(dst)) == [facts.MEAN_IMAGE_FILE]  # no temporary file left


def test_class_names_and_names_files(tmp_path):
  (tmp_path / facts.CLASS_NAMES_FILE).write_text(json.dumps({"not": "a list"}))
  with pytest.raises(ValueError, match="JSON list of class names"):
    run_dir.read_class_names(str(tmp_path))
  (tmp_path / "names.txt").write_text("tench\ngoldfish\n\n")
  assert run_dir.read_names_file(str(tmp_path / "names.txt")) == ["tench", "goldfish", ""]


def test_read_config_names_a_directory_that_is_not_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="is .* the --workdir of a run"):
    run_dir.read_config(str(tmp_path))


# ---- hostile input: every run file read fails with one line naming it ---------------------------
BAD_JSON = {
    "invalid": (
        b'{"model": {"width": ',
        r"is not valid JSON \(Expecting value: line 1 column 21\)",
    ),
    "a list": (b"[1, 2, 3]", r"holds a JSON list, not a JSON "),
    "a number": (b"42", r"holds a JSON number, not a JSON "),
    "not UTF-8": (b"\xff\xfe\x00{", r"is not UTF-8 text"),
    "deep": (b"[" * 50_000 + b"]" * 50_000, r"nests its JSON too deeply|holds a JSON list"),
}


def _one_line(e, path):
  text = str(e)
  assert "\n" not in text and str(path) in text, text
  return text


@pytest.mark.parametrize("kind", sorted(BAD_JSON))
def test_a_damaged_json_run_file_fails_with_one_line_naming_it(tmp_path, kind):
  from alexnet_jax import config_checks

  content, message = BAD_JSON[kind]
  (tmp_path / "checkpoints" / "1").mkdir(parents=True)
  readers = {
      run_dir.CONFIG_FILE: [
          lambda: run_dir.read_config(str(tmp_path)),
          lambda: config_checks.recorded_config(str(tmp_path)),
      ],
      run_dir.PREPROCESSING_FILE: [lambda: run_dir.read_preprocessing(str(tmp_path))],
  }
  if kind != "a list":
    readers[run_dir.CLASS_NAMES_FILE] = [lambda: run_dir.read_class_names(str(tmp_path))]
  for name, fns in readers.items():
    (tmp_path / name).write_bytes(content)
    for fn in fns:
      with pytest.raises(config_checks.ConfigError) as e:
        fn()
      assert re.search(message, _one_line(e.value, tmp_path / name)), str(e.value)


def test_a_config_that_is_an_object_of_the_wrong_shape_is_one_line(tmp_path):
  for content in ({"model": "paper"}, {"dataset": [1]}, {"augment": 3, "model": {}}):
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps(content))
    with pytest.raises(run_dir.RunFileError) as e:
      run_dir.read_config(str(tmp_path))
    _one_line(e.value, tmp_path / run_dir.CONFIG_FILE)
  (tmp_path / run_dir.CLASS_NAMES_FILE).write_text('["a", 2]')
  with pytest.raises(run_dir.RunFileError, match="not all strings"):
    run_dir.read_class_names(str(tmp_path))


def test_a_fifo_in_place_of_a_run_file_is_refused_without_blocking(tmp_path):
  import threading

  for name in (run_dir.CONFIG_FILE, run_dir.CLASS_NAMES_FILE, run_dir.STATS_FILE):
    os.mkfifo(tmp_path / name)
  out = {}

  def read_all():
    for fn in (run_dir.read_config, run_dir.read_class_names, run_data.read_stats):
      try:
        fn(str(tmp_path))
      except run_dir.RunFileError as e:
        out[fn.__name__] = str(e)

  t = threading.Thread(target=read_all, daemon=True)
  t.start()
  t.join(20)
  assert not t.is_alive(), "a reader blocked on a FIFO"
  assert len(out) == 3 and all(
      "is a FIFO (named pipe), not a regular file" in v for v in out.values()
  )


def _npz(path, **arrays):
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def test_a_damaged_statistics_file_is_one_line_and_allocates_nothing_it_claims(tmp_path):
  import tracemalloc
  import zipfile

  workdir, stats = str(tmp_path), _stats()
  run_dir.write(
      workdir, tiny.config(), _info(["a", "b"]), stats, InputSpec.from_config(tiny.config(), stats)
  )
  path = tmp_path / run_dir.STATS_FILE
  good = path.read_bytes()
  cases = {"truncated": good[: len(good) // 2], "empty": b"", "not a zip": b"x" * 1000}
  for name, data in cases.items():
    path.write_bytes(data)
    with pytest.raises(run_dir.RunFileError) as e:
      run_data.read_stats(workdir)
    assert "delete it" in _one_line(e.value, path), name
  fields = run_dir.stats_fields(stats)
  _npz(path, **{**fields, "covariance": np.zeros((4, 4))})
  with pytest.raises(run_dir.RunFileError, match=r"covariance has shape \(4, 4\), not \(3, 3\)"):
    run_data.read_stats(workdir)
  del fields["eigval"]
  _npz(path, **fields)
  with pytest.raises(run_dir.RunFileError, match=r"has no array 'eigval'"):
    run_data.read_stats(workdir)
  # A header claiming 30 billion names of 8 characters (960 GB) in a member of a few bytes.
  fields = run_dir.stats_fields(stats)
  _npz(path, **{k: v for k, v in fields.items() if k != "bad_files"})
  header = np.lib.format
  with zipfile.ZipFile(path, "a") as z:
    buf = io.BytesIO()
    header.write_array_header_1_0(
        buf, {"descr": "<U8", "fortran_order": False, "shape": (30_000_000_000,)}
    )
    z.writestr("bad_files.npy", header.magic(1, 0) + buf.getvalue()[6 + 2 :] + b"\0" * 64)
  tracemalloc.start()
  try:
    with pytest.raises(run_dir.RunFileError, match="bad_files is truncated") as e:
      run_data.read_stats(workdir)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  _one_line(e.value, path)
  assert peak < 50 * len(good), peak  # the file, a few times: never the claimed 960 GB


def test_metrics_lines_that_are_not_rows_are_counted_and_skipped(tmp_path):
  lines = [
      '{"step": 1, "split": "train", "loss": 2.3, "learning_rate": 0.01}',
      '{"step": 2, "split": "eval", "top1_error": 0.5, "top5_error": 0.1}',
      "[1, 2]",
      '{"step": "x", "split": "train", "loss": 1, "learning_rate": 1}',
      '{"step": 3, "split": "train", "loss": 1.5, "learning_rate": "high"}',
      '{"step": 4, "split": "train"',
      '"text"',
      '{"step": 5, "split": "test", "anything": 1}',
  ]
  (tmp_path / run_dir.METRICS_FILE).write_text("\n".join(lines) + "\n")
  rows, bad = run_dir.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2, 5] and bad == 5


def test_a_run_file_is_never_written_through_a_symbolic_link(tmp_path, caplog):
  """write_json, the statistics, the mean image, config.json and config_history.jsonl: a link
  in the run is replaced by the run's own file; the link's target is left as it was."""
  from alexnet_jax import config_checks

  outside = tmp_path / "outside"
  outside.mkdir()
  workdir = tmp_path / "run"
  workdir.mkdir()
  names = [
      run_dir.CLASS_NAMES_FILE,
      run_dir.PREPROCESSING_FILE,
      run_dir.STATS_FILE,
      run_dir.MEAN_IMAGE_FILE,
      run_dir.CONFIG_FILE,
      facts.HISTORY_FILE,
  ]
  for name in names:
    (outside / name).write_text("precious\n")
    os.symlink(outside / name, workdir / name)
  stats, config = _stats(), tiny.config()
  run_dir.write(
      str(workdir), config, _info(["a", "b"]), stats, InputSpec.from_config(config, stats)
  )
  run_dir.write_mean_image(str(workdir), stats.mean_image)
  os.remove(workdir / run_dir.CONFIG_FILE)  # a first launch: config.json and the history
  os.symlink(outside / run_dir.CONFIG_FILE, workdir / run_dir.CONFIG_FILE)
  config_checks.record(config, str(workdir), {"seed": (0, 1)})
  for name in names:
    assert (outside / name).read_text() == "precious\n", name
    assert not os.path.islink(workdir / name), name
  assert run_dir.read_class_names(str(workdir)) == ["a", "b"]
  history = (workdir / facts.HISTORY_FILE).read_text().splitlines()
  assert history[0] == "precious" and json.loads(history[1])["event"] == "resumed with changes"
  assert caplog.text.count("was a symbolic link") >= len(names)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        run_dir.CONFIG_FILE,
        run_dir.CLASS_NAMES_FILE,
        run_dir.PREPROCESSING_FILE,
        facts.DATA_FILE,
        run_dir.STATS_FILE,
        run_dir.METRICS_FILE,
    ],
)
def test_fuzz_run_file_readers_end_in_their_error_or_what_the_file_holds(tmp_path, name):
  """Mutations of each run file a reader reads: one line naming the file (RunFileError, or
  run_data's DataChangedError), or the values an independent reading of the same bytes
  gives (json.loads, np.load); peak of tracked memory bounded."""
  import hypothesis

  from alexnet_jax import config_checks, run_data
  from tests import fuzz

  workdir = tmp_path / "run"
  workdir.mkdir()
  stats, config = _stats(), tiny.config()
  run_dir.write(
      str(workdir), config, _info(["zero", "one"]), stats, InputSpec.from_config(config, stats)
  )
  config_checks.record(config, str(workdir), {})
  record = {
      "version": 1,
      "dataset": "digits",
      "source": "originals",
      "description": "digits",
      "fingerprint": "digits:1500",
      "num_train": 1500,
      "num_eval": 297,
      "num_classes": 10,
      "class_names_sha256": "0" * 64,
      "stats": {"file": run_dir.STATS_FILE, "sha256": "1" * 64, "num_images": 1500},
  }
  run_data.write(str(workdir), record)
  rows = [
      {"step": s, "split": "train", "loss": 2.0 / s, "learning_rate": 0.01} for s in (1, 2, 3)
  ] + [{"step": 3, "split": "eval", "top1_error": 0.5, "top5_error": 0.1}]
  (workdir / run_dir.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
  path = workdir / name
  valid = path.read_bytes()

  def json_of(data):
    try:
      return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
      return None

  w = str(workdir)
  readers = {
      run_dir.CONFIG_FILE: (lambda: run_dir.read_config(w).to_dict(), dict),
      run_dir.CLASS_NAMES_FILE: (lambda: run_dir.read_class_names(w), list),
      run_dir.PREPROCESSING_FILE: (lambda: run_dir.read_preprocessing(w), dict),
      facts.DATA_FILE: (lambda: run_data.read(w), dict),
      run_dir.STATS_FILE: (lambda: run_data.read_stats(w), None),
      run_dir.METRICS_FILE: (lambda: run_dir.read_metrics(w), None),
  }
  reader, kind = readers[name]
  error = run_data.DataChangedError if name == facts.DATA_FILE else run_dir.RunFileError

  def agrees(out, data):
    if kind is not None:  # a JSON file: json.loads reads the same kind of value
      ref = json_of(data)
      assert isinstance(ref, kind)
      if name in (run_dir.CLASS_NAMES_FILE, run_dir.PREPROCESSING_FILE, facts.DATA_FILE):
        assert out == ref
    elif name == run_dir.STATS_FILE:  # NumPy's own reading of the bytes
      with np.load(io.BytesIO(data), allow_pickle=False) as z:
        for field in ("mean_image", "covariance", "eigval", "eigvec"):
          np.testing.assert_array_equal(getattr(out, field), z[field])
        assert out.num_images == int(z["num_images"])
    else:  # metrics: each row one of the file's lines, as JSON reads it
      lines = [json_of(x.encode()) for x in data.decode("utf-8", "replace").splitlines()]
      assert all(r in lines for r in out[0]) and len(out[0]) + out[1] <= len(lines)

  @fuzz.settings(examples=120)
  @hypothesis.given(data=fuzz.mutated(valid))
  def run(data):
    path.write_bytes(data)
    out = fuzz.check(reader, error, max_peak=(2 << 20) + 20 * len(data))
    if not isinstance(out, Exception):
      agrees(out, data)

  run()
