"""Property-based fuzzing of the readers of hostile files (hypothesis): small valid files, and
the mutations a test applies to them.

Each fuzz test writes a valid file, lets hypothesis mutate its bytes (flip, overwrite, insert,
delete, truncate, repeat a slice, put a varint or a length of 2^32 somewhere), and checks that
the reader ends in its own one-line error or a correct result, within a bounded peak of
Python-tracked memory (tracemalloc: NumPy's arrays included). The tests run in the slow tier
with a fixed example budget and derandomized (the same examples on every run).

  from tests import fuzz
  @fuzz.settings(examples=200)
  @hypothesis.given(data=fuzz.mutated(valid_bytes))
  def test_...(data): fuzz.check(lambda: reader(data), ReaderError, expected)
"""

from __future__ import annotations

import os
import tracemalloc

import hypothesis
import numpy as np
from hypothesis import strategies as st

# Lengths that make a reader allocate when trusted: 2^31, 2^32, 2^63 and neighbours.
HUGE = (2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**64 - 1)


def settings(examples: int):
  """A fixed budget and seed: derandomized, no deadline (a loaded machine), no database."""
  return hypothesis.settings(
      max_examples=examples,
      derandomize=True,
      deadline=None,
      database=None,
      suppress_health_check=list(hypothesis.HealthCheck),
  )


def _varint(v: int) -> bytes:
  out = bytearray()
  while True:
    b, v = v & 0x7F, v >> 7
    out.append(b | (0x80 if v else 0))
    if not v:
      return bytes(out)


@st.composite
def mutated(draw, valid: bytes, max_mutations: int = 4):
  """`valid` with 1..max_mutations random mutations."""
  data = bytearray(valid)
  for _ in range(draw(st.integers(1, max_mutations))):
    n = len(data)
    kind = draw(
        st.sampled_from(
            ["flip", "overwrite", "insert", "delete", "truncate", "repeat", "huge", "zero"]
        )
    )
    at = draw(st.integers(0, max(n - 1, 0)))
    if kind == "flip" and n:
      data[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "overwrite" and n:
      chunk = draw(st.binary(min_size=1, max_size=8))
      data[at : at + len(chunk)] = chunk
    elif kind == "insert":
      data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete" and n:
      del data[at : at + draw(st.integers(1, 64))]
    elif kind == "truncate":
      del data[at:]
    elif kind == "repeat" and n:
      size = draw(st.integers(1, 256))
      data[at:at] = data[at : at + size] * draw(st.integers(2, 16))
    elif kind == "huge":
      value = draw(st.sampled_from(HUGE))
      form = draw(st.sampled_from(["varint", "le32", "be32", "le64", "be64"]))
      if form == "varint":
        chunk = _varint(value)
      else:
        width = 4 if form.endswith("32") else 8
        chunk = (value % 2 ** (8 * width)).to_bytes(width, "little" if form[:2] == "le" else "big")
      data[at : at + len(chunk)] = chunk
    elif kind == "zero" and n:
      data[at : at + draw(st.integers(1, 64))] = bytes(min(64, n - at))
  return bytes(data)


def peak_bytes(fn):
  """(fn()'s result or the exception it raised, the peak of Python-tracked memory during it)."""
  tracemalloc.start()
  try:
    try:
      out = fn()
    except BaseException as e:  # pylint: disable=broad-except
      out = e
    return out, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def check(fn, error_type, expected=None, max_peak: int = 64 << 20, same=None):
  """fn() raises error_type with a one-line message, or returns a correct result (equal to
  `expected` by `same`, default ==), and its peak of tracked memory stays under max_peak.
  Returns the result or the error."""
  out, peak = peak_bytes(fn)
  assert peak <= max_peak, f"peak {peak:,} bytes > {max_peak:,}"
  if isinstance(out, BaseException):
    assert isinstance(out, error_type), f"{type(out).__name__}: {out}"
    text = str(out)
    assert text and "\n" not in text, repr(text)
    return out
  if expected is not None:
    assert (same or (lambda a, b: a == b))(out, expected), "a mutated file read as other values"
  return out


# ---- small valid files ------------------------------------------------------------------------
def keras_layers(seed: int = 0) -> dict:
  """The tutorial network's arrays at a tiny width (the readers check layer kinds and order;
  shapes are the converter's check): {layer: tuple of float32 arrays}."""
  from alexnet_jax.pretrained import keras_h5

  rs = np.random.RandomState(seed)
  out = {}
  for i, name in enumerate(keras_h5.CONV_LAYERS):
    out[name] = (rs.randn(2, 2, 1 + i, 2).astype(np.float32), rs.randn(2).astype(np.float32))
  for name in keras_h5.DENSE_LAYERS:
    out[name] = (rs.randn(3, 2).astype(np.float32), rs.randn(2).astype(np.float32))
  for name in keras_h5.BN_LAYERS:
    out[name] = tuple(rs.rand(2).astype(np.float32) + 0.5 for _ in range(4))
  return out


def same_layers(a: dict, b: dict) -> bool:
  return set(a) == set(b) and all(
      len(a[k]) == len(b[k]) and all(np.array_equal(x, y) for x, y in zip(a[k], b[k])) for k in a
  )


def write_keras2_h5(path, layers: dict, under_model_weights: bool = False) -> None:
  """Keras 2's layout (layer_names, each group's weight_names), optionally under
  model_weights/ as Keras 2's model.save writes it."""
  import h5py

  from alexnet_jax.pretrained import keras_h5

  order = []
  for kind, names in keras_h5.NAMES_OF_KIND.items():
    order += [(kind, n) for n in names]
  with h5py.File(path, "w") as f:
    root = f.create_group("model_weights") if under_model_weights else f
    names = [f"{kind}_{i}" for i, (kind, _) in enumerate(order)]
    root.attrs["layer_names"] = np.array([n.encode() for n in names])
    for group_name, (kind, layer) in zip(names, order):
      g = root.create_group(group_name)
      labels = keras_h5.BN_VARS if kind == "bn" else ("kernel", "bias")
      weight_names = [f"{group_name}/{label}:0" for label in labels]
      g.attrs["weight_names"] = np.array([w.encode() for w in weight_names])
      for w, array in zip(weight_names, layers[layer]):
        g.create_dataset(w, data=array)


def keras_zip(h5_bytes: bytes) -> bytes:
  """A .keras zip holding model.weights.h5 (and metadata.json, as Keras writes)."""
  import io
  import zipfile

  b = io.BytesIO()
  with zipfile.ZipFile(b, "w") as z:
    z.writestr("metadata.json", '{"keras_version": "3.14.0"}')
    z.writestr("model.weights.h5", h5_bytes)
  return b.getvalue()


def read_file(path) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def write_file(path, data: bytes) -> str:
  with open(path, "wb") as f:
    f.write(data)
  return os.fspath(path)


def rss_kb() -> int:
  """The process's peak resident memory so far (kB): a bound on what C libraries allocate,
  which tracemalloc does not see (HDF5, zlib)."""
  import resource

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
