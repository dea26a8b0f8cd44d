"""A full disk, said the same way wherever the project writes: a checkpoint save
(checkpoint.py) and a preparation (data/shard_writer.py) both stop with one line naming the
directory, the space free there and the space still needed, and how to go on.

  if disk_space.is_full(e):
    raise SomeError(disk_space.message("checkpoint step 6", directory, needs, fix, then))
"""

from __future__ import annotations

import errno
import shutil


def is_full(e: BaseException | None) -> bool:
  """Whether `e`, or an exception it was raised from, is a full disk (ENOSPC, also as the
  text that TensorStore and Orbax pass on)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(e) or "ENOSPC" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def megabytes(n: float) -> str:
  return f"{n / 2**20:.1f} MiB"


def free_bytes(directory: str) -> int | None:
  """The space free to this user on `directory`'s device (None: it cannot be read)."""
  try:
    return shutil.disk_usage(directory).free
  except OSError:
    return None


def message(what: str, directory: str, needs: str, elsewhere: str, then: str) -> str:
  """`what` could not be written: no space left on the device of `directory` (N MiB free;
  `needs`). Free space there (or `elsewhere`) first. `then`"""
  free = free_bytes(directory)
  return (
      f"{what} could not be written: no space left on the device of {directory} "
      f"({megabytes(free or 0)} free; {needs}). Free space there (or {elsewhere}) first. {then}"
  )
