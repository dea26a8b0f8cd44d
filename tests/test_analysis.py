"""Using a trained run (analysis.py, run_dir.py, the predict/figures/evaluate commands)
against independent references: the evaluation path, NumPy by hand, files written by hand."""

import io
import json
import logging
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

from alexnet_jax import (
    analysis,
    compare,
    evaluate,
    evaluation,
    facts,
    run_data,
    run_dir,
    train,
    train_state,
)
from alexnet_jax import data as data_lib
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Six classes of real photos (top-5 needs at least five); each validation image is saved in
# another mode: the predict path must read them all as evaluation does.
CLASSES = ("astronaut", "cat", "china", "coffee", "flower", "rocket")
VAL_FORMATS = {
    "astronaut": ("JPEG", None, ".jpg"),
    "cat": ("JPEG", "L", ".jpg"),  # grayscale
    "china": ("PNG", "P", ".png"),  # palette
    "coffee": ("PNG", "RGBA", ".png"),
    "flower": ("JPEG", "CMYK", ".jpg"),
    "rocket": ("PNG", None, ".png"),
}


def _photo(name):
  china, flower = load_sample_images().images
  return {
      "astronaut": skimage.data.astronaut(),
      "cat": skimage.data.chelsea(),
      "china": china,
      "coffee": skimage.data.coffee(),
      "flower": flower,
      "rocket": skimage.data.rocket(),
  }[name]


def _encode(array, fmt, mode=None):
  im = Image.fromarray(array)
  if mode:
    im = im.convert(mode)
  b = io.BytesIO()
  im.save(b, fmt)
  return b.getvalue()


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
  """A tiny run trained for 2 steps (checkpoints at 1 and 2) on a folder of real photos."""
  tmp = tmp_path_factory.mktemp("analysis")
  root = tmp / "photos"
  val = {}
  for c in CLASSES:
    photo = _photo(c)
    for i in range(4):
      path = root / "train" / c / f"{i}.jpg"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(_encode(photo[20 * i : 20 * i + 150, 10 * i : 10 * i + 200], "JPEG"))
    fmt, mode, ext = VAL_FORMATS[c]
    crop = photo[40:80, 60:120] if c == "flower" else photo[100:400, 50:450]  # also an upscale
    path = root / "val" / c / f"v{ext}"
    path.parent.mkdir(parents=True)
    path.write_bytes(_encode(crop, fmt, mode))
    val[c] = str(path)
  config = tiny.config(
      num_train_steps=2,
      checkpoint_every_steps=1,
      eval_every_steps=2,
      max_eval_batches=-1,
      **{"dataset.name": f"folder:{root}", "dataset.cache": False, "mesh.data": -1},
  )
  workdir = tmp / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json_best_effort())  # as main.py writes it
  train.train_and_evaluate(config, str(workdir))
  return {"workdir": str(workdir), "root": str(root), "val": val, "config": config}


def _center_probs(run, images256):
  """By hand: NumPy center window, mean and scale, the plain model, a NumPy softmax."""
  mean = np.asarray(run.stats.mean_image, np.float32)
  views = (images256[:, 16:240, 16:240].astype(np.float32) - mean[16:240, 16:240]) * (1 / 128)
  logits = np.asarray(run.model.apply(run.variables, jnp.asarray(views)), np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _split_images(config, split, max_examples=None):
  images, labels = [], []
  for b in data_lib.split_iterator(
      config.dataset,
      split,
      global_batch_size=5,
      shard_index=0,
      num_shards=1,
      max_examples=max_examples,
  ):
    images.append(b["image"][b["mask"]])
    labels.append(b["label"][b["mask"]])
  return np.concatenate(images), np.concatenate(labels)


def test_training_writes_what_inference_needs_into_the_run(folder_run):
  w, config = folder_run["workdir"], folder_run["config"]
  assert json.load(open(os.path.join(w, "class_names.json"))) == sorted(CLASSES)
  with open(os.path.join(w, "preprocessing.json")) as f:
    assert json.load(f) == {
        "dataset": f"folder:{folder_run['root']}",
        "image_size": 256,
        "resize": "round",
        "mean": "dataset",
        "mean_rgb": None,
        "std_rgb": None,
        "channel_order": "rgb",
        "scale": 1 / 128,
        "crop_size": 224,
        "view": "crop",
        "eval_crops": 1,
    }
  images, _ = _split_images(config, "train")
  assert len(images) == 24
  with np.load(os.path.join(w, "dataset_stats.npz")) as z:
    np.testing.assert_allclose(z["mean_image"], images.astype(np.float64).mean(0), atol=1e-3)
    px = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(z["covariance"], np.cov(px.T, bias=True), rtol=1e-6, atol=1e-9)
    assert int(z["num_images"]) == 24


def _evaluate_one_file(run, eval_step, path, label, root):
  """The evaluation path on a one-image folder: (p[label], top-1 error) from its loss."""
  for c in CLASSES:  # the class folders (train/ is never read by evaluation)
    os.makedirs(os.path.join(root, "train", c))
    open(os.path.join(root, "train", c, "x.jpg"), "wb").close()
  os.makedirs(os.path.join(root, "val", CLASSES[label]))
  shutil.copy(path, os.path.join(root, "val", CLASSES[label]))
  config = run.config.copy_and_resolve_references()
  config.dataset.name = f"folder:{root}"
  m = train.evaluate(config, eval_step, run.variables["params"], run.input_spec(), run.mesh)
  assert m["num_images"] == 1
  return np.exp(-m["loss"]), m["top1_error"]


@pytest.mark.parametrize("crops", [1, pytest.param(10, marks=pytest.mark.slow)])
def test_predict_equals_the_evaluation_of_the_same_file(folder_run, crops, tmp_path):
  run = analysis.load_run(folder_run["workdir"])
  eval_step = evaluation.make_eval_step(run.config, run.model, run.mesh, crops=crops)
  paths = [folder_run["val"][c] for c in CLASSES]
  probs = run.predict(paths, crops=crops)
  assert probs.shape == (6, 6)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  for label, path in enumerate(paths):
    p, top1 = _evaluate_one_file(run, eval_step, path, label, str(tmp_path / f"one{label}"))
    assert probs[label, label] == pytest.approx(p, rel=1e-5), path
    assert top1 == float(np.argmax(probs[label]) != label)
  # A PIL image and a decoded array of the same file give the same probabilities.
  again = run.predict([Image.open(paths[2]), np.asarray(Image.open(paths[0]))], crops=crops)
  np.testing.assert_allclose(again, probs[[2, 0]], rtol=1e-5, atol=1e-7)
  # The names that go with them.
  assert run.top_k(probs[:1], 2)[0][0] == (CLASSES[int(np.argmax(probs[0]))], float(probs[0].max()))


def test_restore_and_predict_from_a_copied_run_with_the_dataset_renamed_away(
    folder_run, tmp_path, monkeypatch
):
  files = [
      tmp_path / f"q{i}{os.path.splitext(p)[1]}" for i, p in enumerate(folder_run["val"].values())
  ]
  for f, p in zip(files, folder_run["val"].values()):
    shutil.copy(p, f)
  want = analysis.load_run(folder_run["workdir"]).predict(files)
  copy = tmp_path / "copied_run"
  shutil.copytree(folder_run["workdir"], copy)
  away = folder_run["root"] + "_away"
  os.rename(folder_run["root"], away)
  try:
    monkeypatch.setattr(
        data_lib.registry, "open_raw", lambda *a: pytest.fail("the dataset was read")
    )
    run = analysis.load_run(str(copy))
    assert run.missing == () and run.class_names == CLASSES
    np.testing.assert_array_equal(run.predict(files), want)
  finally:
    os.rename(away, folder_run["root"])


def test_an_older_run_restores_says_what_is_missing_and_recomputes_it(folder_run, tmp_path, caplog):
  old = tmp_path / "old_run"
  shutil.copytree(folder_run["workdir"], old)
  for name in facts.FILES:
    os.remove(old / name)
  with caplog.at_level(logging.WARNING):
    run = analysis.load_run(str(old))
  assert run.missing == facts.FILES
  assert run.class_names == ("0", "1", "2", "3", "4", "5")
  assert any(
      "dataset_stats.npz" in r.getMessage() and "from_dataset=True" in r.getMessage()
      for r in caplog.records
  )
  with pytest.raises(analysis.RunError, match=r"no dataset_stats.npz.*from_dataset=True"):
    run.predict(folder_run["val"]["cat"])
  run = analysis.load_run(str(old), from_dataset=True)
  assert run.missing == () and run_dir.missing(str(old)) == []
  assert run.class_names == CLASSES
  want = run_data.read_stats(folder_run["workdir"])
  np.testing.assert_array_equal(run.stats.mean_image, want.mean_image)


def test_a_workdir_without_checkpoints_is_a_clear_error(folder_run, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  shutil.copy(os.path.join(folder_run["workdir"], "config.json"), empty)
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*saved one yet"):
    analysis.load_run(str(empty))
  with pytest.raises(FileNotFoundError, match="not a directory"):
    analysis.load_run(str(tmp_path / "nowhere"))


def _mosaic_tile(mosaic, j, cols):
  r, c = divmod(j, cols)
  return mosaic[r * 12 : r * 12 + 11, c * 12 : c * 12 + 11]


def test_fig3_tiles_are_the_kernels_min_max_normalised(folder_run):
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(2, 11, 11, 3, 48)).astype(np.float32)  # the paper's 2 x 48
  kernel[1, ..., 5] = 0.25  # a constant kernel: grey, not a division by zero
  fig = analysis.conv1_kernels_figure({"params": {"conv1": {"kernel": kernel}}})
  assert len(fig.axes) == 2
  assert "96 kernels" in fig.get_suptitle()
  for t, ax in enumerate(fig.axes):
    assert ax.get_title().startswith(f"tower {t + 1}")
    mosaic = np.asarray(ax.images[0].get_array())
    assert mosaic.shape == (3 * 12 - 1, 16 * 12 - 1, 3)
    for j in range(48):
      k = kernel[t, :, :, :, j].astype(np.float64)
      want = (k - k.min()) / (k.max() - k.min()) if k.max() > k.min() else np.full_like(k, 0.5)
      np.testing.assert_allclose(_mosaic_tile(mosaic, j, 16), want, atol=1e-12)
  # The trained run: width 0.125 keeps 6 kernels per tower, drawn in one row each.
  run = analysis.load_run(folder_run["workdir"])
  k = np.asarray(run.variables["params"]["conv1"]["kernel"], np.float64)
  fig = analysis.conv1_kernels_figure(run.variables)
  mosaic = np.asarray(fig.axes[1].images[0].get_array())
  assert mosaic.shape == (11, 6 * 12 - 1, 3)
  k = k[1, ..., 4]
  np.testing.assert_allclose(_mosaic_tile(mosaic, 4, 6), (k - k.min()) / (k.max() - k.min()))


@pytest.mark.slow
def test_neighbour_indices_equal_a_brute_force_numpy_search(folder_run):
  run = analysis.load_run(folder_run["workdir"])
  queries = [folder_run["val"][c] for c in ("cat", "rocket")]
  nb = analysis.nearest_neighbours(run, queries, k=3, max_train_images=12)
  # By hand: the same 12 training images (spread: every class appears), fc7 of their
  # NumPy-cut center views through the plain model, all distances, a stable sort.
  train_images, train_labels = _split_images(folder_run["config"], "train", max_examples=12)
  assert len(train_images) == 12 and set(train_labels) == set(range(6))

  def fc7(images256):
    mean = np.asarray(run.stats.mean_image, np.float32)
    views = (images256[:, 16:240, 16:240].astype(np.float32) - mean[16:240, 16:240]) / 128
    _, state = run.model.apply(run.variables, jnp.asarray(views), mutable=["intermediates"])
    return np.asarray(state["intermediates"]["fc7_out"][0], np.float64)

  q = fc7(np.stack([data_lib.preprocess_encoded(open(p, "rb").read()).numpy() for p in queries]))
  f = fc7(train_images)
  d = np.linalg.norm(q[:, None] - f[None], axis=-1)
  want = np.argsort(d, axis=1, kind="stable")[:, :3]
  assert nb.num_scanned == 12
  np.testing.assert_array_equal(nb.indices, want)
  np.testing.assert_allclose(nb.distances, np.take_along_axis(d, want, 1), rtol=1e-4)
  np.testing.assert_array_equal(nb.images, train_images[want])
  np.testing.assert_array_equal(nb.labels, train_labels[want])
  fig = analysis.nearest_neighbours_figure(run, queries, neighbours=nb, query_labels=[1, 5])
  assert len(fig.axes) == 2 * 4
  np.testing.assert_array_equal(fig.axes[5].images[0].get_array(), train_images[want[1, 0]])
  assert fig.axes[4].get_title() == "query\n(rocket)"


def test_ensemble_of_one_equals_that_runs_evaluation(folder_run):
  w = folder_run["workdir"]
  want = evaluate.evaluate_checkpoint(w, crops=10)
  got = analysis.ensemble_evaluate([w], crops=10)
  assert got["num_images"] == want["num_images"] == 6
  assert got["top1_error"] == want["top1_error"] and got["top5_error"] == want["top5_error"]
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
  assert got["members"][0]["top1_error"] == want["top1_error"]


@pytest.mark.slow
def test_ensemble_of_two_equals_the_mean_of_their_softmaxes_by_hand(folder_run):
  w = folder_run["workdir"]
  runs = [analysis.load_run(w, step=1), analysis.load_run(w, step=2)]
  got = analysis.ensemble_evaluate(runs, crops=1, batch_size=4)  # 6 images: 2 padded slots
  images, labels = _split_images(folder_run["config"], "eval")
  probs = [_center_probs(r, images) for r in runs]
  assert np.abs(probs[0] - probs[1]).max() > 1e-4  # two different networks
  mean = (probs[0] + probs[1]) / 2

  def errors(p):
    order = np.argsort(-p, axis=1)
    return (
        float(np.mean(order[:, 0] != labels)),
        float(np.mean([labels[i] not in order[i, :5] for i in range(len(labels))])),
        float(np.mean(-np.log(p[np.arange(len(labels)), labels]))),
    )

  assert got["num_images"] == 6
  top1, top5, loss = errors(mean)
  assert (got["top1_error"], got["top5_error"]) == (top1, top5)
  assert got["loss"] == pytest.approx(loss, rel=1e-4)
  for member, p in zip(got["members"], probs):
    t1, t5, lo = errors(p)
    assert (member["top1_error"], member["top5_error"]) == (t1, t5)
    assert member["loss"] == pytest.approx(lo, rel=1e-4)


@pytest.mark.slow
def test_fig3_of_a_run_on_grey_digits_shows_its_random_start(tmp_path):
  """The README's note on the demo's Fig. 3 (colour noise): a grey image gives each colour
  channel of conv1 the same gradient, so training moves the kernels almost only in grey, and
  the colour in the figure is the random start's."""
  config = tiny.config(num_train_steps=2, **{"mesh.data": -1})  # trained, evaluated, saved once
  workdir = tmp_path / "digits"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json_best_effort())
  train.train_and_evaluate(config, str(workdir))
  run = analysis.load_run(str(workdir))
  start = train_state.create_train_state(config, run.model, run.mesh).params["conv1"]["kernel"]
  start = np.asarray(start, np.float64)  # [tower, 11, 11, rgb, out]
  change = np.asarray(run.variables["params"]["conv1"]["kernel"], np.float64) - start

  def colour_share(w):  # the part that differs between r, g and b, of the whole
    return np.linalg.norm(w - w.mean(axis=3, keepdims=True)) / np.linalg.norm(w)

  assert np.linalg.norm(change) > 1e-3 * np.linalg.norm(start)  # it trained
  assert colour_share(start) > 0.7 and colour_share(change) < 0.15, (
      colour_share(start),
      colour_share(change),
  )


def test_ensemble_runs_are_the_neighbours_trained_on_the_same_data(tmp_path):
  """The notebook's ensemble: the run and the runs beside it of the same dataset and
  classes (runs/demo, runs/demo_seed1), else the run alone (the notebook then skips)."""

  def write(name, dataset="digits", classes=("0", "1"), checkpoints=True):
    w = tmp_path / "runs" / name
    w.mkdir(parents=True)
    (w / "config.json").write_text(json.dumps({"dataset": {"name": dataset}}))
    (w / "class_names.json").write_text(json.dumps(list(classes)))
    if checkpoints:
      (w / "checkpoints").mkdir()
    return str(w)

  demo = write("demo")
  assert analysis.ensemble_runs(demo) == [demo]
  write("flowers", dataset="folder:/photos")  # other data
  write("digits_3", classes=("0", "1", "2"))  # other classes
  write("unstarted", checkpoints=False)  # nothing to restore
  (tmp_path / "runs" / "notes").mkdir()  # not a run
  assert analysis.ensemble_runs(demo) == [demo]
  seed1 = write("demo_seed1")
  assert analysis.ensemble_runs(demo) == [demo, seed1]
  assert analysis.ensemble_runs(seed1) == [seed1, demo]
  rel = os.path.relpath(demo)  # as the notebook names it (../runs/demo)
  assert analysis.ensemble_runs(rel) == [rel, os.path.join(os.path.dirname(rel), "demo_seed1")]


def test_ensemble_of_runs_with_different_class_sets_is_a_clear_error(folder_run, tmp_path):
  other = tmp_path / "other"
  shutil.copytree(folder_run["workdir"], other)
  (other / "class_names.json").write_text(json.dumps(["a", "b", "c", "d", "e", "f"]))
  with pytest.raises(analysis.RunError, match="different class sets"):
    analysis.ensemble_evaluate([folder_run["workdir"], str(other)])


def test_per_class_errors_and_confusion_matrix_by_hand():
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 4, 50)
  labels[labels == 3] = 2  # class 3 has no image: NaN
  probs = rng.random((50, 4))
  pred = probs.argmax(1)
  cm = analysis.confusion_matrix(probs, labels, 4)
  want = np.zeros((4, 4), int)
  for t, p in zip(labels, pred):
    want[t, p] += 1
  np.testing.assert_array_equal(cm, want)
  errors = analysis.per_class_errors(probs, labels, 4)
  for c in range(3):
    assert errors[c] == pytest.approx(np.mean(pred[labels == c] != c))
  assert np.isnan(errors[3])
  fig = analysis.confusion_figure(cm, ["w", "x", "y", "z"])
  shown = np.asarray(fig.axes[0].images[0].get_array())
  np.testing.assert_allclose(shown[0], want[0] / want[0].sum())
  assert not shown[3].any()


def test_an_undecodable_file_is_named_and_the_others_still_predicted(folder_run, tmp_path):
  run = analysis.load_run(folder_run["workdir"])
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(open(folder_run["val"]["cat"], "rb").read()[:300] + b"\x00garbage" * 30)
  paths = [
      folder_run["val"]["cat"],
      str(broken),
      str(tmp_path / "missing.png"),
      folder_run["val"]["china"],
  ]
  out = list(analysis.predict_files(run, paths))
  assert [p for p, _, _ in out] == paths
  assert out[1][1] is None and out[1][2].startswith(f"cannot decode {broken}")
  assert out[2][1] is None and out[2][2].startswith(f"cannot read {tmp_path / 'missing.png'}")
  assert "\n" not in out[1][2] + out[2][2]
  want = run.predict([paths[0], paths[3]])
  np.testing.assert_array_equal(np.stack([out[0][1], out[3][1]]), want)


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_figures_writes_the_three_pngs_and_the_per_class_errors(folder_run, tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    r = analysis.write_figures(folder_run["workdir"], str(tmp_path / "fig"), num_queries=3, k=2)
  # The dataset opened once for the three figures that read it: its line logged once.
  opened = [m for m in caplog.messages if m.startswith("dataset folder:")]
  assert len(opened) == 1, caplog.messages
  assert r["views"] == "1 view(s), the run's eval_crops"
  for name in ("fig3_conv1_kernels.png", "fig4_neighbours.png", "confusion.png"):
    with Image.open(tmp_path / "fig" / name) as im:
      assert im.size[0] > 300 and im.size[1] > 200, name
  run = analysis.load_run(folder_run["workdir"])
  probs = run.predict([folder_run["val"][c] for c in CLASSES])
  rows = json.load(open(tmp_path / "fig" / "per_class_errors.json"))["classes"]
  assert [row["class"] for row in rows] == list(CLASSES)
  assert [row["images"] for row in rows] == [1] * 6
  assert [row["top1_error"] for row in rows] == [
      float(np.argmax(p) != i) for i, p in enumerate(probs)
  ]
  assert r["top1_error"] == pytest.approx(np.mean([row["top1_error"] for row in rows]))


def _moved_away(folder_run, tmp_path) -> str:
  """A copy of the run whose dataset is not on this machine (its config.json names a
  folder that does not exist here)."""
  moved = tmp_path / "moved"
  shutil.copytree(folder_run["workdir"], moved)
  config = json.loads((moved / "config.json").read_text())
  config["dataset"]["name"] = f"folder:{tmp_path / 'elsewhere'}"
  (moved / "config.json").write_text(json.dumps(config))
  return str(moved)


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_figures_without_the_dataset_draw_fig3_and_name_what_they_skip(folder_run, tmp_path):
  moved = _moved_away(folder_run, tmp_path)
  r = analysis.write_figures(moved, str(tmp_path / "fig"))
  assert list(r["paths"]) == ["fig3_conv1_kernels.png"]
  assert sorted(r["skipped"]) == sorted(analysis.DATASET_FIGURES)
  for need in r["skipped"].values():
    assert f"'folder:{tmp_path / 'elsewhere'}', which cannot be read here" in need
  assert r["top1_error"] is None and sorted(os.listdir(tmp_path / "fig")) == [
      "fig3_conv1_kernels.png"
  ]
  # The same kernels as the run's own: Fig. 3 drawn from the copied checkpoint.
  full = analysis.write_figures(folder_run["workdir"], str(tmp_path / "full"), num_queries=1, k=1)
  with (
      Image.open(full["paths"]["fig3_conv1_kernels.png"]) as a,
      Image.open(r["paths"]["fig3_conv1_kernels.png"]) as b,
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _command(module, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


@pytest.mark.slow
def test_predict_command_prints_top5_and_names_the_file_it_cannot_decode(folder_run, tmp_path):
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
  good = [folder_run["val"]["coffee"], folder_run["val"]["flower"]]
  odd = str(tmp_path / "a photo\nof: flowers.jpg")  # quoted: still one line, one name
  shutil.copy(good[1], odd)
  r = _command(
      "alexnet_jax.predict",
      f"--workdir={folder_run['workdir']}",
      "--crops=10",
      good[0],
      str(broken),
      good[1],
      odd,
  )
  assert r.returncode == 1, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  assert [line.split(": ")[0] for line in lines[:2]] == good
  assert len(lines) == 3 and lines[2].startswith(json.dumps(odd) + ": "), lines
  assert lines[2][len(json.dumps(odd)) :] == lines[1][len(good[1]) :]  # the same image
  probs = analysis.load_run(folder_run["workdir"]).predict(good, crops=10)
  for line, p in zip(lines, probs):
    pairs = [item.rsplit(" ", 1) for item in line.split(": ", 1)[1].split(", ")]
    order = np.argsort(-p)[:5]
    assert [name for name, _ in pairs] == [CLASSES[j] for j in order]
    np.testing.assert_allclose([float(v) for _, v in pairs], p[order], atol=6e-5)
  assert f"{folder_run['workdir']}, step 2: 10 view(s), from --crops" in r.stderr.splitlines()
  named = [line for line in r.stderr.splitlines() if str(broken) in line]
  assert len(named) == 1 and named[0].startswith("cannot decode"), r.stderr[-3000:]
  bad = _command("alexnet_jax.predict", f"--workdir={tmp_path}", good[0])
  assert bad.returncode != 0 and "config.json not found" in bad.stderr.splitlines()[-1]


@pytest.mark.slow
def test_evaluate_command_ensembles_several_workdirs(folder_run, tmp_path):
  runs = [tmp_path / "a", tmp_path / "b"]
  for w in runs:
    shutil.copytree(folder_run["workdir"], w)
  out = tmp_path / "ensemble.json"
  r = _command(
      "alexnet_jax.evaluate", *(f"--workdir={w}" for w in runs), "--crops=1", f"--out={out}"
  )
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(out))
  single = analysis.ensemble_evaluate([folder_run["workdir"]], crops=1)
  # Two copies of one run: the ensemble is that run.
  assert m["top1_error"] == single["top1_error"] and m["num_images"] == 6
  assert m["loss"] == pytest.approx(single["loss"], rel=1e-5)
  assert (
      f"ensemble of 2, 6 images, 1 view(s), from --crops: top-1 error "
      f"{single['top1_error']:.4f}" in r.stdout
  )
  # Each run's own result is saved in it, where compare finds it.
  for w in runs:
    saved = json.load(open(w / "eval_2_1crop.json"))
    assert saved["top1_error"] == single["top1_error"] and saved["num_images"] == 6
    assert f"{w} (step 2): top-1 error" in r.stdout
    assert compare.read_run(str(w)).evaluated[1]["top1_error"] == single["top1_error"]


def test_evaluate_uses_the_runs_own_views_unless_told(folder_run):
  """One rule for views: None means the run's eval_crops (1 here), and says so."""
  w = folder_run["workdir"]
  assert analysis.load_run(w).eval_crops == 1
  default = evaluate.evaluate_checkpoint(w)
  assert default["crops"] == 1 and default["views"] == "1 view(s), the run's eval_crops"
  one = evaluate.evaluate_checkpoint(w, crops=1)
  assert (one["top1_error"], one["loss"]) == (default["top1_error"], default["loss"])
  assert one["views"] == "1 view(s), from --crops"
  ensemble = analysis.ensemble_evaluate([w])
  assert ensemble["crops"] == 1 and ensemble["members"][0]["crops"] == 1
  assert ensemble["top1_error"] == default["top1_error"]


@pytest.mark.parametrize(
    "name, shown",
    [
        ("runs/x/digit_0.png", "runs/x/digit_0.png"),
        ("my photo.jpg", '"my photo.jpg"'),
        ("two\nlines.png", '"two\\nlines.png"'),
        ('say "cheese".jpg', '"say \\"cheese\\".jpg"'),
        ("a: b.png", '"a: b.png"'),
        ("caf\u00e9.jpg", "caf\u00e9.jpg"),
        ("bad\udcff.jpg", '"bad\\udcff.jpg"'),  # undecodable bytes of a file name
        ("", '""'),
    ],
)
def test_predict_quotes_the_file_names_that_need_it(name, shown):
  assert analysis.quoted(name) == shown
  assert "\n" not in shown and shown.isprintable()
  if shown != name:
    assert json.loads(shown) == name


# ---- hostile input: FIFOs, devices, bombs; text from the run's files ----------------------------
def test_predict_refuses_a_fifo_a_device_and_a_bomb_and_predicts_the_good_image_beside_them(
    folder_run, tmp_path
):
  """Each bad file gets one line (a FIFO is refused by stat before any open: it would block
  forever; the 16000 x 16000 PNG by its header: never decoded); the good one is predicted as
  load_run's predict does."""
  import threading

  from tests import data_helpers

  fifo = tmp_path / "pipe.jpg"
  os.mkfifo(fifo)
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(data_helpers.png_bomb(16000))
  good = folder_run["val"]["coffee"]
  run = analysis.load_run(folder_run["workdir"])
  out = {}
  t = threading.Thread(
      target=lambda: out.update(
          r=list(analysis.predict_files(run, [str(fifo), "/dev/zero", str(bomb), good]))
      ),
      daemon=True,
  )
  t.start()
  t.join(120)
  assert not t.is_alive(), "predict blocked on a FIFO or a device"
  (p0, probs0, e0), (p1, probs1, e1), (p2, probs2, e2), (p3, probs3, e3) = out["r"]
  assert e0 == f"cannot read {fifo}: it is a FIFO (named pipe), not a regular file"
  assert e1 == "cannot read /dev/zero: it is a character device, not a regular file"
  assert e2.startswith(f"cannot decode {bomb}: its header declares 256,000,000 pixels, more than")
  assert "--max_image_pixels" in e2 and probs0 is probs1 is probs2 is None
  assert e3 is None
  np.testing.assert_allclose(probs3, run.predict([good])[0], atol=1e-6)
  # The limit is the caller's: an image above a lowered one is named too.
  [(_, none, error)] = analysis.predict_files(run, [good], max_pixels=1000)
  assert none is None and "more than the 1,000 decoded at most" in error


@pytest.mark.slow
def test_predict_command_beside_a_fifo_and_a_bomb_prints_escaped_class_names(folder_run, tmp_path):
  """The command: a FIFO and a 16000 x 16000 PNG named before a good photo get one line each
  on stderr (exit status 1), the photo is predicted; class_names.json holding a terminal
  escape sequence and a newline: the line stays one printable line."""
  from tests import data_helpers

  copy = tmp_path / "copy"
  shutil.copytree(folder_run["workdir"], copy)
  names = json.load(open(copy / run_dir.CLASS_NAMES_FILE))
  names[names.index("coffee")] = "cof\x1b[2Jfee\nrm -rf"
  (copy / run_dir.CLASS_NAMES_FILE).write_text(json.dumps(names))
  fifo = tmp_path / "pipe.jpg"
  os.mkfifo(fifo)
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(data_helpers.png_bomb(16000))
  good = folder_run["val"]["coffee"]
  r = _command("alexnet_jax.predict", f"--workdir={copy}", "--top=6", str(fifo), str(bomb), good)
  assert r.returncode == 1, r.stderr[-3000:]
  [line] = r.stdout.splitlines()
  assert line.startswith(f"{good}: ") and line.isprintable(), line
  assert "cof\\x1b[2Jfee\\nrm -rf" in line, line
  named = [x for x in r.stderr.splitlines() if str(fifo) in x or str(bomb) in x]
  assert named == [
      f"cannot read {fifo}: it is a FIFO (named pipe), not a regular file",
      f"cannot decode {bomb}: "
      + data_lib.too_many_pixels(16000 * 16000, data_lib.MAX_IMAGE_PIXELS),
  ], r.stderr[-3000:]
  assert "Traceback" not in r.stderr
