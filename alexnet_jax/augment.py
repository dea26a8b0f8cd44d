"""Device-side augmentation (JAX, jit-able): AlexNet's random crops, flips and PCA lighting.

Runs inside the jitted step on uint8 [B, 256, 256, 3] batches from alexnet_jax.data. Every random
draw comes from a per-example key that depends only on (seed, step, global example index)
(`example_keys`), and all ops are vmapped per example, so the result is the same whatever the
mesh shape, the sharding of the batch axis or the number of processes.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.facts import IMAGENET_EIGVAL, IMAGENET_EIGVEC, VIEW_COUNTS
from alexnet_jax.input_spec import InputSpec

# Top-left offsets (row, col) of the 10 evaluation views at 224 in 256, in output order; views
# 5..9 are the horizontal reflections of views 0..4.
EVAL_VIEW_NAMES = (
    "top_left",
    "top_right",
    "bottom_left",
    "bottom_right",
    "center",
    "top_left_flip",
    "top_right_flip",
    "bottom_left_flip",
    "bottom_right_flip",
    "center_flip",
)


@flax.struct.dataclass
class Lighting:
  """The RGB eigen-basis of the PCA lighting (§4.1): eigval [3], eigvec [3, 3] (columns),
  of pixels scaled to [0, 1]."""

  eigval: jax.Array
  eigvec: jax.Array

  @classmethod
  def from_config(cls, augment_config, stats) -> Lighting:
    """augment.eigen 'dataset': the training split's own PCA (stats); 'imagenet': the
    published ImageNet basis (docs/paper.md#pca-lighting)."""
    if augment_config.eigen == "imagenet":
      eigval, eigvec = IMAGENET_EIGVAL, IMAGENET_EIGVEC
    elif augment_config.eigen == "dataset":
      eigval, eigvec = stats.eigval, stats.eigvec
    else:
      raise ValueError(
          f"augment.eigen must be 'dataset' or 'imagenet', got {augment_config.eigen!r}"
      )
    return cls(jnp.asarray(eigval, jnp.float32), jnp.asarray(eigvec, jnp.float32))


def _as_key(rng):
  """Typed PRNG key from a typed key, a raw uint32[2] key or an integer seed."""
  if isinstance(rng, (int, np.integer)):
    return jax.random.key(rng)
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng
  return jax.random.wrap_key_data(rng)


def example_keys(rng, step, global_indices) -> jax.Array:
  """Per-example keys fold_in(fold_in(rng, step), index): a key depends only on those three.

  rng: typed key, raw uint32[2] key or int seed; step: scalar int; global_indices: int [B]
  (the examples" positions in the global batch, or in the whole stream; either is
  mesh-independent). Returns typed keys [B].
  """
  base = jax.random.fold_in(_as_key(rng), jnp.asarray(step, jnp.uint32))
  idx = jnp.asarray(global_indices).astype(jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)


def _center_offset(size, crop_size):
  return (size - crop_size) // 2


def train_views(
    images,
    keys,
    spec: InputSpec,
    lighting: Lighting,
    *,
    random_crop: bool = True,
    flip: bool = True,
    lighting_std: float = 0.1,
    dtype=jnp.float32,
) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 [B, crop, crop, 3]: AlexNet's training augmentation,
  normalised by `spec` (`dtype` float64 for x64 runs: tests/test_mesh_float64.py).

  Per example (its own key): a spec.crop_size window with top-left offsets uniform over all
  (H - crop + 1) x (W - crop + 1) positions (33 x 33 at 224 in 256), or the center with
  random_crop=False (§4.1); a horizontal flip with p = 0.5; PCA lighting (§4.1): add
  255 * eigvec @ (alpha * eigval) to every pixel, alpha ~ N(0, lighting_std) [3] (`lighting`
  describes RGB in [0, 1], hence the 255), between the mean subtraction and the std division
  (spec.normalize; the mean image is cut at the same window and flipped with it); channels
  in the spec's order.
  """
  images = jnp.asarray(images)
  b, h, w, c = images.shape
  if spec.view == "resize":  # one view: the whole image at crop_size (no offsets to draw)
    h = w = spec.crop_size
  ch = cw = spec.crop_size
  oy, ox, flips, alpha = train_view_params(
      keys, image_shape=(h, w), crop_size=(ch, cw), lighting_std=lighting_std, dtype=dtype
  )
  if not random_crop:
    oy = jnp.full((b,), _center_offset(h, ch), jnp.int32)
    ox = jnp.full((b,), _center_offset(w, cw), jnp.int32)
  if not flip:
    flips = jnp.zeros((b,), bool)

  if lighting_std:
    # [B, 3] per-image RGB shift in pixel units, written as three explicit terms: a matmul's
    # rounding depends on how the batch is split over devices, and XLA:CPU miscompiles a
    # jnp.sum over the size-3 axis fused into the broadcast below for B >~ 1000.
    coeff = alpha * jnp.asarray(lighting.eigval, dtype)  # [B, 3]
    vec = jnp.asarray(lighting.eigvec, dtype)
    shift = 255.0 * (
        coeff[:, 0:1] * vec[:, 0] + coeff[:, 1:2] * vec[:, 1] + coeff[:, 2:3] * vec[:, 2]
    )
  else:
    shift = jnp.zeros((b, 3), dtype)

  # The arithmetic runs on the whole uint8 images (1.3x the crop's pixels), then ONE gather
  # (flip folded into the column index) cuts the views: the gather's output is materialised,
  # so conv1's forward and its weight-gradient transpose both read it. With the gather first,
  # XLA:CPU duplicates the arithmetic into both consumers and runs it in the transpose's
  # strided order; a vmapped dynamic_slice plus where(flip, out[:, ::-1], out) runs 18x
  # slower on CPU (docs/performance.md#augmentation-arithmetic-then-one-gather).
  x = spec.to_view_size(spec.normalize(images, dtype, shift))
  i, j = jnp.arange(ch), jnp.arange(cw)
  rows = oy[:, None] + i  # [B, ch]
  cols = ox[:, None] + jnp.where(flips[:, None], cw - 1 - j, j)  # [B, cw]
  views = x[jnp.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
  return spec.to_channel_order(views)


def train_view_params(
    keys, *, image_shape=(256, 256), crop_size=224, lighting_std=0.1, dtype=jnp.float32
):
  """The random draws of train_views for these keys: (oy, ox [B] int32, flip [B] bool, alpha [B, 3]).

  Each example's key splits into three streams: crop offsets, flip, lighting. train_views uses
  exactly these draws; exposed so tests and debugging can see them.
  """
  ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
  ks = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  oy = jax.vmap(
      lambda k: jax.random.randint(jax.random.fold_in(k, 0), (), 0, image_shape[0] - ch + 1)
  )(ks[:, 0])
  ox = jax.vmap(
      lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0, image_shape[1] - cw + 1)
  )(ks[:, 0])
  flips = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(ks[:, 1])
  alpha = lighting_std * jax.vmap(lambda k: jax.random.normal(k, (3,), dtype))(ks[:, 2])
  return oy, ox, flips, alpha


def eval_view_offsets(image_size: int = 256, crop_size: int = 224):
  """Top-left (row, col) of the 5 unflipped evaluation windows, in EVAL_VIEW_NAMES order."""
  m = image_size - crop_size
  return ((0, 0), (0, m), (m, 0), (m, m), (m // 2, m // 2))


def eval_views(images, spec: InputSpec, *, crops: int = 1, dtype=jnp.float32) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 [B, V, crop, crop, 3]: normalised by `spec` (mean, std,
  scale, channel order), cut to spec.crop_size views.

  crops=1: the center window. crops=10 (the paper's test views, §4.1): top-left, top-right,
  bottom-left, bottom-right, center, then the horizontal reflections of those five in the same
  order (EVAL_VIEW_NAMES). With spec.view 'resize' every window is the whole resized image.
  """
  if crops not in VIEW_COUNTS:
    raise ValueError(f"crops must be one of {VIEW_COUNTS}, got {crops}")
  images = jnp.asarray(images)
  _, h, w, _ = images.shape
  if h != w:
    raise ValueError(f"eval_views expects square images, got {h}x{w}")
  crop_size = spec.crop_size
  x = spec.to_channel_order(spec.to_view_size(spec.normalize(images, dtype)))
  offsets = eval_view_offsets(x.shape[1], crop_size)
  if crops == 1:
    offsets = offsets[4:]
  views = [x[:, y : y + crop_size, c : c + crop_size] for y, c in offsets]
  if crops == 10:
    views += [v[:, :, ::-1] for v in views]
  return jnp.stack(views, axis=1)
