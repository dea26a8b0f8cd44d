"""files.py against hostile paths: FIFOs, devices, sockets and directories refused before any
open, bounded reads, JSON that names its file, and no write through a symbolic link."""

import json
import os
import re
import socket
import threading

import pytest

from alexnet_jax import files


def _fifo(tmp_path, name="pipe.jpg"):
  path = tmp_path / name
  os.mkfifo(path)
  return path


def _finishes(fn, timeout=10.0):
  """fn() run in a thread: (its result or exception, whether it returned in time)."""
  out = {}

  def target():
    try:
      out["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      out["error"] = e

  t = threading.Thread(target=target, daemon=True)
  t.start()
  t.join(timeout)
  return out, not t.is_alive()


def test_a_fifo_a_device_a_socket_and_a_directory_are_refused_before_any_open(tmp_path):
  sock_path = str(tmp_path / "s.sock")
  server = socket.socket(socket.AF_UNIX)
  server.bind(sock_path)
  try:
    cases = {
        _fifo(tmp_path): "a FIFO (named pipe)",
        "/dev/null": "a character device",
        sock_path: "a socket",
        tmp_path: "a directory",
    }
    for path, kind in cases.items():
      for fn in (files.check_regular, files.open_regular, files.read_bytes, files.read_json):
        out, done = _finishes(lambda fn=fn, path=path: fn(path))
        assert done, f"{fn.__name__}({path}) blocked"
        e = out.get("error")
        assert isinstance(e, files.BadFileError), (fn.__name__, path, out)
        assert str(e).startswith(f"{path} is {kind}, not a regular file"), str(e)
        assert "\n" not in str(e)
  finally:
    server.close()


def test_a_symbolic_link_to_a_regular_file_is_read_and_a_missing_file_is_not_found(tmp_path):
  (tmp_path / "real.json").write_text('{"a": 1}')
  os.symlink(tmp_path / "real.json", tmp_path / "link.json")
  assert files.read_json(tmp_path / "link.json") == {"a": 1}
  with pytest.raises(FileNotFoundError):
    files.read_json(tmp_path / "none.json")


def test_a_read_is_bounded_by_the_file_size_before_it_starts(tmp_path):
  path = tmp_path / "big.bin"
  with open(path, "wb") as f:
    f.truncate(10_000_001)  # sparse: no disk spent
  with pytest.raises(files.BadFileError, match=r"is 10,000,001 bytes: more than a weights file"):
    files.read_bytes(path, "weights file", max_bytes=10_000_000)
  assert files.read_bytes(path, max_bytes=10_000_001)[:4] == b"\0\0\0\0"


@pytest.mark.parametrize(
    "content, kind, message",
    [
        (b'{"a": 1,', dict, r"is not valid JSON \(Expecting property name enclosed in double "),
        (b"[1, 2]", dict, r"holds a JSON list, not a JSON object"),
        (b'"x"', dict, r"holds a JSON string, not a JSON object"),
        (b"null", list, r"holds a JSON null, not a JSON list"),
        (b"\xff\xfe{}", dict, r"is not UTF-8 text \(byte 0\)"),
        (b"[" * 100_000 + b"]" * 100_000, list, r"nests its JSON too deeply"),
        (b"", dict, r"is not valid JSON \(Expecting value: line 1 column 1\)"),
    ],
)
def test_json_that_is_not_what_the_reader_needs_fails_with_one_line_naming_the_file(
    tmp_path, content, kind, message
):
  path = tmp_path / "config.json"
  path.write_bytes(content)

  class Mine(ValueError):
    pass

  with pytest.raises(Mine) as e:
    files.read_json(path, kind, what="run config", fix="restore it", error=Mine)
  text = str(e.value)
  assert text.startswith(str(path)) and text.endswith("; restore it"), text
  assert "\n" not in text
  assert re.search(message, text), text


def test_printable_escapes_control_characters_and_keeps_printable_text():
  assert files.printable("Lily Valley") == "Lily Valley"
  assert files.printable("Colts' Foot é") == "Colts' Foot é"
  assert files.printable("cat\x1b[2J\nrm") == "cat\\x1b[2J\\nrm"
  assert "\n" not in files.printable("a\u2028b")


def test_replace_symlink_removes_the_link_and_leaves_its_target(tmp_path, caplog):
  target = tmp_path / "outside.txt"
  target.write_text("precious")
  link = tmp_path / "run.json"
  os.symlink(target, link)
  assert files.replace_symlink(link)
  assert not os.path.lexists(link) and target.read_text() == "precious"
  assert "was a symbolic link" in caplog.text and str(target) in caplog.text
  assert not files.replace_symlink(link)


def test_open_for_append_never_writes_through_a_link(tmp_path, caplog):
  target = tmp_path / "elsewhere.jsonl"
  target.write_text('{"step": 1}\n')
  link = tmp_path / "metrics.jsonl"
  os.symlink(target, link)
  with files.open_for_append(link, "metrics") as f:
    f.write('{"step": 2}\n')
  assert target.read_text() == '{"step": 1}\n'  # untouched
  assert not os.path.islink(link)
  assert [json.loads(x)["step"] for x in link.read_text().splitlines()] == [1, 2]
  assert "replaced it by a regular file holding a copy of the target" in caplog.text
  # A dangling link: an empty file of its own.
  os.remove(link)
  os.symlink(tmp_path / "gone", link)
  with files.open_for_append(link) as f:
    f.write("x\n")
  assert link.read_text() == "x\n" and not os.path.exists(tmp_path / "gone")


def test_open_for_append_refuses_a_fifo_without_blocking(tmp_path):
  path = _fifo(tmp_path, "metrics.jsonl")
  out, done = _finishes(lambda: files.open_for_append(path, "metrics"))
  assert done
  assert isinstance(out.get("error"), files.BadFileError), out
  assert "is a FIFO (named pipe), not a regular file" in str(out["error"])
