"""The two layers of AlexNet that are written by hand: local response normalisation (§3.3)
and max pooling (§3.4, overlapping with window 3 and stride 2), each with a custom VJP.

  LRN   b_c = a_c / (k + alpha * sum_{|c'-c| <= n/2} a_{c'}^2) ** beta   (paper: k=2, n=5,
        alpha=1e-4, beta=0.75), the window clipped at the channel edges.
  pool  the maximum over each window x window square, VALID, every `stride` pixels; windows
        overlap when stride < window.

Both give the values and gradients of the textbook definitions (tests/test_layers.py checks
them against TensorFlow); their gradients are written out because on CPU they are faster than
what autodiff and XLA produce (select-and-scatter for the pool's gradient, reduce_window for
both forwards): docs/performance.md#max-pool-and-lrn-gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def local_response_norm(
    x,
    *,
    size: int = 5,
    k: float = 2.0,
    alpha: float = 1e-4,
    beta: float = 0.75,
    alpha_per_term: bool = True,
):
  """§3.3: b_c = a_c / (k + alpha * sum_{|c'-c| <= size//2} a_{c'}^2) ** beta.

  The window is clipped at the channel edges of `x`; call it on one tower's channels.
  alpha_per_term=True is the paper's text (= tf.nn.local_response_normalization);
  False divides alpha by `size` as cuda-convnet, Caffe and PyTorch do.

  Computed in float32 (float64 for float64 x) whatever x's dtype. The gradient is written by
  hand (_lrn_backward, docs/performance.md#max-pool-and-lrn-gradients): autodiff of the forward
  keeps d ** -beta's pieces as three extra activation-sized arrays and splits the backward over
  several loops.
  """
  scale = alpha if alpha_per_term else alpha / size
  return _lrn(x, int(size), float(k), float(scale), float(beta))


def _window_sum(v, size: int):
  """sum_{|c'-c| <= size//2} v[..., c'], clipped at the channel edges: shifted slices of a
  zero-padded copy, which fuse into one elementwise loop (reduce_window does not)."""
  channels, r = v.shape[-1], size // 2
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(r, r)])
  return sum(padded[..., i : i + channels] for i in range(size))


def _lrn_denominator(x32, size, k, scale):
  return k + scale * _window_sum(jnp.square(x32), size)


def _pow_neg(d, beta: float):
  """d ** -beta; for the paper's 0.75 as rsqrt * sqrt(rsqrt), without exp/log."""
  if beta == 0.75:
    r = jax.lax.rsqrt(d)
    return r * jnp.sqrt(r)
  return d**-beta


def at_least_f32(dtype):
  """float32 for bfloat16/float16/float32; float64 stays (x64 runs: tests/test_mesh_float64.py)."""
  return jnp.promote_types(dtype, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, size, k, scale, beta):
  x32 = x.astype(at_least_f32(x.dtype))
  return (x32 * _pow_neg(_lrn_denominator(x32, size, k, scale), beta)).astype(x.dtype)


def _lrn_forward(x, size, k, scale, beta):
  return _lrn(x, size, k, scale, beta), x


def _lrn_backward(size, k, scale, beta, x, g):
  """b_c = a_c d_c^-beta, d_c = k + scale sum_{c' in W(c)} a_c'^2 (W symmetric), so
  da_j = g_j d_j^-beta - 2 scale beta a_j sum_{c in W(j)} g_c a_c d_c^(-beta-1)."""
  x32, g32 = x.astype(at_least_f32(x.dtype)), g.astype(at_least_f32(x.dtype))
  d = _lrn_denominator(x32, size, k, scale)
  inv = _pow_neg(d, beta)
  t = g32 * x32 * inv / d
  dx = g32 * inv - (2.0 * scale * beta) * x32 * _window_sum(t, size)
  return (dx.astype(x.dtype),)


_lrn.defvjp(_lrn_forward, _lrn_backward)


def max_pool(x, window: int, stride: int):
  """VALID max pooling over H and W of an NHWC tensor.

  Same values and the same gradient as `nn.max_pool` (each window's gradient goes to its
  first maximum in row-major order, like XLA's select-and-scatter), computed as a max of
  window*window strided slices, with a hand-written backward (_max_pool_backward): on CPU
  XLA's reduce_window forward and its select-and-scatter gradient (a variadic
  reduce_window over index iotas plus a scatter) are the slowest non-convolution ops of
  the step (docs/performance.md#max-pool-and-lrn-gradients).
  """
  return _max_pool(x, int(window), int(stride))


def _pool_slices(x, window: int, stride: int):
  """The window*window strided views x[:, di::stride, dj::stride] (row-major (di, dj))."""
  n, h, w, c = x.shape
  oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
  return [
      jax.lax.slice(
          x,
          (0, di, dj, 0),
          (n, di + stride * (oh - 1) + 1, dj + stride * (ow - 1) + 1, c),
          (1, stride, stride, 1),
      )
      for di in range(window)
      for dj in range(window)
  ]


def _first_argmax(views, y):
  """Index (int8, row-major in the window) of the first view equal to the max y."""
  idx = jnp.full(y.shape, len(views) - 1, jnp.int8)
  for i in range(len(views) - 2, -1, -1):
    idx = jnp.where(views[i] == y, jnp.int8(i), idx)
  return idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, window, stride):
  return functools.reduce(jnp.maximum, _pool_slices(x, window, stride))


def _max_pool_forward(x, window, stride):
  views = _pool_slices(x, window, stride)
  y = functools.reduce(jnp.maximum, views)
  # Keep only which element of each window won (int8): the backward needs neither x nor y.
  return y, (_first_argmax(views, y), x.shape)


def _max_pool_backward(window, stride, res, g):
  """Route g[o] to the winning element of window o, summing where windows overlap.

  Input row i = stride * m + r is element di = stride * (m - o) + r of window o, so the
  gradient splits into stride x stride phase planes (r_y, r_x) of size
  ceil(H/stride) x ceil(W/stride), each a sum of shifted masked copies of g, interleaved
  at the end: loops over output-sized arrays, no scatter.
  """
  idx, shape = res
  n, h, w, c = shape
  oh, ow = g.shape[1:3]
  mh, mw = -(-h // stride), -(-w // stride)
  planes = [[None] * stride for _ in range(stride)]
  for i in range(window * window):
    di, dj = divmod(i, window)
    qy, ry = divmod(di, stride)
    qx, rx = divmod(dj, stride)
    part = jnp.where(idx == i, g, jnp.zeros((), g.dtype))
    # window o's element (di, dj) sits at plane position (o + qy, o' + qx).
    part = jax.lax.pad(
        part,
        jnp.zeros((), g.dtype),
        ((0, 0, 0), (qy, mh - oh - qy, 0), (qx, mw - ow - qx, 0), (0, 0, 0)),
    )
    planes[ry][rx] = part if planes[ry][rx] is None else planes[ry][rx] + part
  zeros = jnp.zeros((n, mh, mw, c), g.dtype)
  rows = [jnp.stack([p if p is not None else zeros for p in row], axis=3) for row in planes]
  dx = jnp.stack(rows, axis=2)  # [n, mh, stride, mw, stride, c]
  dx = dx.reshape(n, mh * stride, mw * stride, c)[:, :h, :w]
  return (dx,)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)
