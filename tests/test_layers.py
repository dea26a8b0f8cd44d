"""The hand-written LRN (§3.3) and max-pool (§3.4) kernels and their gradients against
TensorFlow's and XLA's own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import layers


def _rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(b)) + 1e-30))


def _tf_lrn(x, alpha, k=2.0):
  return tf.nn.local_response_normalization(x, depth_radius=2, bias=k, alpha=alpha, beta=0.75)


@pytest.mark.parametrize("alpha_per_term", [True, False])
def test_lrn_equals_tensorflow(alpha_per_term):
  x = np.random.default_rng(0).normal(0, 30, (2, 7, 7, 48)).astype(np.float32)
  got = layers.local_response_norm(jnp.asarray(x), alpha_per_term=alpha_per_term)
  alpha = 1e-4 if alpha_per_term else 1e-4 / 5  # cuda-convnet/Caffe divide alpha by n
  np.testing.assert_allclose(got, _tf_lrn(x, alpha).numpy(), rtol=2e-6, atol=1e-6)
  # The two conventions really differ on these inputs (else this test could not fail).
  other = _tf_lrn(x, 1e-4 / 5 if alpha_per_term else 1e-4).numpy()
  assert _rel(got, other) > 1e-3


@pytest.mark.parametrize("k", [2.0, 1.0])
def test_lrn_gradient_equals_tensorflow(k):
  rng = np.random.default_rng(1)
  x = rng.normal(0, 30, (2, 5, 5, 16)).astype(np.float32)
  g = rng.normal(0, 1, x.shape).astype(np.float32)
  _, vjp = jax.vjp(lambda v: layers.local_response_norm(v, k=k), jnp.asarray(x))
  (got,) = vjp(jnp.asarray(g))
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    y = _tf_lrn(xt, 1e-4, k=k)
  want = tape.gradient(y, xt, output_gradients=tf.constant(g)).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_lrn_keeps_the_input_dtype_and_computes_in_float32():
  x = np.random.default_rng(2).normal(0, 30, (1, 3, 3, 8)).astype(np.float32)
  got = layers.local_response_norm(jnp.asarray(x, jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  want = _tf_lrn(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), 1e-4).numpy()
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)


@pytest.mark.parametrize("window,stride,side", [(3, 2, 13), (3, 2, 27), (2, 2, 13), (3, 1, 6)])
def test_max_pool_and_its_gradient_equal_tensorflow(window, stride, side):
  rng = np.random.default_rng(3)
  x = rng.normal(0, 1, (2, side, side, 4)).astype(np.float32)
  y, vjp = jax.vjp(lambda v: layers.max_pool(v, window, stride), jnp.asarray(x))
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    yt = tf.nn.max_pool2d(xt, window, stride, "VALID")
  np.testing.assert_array_equal(y, yt.numpy())
  g = rng.normal(0, 1, yt.shape).astype(np.float32)
  (got,) = vjp(jnp.asarray(g))
  want = tape.gradient(yt, xt, output_gradients=tf.constant(g)).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum_of_a_tie():
  """Ties (ReLU zeros, saturated pixels) follow select-and-scatter: the window's first maximum
  in row-major order gets the whole gradient, as in XLA's reduce_window autodiff."""
  x = np.random.default_rng(4).integers(0, 3, (1, 13, 13, 3)).astype(np.float32)
  # Whole-number cotangents: the sums where windows overlap are exact in any order.
  g = np.random.default_rng(5).integers(-8, 9, (1, 6, 6, 3)).astype(np.float32)

  def xla_pool(v):
    return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")

  _, want_vjp = jax.vjp(xla_pool, jnp.asarray(x))
  _, got_vjp = jax.vjp(lambda v: layers.max_pool(v, 3, 2), jnp.asarray(x))
  np.testing.assert_array_equal(got_vjp(jnp.asarray(g))[0], want_vjp(jnp.asarray(g))[0])
