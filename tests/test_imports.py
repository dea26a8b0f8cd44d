"""The package's import graph: every module imports on its own, no cycles, no torch."""

import ast
import gc
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "alexnet_jax")
MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py")
# Every module, the subpackages' too, as `python -m`/`import` names them.
ALL_MODULES = MODULES + sorted(
    f"{sub}.{f[:-3]}"
    for sub in ("data", "pretrained")
    for f in os.listdir(os.path.join(PACKAGE, sub))
    if f.endswith(".py") and f != "__init__.py"
)
COMMANDS = ("main", "evaluate", "predict", "figures", "prepare", "convert", "compare")
NO_TORCH = (
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'benchmarks')); "
    "assert not bad, bad"
)


def _imported_modules(name: str) -> set[str]:
  """The alexnet_jax modules that `name` imports anywhere (module level or in a function)."""
  with open(os.path.join(PACKAGE, f"{name}.py")) as f:
    source = f.read()
  # CPython 3.11's ast constructor fails ("AST constructor recursion depth mismatch") when the
  # garbage collector runs a finalizer (of objects an earlier test left) inside it: no
  # collection during the parse.
  gc.disable()
  try:
    tree = ast.parse(source)
  finally:
    gc.enable()
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "alexnet_jax":
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alexnet_jax."):
      out.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("alexnet_jax.")}
  return out & set(MODULES)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle as a list of modules (first == last), or None: depth-first search."""
  state = {}  # absent: unvisited; 1: on the current path; 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state and (found := visit(nxt, path + [nxt])):
        return found
    state[node] = 2
    return None

  for start in sorted(graph):
    if start not in state and (found := visit(start, [start])):
      return found
  return None


def test_cycle_finder_finds_a_planted_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_the_package():
  graph = {m: _imported_modules(m) for m in MODULES}
  assert "train_state" in graph["checkpoint"] and "checkpoint" in graph["train"]
  assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_every_module_imports_without_torch():
  """One interpreter imports every library module (the fast tier's check; the slow test below
  imports each alone). The commands define their absl flags on import, so they cannot share
  one interpreter (tests/test_cli.py starts each)."""
  library = [m for m in ALL_MODULES if m not in COMMANDS]
  code = f"import sys; import {', '.join('alexnet_jax.' + m for m in library)}; {NO_TORCH}"
  r = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES + ["data", "pretrained"])  # a package: its modules
def test_every_module_imports_alone_without_torch(module):
  """A fresh interpreter per module: each imports on its own (no reliance on an import
  order), and none pulls in torch or the benchmark."""
  code = f"import sys, alexnet_jax.{module}; {NO_TORCH}"
  r = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("installed", [True, False])
def test_triton_where_installed_loads_before_tensorflow(tmp_path, installed):
  """triton's extension crashes the process when it loads after TensorFlow's (PyPI's CUDA
  torch brings it, requirements-torch.txt); the package loads it first. A stand-in triton
  records whether TensorFlow was already loaded; without one, nothing named triton loads."""
  if installed:
    os.makedirs(tmp_path / "triton")
    (tmp_path / "triton" / "__init__.py").write_text(
        "import sys\nTENSORFLOW_FIRST = 'tensorflow' in sys.modules\n"
    )
  code = (
      "import sys; import alexnet_jax.data.preprocess; "
      "t = sys.modules.get('triton'); print(None if t is None else t.TENSORFLOW_FIRST)"
  )
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO])}
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert r.stdout.split()[-1] == ("False" if installed else "None")
