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

from alexnet_jax.facts import IMAGE_SIZE

# What the folder source reads (lower-case extensions); anything else is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# The only formats the PIL fallback opens (for files TF cannot decode): never EPS, PDF and the
# like, which PIL hands to external programs (Ghostscript).
PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")


# The most pixels an image may have to be decoded: PIL's decompression-bomb limit
# (PIL.Image.MAX_IMAGE_PIXELS, 89,478,485: 0.25 GB as RGB bytes, 1 GB as the float32 the
# resize computes on). Read from the image's header before anything is decoded; a GIF counts
# every frame (TF decodes them all). Larger images are not decoded: a training set skips them
# with the undecodable files, predict names them. dataset.max_image_pixels raises it for a
# dataset, predict's --max_image_pixels for its images.
MAX_IMAGE_PIXELS = 89_478_485
# An encoded image holds at most 4 bytes a pixel (uncompressed RGBA), plus its metadata:
# files larger than that for the limit are refused before they are read (predict).
MAX_METADATA_BYTES = 16 << 20


class ImageTooLargeError(ValueError):
  """An image whose header declares more pixels than the limit; the message says how many."""


def max_image_bytes(max_pixels: int = MAX_IMAGE_PIXELS) -> int:
  """The largest encoded image file read for `max_pixels`."""
  return 4 * int(max_pixels) + MAX_METADATA_BYTES


def image_pixels(data: bytes) -> int:
  """The pixels decoding `data` allocates, from its header alone: width x height (a GIF: of
  every frame); 0 when it is not a JPEG, PNG, GIF, BMP or WebP header (or too short to say),
  for other decoders to check (pil_load)."""
  data = bytes(data)
  if data[:3] == b"\xff\xd8\xff":
    return _jpeg_pixels(data)
  if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
    return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
  if data[:6] in (b"GIF87a", b"GIF89a"):
    return _gif_pixels(data)
  if data[:2] == b"BM" and len(data) >= 26:
    if int.from_bytes(data[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
      return int.from_bytes(data[18:20], "little") * int.from_bytes(data[20:22], "little")
    w = int.from_bytes(data[18:22], "little", signed=True)
    h = int.from_bytes(data[22:26], "little", signed=True)  # negative: stored top-down
    return abs(w) * abs(h)
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
    return _webp_pixels(data)
  return 0


def _jpeg_pixels(data: bytes) -> int:
  """Width x height of a JPEG's first frame header (SOF0..SOF15 but DHT, JPG, DAC)."""
  pos = 2
  while pos + 4 <= len(data):
    if data[pos] != 0xFF:
      return 0
    marker = data[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker in (0x01, *range(0xD0, 0xD8)):  # no length
      pos += 2
      continue
    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      if pos + 9 > len(data):
        return 0
      return int.from_bytes(data[pos + 5 : pos + 7], "big") * int.from_bytes(
          data[pos + 7 : pos + 9], "big"
      )
    if marker == 0xDA or length < 2:  # scan data before any frame header: not a JPEG
      return 0
    pos += 2 + length
  return 0


def _gif_pixels(data: bytes) -> int:
  """The canvas (or a larger frame) times every frame of a GIF, walking its blocks."""
  if len(data) < 13:
    return 0
  canvas = int.from_bytes(data[6:8], "little") * int.from_bytes(data[8:10], "little")
  pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
  total, frames = 0, 0
  while pos < len(data):
    block = data[pos]
    if block == 0x3B:  # trailer
      break
    if block == 0x21:  # extension: label, then sub-blocks
      pos = _skip_sub_blocks(data, pos + 2)
    elif block == 0x2C:  # image descriptor
      if pos + 10 > len(data):
        break
      w = int.from_bytes(data[pos + 5 : pos + 7], "little")
      h = int.from_bytes(data[pos + 7 : pos + 9], "little")
      flags = data[pos + 9]
      pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
      pos = _skip_sub_blocks(data, pos + 1)  # after the LZW minimum code size
      total += max(canvas, w * h)
      frames += 1
    else:
      break
  return total if frames else canvas


def _skip_sub_blocks(data: bytes, pos: int) -> int:
  while pos < len(data) and data[pos]:
    pos += data[pos] + 1
  return pos + 1


def _webp_pixels(data: bytes) -> int:
  chunk = data[12:16]
  if chunk == b"VP8X":  # extended: the canvas
    w = int.from_bytes(data[24:27], "little") + 1
    h = int.from_bytes(data[27:30], "little") + 1
    return w * h
  if chunk == b"VP8L":  # lossless: 14-bit width - 1 and height - 1 after a signature byte
    bits = int.from_bytes(data[21:25], "little")
    return ((bits & 0x3FFF) + 1) * (((bits >> 14) & 0x3FFF) + 1)
  if chunk == b"VP8 ":  # lossy: 14-bit width and height after the start code
    w = int.from_bytes(data[26:28], "little") & 0x3FFF
    h = int.from_bytes(data[28:30], "little") & 0x3FFF
    return w * h
  return 0


def too_many_pixels(pixels: int, limit: int) -> str:
  """What is wrong with an image above the limit, and what to do."""
  return (
      f"its header declares {pixels:,} pixels, more than the {limit:,} decoded at most (PIL's "
      "decompression-bomb limit), so it is not decoded; if it is a real photo, raise the "
      "limit (predict's --max_image_pixels, config dataset.max_image_pixels)"
  )


def check_pixels(pixels: int, max_pixels: int | None, name: str) -> None:
  """ImageTooLargeError, one line naming the image, when `pixels` exceeds the limit."""
  limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
  if pixels > limit:
    e = ImageTooLargeError(f"{name}: {too_many_pixels(pixels, limit)}")
    e.pixels, e.limit = pixels, limit
    raise e


# ----------------------------------------------------------------------------------------------
# Preprocessing ops (each works eagerly and inside tf.data; tests check both).


def _field_weights() -> np.ndarray:
  """Rows that read the header fields out of an image's first 32 bytes as one product:
  PNG width and height (big-endian 32 bits at 16, 20), BMP header size, 16-bit and 32-bit
  width and height (little-endian at 14, 18, 20, 18, 22), WebP VP8X canvas (24-bit at 24, 27),
  VP8L bits (32 at 21) and VP8 width and height (16 at 26, 28)."""
  fields = [(16, 4, "big"), (20, 4, "big"), (14, 4, "little"), (18, 2, "little")]
  fields += [(20, 2, "little"), (18, 4, "little"), (22, 4, "little"), (24, 3, "little")]
  fields += [(27, 3, "little"), (21, 4, "little"), (26, 2, "little"), (28, 2, "little")]
  w = np.zeros([len(fields), 32], np.float64)
  for row, (at, n, order) in enumerate(fields):
    for k in range(n):
      w[row, at + k] = 256.0 ** (k if order == "little" else n - 1 - k)
  return w


_FIELDS = _field_weights()


def _header_pixels(data: tf.Tensor) -> tf.Tensor:
  """image_pixels inside the graph (float64, exact far past any limit): TF's JPEG header
  parser, else _other_header_pixels."""
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.float64)),
      lambda: _other_header_pixels(data),
  )


def _other_header_pixels(data: tf.Tensor) -> tf.Tensor:
  """The pixels a PNG, BMP or WebP header declares, from its first 32 bytes with a handful of
  ops (one product reads every field); a GIF's in Python (py_function), its frames counted
  by walking its blocks; 0 for anything else (its decoder fails on it)."""
  head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 32), "\0" * 32]), 0, 32)
  f = tf.unstack(tf.linalg.matvec(_FIELDS, tf.cast(tf.io.decode_raw(head, tf.uint8), tf.float64)))
  starts = lambda i, text: tf.equal(tf.strings.substr(head, i, len(text)), text)  # noqa: E731
  signed = lambda v: tf.abs(tf.where(v >= 2.0**31, v - 2.0**32, v))  # noqa: E731
  mod14 = lambda v: tf.math.floormod(v, 2.0**14)  # noqa: E731
  bmp = tf.where(tf.equal(f[2], 12.0), f[3] * f[4], signed(f[5]) * signed(f[6]))
  pixels = tf.where(
      starts(0, b"\x89PNG\r\n\x1a\n") & starts(12, "IHDR"),
      f[0] * f[1],
      tf.where(starts(0, "BM"), bmp, 0.0),
  )
  webp = starts(0, "RIFF") & starts(8, "WEBP")
  pixels = tf.where(webp & starts(12, "VP8X"), (f[7] + 1) * (f[8] + 1), pixels)
  vp8l = (mod14(f[9]) + 1) * (mod14(tf.math.floordiv(f[9], 2.0**14)) + 1)
  pixels = tf.where(webp & starts(12, "VP8L"), vp8l, pixels)
  pixels = tf.where(webp & starts(12, "VP8 "), mod14(f[10]) * mod14(f[11]), pixels)

  def gif():
    py = lambda d: np.float64(image_pixels(d.numpy()))  # noqa: E731
    return tf.reshape(tf.py_function(py, [data], tf.float64), [])

  return tf.cond(starts(0, "GIF8"), gif, lambda: pixels)


def decode_image(data: tf.Tensor, max_pixels: int | None = None) -> tf.Tensor:
  """Encoded image bytes (JPEG, PNG, GIF, BMP, WebP) -> uint8 [H, W, 3] RGB.

  Grayscale, palette, RGBA (alpha dropped) and CMYK JPEGs all come out as RGB. JPEGs use the
  accurate integer IDCT, as PIL/libjpeg do by default (TF's default is the fast, less exact one).
  An image whose header declares more than `max_pixels` (default MAX_IMAGE_PIXELS) is not
  decoded: InvalidArgumentError (inside tf.data, an image that fails).
  """
  limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
  data = tf.convert_to_tensor(data, tf.string)

  def within(pixels, decode):
    # The raw op: tf.debugging's asserts guard their message with a cond, which costs as much
    # as a JPEG's header parse many times over inside tf.data.
    check = tf.raw_ops.Assert(
        condition=pixels <= limit,
        data=[f"the image declares more than {limit} pixels (max_image_pixels): not decoded"],
    )
    with tf.control_dependencies([check]):
      return decode()

  def jpeg():
    pixels = tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.float64))
    return within(
        pixels, lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
    )

  def other():
    return within(
        _other_header_pixels(data),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )

  image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
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


def preprocess_encoded(
    data: tf.Tensor, size: int = IMAGE_SIZE, rule: str = "round", max_pixels: int | None = None
) -> tf.Tensor:
  """Encoded bytes -> uint8 [size, size, 3] (decode, shorter side to size, center crop)."""
  return resize_and_center_crop(decode_image(data, max_pixels), size, rule)


def pil_open(source, name: str, max_pixels: int | None = None):
  """PIL's image of a path or file object (PIL_FORMATS only), its size checked against the
  limit (check_pixels) before any pixel is decoded; PIL reads one frame."""
  try:
    im = Image.open(source, formats=PIL_FORMATS)
  except Image.DecompressionBombError as e:  # PIL's own check, at twice its limit
    error = ImageTooLargeError(f"{name}: {e}")
    error.pixels, error.limit = 0, MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    raise error from None
  try:
    check_pixels(im.size[0] * im.size[1], max_pixels, name)
  except BaseException:
    im.close()
    raise
  return im


def pil_load(path, max_pixels: int | None = None) -> np.ndarray:
  """Fallback for formats TF cannot decode (TIFF, ...); used only for files the stats pass
  flagged, and only for PIL_FORMATS and images within the pixel limit."""
  if isinstance(path, tf.Tensor):
    path = path.numpy()
  if isinstance(path, bytes):
    path = os.fsdecode(path)
  with pil_open(path, path, max_pixels) as im:
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
