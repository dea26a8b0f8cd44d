"""Caffe's `.caffemodel` and `.binaryproto` files read from the protobuf wire format: no Caffe,
no protobuf runtime, no generated code.

A .caffemodel is a serialized caffe.NetParameter; the messages and field numbers used here
(caffe.proto):

  NetParameter      name = 1, layers = 2 (V1LayerParameter, before 2015), layer = 100
  LayerParameter    name = 1, type = 2 (string), bottom = 3, top = 4, blobs = 7
  V1LayerParameter  bottom = 2, top = 3, name = 4, type = 5 (enum), blobs = 6
  BlobProto         num = 1, channels = 2, height = 3, width = 4 (the old 4-D shape),
                    data = 5 (packed float), diff = 6, shape = 7, double_data = 8
  BlobShape         dim = 1 (packed int64)

A mean file (ilsvrc_2012_mean.binaryproto) is one serialized BlobProto.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Wire types (protobuf encoding): varint, 64-bit, length-delimited, 32-bit.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# V1LayerParameter.LayerType values of the layers that hold AlexNet's weights.
V1_LAYER_TYPES = {4: "Convolution", 14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU"}


# Bounds of a plausible Caffe net (bvlc_alexnet: 25 layers, 16 blobs, 4-D shapes), checked as
# the bytes are walked: a hostile file fails with CaffeFormatError, one line, before its
# lengths and dimensions cost memory. Every length is checked against the bytes left in its
# message; a blob's dimensions against Caffe's own limits and the values it holds.
MAX_LAYERS = 10_000
MAX_BLOBS = 100_000
MAX_AXES = 32  # caffe::kMaxBlobAxes
MAX_DIM = 2**31 - 1  # Caffe counts a blob's elements in an int


class CaffeFormatError(ValueError):
  """The bytes are not the Caffe message they should be (truncated, or another format)."""


@dataclasses.dataclass
class Layer:
  name: str
  type: str
  blobs: list  # np.ndarray float32 each, in the blob's own shape


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
  result, shift = 0, 0
  while True:
    if pos >= len(buf):
      raise CaffeFormatError("truncated varint")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise CaffeFormatError("varint longer than 10 bytes")


def iter_fields(buf):
  """(field number, wire type, value) of one message, one at a time: an int for varints, a
  memoryview of the payload (never a copy) for length-delimited and fixed-size fields. A
  length that runs past the end of the message is an error before anything is read."""
  buf = memoryview(buf)
  pos, n = 0, len(buf)
  while pos < n:
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
      raise CaffeFormatError(f"field number 0 at byte {pos}")
    if wire == _VARINT:
      value, pos = _varint(buf, pos)
    elif wire in (_I64, _I32, _LEN):
      if wire == _LEN:
        size, pos = _varint(buf, pos)
      else:
        size = 8 if wire == _I64 else 4
      if size > n - pos:
        raise CaffeFormatError(
            f"truncated: field {number} claims {size:,} bytes, {n - pos:,} are left in its "
            "message"
        )
      value, pos = buf[pos : pos + size], pos + size
    else:
      raise CaffeFormatError(f"unsupported wire type {wire} (field {number}) at byte {pos}")
    yield number, wire, value


def fields(buf) -> list[tuple[int, int, object]]:
  """iter_fields as a list (a small message's)."""
  return list(iter_fields(buf))


def _numbers(items, dtype, wire_size: int, wire_fixed: int) -> np.ndarray:
  """A repeated numeric field: packed (length-delimited runs) and/or one value per field,
  gathered as bytes (no object per value)."""
  out = bytearray()
  for wire, value in items:
    if wire == _LEN:
      if len(value) % wire_size:
        raise CaffeFormatError("packed array length is not a multiple of its element size")
    elif wire != wire_fixed:
      raise CaffeFormatError(f"a numeric array field of wire type {wire}")
    out += value
  return np.frombuffer(out, dtype)  # writable: the bytearray is the array's own


def _dims(value, wire) -> list[int]:
  """BlobShape.dim values: packed or not, each checked against Caffe's limits."""
  out, pos = [], 0
  if wire == _VARINT:
    out.append(value)
  elif wire == _LEN:
    while pos < len(value):
      v, pos = _varint(value, pos)
      out.append(v)
      if len(out) > MAX_AXES:
        break
  else:
    raise CaffeFormatError(f"a blob dimension of wire type {wire}")
  return out


def _check_shape(shape: tuple, count: int) -> None:
  if len(shape) > MAX_AXES:
    raise CaffeFormatError(f"a blob of more than {MAX_AXES} axes")
  if any(d > MAX_DIM for d in shape):
    raise CaffeFormatError(
        f"blob dimensions {shape[:8]}: above Caffe's limit of {MAX_DIM:,} per axis"
    )
  total = 1
  for d in shape:  # exact (Python integers): no overflow can make it match
    total *= d
  if total != count:
    raise CaffeFormatError(f"blob of shape {shape[:8]} holds {count} values")


def parse_blob(buf) -> np.ndarray:
  """BlobProto -> float32 array in its shape (`shape.dim`, else num x channels x height x
  width with the unset leading ones dropped)."""
  data_f, data_d, shape_msgs, legacy = [], [], [], {}
  for number, wire, value in iter_fields(buf):
    if number == 5:
      data_f.append((wire, value))
    elif number == 8:
      data_d.append((wire, value))
    elif number == 7:
      if wire != _LEN:
        raise CaffeFormatError(f"a blob shape of wire type {wire}")
      shape_msgs.append(value)  # repeated, a message field merges: its dims add up
    elif number in (1, 2, 3, 4):
      if wire != _VARINT:
        raise CaffeFormatError(f"a blob dimension of wire type {wire}")
      legacy[number] = value
  data = _numbers(data_f, "<f4", 4, _I32)
  if not data.size and data_d:
    with np.errstate(over="ignore"):  # beyond float32: inf, as Caffe's cast gives
      data = _numbers(data_d, "<f8", 8, _I64).astype(np.float32)
  if shape_msgs:
    dims = []
    for shape_msg in shape_msgs:
      for number, wire, value in iter_fields(shape_msg):
        if number == 1:
          dims += _dims(value, wire)
          if len(dims) > MAX_AXES:
            raise CaffeFormatError(f"a blob of more than {MAX_AXES} axes")
    shape = tuple(dims)
  else:
    shape = tuple(legacy.get(f, 0) for f in (1, 2, 3, 4))
    while len(shape) > 1 and shape[0] == 0:
      shape = shape[1:]
    if shape == (0,):
      shape = (data.size,)
  _check_shape(shape, data.size)
  return data.reshape(shape)


def _layer(buf, v1: bool, budget: list) -> Layer:
  name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
  name, kind, blobs = "", "", []
  for number, wire, value in iter_fields(buf):
    if number == name_f and wire == _LEN:
      name = bytes(value).decode("utf-8", "replace")
    elif number == type_f:
      if v1 and wire == _VARINT:
        kind = V1_LAYER_TYPES.get(value, f"V1 type {value}")
      elif not v1 and wire == _LEN:
        kind = bytes(value).decode("utf-8", "replace")
      else:
        raise CaffeFormatError(f"a layer type of wire type {wire}")
    elif number == blobs_f and wire == _LEN:
      budget[0] -= 1
      if budget[0] < 0:
        raise CaffeFormatError(f"more than {MAX_BLOBS:,} blobs: not a Caffe AlexNet")
      blobs.append(parse_blob(value))
  return Layer(name, kind, blobs)


def read_net(data: bytes) -> tuple[str, list[Layer]]:
  """(net name, layers in file order) of a serialized NetParameter, from `layer` (current)
  or `layers` (V1) entries."""
  name, layers, budget = "", [], [MAX_BLOBS]
  for number, wire, value in iter_fields(data):
    if number == 1 and wire == _LEN:
      name = bytes(value).decode("utf-8", "replace")
    elif number in (2, 100) and wire == _LEN:
      if len(layers) >= MAX_LAYERS:
        raise CaffeFormatError(f"more than {MAX_LAYERS:,} layers: not a Caffe AlexNet")
      layers.append(_layer(value, number == 2, budget))
  if not layers:
    raise CaffeFormatError("no layers: not a Caffe NetParameter")
  return name, layers
