"""Every command explains itself: run bare, a short usage with real examples and status 2;
--help, the usage and one line per flag's help, status 0; a misspelt key, one line."""

import ast
import os
import re
import sys

import pytest

from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("main", "evaluate", "predict", "figures", "prepare", "convert", "compare")


def _run(*args, timeout=120):
  # A forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py).
  return forkserver.run(
      [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
  )


@pytest.mark.parametrize("command", COMMANDS)
def test_bare_command_prints_its_usage_and_exits_2(command):
  r = _run(f"alexnet_jax.{command}")
  assert r.returncode == 2, r.stderr
  assert r.stderr.startswith(f"usage: python -m alexnet_jax.{command} "), r.stderr
  # At least one complete example command, and no traceback.
  examples = re.findall(rf"^  python -m alexnet_jax\.{command} --?\S+", r.stderr, re.M)
  examples += re.findall(rf"^  python -m alexnet_jax\.{command} \S+", r.stderr, re.M)
  assert examples, r.stderr
  assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_with_one_line_per_flag_help(command):
  r = _run(f"alexnet_jax.{command}", "--help")
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith(f"usage: python -m alexnet_jax.{command} ")
  assert "flags:" in r.stdout and "--helpfull" in r.stdout
  for line in r.stdout.split("\nflags:\n")[1].splitlines():
    # Runs of spaces inside a line: a help string's source indentation leaking through.
    assert not re.search(r"\S {3,}\S", line), line
  assert "class_names.txt" not in r.stdout
  # The description: the command's docstring, continuation backslashes kept.
  with open(os.path.join(REPO, "alexnet_jax", f"{command}.py")) as f:
    doc = ast.get_docstring(ast.parse(f.read()), clean=False).strip()
  assert doc in r.stdout


def _examples(text, command):
  """The first line of each example command in `text` (continuation lines follow a \\)."""
  lines = re.findall(rf"^  (python -m alexnet_jax\.{command} .*)$", text, re.M)
  return [line.removesuffix("\\").rstrip() for line in lines]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prints_each_example_once(command):
  """--help: the usage's synopsis, then the docstring, which holds the usage's examples: each
  example once (the bare command's usage shows them without the docstring)."""
  bare = _run(f"alexnet_jax.{command}")
  usage_examples = _examples(bare.stderr, command)
  assert usage_examples, bare.stderr
  r = _run(f"alexnet_jax.{command}", "--help")
  assert r.returncode == 0, r.stderr
  shown = _examples(r.stdout, command)
  for example in usage_examples:
    assert shown.count(example) == 1, (example, r.stdout)
  assert len(shown) == len(set(shown)), r.stdout
  # A bare command: one hint to --help.
  assert bare.stderr.count("--help") == 1 and bare.stderr.endswith("\n--help lists every flag.\n")


def test_helpfull_lists_the_libraries_flags():
  r = _run("alexnet_jax.main", "--helpfull")
  assert r.returncode == 0
  assert "--coordinator_address" in r.stdout and "--workdir" in r.stdout


def test_a_misspelt_config_key_is_one_clean_sentence(tmp_path):
  r = _run(
      "alexnet_jax.main",
      "--config=configs/demo.py",
      f"--workdir={tmp_path}",
      "--config.optimizer.learning_rat=0.1",
  )
  assert r.returncode == 2
  first = r.stderr.splitlines()[0]
  assert first.startswith("FATAL: unknown config key in an override:"), r.stderr
  assert '"learning_rate" instead of "learning_rat"?' in first and "?." not in first
  assert "Traceback" not in r.stderr
  assert not os.listdir(tmp_path)  # nothing written


def test_a_config_argument_the_file_refuses_is_one_line_without_traceback(tmp_path):
  """configs/demo.py:RECIPE with a recipe it does not have: get_config's own error, one line
  (ml_collections prints the loader's whole traceback)."""
  r = _run("alexnet_jax.main", "--config=configs/demo.py:adam", f"--workdir={tmp_path}")
  assert r.returncode == 2
  with open(os.path.join(REPO, "configs", "demo.py")) as f:
    line = next(i for i, text in enumerate(f, 1) if "raise ValueError" in text)
  assert r.stderr.splitlines()[0] == (
      "FATAL: flag --config=configs/demo.py:adam: the config file failed to load: ValueError: "
      f"configs/demo.py:adam: the recipes are '' (the default) and 'sgd' (configs/demo.py, line {line})"
  ), r.stderr
  assert "Traceback" not in r.stderr and not os.listdir(tmp_path)


def test_sweep_help_says_what_it_does_once_and_names_the_default_mode():
  r = forkserver.run(
      [sys.executable, "launch/sweep.py", "--help"], cwd=REPO, capture_output=True, text=True
  )
  assert r.returncode == 0
  assert r.stdout.count("Expand a grid of absl config overrides") == 1
  mode_help = r.stdout[r.stdout.index("--mode {") : r.stdout.index("--python")]
  assert "print the commands (default)" in " ".join(mode_help.split())


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, says",
    [
        (
            "folder:/no/such/dir",
            "dataset folder '/no/such/dir' (from \"folder:/no/such/dir\") does",
        ),
        (
            REPO,
            "is a directory, not a TFDS dataset: a folder of images (one subfolder per class) ",
        ),
    ],
)
def test_a_dataset_mistake_is_one_fatal_line(tmp_path, name, says):
  r = _run(
      "alexnet_jax.main",
      "--config=demo",
      f"--workdir={tmp_path / 'w'}",
      f"--config.dataset.name={name}",
      "--config.mesh.data=4",  # 100 images per eval batch: 4 of the 8 devices' rows
      "--config.mesh.tower=2",
  )
  assert r.returncode == 1
  assert "Traceback" not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("FATAL: ")
  assert says in r.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_batch_the_mesh_cannot_split_is_one_fatal_line(tmp_path):
  r = _run("alexnet_jax.main", "--config=demo", f"--workdir={tmp_path / 'w'}")  # 8 devices
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines()[-1] == (
      "FATAL: config.eval_batch_size=100 is not divisible by the mesh's data axis (size 8, 8 "
      "device(s)); pick a multiple of 8, or set --config.mesh.data."
  )


def test_a_mesh_the_devices_cannot_form_is_one_fatal_line(tmp_path):
  r = _run("alexnet_jax.main", "--config=demo", f"--workdir={tmp_path}", "--config.mesh.data=3")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("FATAL: mesh data=3 x tower=1 does not match the 8 device(s) found")


@pytest.mark.parametrize("command", ["main", "prepare", "convert"])
def test_a_fifo_as_the_config_file_is_one_line_never_opened(tmp_path, command):
  """A FIFO would block the config loader forever: refused by stat, status 2."""
  fifo = tmp_path / "config.py"
  os.mkfifo(fifo)
  r = _run(f"alexnet_jax.{command}", f"--config={fifo}", f"--workdir={tmp_path / 'w'}", timeout=60)
  assert r.returncode == 2, r.stderr[-2000:]
  first = r.stderr.splitlines()[0]
  assert first == f"FATAL: --config={fifo}: {fifo} is a FIFO (named pipe), not a config file"
  assert "Traceback" not in r.stderr
