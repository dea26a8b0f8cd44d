"""What the network is fed: one frozen InputSpec, built once from config.input.

An image reaches conv1 as (docs/paper.md#preprocessing): decoded to RGB, its shorter side
resized to 256 by `resize` and the central 256x256 kept (the data layer), the mean
subtracted (§2: the training split's mean image; or a mean pixel; or the run's own mean
image), divided by `std` when given, times `scale`, cut to crop_size views (§4.1; or, with
view='resize', the whole image resized to crop_size: the Keras tutorial's inputs) and, for
networks trained in Caffe, its channels reversed to BGR. Training, evaluation, prediction,
fine-tuning and the converters all read these fields from one InputSpec, so a new input
convention is one edit here and one config section.

The spec is a pytree: `mean` and `std` are arrays that the jitted steps take as arguments
(the mean image is not baked into the compiled code); the other fields are static.
Saved as the run's preprocessing.json (every field but the mean image, which stays in
dataset_stats.npz or mean_image.npy).
"""

from __future__ import annotations

import types
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.facts import IMAGE_SIZE, MEAN_IMAGE_SHAPE, PREPROCESSING_FILE

MEAN_KINDS = ("dataset", "pixel", "run")


def _floats(values) -> list[float]:
  """The float32 values the spec holds, as JSON numbers."""
  return [float(v) for v in np.asarray(values, np.float32).reshape(-1)]


CHANNEL_ORDERS = ("rgb", "bgr")
# preprocessing.json's fields of the spec (InputSpec.to_json).
JSON_KEYS = (
    "image_size",
    "resize",
    "mean",
    "mean_rgb",
    "std_rgb",
    "channel_order",
    "scale",
    "crop_size",
    "view",
)
# Fields a preprocessing.json written before they existed lacks (their defaults apply).
_LATER_JSON_KEYS = {"view": "crop"}
VIEWS = ("crop", "resize")


@flax.struct.dataclass
class InputSpec:
  """How uint8 [B, 256, 256, 3] images become the network's float inputs.

  mean: float32 [256, 256, 3] mean image or [3] mean pixel, pixel units (0..255).
  std: float32 [3] in pixel units to divide by, or None (no division).
  mean_kind: where the mean comes from: 'dataset' (the training split's mean image, §2),
    'pixel' (config.input.mean_rgb) or 'run' (the run directory's mean_image.npy).
  channel_order: 'rgb', or 'bgr' for networks trained in Caffe.
  scale: factor after mean subtraction and std division (1.0: the paper's pixel units).
  crop_size: side of the square views: 224 (paper), 227 (Caffe).
  resize: how the data layer made the 256x256 images (config.dataset.resize).
  view: 'crop' (crop_size windows of the 256x256 image, §4.1) or 'resize' (the whole image
    resized to crop_size, bilinear with antialiasing, after the normalisation: one view).
  """

  mean: Any
  std: Any = None
  mean_kind: str = flax.struct.field(pytree_node=False, default="dataset")
  channel_order: str = flax.struct.field(pytree_node=False, default="rgb")
  scale: float = flax.struct.field(pytree_node=False, default=1.0)
  crop_size: int = flax.struct.field(pytree_node=False, default=224)
  resize: str = flax.struct.field(pytree_node=False, default="round")
  view: str = flax.struct.field(pytree_node=False, default="crop")

  # ---- applying it (inside jit) -----------------------------------------------------------
  def normalize(self, images, dtype=jnp.float32, shift=None) -> Any:
    """uint8 [B, H, W, 3] whole images -> `dtype`: minus the mean (an image, or a pixel
    everywhere), plus `shift` ([B, 3], augment's PCA lighting) when given, divided by std,
    times scale. Channel order is left to `to_channel_order` (after the views are cut)."""
    x = jnp.asarray(images).astype(dtype)
    x = x - jnp.asarray(self.mean, dtype)
    if shift is not None:
      x = x + shift[:, None, None, :]
    if self.std is not None:
      x = x / jnp.asarray(self.std, dtype)
    return x * self.scale

  def to_channel_order(self, views) -> Any:
    """[..., 3] RGB -> the network's channel order."""
    return views[..., ::-1] if self.channel_order == "bgr" else views

  def to_view_size(self, x) -> Any:
    """Normalised whole images [B, H, W, 3] -> what the views are cut from: themselves
    (view 'crop'), or resized to crop_size x crop_size (view 'resize')."""
    if self.view == "crop":
      return x
    b, _, _, c = x.shape
    size = (b, self.crop_size, self.crop_size, c)
    return jax.image.resize(x, size, "linear", antialias=True).astype(x.dtype)

  # ---- building it --------------------------------------------------------------------
  @classmethod
  def from_config(cls, config, stats=None, mean_image=None) -> InputSpec:
    """From config.input and config.dataset.resize; `stats` (data_lib.DatasetStats) gives
    the mean image for input.mean='dataset', `mean_image` (the run's own, mean_image.npy:
    run_dir.input_spec_from_config reads it) for 'run'."""
    inp = config.input
    kind = inp.mean
    if kind == "dataset":
      if stats is None:
        raise ValueError(
            "input.mean='dataset' subtracts the training split's mean image: pass the "
            "dataset's statistics (data_lib.dataset_stats, or the run's dataset_stats.npz)"
        )
      mean = stats.mean_image
    elif kind == "pixel":
      mean = inp.mean_rgb
    elif kind == "run":
      if mean_image is None:
        raise ValueError("input.mean='run' needs the run's mean image (its mean_image.npy)")
      mean = mean_image
    else:
      raise ValueError(f"input.mean must be one of {MEAN_KINDS}, got {kind!r}")
    return cls.create(
        mean,
        inp.std_rgb,
        mean_kind=kind,
        channel_order=inp.channel_order,
        scale=inp.scale,
        crop_size=inp.crop_size,
        resize=config.dataset.resize,
        view=inp.get("view", "crop"),
    )

  @classmethod
  def create(cls, mean, std=(), **static) -> InputSpec:
    """Checked fields: mean [256, 256, 3] or [3]; std () / None or 3 positive numbers."""
    mean = np.asarray(mean, np.float32)
    if mean.shape not in ((IMAGE_SIZE, IMAGE_SIZE, 3), (3,)):
      raise ValueError(f"a mean must be [{IMAGE_SIZE}, {IMAGE_SIZE}, 3] or [3], got {mean.shape}")
    std = () if std is None else tuple(float(v) for v in np.asarray(std).reshape(-1))
    if std and (len(std) != 3 or min(std) <= 0):
      raise ValueError(f"input.std_rgb must be () or 3 positive numbers, got {std}")
    order = static.get("channel_order", "rgb")
    if order not in CHANNEL_ORDERS:
      raise ValueError(f"input.channel_order must be one of {CHANNEL_ORDERS}, got {order!r}")
    if static.get("view", "crop") not in VIEWS:
      raise ValueError(f"input.view must be one of {VIEWS}, got {static['view']!r}")
    if "scale" in static:
      static["scale"] = float(static["scale"])
    if "crop_size" in static:
      static["crop_size"] = int(static["crop_size"])
    return cls(mean=mean, std=np.asarray(std, np.float32) if std else None, **static)

  # ---- preprocessing.json ---------------------------------------------------------------
  def to_json(self) -> dict:
    """Every field but the mean image (a mean pixel is written: it is three numbers)."""
    mean = np.asarray(self.mean)
    return {
        "image_size": IMAGE_SIZE,
        "resize": self.resize,
        "mean": self.mean_kind,
        "mean_rgb": _floats(mean) if mean.shape == (3,) else None,
        "std_rgb": None if self.std is None else _floats(self.std),
        "channel_order": self.channel_order,
        "scale": self.scale,
        "crop_size": self.crop_size,
        "view": self.view,
    }

  @classmethod
  def from_json(cls, d: dict, mean_image=None, source: str = PREPROCESSING_FILE) -> InputSpec:
    """The spec `to_json` wrote; `mean_image` [256, 256, 3] for the 'dataset' and 'run'
    kinds (their mean is kept beside the file, not in it)."""
    if d.get("image_size", IMAGE_SIZE) != IMAGE_SIZE:
      raise ValueError(
          f"{source}: image_size {d['image_size']}, but this version of alexnet_jax "
          f"preprocesses to {IMAGE_SIZE}"
      )
    kind = d["mean"]
    mean = d["mean_rgb"] if kind == "pixel" else mean_image
    if mean is None:
      raise ValueError(f"{source}: input.mean={kind!r} needs its mean image")
    return cls.create(
        mean,
        d["std_rgb"],
        mean_kind=kind,
        channel_order=d["channel_order"],
        scale=d["scale"],
        crop_size=d["crop_size"],
        resize=d["resize"],
        view=d.get("view", _LATER_JSON_KEYS["view"]),
    )


def json_of_config(config) -> dict:
  """InputSpec.to_json() of the spec config.input describes, without its mean image (a
  converted run has no training statistics, and the file leaves the image out)."""
  left_out = np.zeros(MEAN_IMAGE_SHAPE, np.float32)
  stats = types.SimpleNamespace(mean_image=left_out)
  return InputSpec.from_config(config, stats, mean_image=left_out).to_json()


def is_complete(saved: dict | None) -> bool:
  """Whether a preprocessing.json holds a whole spec (runs from before InputSpec hold only
  image_size, crop_size, scale and eval_crops: their spec comes from config.json)."""
  return saved is not None and all(k in saved for k in JSON_KEYS if k not in _LATER_JSON_KEYS)
