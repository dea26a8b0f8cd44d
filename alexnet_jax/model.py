"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) as a Flax linen module.

The network is written as the program ONE device runs (SPMD): every "tower" layer
(conv1..conv5, fc6, fc7) holds its parameters with a leading tower axis, and a device
loops over the towers it holds locally, running plain (ungrouped) convolutions. At the
four cross-tower points of the paper (the inputs of conv3, fc6, fc7, fc8) the towers'
outputs are concatenated along channels: with `tower_axis` set (inside `jax.shard_map`,
see sharding.py) that is one `all_gather` over the mesh axis, otherwise a local
concatenation. So one code path serves a laptop (both towers on one device) and the
paper's two-device split, with the same parameter tree.

Parameter layout (T = number of towers, 2 for the paper):
  conv{i}/kernel [T, kh, kw, cin, cout/T]   conv{i}/bias [T, cout/T]
  fc{6,7}/kernel [T, fan_in, out/T]          fc{6,7}/bias [T, out/T]
  fc8/kernel     [4096, num_classes]         fc8/bias     [num_classes]   (no tower axis)
fc6 reads the pooled conv5 output of both towers, concatenated along channels and
flattened in (H, W, C) order (`fc6_input_order="chw"`: PyTorch's and Caffe's (C, H, W)).

Every default is the paper's network; the other switches describe the published AlexNets
that alexnet_jax.convert loads (torchvision's one-tower net, Caffe's bvlc_alexnet, the grouped
PyTorch layout): their widths, input size, conv1 padding, LRN constants and placement, and
flatten order (configs/default.py says which system uses which).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SHAPE = (224, 224, 3)

# Per-layer widths summed over both towers (docs/paper.md#architecture, §3.5).
PAPER_CONV_WIDTHS = (96, 256, 384, 384, 256)
PAPER_FC_WIDTHS = (4096, 4096)
# The paper's "one-GPU net" (§3.2 and its footnote): one tower with half the kernels in
# conv1-conv4; conv5 and the fully-connected layers keep their full size.
ONE_TOWER_CONV_WIDTHS = (48, 128, 192, 192, 256)

# Layers whose parameters carry the leading tower axis; fc8 is shared by both towers.
TOWER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
# §5: biases 1 here ("provides the ReLUs with positive inputs"), 0 elsewhere.
PAPER_UNIT_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")


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

  Computed in float32 (float64 for float64 x) whatever x's dtype. The gradient is written by hand
  (_lrn_backward, docs/performance.md#max-pool-and-lrn-gradients): autodiff of the forward kept d ** -beta's
  pieces as three extra activation-sized arrays and split the backward over several loops.
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


def _at_least_f32(dtype):
  """float32 for bfloat16/float16/float32; float64 stays (x64 runs: tests/test_mesh_float64.py)."""
  return jnp.promote_types(dtype, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, size, k, scale, beta):
  x32 = x.astype(_at_least_f32(x.dtype))
  return (x32 * _pow_neg(_lrn_denominator(x32, size, k, scale), beta)).astype(x.dtype)


def _lrn_forward(x, size, k, scale, beta):
  return _lrn(x, size, k, scale, beta), x


def _lrn_backward(size, k, scale, beta, x, g):
  """b_c = a_c d_c^-beta, d_c = k + scale sum_{c' in W(c)} a_c'^2 (W symmetric), so
  da_j = g_j d_j^-beta - 2 scale beta a_j sum_{c in W(j)} g_c a_c d_c^(-beta-1)."""
  x32, g32 = x.astype(_at_least_f32(x.dtype)), g.astype(_at_least_f32(x.dtype))
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
  reduce_window over index iotas plus a scatter) were the slowest non-convolution ops of
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


def _he_normal(fan_in_axes: Sequence[int]):
  def init(key, shape, dtype=jnp.float32):
    fan_in = int(np.prod([shape[a] for a in fan_in_axes]))
    return jnp.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, dtype)

  return init


class AlexNet(nn.Module):
  """The paper's network; every default is the paper's choice.

  Attributes:
    num_classes: width of fc8.
    width: multiplier on every conv and fc width (1.0 = paper; 0.25 trains on a CPU).
    one_tower: one tower (num_towers=1): the paper's one-GPU ablation (half the kernels in
      conv1-4) unless conv_widths says otherwise (torchvision's net).
    conv_widths: conv1..conv5 widths summed over the towers; () = the paper's (or, with
      one_tower, the one-GPU net's). torchvision: (64, 192, 384, 256, 256).
    image_size: side of the square input crop: 224 (paper, torchvision); 227 (Caffe).
    conv1_padding: (before, after) zero rows/columns around conv1's input: (0, 3) is
      cuda-convnet's rule that gives 55x55 from 224; (2, 2) torchvision and the grouped
      layout; (0, 0) Caffe at 227.
    lrn: local response normalisation after conv1 and conv2 (ablation: False).
    lrn_alpha_per_term: True = paper text (alpha per squared term); False = alpha/n
      (cuda-convnet, Caffe, PyTorch). lrn_k: the paper's k=2 (Caffe's bvlc_alexnet: 1).
    lrn_after_pool: LRN on the pooled maps (the grouped PyTorch layout) instead of before
      the pooling (paper, Caffe).
    lrn_across_towers: one LRN window over all towers' channels (Caffe and PyTorch run LRN
      on the whole layer, so channels at a tower's edge see the other tower's); False = the
      paper's per-tower LRN (each GPU normalised its own maps).
    overlapping_pool: 3x3 stride 2 pooling (paper); False = 2x2 stride 2 (ablation).
    fc6_input_order: how the pooled conv5 maps are flattened for fc6: "hwc" (this project's
      choice) or "chw" (PyTorch's and Caffe's NCHW flatten).
    initializer: 'paper' (N(0, 0.01) weights, biases 1 in conv2/4/5, fc6/7) or 'he'
      (He-normal weights, zero biases: leaves the initial plateau at once, docs/paper.md#initialization).
    dropout_rate: on the outputs of fc6 and fc7 (inverted dropout, §4.2).
    dtype: compute dtype (bfloat16 on accelerators); parameters stay float32, except with
      float64 (under jax_enable_x64), where everything is float64.
    tower_axis / data_axis: mesh axis names, set by sharding.py when the module runs
      inside `jax.shard_map`; None when one device holds everything.
  """

  num_classes: int = 1000
  width: float = 1.0
  one_tower: bool = False
  conv_widths: tuple[int, ...] = ()
  image_size: int = 224
  conv1_padding: tuple[int, int] = (0, 3)
  lrn: bool = True
  lrn_alpha_per_term: bool = True
  lrn_k: float = 2.0
  lrn_after_pool: bool = False
  lrn_across_towers: bool = False
  overlapping_pool: bool = True
  fc6_input_order: str = "hwc"
  initializer: str = "paper"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  tower_axis: str | None = None
  data_axis: str | None = None

  # ---- static structure -------------------------------------------------------------
  @property
  def num_towers(self) -> int:
    return 1 if self.one_tower else 2

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one input crop."""
    return (self.image_size, self.image_size, 3)

  def layer_widths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv widths, fc6/fc7 widths), summed over towers, after the width multiplier."""
    conv = ONE_TOWER_CONV_WIDTHS if self.one_tower else PAPER_CONV_WIDTHS
    if self.conv_widths:
      if len(self.conv_widths) != 5:
        raise ValueError(f"model.conv_widths needs 5 widths (conv1..conv5), got {self.conv_widths}")
      conv = tuple(self.conv_widths)
    t = self.num_towers
    scale = lambda w: max(t, t * round(w * self.width / t))  # divisible by the towers
    return tuple(scale(w) for w in conv), tuple(scale(w) for w in PAPER_FC_WIDTHS)

  def _local_towers(self) -> int:
    if self.tower_axis is None:
      return self.num_towers
    n = jax.lax.axis_size(self.tower_axis)
    if self.num_towers % n:
      raise ValueError(
          f"{self.num_towers} tower(s) cannot be split over a mesh axis "
          f"'{self.tower_axis}' of size {n}; use mesh.tower=1 or "
          f"{self.num_towers}."
      )
    return self.num_towers // n

  def _gather_towers(self, xs: list[jax.Array]) -> jax.Array:
    """Concatenate all towers' outputs along channels: a cross-tower point."""
    x = jnp.concatenate(xs, axis=-1) if len(xs) > 1 else xs[0]
    # On a size-1 tower axis the all-gather is a no-op that still made XLA:CPU give the
    # tensors around it a channel-major layout (1.33x slower step on CPU).
    if self.tower_axis is not None and jax.lax.axis_size(self.tower_axis) > 1:
      x = jax.lax.all_gather(x, self.tower_axis, axis=x.ndim - 1, tiled=True)
    return x

  def _first_global_tower(self, local: int) -> jax.Array | int:
    if self.tower_axis is None:
      return 0
    return jax.lax.axis_index(self.tower_axis) * local

  # ---- parameters --------------------------------------------------------------------
  def _init_fns(self, name: str, fan_in_axes: Sequence[int]) -> tuple[Callable, Callable]:
    if self.initializer == "paper":
      bias = 1.0 if name in PAPER_UNIT_BIAS_LAYERS else 0.0
      return nn.initializers.normal(0.01), nn.initializers.constant(bias)
    if self.initializer == "he":
      return _he_normal(fan_in_axes), nn.initializers.zeros
    raise ValueError(f"model.initializer must be 'paper' or 'he', got {self.initializer!r}")

  def _tower_params(self, name: str, kernel_shape: tuple[int, ...], local: int):
    """Kernel [local, *kernel_shape] and bias [local, out] of one tower layer."""
    fan_in_axes = tuple(range(1, len(kernel_shape)))  # all but the output axis (+1 shift)
    kinit, binit = self._init_fns(name, fan_in_axes)
    return _KernelBias(
        (local, *kernel_shape),
        (local, kernel_shape[-1]),
        kinit,
        binit,
        _at_least_f32(self.dtype),
        name=name,
    )()

  # ---- layers ------------------------------------------------------------------------
  def _conv(self, x, kernel, bias, stride: int, padding):
    y = jax.lax.conv_general_dilated(
        x,
        kernel.astype(self.dtype),
        (stride, stride),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + bias.astype(self.dtype)

  def _dropout(self, x, rng, tower: jax.Array | int):
    """Inverted dropout whose mask depends only on (layer rng, tower, example index),
    so it is the same whatever the mesh: independent across towers and examples, and
    across steps through the rng the caller folds the step into."""
    rng = jax.random.fold_in(rng, tower)
    batch = x.shape[0]
    start = 0 if self.data_axis is None else jax.lax.axis_index(self.data_axis) * batch
    keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, start + jnp.arange(batch))
    keep = 1.0 - self.dropout_rate
    mask = jax.vmap(lambda k: jax.random.bernoulli(k, keep, x.shape[1:]))(keys)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    shape = self.input_shape
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
      raise ValueError(
          f"AlexNet expects NHWC images of shape (batch, {', '.join(map(str, shape))})"
          f" ({shape[0]}x{shape[1]} RGB crops of the 256x256 images); got shape "
          f"{tuple(images.shape)}."
      )
    if self.fc6_input_order not in ("hwc", "chw"):
      raise ValueError(
          f"model.fc6_input_order must be 'hwc' or 'chw', got {self.fc6_input_order!r}"
      )
    conv_w, fc_w = self.layer_widths()
    t = self.num_towers
    local = self._local_towers()
    first = self._first_global_tower(local)
    pool_w, pool_s = (3, 2) if self.overlapping_pool else (2, 2)

    def normalize(y):
      if not self.lrn:
        return y
      return local_response_norm(y, k=self.lrn_k, alpha_per_term=self.lrn_alpha_per_term)

    x = images.astype(self.dtype)

    def per_tower(fn, xs):
      """Run fn(tower, input) for each local tower; xs is shared or a per-tower list."""
      return [fn(i, xs[i] if isinstance(xs, list) else xs) for i in range(local)]

    def stage(name, hs):
      # Record each row of the paper's table (both local towers); free unless
      # the caller asks for mutable=["intermediates"].
      self.sow("intermediates", name, jnp.concatenate(hs, -1) if len(hs) > 1 else hs[0])
      return hs

    def conv_layer(name, xs, ksize, cin, cout, stride, pad):
      k, b = self._tower_params(name, (ksize, ksize, cin, cout // t), local)
      return stage(
          f"{name}_out", per_tower(lambda i, x: nn.relu(self._conv(x, k[i], b[i], stride, pad)), xs)
      )

    def lrn_across_towers(hs):
      """LRN with one window over every tower's channels: each device normalises the
      gathered layer and keeps its own towers' channels (the gradient's all-gather
      transposes to a reduce-scatter, so it reaches the tower that owns each channel)."""
      full = normalize(self._gather_towers(hs))
      ct = full.shape[-1] // t
      mine = jax.lax.dynamic_slice_in_dim(full, first * ct, local * ct, axis=-1)
      return [mine[..., i * ct : (i + 1) * ct] for i in range(local)]

    def pool(name, hs, with_lrn):
      if not (with_lrn and self.lrn and (self.lrn_after_pool or self.lrn_across_towers)):
        return stage(name, [max_pool(normalize(h) if with_lrn else h, pool_w, pool_s) for h in hs])
      lrn = lrn_across_towers if self.lrn_across_towers else lambda hs: [normalize(h) for h in hs]
      if not self.lrn_after_pool:
        hs = lrn(hs)
      hs = [max_pool(h, pool_w, pool_s) for h in hs]
      return stage(name, lrn(hs) if self.lrn_after_pool else hs)

    # conv1: both towers read the whole image. 11x11/4 on 224 gives 55 only with
    # cuda-convnet's rule: pad (0, 3) so the last window reads 3 zero pixels (the default).
    p0, p1 = self.conv1_padding
    h = conv_layer("conv1", x, 11, 3, conv_w[0], 4, ((p0, p1), (p0, p1)))
    h = pool("pool1", h, with_lrn=True)
    # conv2: each tower reads only its own conv1 maps.
    h = conv_layer("conv2", h, 5, conv_w[0] // t, conv_w[1], 1, ((2, 2), (2, 2)))
    h = pool("pool2", h, with_lrn=True)
    # conv3 reads both towers (cross-tower point 1); conv4, conv5 their own tower.
    h = conv_layer("conv3", self._gather_towers(h), 3, conv_w[1], conv_w[2], 1, ((1, 1),) * 2)
    h = conv_layer("conv4", h, 3, conv_w[2] // t, conv_w[3], 1, ((1, 1),) * 2)
    h = conv_layer("conv5", h, 3, conv_w[3] // t, conv_w[4], 1, ((1, 1),) * 2)
    h = pool("pool5", h, with_lrn=False)
    # fc6 reads both towers (point 2): 6x6x256 flattened in (H, W, C) order = 9216
    # (or (C, H, W), the order of the PyTorch and Caffe fc6 weights).
    g = self._gather_towers(h)
    if self.fc6_input_order == "chw":
      g = jnp.transpose(g, (0, 3, 1, 2))
    g = g.reshape(g.shape[0], -1)
    for name, width in (("fc6", fc_w[0]), ("fc7", fc_w[1])):
      k, b = self._tower_params(name, (g.shape[-1], width // t), local)
      # One dot batched over the local towers: slicing k[i] out of the stacked kernel
      # copied it (75 MB for fc6) and the gradient was re-stacked with a pad; 1.25x on
      # fc6's forward + backward on CPU.
      gl = jnp.broadcast_to(g, (local, *g.shape))
      y = jax.lax.dot_general(gl, k.astype(self.dtype), (((2,), (1,)), ((0,), (0,))))
      y = nn.relu(y + b.astype(self.dtype)[:, None, :])
      h = [y[i] for i in range(local)]
      if train and self.dropout_rate > 0:
        rng = self.make_rng("dropout")  # once per layer: the same on every mesh
        h = [self._dropout(h[i], rng, first + i) for i in range(local)]
      g = self._gather_towers(stage(f"{name}_out", h))  # cross-tower points 3 (fc7) and 4 (fc8)
    kinit, binit = self._init_fns("fc8", (0,))
    k8, b8 = _KernelBias(
        (g.shape[-1], self.num_classes),
        (self.num_classes,),
        kinit,
        binit,
        _at_least_f32(self.dtype),
        name="fc8",
    )()
    logits = g @ k8.astype(self.dtype) + b8.astype(self.dtype)
    self.sow("intermediates", "logits", logits)
    return logits.astype(_at_least_f32(self.dtype))


class _KernelBias(nn.Module):
  """Declares one layer's kernel and bias, so parameters nest as {layer: {kernel, bias}}."""

  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  kernel_init: Callable
  bias_init: Callable
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    return (
        self.param("kernel", self.kernel_init, self.kernel_shape, self.param_dtype),
        self.param("bias", self.bias_init, self.bias_shape, self.param_dtype),
    )


def num_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def from_config(model_config, num_classes: int) -> AlexNet:
  """Build the module from a `config.model` ConfigDict."""
  fields = {f.name for f in dataclasses.fields(AlexNet)} - {"parent", "name"}
  kwargs = {k: v for k, v in model_config.items() if k in fields}
  unknown = set(model_config.keys()) - fields
  if unknown:
    raise ValueError(
        f"unknown config.model keys {sorted(unknown)}; "
        f"AlexNet accepts {sorted(fields - {'tower_axis', 'data_axis'})}"
    )
  if "dtype" in kwargs and isinstance(kwargs["dtype"], str):
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  for key in ("conv_widths", "conv1_padding"):  # config.json gives lists back
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  return AlexNet(num_classes=num_classes, **kwargs)


# ---- model.variant: the switch values each named network fixes ----------------------------------
_PAPER_SWITCHES = {
    "one_tower": False,
    "conv_widths": (),
    "conv1_padding": (0, 3),
    "lrn_k": 2.0,
    "lrn_alpha_per_term": True,
    "lrn_after_pool": False,
    "lrn_across_towers": False,
    "fc6_input_order": "hwc",
}
VARIANT_SWITCHES = {
    "paper": _PAPER_SWITCHES,
    "one_gpu": {**_PAPER_SWITCHES, "one_tower": True},
    "torchvision": {
        **_PAPER_SWITCHES,
        "one_tower": True,
        "conv_widths": (64, 192, 384, 256, 256),
        "conv1_padding": (2, 2),
        "fc6_input_order": "chw",
    },
    "caffe": {
        **_PAPER_SWITCHES,
        "conv1_padding": (0, 0),
        "lrn_k": 1.0,
        "lrn_alpha_per_term": False,
        "lrn_across_towers": True,
        "fc6_input_order": "chw",
    },
    "pytorch_grouped": {
        **_PAPER_SWITCHES,
        "conv1_padding": (2, 2),
        "lrn_alpha_per_term": False,
        "lrn_after_pool": True,
        "lrn_across_towers": True,
        "fc6_input_order": "chw",
    },
}


def variant_of(switches: dict) -> str:
  """The variant whose switches equal `switches` (absent keys: the paper's; lists and tuples
  compare as tuples), or ValueError naming the keys that no variant has with these values."""

  def norm(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v

  given = {k: norm(v) for k, v in switches.items()}
  unknown = sorted(set(given) - set(_PAPER_SWITCHES))
  if unknown:
    raise ValueError(f"unknown model switches {unknown}")
  given = {**_PAPER_SWITCHES, **given}
  for name, fields in VARIANT_SWITCHES.items():
    if given == fields:
      return name
  off = {k: v for k, v in given.items() if v != _PAPER_SWITCHES[k]}
  raise ValueError(
      "no variant has " + ", ".join(f"model.{k}={v!r}" for k, v in sorted(off.items()))
  )
