"""Keras weights in and out (alexnet_jax.convert --from=keras / --to=keras) against Keras itself
(Keras 3, tensorflow-cpu): the tutorial's BatchNorm AlexNet built with keras.Sequential, with
moving statistics calibrated on real photos and then perturbed, saved as .keras, .weights.h5
and Keras 2's .h5; the converted run predicts Keras's probabilities, updates its BatchNorm
statistics as Keras's training call does, and exports a file Keras's load_weights reads."""

import json
import os
import re
import shutil
import sys
import zipfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import skimage.data  # noqa: E402
import skimage.transform  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from alexnet_jax import (
    pretrained,  # noqa: E402
    train_step,
)
from alexnet_jax.data import oxford17  # noqa: E402
from alexnet_jax.pretrained import keras_h5  # noqa: E402
from tests import forkserver  # noqa: E402

keras = pytest.importorskip("keras")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- Keras's own network -------------------------------------------------------------------
def keras_alexnet(num_classes: int = 17, dropout: float = 0.4):
  """The tutorial's model, layer by layer (channels last, 224x224x3)."""
  L = keras.layers
  relu = lambda: L.Activation("relu")
  pool = lambda: L.MaxPooling2D(pool_size=(2, 2), strides=(2, 2), padding="valid")
  return keras.Sequential(
      [
          keras.Input((224, 224, 3)),
          L.Conv2D(96, (11, 11), strides=(4, 4), padding="valid"),
          relu(),
          pool(),
          L.BatchNormalization(),
          L.Conv2D(256, (11, 11), strides=(1, 1), padding="valid"),
          relu(),
          pool(),
          L.BatchNormalization(),
          L.Conv2D(384, (3, 3), strides=(1, 1), padding="valid"),
          relu(),
          L.BatchNormalization(),
          L.Conv2D(384, (3, 3), strides=(1, 1), padding="valid"),
          relu(),
          L.BatchNormalization(),
          L.Conv2D(256, (3, 3), strides=(1, 1), padding="valid"),
          relu(),
          pool(),
          L.BatchNormalization(),
          L.Flatten(),
          L.Dense(4096),
          relu(),
          L.Dropout(dropout),
          L.BatchNormalization(),
          L.Dense(4096),
          relu(),
          L.Dropout(dropout),
          L.BatchNormalization(),
          L.Dense(1000),
          relu(),
          L.Dropout(dropout),
          L.BatchNormalization(),
          L.Dense(num_classes),
          L.Activation("softmax"),
      ]
  )


def photos(n: int = 4, offset: int = 0) -> np.ndarray:
  """Real photos (scikit-learn's and scikit-image's), warped to 224x224 uint8."""
  china, flower = load_sample_images().images
  every = [
      china,
      flower,
      skimage.data.astronaut(),
      skimage.data.chelsea(),
      skimage.data.coffee(),
      skimage.data.rocket(),
  ]
  out = [
      (skimage.transform.resize(p, (224, 224), anti_aliasing=True) * 255).round().astype(np.uint8)
      for p in (every * 2)[offset : offset + n]
  ]
  return np.stack(out)


def calibrate(model, images: np.ndarray, seed: int = 0) -> None:
  """Non-trivial BatchNorm state: each layer's moving mean and variance are its input's
  statistics on `images`, perturbed (mean + 0.3 std N(0,1), variance x U(0.5, 2)), gamma
  U(0.5, 1.5), beta N(0, 0.3): every BatchNorm matters, and the logits are O(1)."""
  rng = np.random.default_rng(seed)
  x = images.astype(np.float32) / 255
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      axes = tuple(range(x.ndim - 1))
      mean, std = x.mean(axes), x.std(axes)
      c = mean.shape[0]
      layer.set_weights(
          [
              rng.uniform(0.5, 1.5, c).astype(np.float32),
              rng.normal(0, 0.3, c).astype(np.float32),
              (mean + 0.3 * std * rng.normal(size=c)).astype(np.float32),
              (std**2 * rng.uniform(0.5, 2, c) + 1e-4).astype(np.float32),
          ]
      )
    x = np.asarray(layer(x, training=False))


def keras_arrays(model) -> list:
  """Each layer with weights, in model order: its arrays (Keras's order)."""
  return [[np.asarray(w) for w in layer.weights] for layer in model.layers if layer.weights]


def ours_in_model_order(layers: dict) -> list:
  """keras_h5.read's layers in the Sequential's order (conv1, bn1, ..., head)."""
  order = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "conv5", "bn5"]
  order += ["fc6", "bn6", "fc7", "bn7", "fc8", "bn8", "head"]
  return [list(layers[n]) for n in order]


def assert_same_arrays(a: list, b: list):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert len(x) == len(y)
    for u, v in zip(x, y):
      assert u.shape == v.shape
      np.testing.assert_array_equal(u, v)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
  """The tutorial's network with calibrated statistics, saved four ways. Another model is
  built first, so that this one's layers are named conv2d_5, ... (not what files number)."""
  keras.utils.set_random_seed(0)
  keras_alexnet()
  model = keras_alexnet()
  assert model.layers[0].name != "conv2d"
  calibrate(model, photos(6))
  d = tmp_path_factory.mktemp("keras")
  paths = {
      "keras": str(d / "alexnet.keras"),
      "weights": str(d / "alexnet.weights.h5"),
      "legacy": str(d / "alexnet.h5"),
  }
  model.save(paths["keras"])
  model.save_weights(paths["weights"])
  model.save(paths["legacy"])  # Keras 3 writes Keras 2's HDF5 layout for .h5
  paths["keras2_weights"] = str(d / "keras2.h5")
  _write_keras2_weights(model, paths["keras2_weights"])
  return model, paths


def _write_keras2_weights(model, path):
  """Keras 2's model.save_weights('x.h5'), written by hand: `layer_names` in model order
  (names from an earlier session: numbered from 7), each group's `weight_names` ending :0."""
  names = [f"{type(layer).__name__.lower()}_{7 + i}" for i, layer in enumerate(model.layers)]
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([n.encode() for n in names])
    f.attrs["keras_version"] = b"2.15.0"
    for name, layer in zip(names, model.layers):
      g = f.create_group(name)
      weight_names = [f"{name}/{w.path.rsplit('/', 1)[-1]}:0" for w in layer.weights]
      g.attrs["weight_names"] = np.array([w.encode() for w in weight_names])
      for w, array in zip(weight_names, layer.get_weights()):
        g.create_dataset(w, data=array)


# ---- reading and writing Keras's files -----------------------------------------------------
@pytest.mark.parametrize("kind", ["keras", "weights", "legacy", "keras2_weights"])
def test_reading_gives_keras_own_arrays_in_model_order(keras_files, kind):
  model, paths = keras_files
  layers = keras_h5.read(paths[kind])
  assert_same_arrays(ours_in_model_order(layers), keras_arrays(model))
  # The statistics are the calibrated ones, not Keras's defaults.
  assert np.abs(layers["bn3"][2]).max() > 0.01 and np.abs(layers["bn3"][3] - 1).max() > 0.01


def test_written_weights_are_keras_own_file_and_load_into_keras(keras_files, tmp_path):
  """read -> write reproduces Keras's save_weights file bit for bit in every weight dataset,
  and Keras's load_weights puts every array back."""
  model, paths = keras_files
  out = str(tmp_path / "back.weights.h5")
  keras_h5.write(out, keras_h5.read(paths["weights"]))
  with h5py.File(paths["weights"]) as want, h5py.File(out) as got:
    datasets = []
    want.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
    assert len(datasets) == 17 * 2 + 8 * 2  # 9 (kernel, bias) + 8 x 4 statistics
    for name in datasets:
      assert got[name].dtype == want[name].dtype
      np.testing.assert_array_equal(got[name][()], want[name][()])
    mine = []
    got.visititems(lambda n, o: mine.append(n) if isinstance(o, h5py.Dataset) else None)
    assert sorted(mine) == sorted(datasets)
  fresh = keras_alexnet()
  fresh.load_weights(out)
  assert_same_arrays(keras_arrays(fresh), keras_arrays(model))


def _edited_keras(src: str, dst: str, edit) -> str:
  """A copy of the .keras zip `src` whose config.json's layer list `edit` changed."""
  with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
    for name in z.namelist():
      data = z.read(name)
      if name == "config.json":
        config = json.loads(data)
        edit(config["config"]["layers"])
        data = json.dumps(config).encode()
      out.writestr(name, data)
  return dst


def test_not_the_tutorials_network_is_one_clear_line_and_writes_nothing(keras_files, tmp_path):
  _, paths = keras_files
  preset = pretrained.preset_config("keras")
  workdir = str(tmp_path / "run")

  def error(src, config=preset) -> str:
    with pytest.raises(pretrained.ConversionError) as e:
      pretrained.import_run("keras", src, workdir, config)
    assert "\n" not in str(e.value) and not os.path.exists(workdir)
    assert not [n for n in os.listdir(tmp_path) if "converting" in n]
    return str(e.value)

  L = keras.layers
  small = keras.Sequential(
      [keras.Input((32, 32, 3)), L.Conv2D(8, 3), L.BatchNormalization(), L.Flatten(), L.Dense(5)]
  )
  small.save_weights(str(tmp_path / "small.weights.h5"))
  msg = error(str(tmp_path / "small.weights.h5"))
  assert "1 Conv2D (conv2d (3, 3, 3, 8))" in msg and "1 Dense (dense (7200, 5))" in msg
  assert "expected the tutorial's BatchNorm AlexNet: 5 Conv2D (96 11x11" in msg
  # The right layers with other widths: every array that differs is named.
  narrow = str(tmp_path / "narrow.weights.h5")
  shutil.copy(paths["weights"], narrow)
  with h5py.File(narrow, "r+") as f:
    for i, shape in enumerate([(11, 11, 3, 64), (64,)]):
      del f[f"layers/conv2d/vars/{i}"]
      f[f"layers/conv2d/vars/{i}"] = np.zeros(shape, np.float32)
  msg = error(narrow)
  assert "conv1 kernel is (11, 11, 3, 64), expected (11, 11, 3, 96)" in msg
  assert "conv1 bias is (64,), expected (96,)" in msg and "conv2 kernel" not in msg

  # .keras: the architecture is checked on config.json, where the weights cannot tell.
  def pad(layers):
    layers[1]["config"]["padding"] = "same"

  msg = error(_edited_keras(paths["keras"], str(tmp_path / "padded.keras"), pad))
  assert "operation 1: conv 11x11/4 same, expected conv 11x11/4 valid" in msg

  # A Lambda layer (code in the file) is named, never run.
  def add_lambda(layers):
    layers.insert(2, {"class_name": "Lambda", "config": {"function": "os.system('x')"}})

  msg = error(_edited_keras(paths["keras"], str(tmp_path / "lambda.keras"), add_lambda))
  assert "operation 2: Lambda, expected relu" in msg
  # Another preset's network for the run.
  from configs import torchvision

  msg = error(paths["weights"], torchvision.get_config())
  assert "not the Keras tutorial's BatchNorm AlexNet" in msg and "configs/keras_bn.py" in msg
  bad = tmp_path / "junk.weights.h5"
  bad.write_bytes(b"not hdf5 at all")
  assert "cannot read junk.weights.h5 as HDF5" in error(str(bad))
  cut = tmp_path / "cut.weights.h5"
  cut.write_bytes(open(paths["weights"], "rb").read()[:20_000_000])
  assert "cannot read cut.weights.h5 as HDF5 or as a .keras zip (" in error(str(cut))
  assert "truncated file" in error(str(cut))
  with zipfile.ZipFile(paths["keras"]) as z, zipfile.ZipFile(tmp_path / "cut.keras", "w") as out:
    for name in z.namelist():
      out.writestr(name, z.read(name)[:20_000_000])
  assert "cannot read cut.keras as a Keras weights file (OSError" in error(
      str(tmp_path / "cut.keras")
  )


# ---- the converted run against Keras's network ---------------------------------------------
def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _import(path, workdir, num_classes=None):
  out = pretrained.import_run("keras", path, str(workdir), pretrained.preset_config("keras"))
  if num_classes is not None:
    assert out["num_classes"] == num_classes
  return out


def _run_probs_float64(workdir, images224: np.ndarray) -> np.ndarray:
  """The restored run's probabilities of 224x224 uint8 images in float64, normalised by the
  run's own InputSpec (its preprocessing.json's convention) as evaluation normalises."""
  import jax

  from alexnet_jax import augment, checkpoint, run_dir, train_state

  run = checkpoint.restore_run(str(workdir), train_state.restore_target())
  model = train_state.create_model(run.config, run.meta["num_classes"])
  spec = run_dir.input_spec_from_config(str(workdir), run.config)
  with jax.enable_x64(True):
    cast = lambda a: np.asarray(a, np.float64)
    views = augment.eval_views(images224, spec, crops=1, dtype=jax.numpy.float64)[:, 0]
    logits = model.clone(dtype=jax.numpy.float64).apply(jax.tree.map(cast, run.variables), views)
    return np.asarray(jax.nn.softmax(logits))


def _keras_float64_probs(model, images224: np.ndarray) -> np.ndarray:
  """Keras's inference in float64 on the same (float32) weights."""
  policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
  keras.config.set_dtype_policy("float64")
  keras.config.set_floatx("float64")  # keras.Input's dtype: else the input is cast to float32
  try:
    m64 = keras_alexnet(model.layers[-2].units)
  finally:
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(floatx)
  assert m64.layers[0].compute_dtype == "float64" and m64.inputs[0].dtype == "float64"
  m64.set_weights([w.astype(np.float64) for w in model.get_weights()])
  return np.asarray(m64(images224.astype(np.float64) / 255, training=False))


@pytest.fixture(scope="module")
def converted(keras_files, tmp_path_factory):
  """The .keras file imported into a run directory (the .weights.h5 file, whose arrays
  test_reading_... shows are the same, is imported by the training-step test)."""
  _, paths = keras_files
  workdir = str(tmp_path_factory.mktemp("converted") / "run")

  def refuse(*args, **kwargs):
    raise AssertionError("the conversion must not load the file with Keras")

  with pytest.MonkeyPatch.context() as mp:  # h5py only: Keras's loaders would run its code
    for owner, name in [
        (keras.models, "load_model"),
        (keras.saving, "load_model"),
        (keras.Model, "load_weights"),
        (keras.Sequential, "from_config"),
    ]:
      mp.setattr(owner, name, refuse)
    out = _import(paths["keras"], workdir, num_classes=17)
  return workdir, out


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_converted_run_gives_keras_probabilities_on_real_photos(keras_files, converted):
  """The run restored from its checkpoint, its inputs normalised by its own spec (224x224
  scaled to [0, 1], no mean), gives Keras's inference-mode probabilities to 1e-9 relative
  when both compute in float64: the conversion itself (in float32 both sides round, and this
  network amplifies rounding ~300x: test_predict_command_... compares them at 2e-4). Its
  parameter count is Keras's count_params()."""
  from alexnet_jax import run_dir

  model, _ = keras_files
  workdir, out = converted
  assert out["num_params"] == model.count_params() == 28_096_769
  images = photos(4, offset=2)
  want64, got64 = _keras_float64_probs(model, images), _run_probs_float64(workdir, images)
  assert want64.max() > 0.3 and np.abs(want64 - want64[::-1]).max() > 0.1  # confident, distinct
  np.testing.assert_allclose(got64, want64, rtol=1e-9)
  assert run_dir.read_class_names(workdir) == list(oxford17.CLASS_NAMES)
  assert run_dir.read_class_names(workdir)[11] == "Colts' Foot"


@pytest.mark.parametrize("num_classes", [17, 5])
def test_export_loads_into_keras_and_gives_its_predictions(
    keras_files, converted, tmp_path, num_classes
):
  """run -> --to=keras: Keras's load_weights puts back every array bit for bit, so the
  reloaded model predicts exactly what the original does. A 5-way head (a .weights.h5 of
  Keras's initial weights) round-trips the same, and gets no invented class names."""
  from alexnet_jax import run_dir

  model, _ = keras_files
  workdir = converted[0]
  if num_classes != 17:
    model = keras_alexnet(num_classes)
    src = str(tmp_path / "five.weights.h5")
    model.save_weights(src)
    workdir = str(tmp_path / "run")
    _import(src, workdir, num_classes=num_classes)
    assert run_dir.read_class_names(workdir) is None
  dst = str(tmp_path / "back.weights.h5")
  out = pretrained.export_run("keras", workdir, dst, pretrained.preset_config("keras"))
  assert out["step"] == 0 and out["differences"] == [] and len(out["keys"]) == 50
  fresh = keras_alexnet(num_classes)
  fresh.load_weights(dst)
  assert_same_arrays(keras_arrays(fresh), keras_arrays(model))
  if num_classes == 17:
    x = photos(2).astype(np.float32) / 255
    np.testing.assert_array_equal(fresh(x, training=False), model(x, training=False))
  with pytest.raises(pretrained.ConversionError, match="named \\*.weights.h5"):
    pretrained.export_run(
        "keras", workdir, str(tmp_path / "x.h5"), pretrained.preset_config("keras")
    )


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_predict_command_on_the_converted_run(keras_files, converted, tmp_path):
  """python -m alexnet_jax.predict on photo files gives, with Oxford-17's names, the
  probabilities Keras's model gives on the run's own views of those files (warped to 256,
  resized to 224, scaled to [0, 1]): this random network is so sensitive to resampling that
  only the same pixels give the same classes."""
  from PIL import Image

  from alexnet_jax import analysis, augment, run_dir

  model, _ = keras_files
  workdir = converted[0]
  images = photos(3, offset=1)
  files = []
  for i, image in enumerate(images):
    files.append(str(tmp_path / f"photo{i}.png"))
    Image.fromarray(image).save(files[-1])
  # In a forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py).
  r = forkserver.run(
      [sys.executable, "-m", "alexnet_jax.predict", f"--workdir={workdir}", "--top=3"] + files,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert r.returncode == 0, r.stderr[-3000:]
  spec = run_dir.input_spec_from_config(workdir, run_dir.read_config(workdir))
  views = augment.eval_views(analysis.preprocess(list(images), "warp"), spec, crops=1)[:, 0]
  want = np.asarray(model(np.asarray(views), training=False))
  lines = [line for line in r.stdout.splitlines() if line.startswith(str(tmp_path))]
  assert len(lines) == 3, r.stdout
  names = oxford17.CLASS_NAMES
  for line, path, p in zip(lines, files, want):
    top = [entry.rsplit(" ", 1) for entry in line[len(path) + 2 :].split(", ")]
    assert [name for name, _ in top] == [names[j] for j in np.argsort(-p)[:3]], (line, p)
    np.testing.assert_allclose([float(q) for _, q in top], np.sort(p)[::-1][:3], atol=2e-4)


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_a_training_step_updates_batchnorm_statistics_as_keras_does(keras_files, tmp_path):
  """One train.py step of the converted run (restored from its checkpoint onto a 2-device
  data mesh, so the statistics are the global batch's) moves every BatchNorm's running
  averages as Keras's model(x, training=True) moves moving_mean and moving_variance on the
  same batch (dropout 0 on both sides, so that bn6..bn8 see the same inputs)."""
  import jax
  import jax.numpy as jnp

  from alexnet_jax import augment, checkpoint, evaluation, run_dir, sharding, train_state

  _, paths = keras_files
  workdir = str(tmp_path / "run")
  _import(paths["weights"], workdir)
  config = run_dir.read_config(workdir)
  config.model.dropout_rate = 0.0
  mesh = sharding.make_mesh(2, 1, devices=jax.devices()[:2])
  model = train_state.create_model(config, 17)
  manager = checkpoint.CheckpointManager(workdir, read_only=True)
  try:
    state = manager.restore(*train_state.restore_target(mesh)(config, 17), step=0)
  finally:
    manager.close()
  before = jax.device_get(state.batch_stats)
  x = photos(4, offset=1).astype(np.float32) / 255
  batch = {"image": x, "label": np.arange(4, dtype=np.int32)}
  step = train_step.make_train_step(
      config, model, mesh, steps_per_epoch=10, augment_on_device=False
  )
  spec = run_dir.input_spec_from_config(workdir, config)
  lighting = augment.Lighting(jnp.zeros(3), jnp.eye(3))
  spec, lighting = jax.device_put((spec, lighting), sharding.replicated(mesh))
  state, _ = step(state, evaluation.global_batch(mesh, batch), spec, lighting)
  after = jax.device_get(state.batch_stats)
  net = keras_alexnet(dropout=0.0)
  net.load_weights(paths["weights"])
  net(x, training=True)
  bns = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
  for i, layer in enumerate(bns, 1):
    for ours, theirs in (("mean", "moving_mean"), ("var", "moving_variance")):
      old, new = before[f"bn{i}"][ours], after[f"bn{i}"][ours]
      want = np.asarray(getattr(layer, theirs))
      np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
      # The update itself, 0.01 (batch statistic - old), to 2e-4 of its size (measured 3e-5).
      assert _rel(new - old, want - old) < 2e-4, (i, ours, _rel(new - old, want - old))


# ---- hostile input: links, compression, sizes -----------------------------------------------
# Small files of the tutorial's layout (tests/fuzz.py): the reader's checks come before the
# converter's shape check, so tiny arrays exercise them in milliseconds.
def _tiny(tmp_path, name="tiny.weights.h5"):
  from tests import fuzz

  layers = fuzz.keras_layers()
  path = str(tmp_path / name)
  keras_h5.write(path, layers)
  return path, layers


def _refused(path, match):
  with pytest.raises(keras_h5.KerasFormatError) as e:
    keras_h5.read(str(path))
  text = str(e.value)
  assert "\n" not in text and re.search(match, text), text
  return text


def test_an_hdf5_external_link_is_refused_and_the_other_file_never_read(tmp_path):
  path, layers = _tiny(tmp_path)
  other = str(tmp_path / "other.h5")
  with h5py.File(other, "w") as f:
    f.create_dataset("x", data=np.full((2, 2, 1, 2), 7.0, np.float32))
  with h5py.File(path, "a") as f:
    del f["layers/conv2d/vars/0"]
    f["layers/conv2d/vars/0"] = h5py.ExternalLink(other, "/x")
  _refused(path, r"layers/conv2d/vars/0 is an external link \(to /x in .*other.h5\)")


def test_soft_links_leaving_the_weights_group_or_looping_are_refused_inside_it_followed(tmp_path):
  from tests import fuzz

  layers = fuzz.keras_layers()
  path = str(tmp_path / "keras2.h5")
  fuzz.write_keras2_h5(path, layers, under_model_weights=True)  # the weights group: model_weights
  with h5py.File(path, "a") as f:
    f.create_dataset("elsewhere", data=np.zeros((2, 2, 1, 2), np.float32))
    g = f["model_weights/conv_0/conv_0"]
    del g["kernel:0"]
    g["kernel:0"] = h5py.SoftLink("/elsewhere")
  _refused(path, r"conv_0/kernel:0 is a soft link to /elsewhere, outside the weights group")
  with h5py.File(path, "a") as f:
    g = f["model_weights/conv_0/conv_0"]
    del g["kernel:0"]
    g["kernel:0"] = h5py.SoftLink("kernel:0")  # itself
  _refused(path, r"is a soft link to .*kernel:0, which is a link again \(a chain or a loop\)")
  with h5py.File(path, "a") as f:
    g = f["model_weights/conv_0/conv_0"]
    del g["kernel:0"]
    g.create_dataset("real", data=layers["conv1"][0])
    g["kernel:0"] = h5py.SoftLink("/model_weights/conv_0/conv_0/real")  # inside: followed
  assert fuzz.same_layers(keras_h5.read(path), layers)


def test_compressed_or_oversized_datasets_are_refused_before_reading(tmp_path):
  path, _ = _tiny(tmp_path)
  with h5py.File(path, "a") as f:
    data = f["layers/dense/vars/0"][()]
    del f["layers/dense/vars/0"]
    f.create_dataset("layers/dense/vars/0", data=data, compression="gzip")
  _refused(path, r"layers/dense/vars/0 is compressed or filtered, which Keras never writes")
  path, _ = _tiny(tmp_path, "big.weights.h5")
  with h5py.File(path, "a") as f:
    del f["layers/dense/vars/0"]
    f.create_dataset("layers/dense/vars/0", shape=(300_000, 1000), dtype=np.float32)  # no data
  _refused(path, r"layers/dense/vars/0 \(300000, 1000\) would take 2,400,000,000 bytes, more")


def test_a_keras_zip_member_claiming_gigabytes_or_too_many_entries_is_refused(tmp_path):
  import struct
  import tracemalloc

  from tests import fuzz

  path, _ = _tiny(tmp_path)
  data = bytearray(fuzz.keras_zip(fuzz.read_file(path)))
  # The central directory's uncompressed size of model.weights.h5: 2 GiB (its local header too).
  for sig, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
    at = data.rfind(sig)
    while at >= 0:
      name_at = at + (46 if sig == b"PK\x01\x02" else 30)
      if data[name_at : name_at + 16] == b"model.weights.h5":
        data[at + offset : at + offset + 4] = struct.pack("<I", 2**31)
      at = data.rfind(sig, 0, at)
  bomb = fuzz.write_file(tmp_path / "bomb.keras", bytes(data))
  tracemalloc.start()
  try:
    _refused(bomb, r"model.weights.h5 claims 2,147,483,648 bytes, more than a Keras AlexNet")
    assert tracemalloc.get_traced_memory()[1] < 16 << 20
  finally:
    tracemalloc.stop()
  many = tmp_path / "many.keras"
  with zipfile.ZipFile(many, "w") as z:
    for i in range(keras_h5.MAX_ZIP_MEMBERS + 1):
      z.writestr(f"x{i}", b"")
  _refused(many, r"declares 1,001 entries, more than such a file holds")


def test_a_fifo_as_a_keras_file_is_refused_without_blocking(tmp_path):
  import threading

  fifo = tmp_path / "alexnet.keras"
  os.mkfifo(fifo)
  out = {}

  def read():
    try:
      keras_h5.read(str(fifo))
    except keras_h5.KerasFormatError as e:
      out["e"] = str(e)

  t = threading.Thread(target=read, daemon=True)
  t.start()
  t.join(30)
  assert not t.is_alive() and "is a FIFO (named pipe), not a regular file" in out["e"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["weights.h5", "keras2.h5", "keras"])
def test_fuzz_keras_readers_end_in_their_error_or_the_files_arrays(tmp_path, layout):
  """Mutations of a small valid .weights.h5, Keras 2 .h5 (under model_weights/) and .keras:
  keras_h5.read raises KerasFormatError (one line) or returns arrays of the tutorial's
  layout; where the mutation spared the arrays' bytes they are the written ones. Peak of
  tracked memory: a few times the file."""
  import hypothesis

  from tests import fuzz

  layers = fuzz.keras_layers()
  path = str(tmp_path / "valid")
  if layout == "keras2.h5":
    fuzz.write_keras2_h5(path, layers, under_model_weights=True)
  else:
    keras_h5.write(path, layers)
  valid = fuzz.read_file(path)
  if layout == "keras":
    valid = fuzz.keras_zip(valid)
  target = str(tmp_path / f"mutated.{layout}")
  assert fuzz.same_layers(keras_h5.read(fuzz.write_file(target, valid)), layers)

  def read(data):
    fuzz.write_file(target, data)
    return keras_h5.read(target)

  @fuzz.settings(examples=150)
  @hypothesis.given(data=fuzz.mutated(valid))
  def run(data):
    out = fuzz.check(
        lambda: read(data), keras_h5.KerasFormatError, max_peak=(4 << 20) + 8 * len(data)
    )
    if isinstance(out, dict):
      assert set(out) == set(keras_h5.LAYERS)
      assert all(a.dtype == np.float32 for arrays in out.values() for a in arrays)

  before = fuzz.rss_kb()
  run()
  assert fuzz.rss_kb() - before < 512 * 1024  # HDF5's own allocations stayed small too
