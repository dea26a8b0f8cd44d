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
flattened in (H, W, C) order (a variant's fc6_input_order="chw": PyTorch's and Caffe's).

The "keras_bn" variant (the BatchNorm AlexNet of a widely copied Keras tutorial) adds, with
T = 1 and no LRN (its config sets model.lrn=False, model.overlapping_pool=False):
  bn{1..5}, bn{6,7,8}: {scale, bias} [channels] in "params", {mean, var} [channels] in
    "batch_stats" (Flax BatchNorm; Keras's momentum 0.99 and epsilon 1e-3), after each block
    as Keras orders it: conv -> ReLU -> [pool] -> BN; dense -> ReLU -> dropout -> BN
  fc8/kernel  [4096, 1000] (a hidden layer: ReLU, dropout, bn8)   head/kernel [1000, classes]
Batch statistics are over the global batch: inside `jax.shard_map` they are averaged over
the data axis (`data_axis`), so every mesh computes the same ones.

The module's own switches are the paper's (width, LRN, overlapping pooling, initialisation,
dropout). A `Variant` fixes the rest: the paper's two-tower net, its one-GPU ablation, or one
of the published AlexNets that alexnet_jax.convert loads (torchvision's one-tower net, Caffe's
bvlc_alexnet, the grouped PyTorch layout), which differ in towers, widths, conv1 padding, LRN
constants and placement, and flatten order. The LRN and pooling kernels are in layers.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.facts import MODEL_SWITCH_KEYS
from alexnet_jax.layers import at_least_f32, local_response_norm, max_pool

IMAGE_SHAPE = (224, 224, 3)

# Per-layer widths summed over both towers (docs/paper.md#architecture, §3.5).
PAPER_CONV_WIDTHS = (96, 256, 384, 384, 256)
PAPER_FC_WIDTHS = (4096, 4096)
# The paper's "one-GPU net" (§3.2 and its footnote): one tower with half the kernels in
# conv1-conv4; conv5 and the fully-connected layers keep their full size.
ONE_TOWER_CONV_WIDTHS = (48, 128, 192, 192, 256)
TORCHVISION_CONV_WIDTHS = (64, 192, 384, 256, 256)
# Kernel sides of conv1..conv5: the paper's (§3.5), and the Keras tutorial's 11x11 conv2.
PAPER_CONV_KERNELS = (11, 5, 3, 3, 3)
KERAS_CONV_KERNELS = (11, 11, 3, 3, 3)
# Keras's BatchNormalization defaults (Flax's momentum means the same: new = m*old + (1-m)*batch).
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3

# Layers whose parameters carry the leading tower axis; fc8 is shared by both towers.
TOWER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
# §5: biases 1 here ("provides the ReLUs with positive inputs"), 0 elsewhere.
PAPER_UNIT_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")


@dataclasses.dataclass(frozen=True)
class Variant:
  """Which AlexNet: the settings in which the published networks differ from the paper's.

  Attributes:
    num_towers: 2 (the paper's two GPUs, §3.2) or 1 (the one-GPU net; torchvision's).
    conv_widths: conv1..conv5 widths summed over the towers (before model.width).
    conv1_padding: (before, after) zero rows/columns around conv1's input: (0, 3) is
      cuda-convnet's rule that gives 55x55 from 224; (2, 2) torchvision and the grouped
      layout; (0, 0) Caffe at 227.
    lrn_k: the paper's k=2 (Caffe's bvlc_alexnet: 1).
    lrn_alpha_per_term: True = paper text (alpha per squared term); False = alpha/n
      (cuda-convnet, Caffe, PyTorch).
    lrn_after_pool: LRN on the pooled maps (the grouped PyTorch layout) instead of before
      the pooling (paper, Caffe).
    lrn_across_towers: one LRN window over all towers' channels (Caffe and PyTorch run LRN
      on the whole layer, so channels at a tower's edge see the other tower's); False = the
      paper's per-tower LRN (each GPU normalised its own maps).
    fc6_input_order: how the pooled conv5 maps are flattened for fc6: "hwc" (this project's
      choice) or "chw" (PyTorch's and Caffe's NCHW flatten).
    conv_kernels: kernel sides of conv1..conv5: the paper's (11, 5, 3, 3, 3); Keras's
      tutorial (11, 11, 3, 3, 3).
    conv_padding: "paper" (conv1 by conv1_padding; conv2..conv5 keep their size: k // 2 on
      each side) or "valid" (no padding anywhere; conv1_padding must be (0, 0)).
    batch_norm: BatchNorm (bn1..bn8) after each block, in Keras's order: conv -> ReLU ->
      [pool] -> BN and dense -> ReLU -> dropout -> BN (one tower only).
    fc8_width: 0 = fc8 is the class layer (paper); > 0 = fc8 is a hidden layer of this width
      (before model.width; ReLU, dropout, BatchNorm) and a layer "head" gives the classes.
  """

  num_towers: int = 2
  conv_widths: tuple[int, ...] = PAPER_CONV_WIDTHS
  conv1_padding: tuple[int, int] = (0, 3)
  lrn_k: float = 2.0
  lrn_alpha_per_term: bool = True
  lrn_after_pool: bool = False
  lrn_across_towers: bool = False
  fc6_input_order: str = "hwc"
  conv_kernels: tuple[int, ...] = PAPER_CONV_KERNELS
  conv_padding: str = "paper"
  batch_norm: bool = False
  fc8_width: int = 0

  @property
  def classifier(self) -> str:
    """The layer that maps features to classes (re-initialised for a new class count)."""
    return "head" if self.fc8_width else "fc8"

  def __post_init__(self):
    if self.num_towers not in (1, 2):
      raise ValueError(f"a Variant has 1 or 2 towers, got {self.num_towers}")
    if len(self.conv_widths) != 5:
      raise ValueError(f"conv_widths needs 5 widths (conv1..conv5), got {self.conv_widths}")
    if len(self.conv1_padding) != 2:
      raise ValueError(f"conv1_padding is (before, after), got {self.conv1_padding}")
    if self.fc6_input_order not in ("hwc", "chw"):
      raise ValueError(f"fc6_input_order must be 'hwc' or 'chw', got {self.fc6_input_order!r}")
    if len(self.conv_kernels) != 5:
      raise ValueError(f"conv_kernels needs 5 sides (conv1..conv5), got {self.conv_kernels}")
    if self.conv_padding not in ("paper", "valid"):
      raise ValueError(f"conv_padding must be 'paper' or 'valid', got {self.conv_padding!r}")
    if self.conv_padding == "valid" and tuple(self.conv1_padding) != (0, 0):
      raise ValueError("conv_padding='valid' pads nothing: conv1_padding must be (0, 0)")
    if self.batch_norm and self.num_towers != 1:
      raise ValueError("batch_norm is for one-tower variants (its statistics span all channels)")
    if self.fc8_width < 0:
      raise ValueError(f"fc8_width must be >= 0, got {self.fc8_width}")


VARIANTS = {
    "paper": Variant(),
    "one_gpu": Variant(num_towers=1, conv_widths=ONE_TOWER_CONV_WIDTHS),
    # configs/torchvision.py also sets model.lrn=False: torchvision's net has no LRN.
    "torchvision": Variant(
        num_towers=1,
        conv_widths=TORCHVISION_CONV_WIDTHS,
        conv1_padding=(2, 2),
        fc6_input_order="chw",
    ),
    "caffe": Variant(
        conv1_padding=(0, 0),
        lrn_k=1.0,
        lrn_alpha_per_term=False,
        lrn_across_towers=True,
        fc6_input_order="chw",
    ),
    "pytorch_grouped": Variant(
        conv1_padding=(2, 2),
        lrn_alpha_per_term=False,
        lrn_after_pool=True,
        lrn_across_towers=True,
        fc6_input_order="chw",
    ),
    # The Keras tutorial's BatchNorm AlexNet (configs/keras_bn.py also sets model.lrn=False
    # and model.overlapping_pool=False: no LRN, 2x2/2 pooling after conv1, conv2, conv5).
    "keras_bn": Variant(
        num_towers=1,
        conv1_padding=(0, 0),
        conv_kernels=KERAS_CONV_KERNELS,
        conv_padding="valid",
        batch_norm=True,
        fc8_width=1000,
    ),
}


def variant_of(switches: dict) -> str:
  """The name of the variant that config.model switches (facts.MODEL_SWITCH_KEYS: run
  directories written with them name no variant; others are ignored) describe. Absent keys
  take the paper's values; conv_widths () means the paper's widths (the one-GPU net's with
  one_tower). ValueError names the switches when no variant has them."""
  one_tower = bool(switches.get("one_tower", False))
  paper, reason = VARIANTS["paper"], ""
  try:
    widths = tuple(int(w) for w in switches.get("conv_widths", ()) or ())
    wanted = Variant(
        num_towers=1 if one_tower else 2,
        conv_widths=widths or (ONE_TOWER_CONV_WIDTHS if one_tower else PAPER_CONV_WIDTHS),
        conv1_padding=tuple(int(p) for p in switches.get("conv1_padding", paper.conv1_padding)),
        lrn_k=float(switches.get("lrn_k", paper.lrn_k)),
        lrn_alpha_per_term=bool(switches.get("lrn_alpha_per_term", paper.lrn_alpha_per_term)),
        lrn_after_pool=bool(switches.get("lrn_after_pool", paper.lrn_after_pool)),
        lrn_across_towers=bool(switches.get("lrn_across_towers", paper.lrn_across_towers)),
        fc6_input_order=str(switches.get("fc6_input_order", paper.fc6_input_order)),
    )
  except (TypeError, ValueError) as e:
    wanted, reason = None, f" ({e})"
  for name, variant in VARIANTS.items():
    if variant == wanted:
      return name
  paper_switches = _switches_of(paper)
  given = ", ".join(
      f"model.{k}={_normalised(switches[k])!r}"
      for k in sorted(switches)
      if k in MODEL_SWITCH_KEYS and _normalised(switches[k]) != paper_switches[k]
  )
  raise ValueError(
      f"the model switches {given or 'given'} match no model.variant{reason}; the variants "
      f"are {', '.join(VARIANTS)} (alexnet_jax.model.VARIANTS lists their values)"
  )


def _normalised(value):
  return tuple(_normalised(v) for v in value) if isinstance(value, (list, tuple)) else value


def _switches_of(variant: Variant) -> dict:
  """A variant as the old config.model switches wrote it."""
  one_tower = variant.num_towers == 1
  default_widths = ONE_TOWER_CONV_WIDTHS if one_tower else PAPER_CONV_WIDTHS
  return {
      "one_tower": one_tower,
      "conv_widths": () if variant.conv_widths == default_widths else variant.conv_widths,
      "conv1_padding": variant.conv1_padding,
      "lrn_k": variant.lrn_k,
      "lrn_alpha_per_term": variant.lrn_alpha_per_term,
      "lrn_after_pool": variant.lrn_after_pool,
      "lrn_across_towers": variant.lrn_across_towers,
      "fc6_input_order": variant.fc6_input_order,
  }


def _glorot_uniform(fan_in_axes: Sequence[int]):
  """Keras's default kernel initialiser: U(-l, l), l = sqrt(6 / (fan_in + fan_out)), where a
  conv's fans are the receptive field times its input or output channels (tower axis aside)."""

  def init(key, shape, dtype=jnp.float32):
    fan_in = int(np.prod([shape[a] for a in fan_in_axes]))
    fan_out = fan_in // shape[fan_in_axes[-1]] * shape[-1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def _he_normal(fan_in_axes: Sequence[int]):
  def init(key, shape, dtype=jnp.float32):
    fan_in = int(np.prod([shape[a] for a in fan_in_axes]))
    return jnp.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, dtype)

  return init


class AlexNet(nn.Module):
  """The paper's network; every default is the paper's choice.

  Attributes:
    num_classes: width of fc8.
    variant: which AlexNet (VARIANTS): the paper's two towers, its one-GPU net, or a
      published network's layout.
    width: multiplier on every conv and fc width (1.0 = paper; 0.25 trains on a CPU).
    lrn: local response normalisation after conv1 and conv2 (§3.3; ablation: False).
    overlapping_pool: 3x3 stride 2 pooling (§3.4); False = 2x2 stride 2 (ablation).
    initializer: 'paper' (N(0, 0.01) weights, biases 1 in conv2/4/5, fc6/7, §5) or 'he'
      (He-normal weights, zero biases: leaves the initial plateau at once,
      docs/paper.md#initialization).
    dropout_rate: on the outputs of fc6 and fc7 (inverted dropout, §4.2).
    dtype: compute dtype (bfloat16 on accelerators); parameters stay float32, except with
      float64 (under jax_enable_x64), where everything is float64.
    image_size: side of the square input crop: 224 (paper, torchvision); 227 (Caffe).
    tower_axis / data_axis: mesh axis names, set by sharding.py when the module runs
      inside `jax.shard_map`; None when one device holds everything.
  """

  num_classes: int = 1000
  variant: Variant = VARIANTS["paper"]
  width: float = 1.0
  lrn: bool = True
  overlapping_pool: bool = True
  initializer: str = "paper"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  image_size: int = 224
  tower_axis: str | None = None
  data_axis: str | None = None

  @nn.compact
  def __call__(self, images, *, train: bool = False, example_index=None):
    """Logits of `images`; example_index: int [B], the rows' positions in the global batch
    that dropout keys its masks by (None: this batch is the global batch, split over the
    data axis in order; a micro-batch of gradient accumulation passes its rows' own)."""
    x = self._check(images).astype(self.dtype)
    (c1, c2, c3, c4, c5), (f6, f7) = self.layer_widths()
    k1, k2, k3, k4, k5 = self.variant.conv_kernels
    t = self.num_towers
    # §3.5 and Figure 2, layer by layer; a ReLU follows every conv and fc layer (§3.1). h is the
    # list of this device's towers' maps (§3.2); _gather_towers joins every tower's. _bn is the
    # identity unless variant.batch_norm.
    h = self._conv("conv1", x, k1, 3, c1, stride=4, padding=self._padding(1, k1))
    h = self._bn("bn1", self._lrn_and_pool("pool1", h), train)  # §3.3 LRN, §3.4 max-pool
    h = self._conv("conv2", h, k2, c1 // t, c2, padding=self._padding(2, k2))  # §3.2: own tower
    h = self._bn("bn2", self._lrn_and_pool("pool2", h), train)  # §3.3, §3.4
    h = self._conv("conv3", self._gather_towers(h), k3, c2, c3, padding=self._padding(3, k3))
    h = self._bn("bn3", h, train)  # conv3 read both towers (§3.2)
    h = self._conv("conv4", h, k4, c3 // t, c4, padding=self._padding(4, k4))  # §3.2: own tower
    h = self._bn("bn4", h, train)
    h = self._conv("conv5", h, k5, c4 // t, c5, padding=self._padding(5, k5))  # §3.2: own tower
    h = self._bn("bn5", self._sow("pool5", self._pool(h)), train)  # §3.4; no LRN after conv5
    g = self._flatten(self._gather_towers(h))  # §3.2: fc6 reads both towers
    g = self._fc("fc6", g, f6, train, example_index)  # §4.2 dropout
    g = self._gather_towers(self._bn("bn6", g, train))  # §3.2: fc7 reads both
    g = self._fc("fc7", g, f7, train, example_index)  # §4.2 dropout
    g = self._gather_towers(self._bn("bn7", g, train))  # §3.2: fc8 reads both
    if self.variant.fc8_width:
      return self._classifier("head", self._hidden_fc8(g, train, example_index))
    return self._classifier("fc8", g)  # 1000-way softmax's logits (§3.5)

  # ---- static structure -------------------------------------------------------------
  @property
  def num_towers(self) -> int:
    return self.variant.num_towers

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one input crop."""
    return (self.image_size, self.image_size, 3)

  @property
  def classifier(self) -> str:
    """The name of the class layer: "fc8" (paper), or "head" when fc8 is a hidden layer."""
    return self.variant.classifier

  def _scaled(self, w: int) -> int:
    t = self.num_towers
    return max(t, t * round(w * self.width / t))  # divisible by the towers

  def layer_widths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv widths, fc6/fc7 widths), summed over towers, after the width multiplier."""
    return (
        tuple(self._scaled(w) for w in self.variant.conv_widths),
        tuple(self._scaled(w) for w in PAPER_FC_WIDTHS),
    )

  def fc8_width(self) -> int:
    """The hidden fc8's width after the width multiplier (0: fc8 is the class layer)."""
    return self._scaled(self.variant.fc8_width) if self.variant.fc8_width else 0

  def _check(self, images):
    shape = self.input_shape
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
      raise ValueError(
          f"AlexNet expects NHWC images of shape (batch, {', '.join(map(str, shape))})"
          f" ({shape[0]}x{shape[1]} RGB crops of the 256x256 images); got shape "
          f"{tuple(images.shape)}."
      )
    return images

  # ---- towers (§3.2) -----------------------------------------------------------------
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

  def _first_global_tower(self) -> jax.Array | int:
    if self.tower_axis is None:
      return 0
    return jax.lax.axis_index(self.tower_axis) * self._local_towers()

  def _gather_towers(self, xs: list[jax.Array]) -> jax.Array:
    """Concatenate all towers' outputs along channels: a cross-tower point."""
    x = jnp.concatenate(xs, axis=-1) if len(xs) > 1 else xs[0]
    # On a size-1 tower axis the all-gather is a no-op that still makes XLA:CPU give the
    # tensors around it a channel-major layout (1.33x slower step on CPU).
    if self.tower_axis is not None and jax.lax.axis_size(self.tower_axis) > 1:
      x = jax.lax.all_gather(x, self.tower_axis, axis=x.ndim - 1, tiled=True)
    return x

  def _sow(self, name: str, hs: list[jax.Array]) -> list[jax.Array]:
    """Record a row of the paper's table (both local towers); free unless the caller asks
    for mutable=["intermediates"]."""
    self.sow("intermediates", name, jnp.concatenate(hs, -1) if len(hs) > 1 else hs[0])
    return hs

  # ---- parameters (§5) ---------------------------------------------------------------
  def _init_fns(self, name: str, fan_in_axes: Sequence[int]) -> tuple[Callable, Callable]:
    if self.initializer == "paper":
      bias = 1.0 if name in PAPER_UNIT_BIAS_LAYERS else 0.0
      return nn.initializers.normal(0.01), nn.initializers.constant(bias)
    if self.initializer == "he":
      return _he_normal(fan_in_axes), nn.initializers.zeros
    if self.initializer == "glorot":
      return _glorot_uniform(fan_in_axes), nn.initializers.zeros
    raise ValueError(
        f"model.initializer must be 'paper', 'he' or 'glorot', got {self.initializer!r}"
    )

  def _params(self, name: str, kernel_shape: tuple[int, ...], bias_shape: tuple[int, ...]):
    """The kernel and bias of one layer; for a tower layer both lead with the tower axis."""
    towered = name in TOWER_LAYERS
    fan_in_axes = tuple(range(1, len(kernel_shape) - 1)) if towered else (0,)
    kinit, binit = self._init_fns(name, fan_in_axes)
    return _KernelBias(
        kernel_shape, bias_shape, kinit, binit, at_least_f32(self.dtype), name=name
    )()

  def _tower_params(self, name: str, kernel_shape: tuple[int, ...]):
    """Kernel [local, *kernel_shape] and bias [local, out] of one tower layer."""
    local = self._local_towers()
    return self._params(name, (local, *kernel_shape), (local, kernel_shape[-1]))

  # ---- layers ------------------------------------------------------------------------
  def _padding(self, layer: int, ksize: int) -> tuple[int, int]:
    """conv{layer}'s zero padding: none for "valid"; else conv1_padding for conv1 and the
    size-keeping k // 2 for the others (the paper's 2 for conv2, 1 for conv3..conv5)."""
    if self.variant.conv_padding == "valid":
      return (0, 0)
    return tuple(self.variant.conv1_padding) if layer == 1 else (ksize // 2, ksize // 2)

  def _bn(self, name: str, hs: list[jax.Array], train: bool) -> list[jax.Array]:
    """Keras's BatchNormalization on the (one) tower's maps when variant.batch_norm; training
    normalises by the global batch's statistics (averaged over the data axis of the mesh)
    and updates the running averages (mutable "batch_stats"); inference uses those."""
    if not self.variant.batch_norm:
      return hs
    bn = nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        axis_name=self.data_axis if train else None,
        use_fast_variance=False,  # two-pass variance, as Keras computes it
        dtype=self.dtype,
        param_dtype=at_least_f32(self.dtype),
        name=name,
    )
    return [bn(h) for h in hs]

  def _conv(self, name, xs, ksize, cin, cout, *, stride=1, padding):
    """A convolution + ReLU (§3.1) per tower; xs is one input all towers read, or a list of
    each tower's own input."""
    k, b = self._tower_params(name, (ksize, ksize, cin, cout // self.num_towers))
    pad = (tuple(padding), tuple(padding))
    hs = []
    for i in range(self._local_towers()):
      y = jax.lax.conv_general_dilated(
          xs[i] if isinstance(xs, list) else xs,
          k[i].astype(self.dtype),
          (stride, stride),
          pad,
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
      hs.append(nn.relu(y + b[i].astype(self.dtype)))
    return self._sow(f"{name}_out", hs)

  def _normalize(self, h):
    """§3.3 local response normalisation with n=5, alpha=1e-4, beta=0.75 and the variant's k."""
    v = self.variant
    return local_response_norm(h, k=v.lrn_k, alpha_per_term=v.lrn_alpha_per_term)

  def _pool(self, hs):
    """§3.4: 3x3 windows every 2 pixels (overlapping); the ablation's 2x2 every 2."""
    window, stride = (3, 2) if self.overlapping_pool else (2, 2)
    return [max_pool(h, window, stride) for h in hs]

  def _lrn_and_pool(self, name, hs):
    """§3.3 then §3.4: each tower's maps normalised, then pooled (paper, Caffe); or pooled,
    then normalised (variant.lrn_after_pool: the grouped PyTorch layout)."""
    if not self.lrn:
      return self._sow(name, self._pool(hs))
    if self.variant.lrn_after_pool:
      return self._sow(name, self._lrn(self._pool(hs)))
    return self._sow(name, self._pool(self._lrn(hs)))

  def _lrn(self, hs):
    if not self.variant.lrn_across_towers:
      return [self._normalize(h) for h in hs]
    # One window over every tower's channels (Caffe, PyTorch): each device normalises the
    # gathered layer and keeps its own towers' channels (the gradient's all-gather
    # transposes to a reduce-scatter, so it reaches the tower that owns each channel).
    full = self._normalize(self._gather_towers(hs))
    local, ct = len(hs), full.shape[-1] // self.num_towers
    mine = jax.lax.dynamic_slice_in_dim(full, self._first_global_tower() * ct, local * ct, -1)
    return [mine[..., i * ct : (i + 1) * ct] for i in range(local)]

  def _flatten(self, x):
    """pool5's 6x6x256 maps as fc6's 9216 inputs, in (H, W, C) order, or (C, H, W) for the
    PyTorch and Caffe fc6 weights (variant.fc6_input_order)."""
    if self.variant.fc6_input_order == "chw":
      x = jnp.transpose(x, (0, 3, 1, 2))
    return x.reshape(x.shape[0], -1)

  def _fc(self, name, g, width, train, example_index=None):
    """A fully-connected tower layer + ReLU (§3.1) reading g, the gathered towers; dropout
    (§4.2) on its output while training."""
    local = self._local_towers()
    k, b = self._tower_params(name, (g.shape[-1], width // self.num_towers))
    # One dot batched over the local towers: slicing k[i] out of the stacked kernel copies it
    # (75 MB for fc6) and re-stacks its gradient with a pad; 1.25x on fc6's forward +
    # backward on CPU.
    gl = jnp.broadcast_to(g, (local, *g.shape))
    y = jax.lax.dot_general(gl, k.astype(self.dtype), (((2,), (1,)), ((0,), (0,))))
    y = nn.relu(y + b.astype(self.dtype)[:, None, :])
    hs = [y[i] for i in range(local)]
    if train and self.dropout_rate > 0:
      rng = self.make_rng("dropout")  # once per layer: the same on every mesh
      first = self._first_global_tower()
      hs = [self._dropout(hs[i], rng, first + i, example_index) for i in range(local)]
    return self._sow(f"{name}_out", hs)

  def _dropout(self, x, rng, tower: jax.Array | int, example_index=None):
    """Inverted dropout whose mask depends only on (layer rng, tower, example index),
    so it is the same whatever the mesh or the micro-batch an example is in: independent
    across towers and examples, and across steps through the rng the caller folds the step
    into. example_index: this device's rows' positions in the global batch (None: in order)."""
    rng = jax.random.fold_in(rng, tower)
    batch = x.shape[0]
    if example_index is None:
      start = 0 if self.data_axis is None else jax.lax.axis_index(self.data_axis) * batch
      example_index = start + jnp.arange(batch)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, example_index)
    keep = 1.0 - self.dropout_rate
    mask = jax.vmap(lambda k: jax.random.bernoulli(k, keep, x.shape[1:]))(keys)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)

  def _hidden_fc8(self, g, train, example_index=None):
    """fc8 as a hidden layer (variant.fc8_width): ReLU, dropout, BatchNorm; no tower axis."""
    width = self.fc8_width()
    k, b = self._params("fc8", (g.shape[-1], width), (width,))
    y = nn.relu(g @ k.astype(self.dtype) + b.astype(self.dtype))
    if train and self.dropout_rate > 0:
      y = self._dropout(y, self.make_rng("dropout"), 0, example_index)
    self.sow("intermediates", "fc8_out", y)
    return self._bn("bn8", [y], train)[0]

  def _classifier(self, name, g):
    """The class layer (fc8, or the head after a hidden fc8), shared by the towers (no tower
    axis); logits in float32 for the softmax."""
    k, b = self._params(name, (g.shape[-1], self.num_classes), (self.num_classes,))
    logits = g @ k.astype(self.dtype) + b.astype(self.dtype)
    self.sow("intermediates", "logits", logits)
    return logits.astype(at_least_f32(self.dtype))


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


def as_variables(tree) -> dict:
  """{"params": ..., "batch_stats": ...} as Flax's apply takes them, from such a dict or
  from a bare parameter tree (whose top level holds layer names, never "params")."""
  return dict(tree) if "params" in tree else {"params": tree}


def num_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


MODULE_KEYS = ("width", "lrn", "overlapping_pool", "initializer", "dropout_rate", "dtype")


def from_config(model_config, num_classes: int, crop_size: int) -> AlexNet:
  """The module for a `config.model` ConfigDict (model.variant names the Variant; the other
  keys are MODULE_KEYS) and the input crop size (config.input.crop_size)."""
  kwargs = dict(model_config.items())
  unknown = set(kwargs) - set(MODULE_KEYS) - {"variant"}
  if unknown:
    raise ValueError(
        f"unknown config.model keys {sorted(unknown)}; "
        f"the model reads {sorted({'variant', *MODULE_KEYS})}"
    )
  name = kwargs.pop("variant", "paper")
  if name not in VARIANTS:
    raise ValueError(f"model.variant must be one of {list(VARIANTS)}, got {name!r}")
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return AlexNet(
      num_classes=num_classes, variant=VARIANTS[name], image_size=int(crop_size), **kwargs
  )
