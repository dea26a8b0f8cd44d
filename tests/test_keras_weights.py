"""Keras weights in and out (alexnet_jax.convert --from=keras / --to=keras) against Keras itself
(Keras 3, tensorflow-cpu): the tutorial's BatchNorm AlexNet built with keras.Sequential, with
moving statistics calibrated on real photos and then perturbed, saved as .keras, .weights.h5
and Keras 2's .h5; the converted run predicts Keras's probabilities, updates its BatchNorm
statistics as Keras's training call does, and exports a file Keras's load_weights reads."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import skimage.data  # noqa: E402
import skimage.transform  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from alexnet_jax import pretrained  # noqa: E402
from alexnet_jax.pretrained import keras_h5  # noqa: E402

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
  """The tutorial's network with calibrated statistics, saved three ways. Another model is
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
  return model, paths


# ---- reading and writing Keras's files -----------------------------------------------------
@pytest.mark.parametrize("kind", ["keras", "weights", "legacy"])
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


def test_not_the_tutorials_network_is_one_clear_line(tmp_path):
  L = keras.layers
  small = keras.Sequential(
      [keras.Input((32, 32, 3)), L.Conv2D(8, 3), L.BatchNormalization(), L.Flatten(), L.Dense(5)]
  )
  path = str(tmp_path / "small.weights.h5")
  small.save_weights(path)
  with pytest.raises(pretrained.ConversionError) as e:
    keras_h5.read(path)
  msg = str(e.value)
  assert "\n" not in msg
  assert "1 Conv2D (conv2d (3, 3, 3, 8))" in msg and "1 Dense (dense (7200, 5))" in msg
  assert "expected the tutorial's BatchNorm AlexNet: 5 Conv2D (96 11x11" in msg
  # .keras: the architecture is named from config.json.
  same_path = str(tmp_path / "padded.keras")
  padded = keras_alexnet()
  padded.layers[0].padding = "same"  # weights of the same shapes, another function
  padded.save(same_path)
  with pytest.raises(
      pretrained.ConversionError,
      match=r"operation 1: conv 11x11/4 same, expected conv 11x11/4 valid",
  ):
    keras_h5.read(same_path)
  bad = tmp_path / "cut.weights.h5"
  bad.write_bytes(b"not hdf5 at all")
  with pytest.raises(pretrained.ConversionError, match="cannot read cut.weights.h5 as HDF5"):
    keras_h5.read(str(bad))
