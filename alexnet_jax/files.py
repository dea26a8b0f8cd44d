"""File helpers every layer uses. Imports neither JAX nor TensorFlow."""

from __future__ import annotations

import os
import tempfile


def write_atomically(path: str, write) -> None:
  """write(file) into a temporary file beside `path`, then rename: a reader (or a copy of
  the directory) never sees half a file, and a failure leaves what was there."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def user_cache_dir() -> str:
  """The project's cache ($ALEXNET_JAX_CACHE, default ~/.cache/alexnet_jax): statistics of
  read-only data, compiled steps."""
  return os.path.expanduser(os.environ.get("ALEXNET_JAX_CACHE", "~/.cache/alexnet_jax"))
