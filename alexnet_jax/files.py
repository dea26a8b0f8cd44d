"""File helpers every layer uses. Imports neither JAX nor TensorFlow.

Hostile or unlucky files (README, "What a run guarantees", hostile input):
  - a path that is not a regular file (a FIFO, a device, a socket, a directory) is refused by
    os.stat before anything opens it (`check_regular`, `open_regular`): a FIFO never blocks
    a reader;
  - a read is bounded before it starts (`read_bytes`: the file's size against what its
    reader accepts);
  - a run file that is not what it should be fails with one line naming it (`read_json`);
  - a file is written whole or not at all (`write_atomically`);
  - a run's own files are never written through a symbolic link (`replace_symlink`,
    `open_for_append`): the link is replaced by a regular file, and a warning says so;
  - text taken from files is escaped before it is printed (`printable`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile

from absl import logging

# Run files that are JSON (config.json, preprocessing.json, ...) hold kilobytes; 64 MiB is
# far more than any of them (21,841 ImageNet class names take 0.5 MB).
MAX_JSON_BYTES = 64 << 20


class BadFileError(ValueError):
  """A file refused before or while reading it; the message (one line) names it and says
  what is wrong."""


def printable(text: str) -> str:
  """`text` as it is when every character prints, else with backslash escapes (a newline, an
  ANSI escape sequence or another control character read from a file never reaches the
  terminal as itself)."""
  text = str(text)
  return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def describe_kind(mode: int) -> str:
  """'a FIFO (named pipe)', 'a directory', ... for an st_mode that is not a regular file's."""
  for test, name in (
      (stat.S_ISFIFO, "a FIFO (named pipe)"),
      (stat.S_ISCHR, "a character device"),
      (stat.S_ISBLK, "a block device"),
      (stat.S_ISSOCK, "a socket"),
      (stat.S_ISDIR, "a directory"),
      (stat.S_ISLNK, "a symbolic link"),
  ):
    if test(mode):
      return name
  return "not a regular file"


def check_regular(path, what: str = "file", error=BadFileError, fix: str = "") -> os.stat_result:
  """os.stat of `path` (a symbolic link to a regular file counts as one), or `error` (one
  line, ending with `fix`) when it is a FIFO, a device, a socket or a directory: nothing has
  opened it, so a FIFO cannot block. FileNotFoundError and other OSErrors pass through."""
  st = os.stat(path)
  if not stat.S_ISREG(st.st_mode):
    raise error(
        f"{printable(os.fspath(path))} is {describe_kind(st.st_mode)}, not a regular file: "
        + (fix or f"give a {what} that is a file")
    )
  return st


def open_regular(path, what: str = "file", max_bytes: int | None = None, error=BadFileError):
  """`path` opened for reading (binary) once check_regular passed and its size is at most
  `max_bytes`. Opened without blocking and checked again on the open file: a FIFO put in its
  place after the stat is refused too."""
  st = check_regular(path, what, error)
  _check_size(path, st.st_size, what, max_bytes, error)
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise error(
          f"{printable(os.fspath(path))} is {describe_kind(st.st_mode)}, not a regular file"
      )
    _check_size(path, st.st_size, what, max_bytes, error)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def _check_size(path, size: int, what: str, max_bytes: int | None, error) -> None:
  if max_bytes is not None and size > max_bytes:
    raise error(
        f"{printable(os.fspath(path))} is {size:,} bytes: more than a {what} can be "
        f"({max_bytes:,} bytes at most); is it the right file?"
    )


def read_bytes(path, what: str = "file", max_bytes: int = MAX_JSON_BYTES, error=BadFileError):
  """The bytes of a regular file of at most `max_bytes` (open_regular), read once."""
  with open_regular(path, what, max_bytes, error) as f:
    # Its size and one byte more (a file growing past the bound shows it): a read of
    # max_bytes would allocate that much whatever the file holds.
    data = f.read(min(os.fstat(f.fileno()).st_size, max_bytes) + 1)
  _check_size(path, len(data), what, max_bytes, error)  # it grew after the stat
  return data


_JSON_NAMES = {dict: "object", list: "list", str: "string"}


def _json_kind(value) -> str:
  if isinstance(value, bool):
    return "boolean"
  if value is None:
    return "null"
  if isinstance(value, (int, float)):
    return "number"
  return _JSON_NAMES.get(type(value), type(value).__name__)


def read_json(
    path,
    kind: type = dict,
    *,
    what: str = "JSON file",
    fix: str = "",
    max_bytes: int = MAX_JSON_BYTES,
    error=BadFileError,
):
  """The JSON value of a regular file, which must be a `kind` (dict: an object, list), or
  `error` with one line naming the file and what is wrong (not a regular file, too large,
  not UTF-8, not JSON, nested too deeply, another kind of value), then `fix`.
  FileNotFoundError passes through: callers say where a missing file comes from."""
  name = printable(os.fspath(path))
  tail = f"; {fix}" if fix else ""
  try:
    data = read_bytes(path, what, max_bytes, error)
  except error as e:
    raise error(f"{e}{tail}") from None
  except FileNotFoundError:
    raise
  except OSError as e:
    raise error(f"cannot read {name} ({e.strerror or e}){tail}") from None
  try:
    value = json.loads(data.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise error(f"{name} is not UTF-8 text (byte {e.start}): not a {what}{tail}") from None
  except json.JSONDecodeError as e:
    raise error(
        f"{name} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}){tail}"
    ) from None
  except RecursionError:
    raise error(f"{name} nests its JSON too deeply to be a {what}{tail}") from None
  if not isinstance(value, kind):
    raise error(
        f"{name} holds a JSON {_json_kind(value)}, not a JSON "
        f"{_JSON_NAMES.get(kind, kind.__name__)}{tail}"
    )
  return value


def check_zip_entries(f, max_entries: int, error=BadFileError, name: str = "") -> None:
  """`error` when the zip file `f` (seekable, binary) declares more than `max_entries`
  entries in its end-of-central-directory record: zipfile would otherwise build an object
  for each before anything can be checked. A file without the record is left to zipfile."""
  f.seek(0, os.SEEK_END)
  size = f.tell()
  f.seek(max(0, size - (1 << 16) - 22))
  tail = f.read()
  f.seek(0)
  at = tail.rfind(b"PK\x05\x06")
  if at < 0 or at + 22 > len(tail):
    return
  entries = int.from_bytes(tail[at + 10 : at + 12], "little")
  if entries == 0xFFFF:  # Zip64: the count is in the Zip64 record
    at64 = tail.rfind(b"PK\x06\x06")
    entries = int.from_bytes(tail[at64 + 32 : at64 + 40], "little") if at64 >= 0 else entries
  if entries > max_entries:
    raise error(
        f"{name or 'the zip file'} declares {entries:,} entries, more than such a file holds "
        f"({max_entries:,}); refused before reading them"
    )


def write_atomically(path: str, write) -> None:
  """write(file) into a temporary file beside `path`, then rename: a reader (or a copy of
  the directory) never sees half a file, and a failure leaves what was there."""
  replace_symlink(path)  # the rename would replace a link there anyway: said
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


def replace_symlink(path) -> bool:
  """Before a run writes its own file at `path`: a symbolic link there is removed (never its
  target), with a warning, so the write makes a regular file. True if there was one."""
  if not os.path.islink(path):
    return False
  try:
    target = os.readlink(path)
  except OSError:
    target = "?"
  os.unlink(path)
  logging.warning(
      "%s was a symbolic link (to %s): a run never writes through one; the link is replaced "
      "by a regular file (its target is left as it is)",
      printable(os.fspath(path)),
      printable(target),
  )
  return True


def open_for_append(path, what: str = "file", error=BadFileError):
  """`path` opened for appending text, never through a symbolic link: a link there is
  replaced by a regular copy of what it pointed to (a warning says so; the target is left
  as it is), and a FIFO, device or directory is refused with `error`."""
  path = os.fspath(path)
  if os.path.islink(path):
    _replace_link_by_copy(path)
  flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
  try:
    fd = os.open(path, flags, 0o644)
  except OSError as e:
    if os.path.islink(path) or os.path.exists(path) and not os.path.isfile(path):
      kind = "a symbolic link" if os.path.islink(path) else describe_kind(os.stat(path).st_mode)
      raise error(
          f"{printable(path)} is {kind}, not a regular file: a run writes its {what} only "
          "into a file of its own; remove it and rerun"
      ) from None
    raise e
  st = os.fstat(fd)
  if not stat.S_ISREG(st.st_mode):
    os.close(fd)
    raise error(
        f"{printable(path)} is {describe_kind(st.st_mode)}, not a regular file: a run writes its "
        f"{what} only into a file of its own; remove it and rerun"
    )
  os.set_blocking(fd, True)
  return os.fdopen(fd, "a", encoding="utf-8")


def _replace_link_by_copy(path: str) -> None:
  target = os.readlink(path)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
  copied = False
  try:
    with os.fdopen(fd, "wb") as dst:
      try:
        with open_regular(path) as src:
          shutil.copyfileobj(src, dst)
          copied = True
      except (OSError, BadFileError):
        pass  # dangling, unreadable or not a file: the run starts an empty one
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # replaces the link itself, not its target
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  logging.warning(
      "%s was a symbolic link (to %s): a run never writes through one; replaced it by a "
      "regular file holding %s (the target is left as it is)",
      printable(path),
      printable(target),
      "a copy of the target" if copied else "nothing (the target could not be read)",
  )


def user_cache_dir() -> str:
  """The project's cache ($ALEXNET_JAX_CACHE, default ~/.cache/alexnet_jax): statistics of
  read-only data, compiled steps."""
  return os.path.expanduser(os.environ.get("ALEXNET_JAX_CACHE", "~/.cache/alexnet_jax"))
