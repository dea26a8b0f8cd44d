"""The architecture switches and the presets of the published AlexNets (configs/torchvision.py,
configs/caffe.py, configs/pytorch_grouped.py): parameter counts against each framework's, layer
shapes, the same numbers on any mesh, and torchvision's preprocessing against PIL's."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_images

from alexnet_jax import augment, sharding, train_state
from alexnet_jax import data as ip
from alexnet_jax import model as model_lib
from alexnet_jax.input_spec import InputSpec
from configs import caffe, pytorch_grouped, torchvision

PRESETS = {"torchvision": torchvision, "caffe": caffe, "pytorch_grouped": pytorch_grouped}


def _model(name, **overrides):
  config = PRESETS[name].get_config()
  for key, value in overrides.items():
    config.model[key] = value
  return train_state.create_model(config, 1000)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


@pytest.mark.parametrize(
    "name, count",
    [
        (
            "torchvision",
            61_100_840,
        ),  # sum(p.numel() for p in torchvision.models.alexnet().parameters())
        ("caffe", 60_965_224),  # bvlc_alexnet's blobs (docs/paper.md#parameter-counts)
        ("pytorch_grouped", 60_965_224),  # the same layers as Caffe's, in PyTorch
    ],
)
def test_preset_parameter_count_is_its_frameworks(name, count):
  variables = sharding.abstract_variables(_model(name))
  assert model_lib.num_params(variables["params"]) == count


def test_torchvision_parameter_count_by_hand():
  convs = [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)]
  count = sum(k * k * cin * cout + cout for k, cin, cout in convs)
  count += (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
  assert count == 61_100_840


@pytest.mark.parametrize(
    "name, conv1, pool5",
    [
        ("torchvision", (55, 55, 64), (6, 6, 256)),  # 224 + 2 + 2: (228 - 11) // 4 + 1 = 55
        ("caffe", (55, 55, 96), (6, 6, 256)),  # 227 unpadded: (227 - 11) / 4 + 1 = 55
        ("pytorch_grouped", (55, 55, 96), (6, 6, 256)),
    ],
)
def test_preset_layer_shapes(name, conv1, pool5):
  m = _model(name)
  variables = sharding.abstract_variables(m)
  shapes = jax.eval_shape(
      lambda v: m.apply(v, jnp.zeros((1, *m.input_shape)), mutable=["intermediates"])[1],
      variables,
  )["intermediates"]
  assert shapes["conv1_out"][0].shape[1:] == conv1
  assert shapes["pool5"][0].shape[1:] == pool5
  assert shapes["logits"][0].shape[1:] == (1000,)


def test_preset_input_size_is_checked():
  m = _model("caffe")
  variables = sharding.abstract_variables(m)
  with pytest.raises(ValueError, match=r"\(batch, 227, 227, 3\).*got shape"):
    m.apply(variables, jnp.zeros((1, 224, 224, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["caffe", "pytorch_grouped"])
def test_lrn_across_towers_gives_the_same_numbers_on_a_split_tower_axis(name):
  """The LRN window that crosses the tower boundary (Caffe, PyTorch) gathers the layer on
  a mesh whose devices each hold one tower: forward and gradients equal one device's."""
  m = _model(name, width=0.25, dropout_rate=0.0)
  variables = m.init(jax.random.key(0), jnp.zeros((1, *m.input_shape)))
  images = jax.random.normal(jax.random.key(1), (4, *m.input_shape)) * 60
  labels = jnp.arange(4) % 10

  def loss(logits):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  want = jax.jit(jax.grad(lambda v: loss(m.apply(v, images))))(variables)
  mesh = sharding.make_mesh(2, 2, devices=jax.devices()[:4])
  apply = sharding.sharded_apply(m, mesh)
  v = jax.device_put(variables, sharding.param_shardings(mesh, variables))
  x = jax.device_put(images, sharding.batch_sharding(mesh))
  logits = jax.jit(lambda v, x: apply(v, x, train=False))(v, x)
  grads = jax.jit(jax.grad(lambda v, x: loss(apply(v, x, train=False))))(v, x)
  assert _rel(logits, m.apply(variables, images)) < 1e-5
  for (path, g), w in zip(
      jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(want)
  ):
    assert _rel(g, w) < 1e-4, jax.tree_util.keystr(path)


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_lrn_across_towers_reaches_over_the_tower_edge():
  """Caffe's LRN: one window over all 96 conv1 channels (tf's LRN on the whole layer), not
  the paper's per-tower windows."""
  m = _model("caffe", width=0.25)
  variables = m.init(jax.random.key(0), jnp.zeros((1, *m.input_shape)))
  images = jax.random.normal(jax.random.key(1), (2, *m.input_shape)) * 60
  _, state = m.apply(variables, images, mutable=["intermediates"])
  conv1 = np.asarray(state["intermediates"]["conv1_out"][0])
  pool1 = np.asarray(state["intermediates"]["pool1"][0])
  lrn = lambda x: tf.nn.local_response_normalization(
      x, depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75
  ).numpy()
  np.testing.assert_allclose(
      pool1, tf.nn.max_pool2d(lrn(conv1), 3, 2, "VALID"), rtol=1e-5, atol=1e-5
  )
  per_tower = np.concatenate([lrn(h) for h in np.split(conv1, 2, -1)], -1)
  assert _rel(pool1, tf.nn.max_pool2d(per_tower, 3, 2, "VALID").numpy()) > 1e-4


def test_lrn_after_pool_and_chw_flatten_equal_numpy():
  """The grouped layout's order (pool, then LRN) and fc6 reading the (C, H, W) flatten."""
  m = _model("pytorch_grouped", width=0.25)
  variables = m.init(jax.random.key(0), jnp.zeros((1, *m.input_shape)))
  images = jax.random.normal(jax.random.key(1), (2, *m.input_shape)) * 60
  logits, state = m.apply(variables, images, mutable=["intermediates"])
  inter = {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}
  lrn = lambda x: tf.nn.local_response_normalization(
      x, depth_radius=2, bias=2.0, alpha=1e-4 / 5, beta=0.75
  ).numpy()
  np.testing.assert_allclose(
      inter["pool1"],
      lrn(tf.nn.max_pool2d(inter["conv1_out"], 3, 2, "VALID").numpy()),
      rtol=1e-5,
      atol=1e-5,
  )
  p = jax.tree.map(np.asarray, variables["params"])
  flat = inter["pool5"].transpose(0, 3, 1, 2).reshape(2, -1)  # NCHW flatten
  k6 = np.concatenate(list(p["fc6"]["kernel"]), -1)
  fc6 = np.maximum(flat @ k6 + p["fc6"]["bias"].reshape(-1), 0)
  np.testing.assert_allclose(inter["fc6_out"], fc6, rtol=1e-4, atol=1e-4 * np.abs(fc6).max())
  hwc = inter["pool5"].reshape(2, -1)
  assert _rel(np.maximum(hwc @ k6 + p["fc6"]["bias"].reshape(-1), 0), fc6) > 1e-3
  del logits


# ---- torchvision's preprocessing --------------------------------------------------------------
def _torchvision_reference(data: bytes) -> np.ndarray:
  """torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize on a PIL image,
  written out (torchvision.transforms.functional: the long side int(256 * long / short),
  PIL's BILINEAR (antialiased) resize, crop offsets int(round((n - 224) / 2.0)))."""
  im = Image.open(io.BytesIO(data)).convert("RGB")
  w, h = im.size
  short, long = min(w, h), max(w, h)
  new_long = int(256 * long / short)
  nw, nh = (256, new_long) if w <= h else (new_long, 256)
  im = im.resize((nw, nh), Image.BILINEAR)
  top, left = int(round((nh - 224) / 2.0)), int(round((nw - 224) / 2.0))
  x = np.asarray(im, np.float32)[top : top + 224, left : left + 224] / 255.0
  return (x - np.asarray(torchvision.IMAGENET_MEAN_RGB)) / np.asarray(torchvision.IMAGENET_STD_RGB)


def _photos():
  import skimage.data

  photos = list(load_sample_images().images)  # 427 x 640: long side 383.7 -> 383
  photos.append(skimage.data.coffee())  # 400 x 600: 384 exactly
  photos.append(skimage.data.chelsea()[:, :445])  # 300 x 445: 379.7 -> 379, odd margin
  return photos


def _project_views(data: bytes, config) -> np.ndarray:
  image = ip.preprocess_encoded(data, rule=config.dataset.resize).numpy()
  return np.asarray(augment.eval_views(image[None], InputSpec.from_config(config), crops=1))[0, 0]


def test_torchvision_preprocessing_equals_torchvisions_within_one_grey_level():
  config = torchvision.get_config()
  std = 255.0 * np.asarray(torchvision.IMAGENET_STD_RGB)
  for photo in _photos():
    data = io.BytesIO()
    Image.fromarray(photo).save(data, "JPEG", quality=90)
    data = data.getvalue()
    want = _torchvision_reference(data)
    got = _project_views(data, config)
    assert got.shape == want.shape == (224, 224, 3)
    assert np.abs((got - want) * std).max() <= 1.0 + 1e-3, photo.shape
    # The project's default rule (nearest long side, floored offset) is not torchvision's.
    if photo.shape[:2] == (427, 640):
      config_round = torchvision.get_config()
      config_round.dataset.resize = "round"
      assert np.abs((_project_views(data, config_round) - want) * std).max() > 2.0


def real_torchvision():
  """The torchvision package, or a skip where it does not import beside the pinned CPU torch
  (its PyPI wheels pair with another torch build: 'operator torchvision::nms does not
  exist')."""
  try:
    import torchvision as tv

    return tv
  except Exception as e:  # pylint: disable=broad-except  (a RuntimeError as often as not)
    pytest.skip(f"torchvision does not import here ({type(e).__name__}: {e})")


def test_written_out_reference_equals_real_torchvision_transforms():
  tv = real_torchvision()
  t = tv.transforms.Compose(
      [
          tv.transforms.Resize(256),
          tv.transforms.CenterCrop(224),
          tv.transforms.ToTensor(),
          tv.transforms.Normalize(torchvision.IMAGENET_MEAN_RGB, torchvision.IMAGENET_STD_RGB),
      ]
  )
  for photo in _photos():
    data = io.BytesIO()
    Image.fromarray(photo).save(data, "JPEG", quality=90)
    real = t(Image.open(data).convert("RGB")).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(real, _torchvision_reference(data.getvalue()), atol=1e-5)


def test_warp_resizes_both_sides():
  photo = load_sample_images().images[0]
  got = ip.resize_and_center_crop(photo, rule="warp").numpy().astype(int)
  want = np.asarray(Image.fromarray(photo).resize((256, 256), Image.BILINEAR)).astype(int)
  assert np.abs(got - want).max() <= 1
  with pytest.raises(ValueError, match="dataset.resize"):
    ip.resize_and_center_crop(photo, rule="nearest")
