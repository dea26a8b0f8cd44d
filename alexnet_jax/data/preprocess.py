"""Decode and resize ops: encoded bytes -> the paper's uint8 256x256 image.

Every image leaves the host as uint8 [256, 256, 3]: decoded, the shorter side rescaled to 256
(antialiased bilinear, like PIL's BILINEAR), the central 256x256 kept
(docs/paper.md#preprocessing). Random crops, flips, lighting and mean subtraction happen on the
device (augment.py). Each op works eagerly and inside tf.data; the tests check both.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from PIL import Image

IMAGE_SIZE = 256

# PCA of ImageNet RGB pixels scaled to [0, 1] (docs/paper.md#pca-lighting). Columns of IMAGENET_EIGVEC are the
# eigenvectors, in the order of IMAGENET_EIGVAL (descending).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)

# What the folder source reads (lower-case extensions); anything else is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# The only formats the PIL fallback opens (for files TF cannot decode): never EPS, PDF and the
# like, which PIL hands to external programs (Ghostscript).
PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")


# ----------------------------------------------------------------------------------------------
# Preprocessing ops (each works eagerly and inside tf.data; tests check both).


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes (JPEG, PNG, GIF, BMP, WebP) -> uint8 [H, W, 3] RGB.

  Grayscale, palette, RGBA (alpha dropped) and CMYK JPEGs all come out as RGB. JPEGs use the
  accurate integer IDCT, as PIL/libjpeg do by default (TF's default is the fast, less exact one).
  """
  data = tf.convert_to_tensor(data, tf.string)
  image = tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
  )
  image.set_shape([None, None, 3])
  return image


RESIZE_RULES = ("round", "torchvision", "warp")


def resize_and_center_crop(
    image: tf.Tensor, size: int = IMAGE_SIZE, rule: str = "round"
) -> tf.Tensor:
  """uint8 [H, W, C] -> uint8 [size, size, 3]: shorter side to `size`, central size x size.

  Equal to tf.image.resize(bilinear, antialias=True) to (size, round(long * size / short))
  followed by the central crop (offset floored), but only the kept window is computed
  (ScaleAndTranslate with the crop's offset as translation). Grayscale inputs are replicated
  to RGB. rule='torchvision': its Resize(size) + CenterCrop, i.e. the long side truncated,
  int(long * size / short), and the offset rounded half to even (so that the central 224 of
  this crop is CenterCrop(224)'s window); rule='warp': both sides to `size` (Caffe's
  convert_imageset), nothing cropped.
  """
  if rule not in RESIZE_RULES:
    raise ValueError(f"dataset.resize must be one of {RESIZE_RULES}, got {rule!r}")
  image = tf.convert_to_tensor(image)
  if image.shape.rank == 2:
    image = image[..., None]
  channels = image.shape[-1]
  # Grayscale: resized once, then replicated (the bytes of three resized copies, a third of
  # the work: the digits' cache pass 3.8 -> 2.4 CPU-s).
  gray = channels == 1
  if channels is None:
    image = tf.cond(
        tf.shape(image)[-1] == 1, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3]
    )
  elif not gray:
    image = image[..., :3]
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short = tf.minimum(h, w)
  if rule == "warp":
    nh = nw = tf.constant(size)
  elif rule == "torchvision":
    nh, nw = h * size // short, w * size // short
  else:
    nh = (h * size + short // 2) // short  # exactly `size` on the shorter side
    nw = (w * size + short // 2) // short
  scale = tf.cast(tf.stack([nh, nw]), tf.float32) / tf.cast(tf.stack([h, w]), tf.float32)
  offsets = tf.stack([(nh - size) // 2, (nw - size) // 2])
  if rule == "torchvision":  # round((n - size) / 2) half to even: up when the floor is odd
    d = tf.stack([nh, nw]) - size
    offsets += tf.cast((d % 2 == 1) & (offsets % 2 == 1), offsets.dtype)
  translation = -tf.cast(offsets, tf.float32)
  out = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(image, tf.float32)[None],
      size=tf.constant([size, size]),
      scale=scale,
      translation=translation,
      kernel_type="triangle",
      antialias=True,
  )[0]
  out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
  if gray:
    out = tf.tile(out, [1, 1, 3])
  out.set_shape([size, size, 3])
  return out


def preprocess_encoded(data: tf.Tensor, size: int = IMAGE_SIZE, rule: str = "round") -> tf.Tensor:
  """Encoded bytes -> uint8 [size, size, 3] (decode, shorter side to size, center crop)."""
  return resize_and_center_crop(decode_image(data), size, rule)


def pil_load(path) -> np.ndarray:
  """Fallback for formats TF cannot decode (TIFF, ...); used only for files the stats pass
  flagged, and only for PIL_FORMATS."""
  if isinstance(path, tf.Tensor):
    path = path.numpy()
  if isinstance(path, bytes):
    path = os.fsdecode(path)
  with Image.open(path, formats=PIL_FORMATS) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


# EXIF orientation (tag 0x0112) -> what makes the stored pixels upright, as PIL's
# ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
# 7 transverse, 8 rotate 90 counter-clockwise.
_ORIENT = (
    lambda x: x,
    lambda x: x[:, ::-1],
    lambda x: x[::-1, ::-1],
    lambda x: x[::-1],
    lambda x: tf.transpose(x, [1, 0, 2]),
    lambda x: tf.image.rot90(x, 3),
    lambda x: tf.image.rot90(tf.transpose(x, [1, 0, 2]), 2),
    lambda x: tf.image.rot90(x, 1),
)


def exif_orientation(path: str) -> int:
  """The EXIF orientation of an image file (1 = upright, also when absent or unreadable)."""
  try:
    with Image.open(path, formats=PIL_FORMATS) as im:
      value = int(im.getexif().get(0x0112, 1))
  except Exception:  # pylint: disable=broad-except  (the decode reports bad files)
    return 1
  return value if 1 <= value <= 8 else 1


def apply_orientation(image: tf.Tensor, orientation) -> tf.Tensor:
  """uint8 [H, W, 3] as stored -> upright for EXIF `orientation` (1..8)."""
  branches = [lambda f=f: f(image) for f in _ORIENT]
  out = tf.switch_case(tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7), branches)
  out.set_shape([None, None, 3])
  return out
