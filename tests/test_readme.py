"""README.md as a newcomer copies it: blocks without prompts, every file an example writes under
runs/ (ignored by git) or /tmp, one rule for views said once, the demo's time as its config
says it."""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
  with open(os.path.join(REPO, *path)) as f:
    return f.read()


def _code_lines(text):
  """The lines of the indented (4-space) code blocks."""
  return [line[4:] for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_copyable_blocks_carry_no_prompts():
  prompted = [line for line in _code_lines(_read("README.md")) if line.startswith("$ ")]
  assert not prompted, prompted


def test_examples_write_their_files_under_runs_or_tmp():
  written = []
  for line in _code_lines(_read("README.md")):
    written += re.findall(r"--(?:out|dst)=(\S+)", line)
    written += re.findall(r"\.save\(f?'([^']+)'\)", line)
    written += re.findall(r"(?<![-<>])> (\S+)", line)  # a shell's redirect, not an arrow
  assert len(written) >= 8, written
  outside = [p for p in written if not p.startswith(("runs/", "runs", "/tmp/", "$"))]
  assert not outside, outside
  assert "/runs/" in _read(".gitignore").splitlines()


def test_the_rule_for_views_is_said_once():
  readme = " ".join(_read("README.md").split())
  assert readme.count("unless `--crops` says otherwise") == 1


def test_the_demo_takes_the_time_its_config_says():
  readme = " ".join(_read("README.md").split())
  m = re.search(r"(\d+) s on 2 CPU cores from a fresh clone, (\d+) s the next time", readme)
  assert m, "the README's demo time"
  doc = " ".join(ast.get_docstring(ast.parse(_read("configs", "demo.py"))).split())
  assert doc.startswith(f"A demo that learns in {m[1]} s on 2 CPU cores ({m[2]} s the next time")
