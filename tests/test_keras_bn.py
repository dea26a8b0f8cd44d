"""The Keras tutorial's BatchNorm AlexNet (model.variant='keras_bn') against Keras itself."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax.model import VARIANTS, AlexNet

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def keras_bn_model(num_classes=17, dropout=0.4):
  """The tutorial's network, as its Keras code builds it."""
  import keras  # pylint: disable=import-outside-toplevel
  from keras import layers  # pylint: disable=import-outside-toplevel

  def conv(n, k, **kw):
    return layers.Conv2D(n, (k, k), padding="valid", activation="relu", **kw)

  def pool():
    return layers.MaxPooling2D((2, 2), strides=(2, 2), padding="valid")

  def dense(n):
    return [
        layers.Dense(n, activation="relu"),
        layers.Dropout(dropout),
        layers.BatchNormalization(),
    ]

  bn = layers.BatchNormalization
  return keras.Sequential(
      [
          keras.Input((224, 224, 3)),
          conv(96, 11, strides=(4, 4)),
          pool(),
          bn(),
          conv(256, 11),
          pool(),
          bn(),
          conv(384, 3),
          bn(),
          conv(384, 3),
          bn(),
          conv(256, 3),
          pool(),
          bn(),
          layers.Flatten(),
          *dense(4096),
          *dense(4096),
          *dense(1000),
          layers.Dense(num_classes, activation="softmax"),
      ]
  )


def keras_net(num_classes=17, dropout_rate=0.4, **kw):
  return AlexNet(
      num_classes=num_classes,
      variant=VARIANTS["keras_bn"],
      lrn=False,
      overlapping_pool=False,
      dropout_rate=dropout_rate,
      **kw,
  )


EXPECTED_SHAPES = {
    "params": {
        "conv1": {"kernel": (1, 11, 11, 3, 96), "bias": (1, 96)},
        "conv2": {"kernel": (1, 11, 11, 96, 256), "bias": (1, 256)},
        "conv3": {"kernel": (1, 3, 3, 256, 384), "bias": (1, 384)},
        "conv4": {"kernel": (1, 3, 3, 384, 384), "bias": (1, 384)},
        "conv5": {"kernel": (1, 3, 3, 384, 256), "bias": (1, 256)},
        "fc6": {"kernel": (1, 256, 4096), "bias": (1, 4096)},
        "fc7": {"kernel": (1, 4096, 4096), "bias": (1, 4096)},
        "fc8": {"kernel": (4096, 1000), "bias": (1000,)},
        "head": {"kernel": (1000, 17), "bias": (17,)},
        **{
            f"bn{i}": {"scale": (c,), "bias": (c,)}
            for i, c in enumerate((96, 256, 384, 384, 256, 4096, 4096, 1000), 1)
        },
    },
    "batch_stats": {
        f"bn{i}": {"mean": (c,), "var": (c,)}
        for i, c in enumerate((96, 256, 384, 384, 256, 4096, 4096, 1000), 1)
    },
}


def _to_keras(model, variables):
  """Our variables in the Keras model's weight order (kernels without the tower axis)."""
  p, s = variables["params"], variables["batch_stats"]
  weights = []
  for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8", "head"):
    k, b = np.asarray(p[layer]["kernel"]), np.asarray(p[layer]["bias"])
    if layer in model_lib.TOWER_LAYERS:
      k, b = k[0], b[0]
    weights += [k, b]
  # Keras's order: conv1, bn1, conv2, bn2, ...: interleave each BN after its layer.
  out, bns = [], [f"bn{i}" for i in range(1, 9)]
  for i in range(8):
    out += weights[2 * i : 2 * i + 2]
    bn = bns[i]
    out += [np.asarray(p[bn]["scale"]), np.asarray(p[bn]["bias"])]
    out += [np.asarray(s[bn]["mean"]), np.asarray(s[bn]["var"])]
  return out + weights[16:]


def _random_variables(model, seed=0):
  """Initialised variables with non-trivial BatchNorm parameters and running statistics."""
  v = model.init(jax.random.key(seed), jnp.zeros((1, 224, 224, 3)), train=False)
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 2.0, x.shape), x.dtype)
    if name in ("mean",) or (name == "bias" and path[-2].key.startswith("bn")):
      return jnp.asarray(rng.normal(0, 0.5, x.shape), x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(perturb, v)


def test_keras_bn_tree_count_and_forward_match_keras():
  m = keras_net()
  v = _random_variables(m)
  assert jax.tree.map(lambda x: tuple(x.shape), v) == EXPECTED_SHAPES
  assert m.classifier == "head" and AlexNet().classifier == "fc8"
  # Dropout off in the Keras model, for its training call below (inference ignores it).
  km0 = keras_bn_model(dropout=0.0)
  assert model_lib.num_params(v) == km0.count_params() == 28_096_769
  km0.set_weights(_to_keras(m, v))
  images = np.random.default_rng(1).uniform(0, 1, (3, 224, 224, 3)).astype(np.float32)
  want = np.asarray(km0(images, training=False))
  got = np.asarray(jax.nn.softmax(m.apply(v, images, train=False)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # A training call (dropout off): the same batch statistics update as Keras's.
  m0 = keras_net(dropout_rate=0.0)
  logits, state = m0.apply(v, images, train=True, mutable=["batch_stats"])
  want = np.asarray(km0(images, training=True))
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), want, rtol=1e-4, atol=1e-6)
  for i, layer in enumerate([x for x in km0.layers if "batch_normalization" in x.name], 1):
    for ours, theirs in (("mean", "moving_mean"), ("var", "moving_variance")):
      before = np.asarray(v["batch_stats"][f"bn{i}"][ours])
      got = np.asarray(state["batch_stats"][f"bn{i}"][ours])
      want = np.asarray(getattr(layer, theirs))
      assert np.abs(got - before).max() > 1e-4  # the statistics moved
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_keras_bn_layer_shapes():
  """224 -> 54 -> pool 27 -> 17 -> pool 8 -> 6 -> 4 -> 2 -> pool 1 (the issue's numbers)."""
  m = keras_net()
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  _, state = jax.eval_shape(
      lambda v: m.apply(v, jnp.zeros((2, 224, 224, 3)), mutable=["intermediates"]), v
  )
  shapes = {k: tuple(x[0].shape[1:]) for k, x in state["intermediates"].items()}
  assert shapes == {
      "conv1_out": (54, 54, 96),
      "pool1": (27, 27, 96),
      "conv2_out": (17, 17, 256),
      "pool2": (8, 8, 256),
      "conv3_out": (6, 6, 384),
      "conv4_out": (4, 4, 384),
      "conv5_out": (2, 2, 256),
      "pool5": (1, 1, 256),
      "fc6_out": (4096,),
      "fc7_out": (4096,),
      "fc8_out": (1000,),
      "logits": (17,),
  }


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "keras_bn"])
def test_other_variants_have_no_batch_norm_or_head(name):
  m = AlexNet(variant=VARIANTS[name], width=0.125)
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert set(v) == {"params"} and "head" not in v["params"] and m.classifier == "fc8"


def test_glorot_initialiser_is_keras_glorot_uniform():
  m = keras_net(initializer="glorot", width=0.25)
  p = m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  for layer, fans in (("conv2", (11 * 11 * 24, 11 * 11 * 64)), ("fc8", (1024, 250))):
    k = np.asarray(p[layer]["kernel"])
    limit = np.sqrt(6.0 / sum(fans))
    assert k.max() <= limit * (1 + 1e-6) and k.min() >= -limit * (1 + 1e-6)
    assert abs(k.std() - limit / np.sqrt(3)) < 0.01 * limit  # U(-l, l) has std l / sqrt(3)
    assert not np.any(np.asarray(p[layer]["bias"]))
