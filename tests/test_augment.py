"""Device-side augmentation against independent NumPy references and statistics."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import stats as sps

from alexnet_jax import augment
from alexnet_jax.input_spec import InputSpec
from tests import tiny


def _coord_images(b, size):
  """uint8 [b, size, size, 3] whose pixel (y, x) holds (y, x, 7): a crop reveals its offset."""
  y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  img = np.stack([y, x, np.full_like(y, 7)], -1).astype(np.uint8)
  return np.broadcast_to(img, (b, size, size, 3))


def _spec(mean=(0.0, 0.0, 0.0), **static):
  """An InputSpec around `mean` (default: no mean subtraction)."""
  return InputSpec.create(mean, **static)


def _lighting(eigval, eigvec):
  return augment.Lighting(jnp.asarray(eigval, jnp.float32), jnp.asarray(eigvec, jnp.float32))


def _random_basis(seed=0):
  q, _ = np.linalg.qr(np.random.RandomState(seed).randn(3, 3))
  return q.astype(np.float32)


def test_example_keys_depend_only_on_seed_step_and_index():
  a = augment.example_keys(0, 5, jnp.arange(16))
  b = augment.example_keys(jax.random.key(0), 5, jnp.arange(4, 8))
  data = jax.random.key_data
  np.testing.assert_array_equal(data(a[4:8]), data(b))
  c = augment.example_keys(0, 6, jnp.arange(16))
  d = augment.example_keys(1, 5, jnp.arange(16))
  assert not np.array_equal(data(a), data(c)) and not np.array_equal(data(a), data(d))
  # All 16 keys distinct.
  assert len({tuple(k) for k in np.asarray(data(a))}) == 16


def test_crop_offsets_uniform_and_flips_half():
  """33 x 33 offsets equally likely (chi-square), flip rate 0.5, read off train_views" output."""
  crop, size, per_cell = 8, 40, 20  # 40 - 8 + 1 = 33 positions per axis, like 224 in 256
  n = 33 * 33 * per_cell
  fn = jax.jit(
      lambda k: augment.train_views(
          _coord_images(k.shape[0], size),
          k,
          _spec(crop_size=crop),
          _lighting(np.zeros(3), np.eye(3)),
          lighting_std=0.0,
      )
  )
  keys = augment.example_keys(123, 0, jnp.arange(n))
  out = np.concatenate([np.asarray(fn(keys[i : i + 4096])) for i in range(0, n, 4096)])
  oy = out[:, 0, 0, 0].astype(int)
  flipped = out[:, 0, 0, 1] > out[:, 0, -1, 1]
  ox = np.where(flipped, out[:, 0, -1, 1], out[:, 0, 0, 1]).astype(int)
  assert oy.min() == 0 and oy.max() == 32 and ox.min() == 0 and ox.max() == 32
  # Each window is the exact slice at its offset.
  for i in range(0, n, 997):
    ref = _coord_images(1, size)[0, oy[i] : oy[i] + crop, ox[i] : ox[i] + crop].astype(np.float32)
    np.testing.assert_array_equal(out[i], ref[:, ::-1] if flipped[i] else ref)
  counts = np.bincount(oy * 33 + ox, minlength=33 * 33)
  assert sps.chisquare(counts).pvalue > 1e-3
  # The two axes must not be tied together (e.g. oy == ox would still pass marginal tests).
  assert sps.chisquare(np.bincount(oy, minlength=33)).pvalue > 1e-3
  assert abs(flipped.mean() - 0.5) < 4.5 * np.sqrt(0.25 / n)
  # Flips independent of the offset.
  assert abs(flipped[ox < 16].mean() - flipped[ox >= 16].mean()) < 0.03


def test_full_size_crop_offsets_cover_33_positions():
  keys = augment.example_keys(7, 3, jnp.arange(3000))
  oy, ox, _, _ = augment.train_view_params(keys, image_shape=(256, 256), crop_size=224)
  assert set(np.asarray(oy).tolist()) == set(range(33))
  assert set(np.asarray(ox).tolist()) == set(range(33))


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_lighting_shift_in_eigen_span_with_right_std():
  n = 4000
  eigvec = _random_basis(1)
  eigval = np.array([0.3, 0.05, 0.0], np.float32)  # rank 2: shift must lie in span(v1, v2)
  images = np.full((n, 16, 16, 3), 100, np.uint8)
  out = jax.jit(
      lambda k: augment.train_views(
          images, k, _spec(crop_size=16), _lighting(eigval, eigvec), lighting_std=0.1
      )
  )(augment.example_keys(5, 0, jnp.arange(n)))
  out = np.asarray(out, np.float64)
  shift = out[:, 0, 0, :] - 100.0
  # One constant shift per image, over all its pixels.
  np.testing.assert_allclose(
      out - 100.0, np.broadcast_to(shift[:, None, None], out.shape), atol=1e-3
  )
  coeff = shift @ eigvec.astype(np.float64) / 255.0  # = alpha_i * lambda_i
  assert np.abs(coeff[:, 2]).max() < 1e-4  # no component along the null eigenvector
  for i in range(2):
    std = coeff[:, i].std() / eigval[i]
    assert abs(std - 0.1) < 0.005, (i, std)
    assert abs(coeff[:, i].mean() / eigval[i]) < 0.01
  # Components independent.
  assert abs(np.corrcoef(coeff[:, 0], coeff[:, 1])[0, 1]) < 0.06
  # Different each presentation: other step, other draws.
  out2 = augment.train_views(
      images[:8],
      augment.example_keys(5, 1, jnp.arange(8)),
      _spec(crop_size=16),
      _lighting(eigval, eigvec),
  )
  assert not np.allclose(np.asarray(out2)[:, 0, 0], out[:8, 0, 0])


def test_train_views_equal_numpy_reference():
  rs = np.random.RandomState(0)
  b = 6
  images = rs.randint(0, 256, (b, 256, 256, 3)).astype(np.uint8)
  mean = (rs.rand(256, 256, 3) * 255).astype(np.float32)
  eigval = np.array([0.2175, 0.0188, 0.0045], np.float32)
  eigvec = _random_basis(2)
  keys = augment.example_keys(11, 42, jnp.arange(b))
  out = np.asarray(
      jax.jit(
          lambda im, k: augment.train_views(
              im, k, _spec(mean, scale=1 / 128), _lighting(eigval, eigvec)
          )
      )(images, keys)
  )
  oy, ox, fl, alpha = map(np.asarray, augment.train_view_params(keys))
  for i in range(b):
    y, x = oy[i], ox[i]
    ref = images[i, y : y + 224, x : x + 224].astype(np.float64) - mean[y : y + 224, x : x + 224]
    ref = ref + 255.0 * eigvec.astype(np.float64) @ (alpha[i] * eigval)
    ref = ref[:, ::-1] if fl[i] else ref
    np.testing.assert_allclose(out[i], ref / 128, atol=1e-4)
  # Center crop, no flip, no lighting: the plain center window minus the mean.
  center = np.asarray(
      augment.train_views(
          images,
          keys,
          _spec(mean),
          _lighting(eigval, eigvec),
          random_crop=False,
          flip=False,
          lighting_std=0.0,
      )
  )
  np.testing.assert_allclose(center, images[:, 16:240, 16:240] - mean[16:240, 16:240], atol=1e-4)


def test_eval_views_are_exact_windows():
  rs = np.random.RandomState(3)
  images = rs.randint(0, 256, (3, 256, 256, 3)).astype(np.uint8)
  mean = (rs.rand(256, 256, 3) * 255).astype(np.float32)
  x = images.astype(np.float32) - mean
  by_hand = [
      x[:, 0:224, 0:224],
      x[:, 0:224, 32:256],
      x[:, 32:256, 0:224],
      x[:, 32:256, 32:256],
      x[:, 16:240, 16:240],
  ]
  by_hand += [v[:, :, ::-1] for v in by_hand]
  ten = np.asarray(jax.jit(lambda im: augment.eval_views(im, _spec(mean), crops=10))(images))
  assert ten.shape == (3, 10, 224, 224, 3)
  for v in range(10):
    np.testing.assert_allclose(ten[:, v], by_hand[v], atol=1e-4, err_msg=augment.EVAL_VIEW_NAMES[v])
  one = np.asarray(augment.eval_views(images, _spec(mean, scale=0.5), crops=1))
  np.testing.assert_allclose(one[:, 0], by_hand[4] * 0.5, atol=1e-4)
  with pytest.raises(ValueError):
    augment.eval_views(images, _spec(mean), crops=5)


def test_same_keys_same_batch_on_1x1_and_4x2_mesh(devices):
  b = 8
  rs = np.random.RandomState(4)
  images = rs.randint(0, 256, (b, 256, 256, 3)).astype(np.uint8)
  mean = (rs.rand(256, 256, 3) * 255).astype(np.float32)
  eigvec = _random_basis(5)

  def step(imgs, step_num, idx):
    keys = augment.example_keys(jax.random.key(9), step_num, idx)
    return augment.train_views(
        imgs, keys, _spec(mean), _lighting(np.array([0.2, 0.02, 0.004]), eigvec)
    )

  outs = []
  for shape in ((1, 1), (4, 2)):
    mesh = Mesh(np.array(devices[: shape[0] * shape[1]]).reshape(shape), ("data", "tower"))
    batch = NamedSharding(mesh, P("data"))
    fn = jax.jit(step, in_shardings=(batch, None, batch), out_shardings=batch)
    out = fn(jax.device_put(images, batch), 17, jax.device_put(np.arange(b), batch))
    assert out.sharding.mesh.shape["data"] == shape[0]
    outs.append(np.asarray(out))
  np.testing.assert_array_equal(outs[0], outs[1])


def test_std_and_bgr_apply_after_the_lighting_and_before_the_scale():
  """torchvision's std division and Caffe's channel order, against NumPy: the train views of
  (image - mean + lighting) / std * scale, reversed to BGR; the eval views the same without
  lighting."""
  rs = np.random.RandomState(6)
  images = rs.randint(0, 256, (2, 256, 256, 3)).astype(np.uint8)
  mean, std = np.array([120.0, 110.0, 100.0]), np.array([58.0, 57.0, 57.5])
  spec = _spec(mean, std=std, scale=0.5, channel_order="bgr", crop_size=227)
  eigval, eigvec = np.array([0.2, 0.02, 0.004]), _random_basis(7)
  keys = augment.example_keys(3, 0, jnp.arange(2))
  out = np.asarray(augment.train_views(images, keys, spec, _lighting(eigval, eigvec)))
  oy, ox, fl, alpha = map(np.asarray, augment.train_view_params(keys, crop_size=227))
  for i in range(2):
    ref = images[i, oy[i] : oy[i] + 227, ox[i] : ox[i] + 227].astype(np.float64) - mean
    ref = (ref + 255.0 * eigvec.astype(np.float64) @ (alpha[i] * eigval)) / std * 0.5
    ref = ref[:, ::-1] if fl[i] else ref
    np.testing.assert_allclose(out[i], ref[..., ::-1], atol=1e-4)
  center = np.asarray(augment.eval_views(images, spec, crops=1))[:, 0]
  ref = (images[:, 14:241, 14:241].astype(np.float64) - mean) / std * 0.5
  np.testing.assert_allclose(center, ref[..., ::-1], atol=1e-4)


def test_lighting_basis_switch():
  stats = types.SimpleNamespace(eigval=np.ones(3), eigvec=np.eye(3))
  own = augment.Lighting.from_config(tiny.config(**{"augment.eigen": "dataset"}).augment, stats)
  np.testing.assert_array_equal(own.eigvec, np.eye(3))
  pub = augment.Lighting.from_config(tiny.config(**{"augment.eigen": "imagenet"}).augment, stats)
  np.testing.assert_allclose(pub.eigval, [0.2175, 0.0188, 0.0045])  # docs/paper.md#pca-lighting
  np.testing.assert_allclose(pub.eigvec[:, 0], [-0.5675, -0.5808, -0.5836])
  with pytest.raises(ValueError, match="augment.eigen"):
    augment.Lighting.from_config(tiny.config(**{"augment.eigen": "pca"}).augment, stats)
