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


def fields(buf) -> list[tuple[int, int, object]]:
  """(field number, wire type, value) of one message: an int for varints, a memoryview of
  the payload for length-delimited and fixed-size fields."""
  buf = memoryview(buf)
  out, pos, n = [], 0, len(buf)
  while pos < n:
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
      raise CaffeFormatError(f"field number 0 at byte {pos}")
    if wire == _VARINT:
      value, pos = _varint(buf, pos)
    elif wire in (_I64, _I32):
      size = 8 if wire == _I64 else 4
      value, pos = buf[pos : pos + size], pos + size
    elif wire == _LEN:
      size, pos = _varint(buf, pos)
      value, pos = buf[pos : pos + size], pos + size
    else:
      raise CaffeFormatError(f"unsupported wire type {wire} (field {number}) at byte {pos}")
    if pos > n:
      raise CaffeFormatError(f"truncated: field {number} runs past the end of its message")
    out.append((number, wire, value))
  return out


def _repeated(items, dtype, wire_size: int) -> np.ndarray:
  """A repeated numeric field: packed (one length-delimited run) and/or one value per field."""
  parts = []
  for wire, value in items:
    if wire == _LEN:
      if len(value) % wire_size:
        raise CaffeFormatError("packed array length is not a multiple of its element size")
      parts.append(np.frombuffer(value, dtype))
    else:
      parts.append(np.frombuffer(value, dtype, count=1))
  return np.concatenate(parts) if parts else np.zeros([0], dtype)


def _packed_varints(value) -> list[int]:
  out, pos = [], 0
  while pos < len(value):
    v, pos = _varint(value, pos)
    out.append(v)
  return out


def parse_blob(buf) -> np.ndarray:
  """BlobProto -> float32 array in its shape (`shape.dim`, else num x channels x height x
  width with the unset leading ones dropped)."""
  by_number: dict[int, list] = {}
  for number, wire, value in fields(buf):
    by_number.setdefault(number, []).append((wire, value))
  data = _repeated(by_number.get(5, []), "<f4", 4)
  if not data.size and 8 in by_number:
    data = _repeated(by_number[8], "<f8", 8).astype(np.float32)
  if 7 in by_number:
    dims = []
    for number, wire, value in fields(by_number[7][-1][1]):
      if number == 1:
        dims += _packed_varints(value) if wire == _LEN else [value]
    shape = tuple(dims)
  else:
    legacy = [by_number[f][-1][1] if f in by_number else 0 for f in (1, 2, 3, 4)]
    shape = tuple(legacy)
    while len(shape) > 1 and shape[0] == 0:
      shape = shape[1:]
    if shape == (0,):
      shape = (data.size,)
  if int(np.prod(shape)) != data.size:
    raise CaffeFormatError(f"blob of shape {shape} holds {data.size} values")
  return data.reshape(shape)


def _layer(buf, v1: bool) -> Layer:
  name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
  name, kind, blobs = "", "", []
  for number, wire, value in fields(buf):
    if number == name_f and wire == _LEN:
      name = bytes(value).decode("utf-8", "replace")
    elif number == type_f:
      kind = (
          V1_LAYER_TYPES.get(value, f"V1 type {value}")
          if v1
          else bytes(value).decode("utf-8", "replace")
      )
    elif number == blobs_f and wire == _LEN:
      blobs.append(parse_blob(value))
  return Layer(name, kind, blobs)


def read_net(data: bytes) -> tuple[str, list[Layer]]:
  """(net name, layers in file order) of a serialized NetParameter, from `layer` (current)
  or `layers` (V1) entries."""
  name, layers = "", []
  for number, wire, value in fields(data):
    if number == 1 and wire == _LEN:
      name = bytes(value).decode("utf-8", "replace")
    elif number in (2, 100) and wire == _LEN:
      layers.append(_layer(value, v1=number == 2))
  if not layers:
    raise CaffeFormatError("no layers: not a Caffe NetParameter")
  return name, layers
