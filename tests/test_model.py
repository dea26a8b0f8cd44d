"""The network against the paper's numbers (docs/paper.md) and an independently written grouped model."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import model as model_lib
from alexnet_jax.model import VARIANTS, AlexNet

IMG = (224, 224, 3)


def _init(m, seed=0):
  return m.init(jax.random.key(seed), jnp.zeros((1, *IMG)))


# ---------------------------------------------------------------------------------------
# An independent reference: the paper's network as ONE grouped model (feature_group_count
# convolutions, TensorFlow's LRN and max-pool on each tower's half of the channels).
def _cat_towers(kernel):
  """[T, ..., out/T] tower kernels -> one kernel [..., out] (towers along outputs)."""
  return np.concatenate(list(np.asarray(kernel)), axis=-1)


def reference_forward(
    params, images, *, lrn=True, alpha=1e-4, k=2.0, pool=(3, 2), towers=2, dropout_masks=None
):
  p = jax.tree.map(np.asarray, params)
  x = np.asarray(images, np.float32)

  def conv(x, name, stride, pad, groups):
    w, b = _cat_towers(p[name]["kernel"]), _cat_towers(p[name]["bias"][..., None, :])[0]
    y = jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        pad,
        feature_group_count=groups,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )
    return np.maximum(np.asarray(y) + b, 0)

  def lrn_pool(y, with_lrn=True):
    halves = np.split(y, towers, axis=-1)
    if lrn and with_lrn:  # tf's formula is the paper's: alpha per squared term
      halves = [
          tf.nn.local_response_normalization(
              h, depth_radius=2, bias=k, alpha=alpha, beta=0.75
          ).numpy()
          for h in halves
      ]
    y = np.concatenate(halves, -1)
    return tf.nn.max_pool2d(y, pool[0], pool[1], "VALID").numpy()

  y = lrn_pool(conv(x, "conv1", 4, ((0, 3), (0, 3)), 1))
  y = lrn_pool(conv(y, "conv2", 1, ((2, 2), (2, 2)), towers))
  y = conv(y, "conv3", 1, ((1, 1), (1, 1)), 1)
  y = conv(y, "conv4", 1, ((1, 1), (1, 1)), towers)
  y = lrn_pool(conv(y, "conv5", 1, ((1, 1), (1, 1)), towers), with_lrn=False)
  y = y.reshape(len(y), -1)
  for i, name in enumerate(("fc6", "fc7")):
    w, b = _cat_towers(p[name]["kernel"]), _cat_towers(p[name]["bias"][..., None, :])[0]
    y = np.maximum(y @ w + b, 0)
    if dropout_masks is not None:
      y = y * dropout_masks[i] / 0.5
  return y @ p["fc8"]["kernel"] + p["fc8"]["bias"]


def _rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(b)) + 1e-30))


# ---------------------------------------------------------------------------------------
def test_parameter_count_is_the_papers():
  variables = jax.eval_shape(lambda: _init(AlexNet()))
  assert model_lib.num_params(variables["params"]) == 60_965_224


def test_every_layer_has_the_papers_output_shape():
  # Shapes only: traced (jax.eval_shape), not computed, on the full-width network.
  m = AlexNet()
  _, state = jax.eval_shape(
      lambda: m.apply(_init(m), jnp.zeros((1, *IMG)), mutable=["intermediates"])
  )
  got = {k: v[0].shape[1:] for k, v in state["intermediates"].items()}
  assert got == {  # docs/paper.md#architecture, "output (both towers)"
      "conv1_out": (55, 55, 96),
      "pool1": (27, 27, 96),
      "conv2_out": (27, 27, 256),
      "pool2": (13, 13, 256),
      "conv3_out": (13, 13, 384),
      "conv4_out": (13, 13, 384),
      "conv5_out": (13, 13, 256),
      "pool5": (6, 6, 256),
      "fc6_out": (4096,),
      "fc7_out": (4096,),
      "logits": (1000,),
  }


@pytest.mark.slow
def test_lrn_does_not_cross_the_tower_boundary():
  m = AlexNet(num_classes=10, width=0.25)
  variables = _init(m)
  images = jax.random.normal(jax.random.key(1), (1, *IMG)) * 60  # LRN is per pixel
  _, state = m.apply(variables, images, mutable=["intermediates"])
  conv1 = np.asarray(state["intermediates"]["conv1_out"][0])  # post-ReLU, pre-LRN, 24 ch
  pool1 = np.asarray(state["intermediates"]["pool1"][0])
  per_tower = np.concatenate(
      [
          tf.nn.local_response_normalization(
              h, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75
          ).numpy()
          for h in np.split(conv1, 2, -1)
      ],
      -1,
  )
  across = tf.nn.local_response_normalization(
      conv1, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75
  ).numpy()
  want = tf.nn.max_pool2d(per_tower, 3, 2, "VALID").numpy()
  np.testing.assert_allclose(pool1, want, rtol=1e-5, atol=1e-5)
  assert _rel(pool1, tf.nn.max_pool2d(across, 3, 2, "VALID").numpy()) > 1e-4


def _paper(**changes):
  return dataclasses.replace(VARIANTS["paper"], **changes)


ABLATIONS = {
    "paper": ({}, {}),
    "no_lrn": ({"lrn": False}, {"lrn": False}),
    # LRN constants of the published variants, on the paper's network.
    "lrn_alpha_over_n": ({"variant": _paper(lrn_alpha_per_term=False)}, {"alpha": 2e-5}),
    "lrn_k1": ({"variant": _paper(lrn_k=1.0)}, {"k": 1.0}),
    "non_overlapping_pool": ({"overlapping_pool": False}, {"pool": (2, 2)}),
    "one_tower": ({"variant": VARIANTS["one_gpu"]}, {"towers": 1}),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_forward_equals_independent_grouped_model(name):
  model_kw, ref_kw = ABLATIONS[name]
  m = AlexNet(num_classes=1000, **model_kw)
  variables = _init(m, seed=3)
  images = jax.random.normal(jax.random.key(4), (2, *IMG)) * 50
  got = m.apply(variables, images)
  want = reference_forward(variables["params"], images, **ref_kw)
  assert _rel(got, want) < 1e-5
  # And the switch changes the network (compare with the paper's reference).
  if name not in ("paper", "one_tower"):  # one_tower changes the parameter shapes too
    assert _rel(got, reference_forward(variables["params"], images)) > 1e-4


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_matches_the_reference():
  """model.dtype=bfloat16 (the accelerator setting): float32 parameters, bfloat16
  activations, float32 logits within bfloat16 rounding (8 bits of mantissa over 8 layers) of the
  float32 grouped reference, and measurably not float32."""
  m = AlexNet(num_classes=1000, dtype=jnp.bfloat16)
  variables = _init(m, seed=3)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  images = jax.random.normal(jax.random.key(4), (2, *IMG)) * 50
  got, inter = m.apply(variables, images, mutable=["intermediates"])
  assert inter["intermediates"]["conv1_out"][0].dtype == jnp.bfloat16
  assert got.dtype == jnp.float32  # logits come back in float32 for the softmax
  err = _rel(np.asarray(got, np.float32), reference_forward(variables["params"], images))
  assert 1e-4 < err < 3e-2, err


def test_one_tower_parameter_count_by_hand():
  # The paper's one-GPU net: half the kernels in conv1-4; conv5 and fc layers full size.
  convs = [(11, 3, 48), (5, 48, 128), (3, 128, 192), (3, 192, 192), (3, 192, 256)]
  count = sum(k * k * cin * cout + cout for k, cin, cout in convs)
  count += (6 * 6 * 256 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
  variables = jax.eval_shape(lambda: _init(AlexNet(variant=VARIANTS["one_gpu"])))
  assert model_lib.num_params(variables["params"]) == count == 59_798_312


def test_width_multiplier_scales_every_layer():
  m = AlexNet(num_classes=10, width=0.25)
  shapes = jax.tree.map(lambda x: x.shape, jax.eval_shape(lambda: _init(m))["params"])
  assert shapes["conv1"]["kernel"] == (2, 11, 11, 3, 12)
  assert shapes["conv3"]["kernel"] == (2, 3, 3, 64, 48)
  assert shapes["fc6"]["kernel"] == (2, 6 * 6 * 64, 512)
  assert shapes["fc8"]["kernel"] == (1024, 10)


def test_paper_initialisation_statistics():
  params = _init(AlexNet())["params"]
  for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
    bias = np.asarray(params[name]["bias"])
    want = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
    assert np.all(bias == want), name
    w = np.asarray(params[name]["kernel"], np.float64).ravel()
    # std of a sample std of n normals is sigma / sqrt(2n): allow 5 of those.
    assert abs(w.std() - 0.01) < 5 * 0.01 / np.sqrt(2 * w.size), (name, w.std())
    assert abs(w.mean()) < 5 * 0.01 / np.sqrt(w.size), name
  # The two towers are drawn independently.
  k = np.asarray(params["conv1"]["kernel"])
  assert abs(np.corrcoef(k[0].ravel(), k[1].ravel())[0, 1]) < 0.05


def test_he_initialisation():
  params = _init(AlexNet(initializer="he"))["params"]
  assert all(np.all(np.asarray(params[n]["bias"]) == 0) for n in params)
  w = np.asarray(params["conv2"]["kernel"])
  want = np.sqrt(2 / (5 * 5 * 48))
  assert abs(w.std() - want) / want < 0.01


@pytest.mark.slow
def test_dropout_masks_are_independent_and_scaled():
  # Quarter width (the other tests' network, its operations compiled once) on 16 images:
  # 16 x 1024 fc6 units, as many samples as half width on 8.
  m = AlexNet(num_classes=10, width=0.25)
  variables = _init(m)
  images = jax.random.normal(jax.random.key(0), (16, *IMG)) * 50
  logits, clean = m.apply(variables, images, mutable=["intermediates"])

  def fc6(rng):
    _, st = m.apply(variables, images, train=True, rngs={"dropout": rng}, mutable=["intermediates"])
    return np.asarray(st["intermediates"]["fc6_out"][0])

  pre = np.asarray(clean["intermediates"]["fc6_out"][0])
  post = fc6(jax.random.key(1))
  alive = pre > 0
  kept = post[alive] != 0
  assert abs(kept.mean() - 0.5) < 0.02
  np.testing.assert_allclose(post[alive][kept], 2 * pre[alive][kept], rtol=1e-6)
  mask = post != 0
  half = mask.shape[1] // 2
  both = alive[:, :half] & alive[:, half:]
  # Towers, examples and steps (rngs) get different masks: agreement ~ 50%, not 100%.
  assert 0.4 < (mask[:, :half] == mask[:, half:])[both].mean() < 0.6
  assert 0.4 < (mask[0] == mask[1])[alive[0] & alive[1]].mean() < 0.6
  assert 0.4 < (mask == (fc6(jax.random.key(2)) != 0))[alive].mean() < 0.6
  # At test time no dropout and no rescaling: fc6 is the plain ReLU output.
  np.testing.assert_array_equal(np.asarray(clean["intermediates"]["logits"][0]), logits)
  assert np.all(pre >= 0) and alive.mean() > 0.2


@pytest.mark.parametrize(
    "shape", [(2, 224, 224), (2, 227, 227, 3), (2, 224, 224, 1), (224, 224, 3)]
)
def test_bad_image_shape_says_what_is_expected(shape):
  m = AlexNet(num_classes=10, width=0.25)
  variables = jax.eval_shape(lambda: _init(m))
  with pytest.raises(ValueError, match=r"\(batch, 224, 224, 3\).*got shape"):
    m.apply(variables, jnp.zeros(shape))


def test_from_config_rejects_unknown_keys_and_variants():
  cfg = ml_collections.ConfigDict({"width": 0.5, "lrn": False, "nonsense": 1})
  with pytest.raises(ValueError, match="nonsense"):
    model_lib.from_config(cfg, num_classes=10, crop_size=224)
  cfg = ml_collections.ConfigDict({"variant": "vgg"})
  with pytest.raises(ValueError, match=r"model.variant must be one of \['paper'.*'vgg'"):
    model_lib.from_config(cfg, num_classes=10, crop_size=224)


def test_from_config_builds_the_variant_and_the_crop_size():
  cfg = ml_collections.ConfigDict({"variant": "caffe", "width": 0.5, "dtype": "bfloat16"})
  m = model_lib.from_config(cfg, num_classes=7, crop_size=227)
  assert m.variant == VARIANTS["caffe"] and m.variant.lrn_k == 1.0 and m.num_towers == 2
  assert (m.width, m.dtype, m.num_classes, m.input_shape) == (0.5, jnp.bfloat16, 7, (227, 227, 3))


# The model switches each preset set one by one (configs/*.py before model.variant), and the
# variant they describe.
OLD_SWITCHES = {
    "paper": {},
    "one_gpu": {"one_tower": True},
    "torchvision": {
        "one_tower": True,
        "conv_widths": [64, 192, 384, 256, 256],
        "conv1_padding": [2, 2],
        "lrn": False,
        "fc6_input_order": "chw",
    },
    "caffe": {
        "image_size": 227,
        "conv1_padding": [0, 0],
        "lrn_k": 1.0,
        "lrn_alpha_per_term": False,
        "lrn_across_towers": True,
        "fc6_input_order": "chw",
    },
    "pytorch_grouped": {
        "image_size": 224,
        "conv1_padding": [2, 2],
        "lrn_after_pool": True,
        "lrn_across_towers": True,
        "lrn_alpha_per_term": False,
        "lrn_k": 2.0,
        "fc6_input_order": "chw",
    },
}
PAPER_SWITCHES = {  # configs/default.py's values, written out in full
    "width": 1.0,
    "one_tower": False,
    "conv_widths": [],
    "image_size": 224,
    "conv1_padding": [0, 3],
    "lrn": True,
    "lrn_alpha_per_term": True,
    "lrn_k": 2.0,
    "lrn_after_pool": False,
    "lrn_across_towers": False,
    "overlapping_pool": True,
    "fc6_input_order": "hwc",
}


@pytest.mark.parametrize("name", list(OLD_SWITCHES))
def test_variant_of_the_old_switches(name):
  assert model_lib.variant_of(OLD_SWITCHES[name]) == name
  assert model_lib.variant_of({**PAPER_SWITCHES, **OLD_SWITCHES[name]}) == name


def test_variant_of_names_the_switches_no_variant_has():
  with pytest.raises(ValueError, match=r"model.fc6_input_order='chw', model.lrn_k=1.0 match no"):
    model_lib.variant_of({"lrn_k": 1.0, "fc6_input_order": "chw"})
  with pytest.raises(ValueError, match=r"model.fc6_input_order='whc' match no.*must be"):
    model_lib.variant_of({"fc6_input_order": "whc"})
  # The one-GPU widths written out are the one-GPU net; with two towers they are no variant.
  assert model_lib.variant_of({"one_tower": True, "conv_widths": [48, 128, 192, 192, 256]}) == (
      "one_gpu"
  )
  with pytest.raises(ValueError, match="conv_widths"):
    model_lib.variant_of({"conv_widths": [48, 128, 192, 192, 256]})
