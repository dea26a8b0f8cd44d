"""The formats tried offline (README "Pretrained weights"): a run of each format's preset network
with its initial weights (convert --from=init) exports (--to) and imports (--from) back to the
same parameters and the same probabilities; a run that does not fit a layout is refused in
one line naming the first array that differs and the config that fits."""

import os
import sys

import jax
import numpy as np
import pytest
from sklearn.datasets import load_sample_images

from alexnet_jax import analysis, pretrained
from configs import demo
from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = {"torchvision": "pth", "pytorch_grouped": "pth", "keras": "weights.h5"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(EXPORT))
def test_initial_weights_round_trip_to_the_same_probabilities(fmt, tmp_path):
  preset = pretrained.preset_config(fmt)
  run, back, dst = tmp_path / "run", tmp_path / "back", tmp_path / f"{fmt}.{EXPORT[fmt]}"
  made = pretrained.init_run(str(run), preset, num_classes=1000)
  full = {"torchvision": 61_100_840, "pytorch_grouped": 60_965_224}
  if fmt in full:  # the paper-width networks, as the README's table counts them
    assert made["num_params"] == full[fmt]
  out = pretrained.export_run(fmt, str(run), str(dst), preset)
  assert out["step"] == 0 and out["differences"] == []
  pretrained.import_run(fmt, str(dst), str(back), preset)
  # As predict loads them (from_dataset: a run lacking its files would need the dataset).
  a = analysis.load_run(str(run), from_dataset=True)
  b = analysis.load_run(str(back), from_dataset=True)
  assert a.class_names == b.class_names and len(a.class_names) == 1000 and not b.missing
  for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  photos = list(load_sample_images().images)
  probs = a.predict(photos)
  assert probs.shape == (2, 1000) and np.abs(probs.sum(1) - 1).max() < 1e-5
  np.testing.assert_array_equal(b.predict(photos), probs)


def _narrow(config, tmp_path, name):
  """A run of `config` at a quarter of the paper's width, 10 classes, initial weights."""
  config = config.copy_and_resolve_references()
  config.model.width = 0.25
  workdir = str(tmp_path / name)
  pretrained.init_run(workdir, config, num_classes=10)
  return workdir


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_a_run_of_another_width_is_refused_in_one_line(tmp_path):
  w = _narrow(demo.get_config(), tmp_path, "demo")
  dst = tmp_path / "x.pth"
  with pytest.raises(pretrained.ConversionError) as e:
    pretrained.export_run(
        "pytorch_grouped", w, str(dst), pretrained.preset_config("pytorch_grouped")
    )
  assert str(e.value) == (
      f"{w} does not fit the pytorch_grouped layout: its features.0.weight is (24, 3, 11, 11), "
      "the layout needs (96, 3, 11, 11) (14 more arrays differ). A run of "
      "configs/pytorch_grouped.py fits it; this run differs in model.width: 0.25 -> 1.0 "
      "(run -> preset)."
  )
  assert not dst.exists()
  k = _narrow(pretrained.preset_config("keras"), tmp_path, "keras_bn")
  with pytest.raises(pretrained.ConversionError) as e:
    pretrained.export_run(
        "keras", k, str(tmp_path / "x.weights.h5"), pretrained.preset_config("keras")
    )
  msg = str(e.value)
  assert "\n" not in msg and len(msg) - len(k) < 250, msg
  assert msg.startswith(
      f"{k} does not fit the keras layout: its conv1 kernel is (11, 11, 3, 24), the layout "
      "needs (11, 11, 3, 96) ("
  ), msg
  assert msg.endswith(
      "A run of configs/keras_bn.py fits it; this run differs in model.width: 0.25 -> 1.0 "
      "(run -> preset)."
  ), msg


def test_init_needs_a_config(tmp_path):
  # In a forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py).
  r = forkserver.run(
      [sys.executable, "-m", "alexnet_jax.convert", "--from=init", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.splitlines() == [
      "FATAL: --from=init needs --config=FILE, the network to write (e.g. --config=demo)"
  ]
  assert not (tmp_path / "w").exists()
