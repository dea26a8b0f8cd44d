"""The package's import graph: layers that import only downward, no cycle (function-level
imports included), function-level imports only where they defer what they say, a paper core
free of TensorFlow and the run machinery, every module importable on its own without torch."""

import ast
import gc
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "alexnet_jax")
SUBPACKAGES = ("data", "pretrained")
# Every module as `import` names it below alexnet_jax: "model", "data" (the package's
# __init__), "data.sources", ...
MODULES = sorted(
    [f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py"]
    + list(SUBPACKAGES)
    + [
        f"{sub}.{f[:-3]}"
        for sub in SUBPACKAGES
        for f in os.listdir(os.path.join(PACKAGE, sub))
        if f.endswith(".py") and f != "__init__.py"
    ]
)
COMMANDS = ("main", "evaluate", "predict", "figures", "prepare", "convert", "compare")

# The layers, bottom first (README.md#layout): a module imports its own layer and those below.
LAYERS = {
    # Facts several layers share, and file helpers: neither JAX nor TensorFlow.
    "bottom": ("facts", "files", "disk_space", "tf_import"),
    # The paper in JAX: neither TensorFlow nor the run machinery.
    "core": (
        "augment",
        "evaluation",
        "input_spec",
        "layers",
        "model",
        "optim",
        "sharding",
        "train_state",
        "train_step",
    ),
    # The input pipeline (TensorFlow).
    "data": ("data", "data.*"),
    # A run directory and what reads or writes it; the train loop, where the layers meet.
    "run": (
        "analysis",
        "checkpoint",
        "config_checks",
        "config_schema",
        "fine_tune",
        "preemption",
        "pretrained",
        "pretrained.*",
        "reporting",
        "run_data",
        "run_dir",
        "run_lock",
        "train",
    ),
    # Flags in, library calls, one FATAL line out; the process setup they share.
    "commands": (*COMMANDS, "cli", "distributed", "huge_pages", "runtime"),
}
# What importing the core must not load: TensorFlow, and the layers above it.
CORE_FORBIDDEN = ("tensorflow", "alexnet_jax.data") + tuple(
    f"alexnet_jax.{m}" for layer in ("run", "commands") for m in LAYERS[layer] if "*" not in m
)
# Heavy optional dependencies a function may import when it needs them (the reason beside it):
# a library import never loads them.
DEFERRABLE = ("torch", "h5py", "keras", "matplotlib", "triton", "sklearn")
# Function-level imports outside the commands that defer something else, and why.
DEFERRED_ELSEWHERE = {
    # Only a config.json in the old layout needs the model (JAX, Flax); the config checks run
    # before a command loads them.
    ("config_schema", "model"),
}
NO_TORCH = (
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'benchmarks')); "
    "assert not bad, bad"
)


def layer_of(module: str) -> str:
  for layer, members in LAYERS.items():
    for m in members:
      if module == m or (m.endswith(".*") and module.startswith(m[:-1])):
        return layer
  raise AssertionError(f"alexnet_jax.{module} is in no layer: add it to LAYERS (README.md#layout)")


def _path(module: str) -> str:
  parts = module.split(".")
  if module in SUBPACKAGES:
    return os.path.join(PACKAGE, module, "__init__.py")
  return os.path.join(PACKAGE, *parts[:-1], parts[-1] + ".py")


def _parse(source: str) -> ast.Module:
  # CPython 3.11's ast constructor fails ("AST constructor recursion depth mismatch") when the
  # garbage collector runs a finalizer (of objects an earlier test left) inside it: no
  # collection during the parse.
  gc.disable()
  try:
    return ast.parse(source)
  finally:
    gc.enable()


class Import:
  """One import statement: the alexnet_jax modules it loads, the top-level packages it
  names, whether it sits inside a function, and its line's comments (same line or above)."""

  def __init__(self, node, in_function: bool, lines: list[str], known: set[str]):
    self.line, self.in_function = node.lineno, in_function
    self.packages, self.modules = set(), set()
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    else:
      names = [node.module] if node.module else []
    for name in names:
      self.packages.add(name.split(".")[0])
      if name.startswith("alexnet_jax."):
        self.modules.add(_known_prefix(name[len("alexnet_jax.") :], known))
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alexnet_jax"):
      base = node.module[len("alexnet_jax") :].lstrip(".")
      for a in node.names:  # `from alexnet_jax.data import shards` loads data.shards
        full = f"{base}.{a.name}" if base else a.name
        if full in known:
          self.modules.add(full)
    self.modules.discard("")
    # A comment on the line, or above the block of imports it starts or belongs to.
    above = node.lineno - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
      above -= 1
    self.commented = "#" in lines[node.lineno - 1] or (
        above >= 0 and lines[above].strip().startswith("#")
    )


def _known_prefix(dotted: str, known: set[str]) -> str:
  parts = dotted.split(".")
  for n in range(len(parts), 0, -1):
    if ".".join(parts[:n]) in known:
      return ".".join(parts[:n])
  return ""


def imports_of(module: str) -> list[Import]:
  """Every import statement of `module`, at module level, under `if` or in a function."""
  with open(_path(module)) as f:
    source = f.read()
  lines, known, out = source.splitlines(), set(MODULES), []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        out.append(Import(child, in_function, lines, known))
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      visit(child, inner)

  visit(_parse(source), False)
  return out


def graph() -> dict[str, set[str]]:
  """module -> the package modules it imports (a submodule's own package's __init__ left out:
  Python runs it first, it is not an edge of the submodule's)."""
  out = {}
  for m in MODULES:
    own_package = m.split(".")[0] if "." in m else None
    out[m] = {t for i in imports_of(m) for t in i.modules if t not in (m, own_package)}
  return out


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """A cycle as a list of modules (first == last), or None: depth-first search."""
  state = {}  # absent: unvisited; 1: on the current path; 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state and (found := visit(nxt, path + [nxt])):
        return found
    state[node] = 2
    return None

  for start in sorted(edges):
    if start not in state and (found := visit(start, [start])):
      return found
  return None


def test_cycle_finder_finds_a_planted_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_parser_sees_function_level_and_from_imports():
  edges = graph()
  assert "train_state" in edges["checkpoint"] and "checkpoint" in edges["train"]
  assert {"data.shards", "data.registry"} <= edges["data.dataset"]
  assert "model" in edges["config_schema"]  # function-level (DEFERRED_ELSEWHERE)
  assert "data" in edges["run_data"]  # `from alexnet_jax import data as data_lib`


def test_no_import_cycle_in_the_package_counting_function_level_imports():
  edges = graph()
  assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"


def test_every_module_imports_only_its_own_layer_and_those_below():
  order = list(LAYERS)
  upward = [
      f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
      for m, targets in graph().items()
      for t in sorted(targets)
      if order.index(layer_of(t)) > order.index(layer_of(m))
  ]
  assert not upward, "\n".join(upward)


def test_the_bottom_layer_imports_neither_jax_nor_tensorflow():
  for m in LAYERS["bottom"]:
    packages = {p for i in imports_of(m) for p in i.packages}
    assert not packages & {"jax", "flax", "optax", "tensorflow", "tensorflow_datasets"}, m


def test_function_level_imports_only_defer_what_they_say():
  """Outside the commands, a function imports only a heavy optional dependency (DEFERRABLE)
  or what DEFERRED_ELSEWHERE lists. The commands import the library (and runtime, TensorFlow,
  JAX) inside main(), after runtime.setup(): TensorFlow reads its log level when it first
  loads and must not claim accelerators, and --help answers without loading either. Each
  says why in a comment."""
  wrong = []
  for m in MODULES:
    for i in imports_of(m):
      if not i.in_function:
        continue
      if layer_of(m) == "commands":
        if not i.packages <= {"alexnet_jax", "jax", "tensorflow"} or not i.commented:
          wrong.append(f"alexnet_jax/{_path(m)[len(PACKAGE) + 1 :]}:{i.line}: after setup()?")
        continue
      deferrable = i.packages <= set(DEFERRABLE)
      listed = (
          i.packages == {"alexnet_jax"}
          and i.modules
          and all((m, t) in DEFERRED_ELSEWHERE for t in i.modules)
      )
      if not (deferrable or listed):
        wrong.append(f"alexnet_jax/{_path(m)[len(PACKAGE) + 1 :]}:{i.line} imports in a function")
      elif not i.commented:
        wrong.append(f"alexnet_jax/{_path(m)[len(PACKAGE) + 1 :]}:{i.line}: say why it waits")
  assert not wrong, "\n".join(wrong)


def _loaded_by(code: str) -> list[str]:
  """The forbidden modules (CORE_FORBIDDEN, torch) in sys.modules after `code`, in a fresh
  interpreter."""
  check = (
      f"import sys; {code}; "
      f"bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or any("
      f"m == f or m.startswith(f + '.') for f in {CORE_FORBIDDEN!r})); print(bad)"
  )
  r = subprocess.run(
      [sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  return ast.literal_eval(r.stdout.strip().splitlines()[-1])


def test_the_core_loads_neither_tensorflow_nor_the_run_data_or_config_modules():
  """Every core module in one fresh interpreter: what they load together includes what each
  loads alone (the slow test below imports each alone)."""
  assert _loaded_by("; ".join(f"import alexnet_jax.{m}" for m in LAYERS["core"])) == []


# Importing each module alone, in a fresh interpreter per module, cost ~5 s each (TensorFlow
# and JAX again every time). One interpreter loads the third-party libraries once, then forks
# a child per module, which imports alexnet_jax.<module> into a process that holds none of the
# package: an import that works only after another of the package's modules still fails, and
# what the child loaded is still the module's own doing (the preloads never include what is
# checked for).
_IMPORT_EACH = """
import importlib, json, os, sys, traceback
for name in json.loads(sys.argv[1]):
  importlib.import_module(name)
forbidden = json.loads(sys.argv[3])
results = {}
for module in json.loads(sys.argv[2]):
  r, w = os.pipe()
  pid = os.fork()
  if pid == 0:
    os.close(r)
    try:
      importlib.import_module("alexnet_jax." + module)
      out = {"loaded": sorted(m for m in sys.modules if any(
          m == f or m.startswith(f + ".") for f in forbidden))}
    except BaseException:
      out = {"error": traceback.format_exc()[-2000:]}
    with os.fdopen(w, "w") as f:
      f.write(json.dumps(out))
    os._exit(0)
  os.close(w)
  with os.fdopen(r) as f:
    text = f.read()
  os.waitpid(pid, 0)
  results[module] = json.loads(text) if text else {"error": "the child died"}
print(json.dumps(results))
"""


def _import_each(modules, preload, forbidden) -> dict:
  """{module: {"loaded": [forbidden modules it loaded]} or {"error": traceback}}."""
  import json

  r = subprocess.run(
      [sys.executable, "-c", _IMPORT_EACH]
      + [json.dumps(list(x)) for x in (preload, modules, forbidden)],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def core_alone():
  # Preloads: what the core may use; never TensorFlow or the package.
  return _import_each(LAYERS["core"], ("numpy", "jax", "flax.linen", "optax"), CORE_FORBIDDEN)


@pytest.mark.slow
@pytest.mark.parametrize("module", LAYERS["core"])
def test_each_core_module_alone_loads_neither_tensorflow_nor_the_run_layer(module, core_alone):
  assert core_alone[module] == {"loaded": []}


def test_the_checker_sees_what_it_looks_for():
  planted = "import types; sys.modules['tensorflow.python'] = types.ModuleType('stand-in')"
  assert _loaded_by(planted) == ["tensorflow.python"]
  assert _loaded_by("import alexnet_jax.run_lock") == ["alexnet_jax.run_lock"]


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_every_module_imports_without_torch():
  """One interpreter imports every library module (the fast tier's check; the slow test below
  imports each alone). The commands define their absl flags on import, so they cannot share
  one interpreter (tests/test_cli.py starts each)."""
  library = [m for m in MODULES if m not in COMMANDS]
  code = f"import sys; import {', '.join('alexnet_jax.' + m for m in library)}; {NO_TORCH}"
  r = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]


ALONE = [m for m in MODULES if "." not in m]  # a package: its modules


@pytest.fixture(scope="module")
def each_alone():
  preload = ("numpy", "jax", "flax.linen", "optax", "orbax.checkpoint", "tensorflow")
  return _import_each(ALONE, preload, ("torch", "benchmarks"))


def test_import_each_sees_a_failing_import_and_a_forbidden_load():
  got = _import_each(["nosuch_module", "facts"], ("numpy",), ("alexnet_jax.facts",))
  assert "No module named 'alexnet_jax.nosuch_module'" in got["nosuch_module"]["error"]
  assert got["facts"] == {"loaded": ["alexnet_jax.facts"]}


@pytest.mark.slow
@pytest.mark.parametrize("module", ALONE)
def test_every_module_imports_alone_without_torch(module, each_alone):
  """Each module imports on its own (no reliance on an import order), and none pulls in
  torch or the benchmark."""
  assert each_alone[module] == {"loaded": []}


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
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
