"""benchmarks/photo_classes.py: the folder of real photos the keras_bn demo trains on."""

import os
import sys
import tomllib

import numpy as np
from PIL import Image

from benchmarks import photo_classes
from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_each_class_is_crops_of_its_own_photo(tmp_path):
  """Counts, sizes and labels: every file is, within JPEG error, the crop of its own class's
  photograph that the documented rule draws (30-70% of the shorter side, seeded), and far
  from the other classes' crops; the same seed writes the same bytes."""
  assert photo_classes.write(str(tmp_path / "a"), train=2, val=1) == 8 * 3
  photo_classes.write(str(tmp_path / "b"), train=2, val=1)
  rng, want = np.random.default_rng(0), {}
  for name, img in photo_classes.photos().items():
    h, w = img.shape[:2]
    for split, count in (("train", 2), ("val", 1)):
      for i in range(count):
        s = int(min(h, w) * rng.uniform(0.3, 0.7))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = Image.fromarray(img[y : y + s, x : x + s]).resize((160, 160), Image.BILINEAR)
        want[name, split, i] = np.asarray(crop, float)
  for (name, split, i), crop in want.items():
    path = os.path.join(tmp_path, "a", split, name, f"{i}.jpg")
    got = np.asarray(Image.open(path), float)
    assert got.shape == (160, 160, 3)
    err = {k[0]: np.abs(got - v).mean() for k, v in want.items() if k[1:] == (split, i)}
    others = min(e for n, e in err.items() if n != name)
    assert err[name] < 8 and err[name] < others / 3, (name, split, i, err)
    assert open(path, "rb").read() == open(path.replace("/a/", "/b/"), "rb").read()


def test_without_scikit_image_one_line_names_the_install(tmp_path):
  """requirements.txt alone (no scikit-image): one line with the pip command, nothing written."""
  code = (
      "import sys; sys.modules['skimage'] = None; from benchmarks import photo_classes; "
      "photo_classes.main(sys.argv)"
  )
  # In a forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py).
  r = forkserver.run(
      [sys.executable, "-c", code, str(tmp_path / "photos")],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert r.returncode == 1 and r.stdout == "", r.stderr
  assert r.stderr.splitlines() == [
      "FATAL: the photos come from scikit-image, which is not installed: pip install "
      'scikit-image==0.26.0 (or pip install -e ".[photos]")'
  ]
  assert not (tmp_path / "photos").exists()
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  with open(os.path.join(REPO, "requirements-dev.txt")) as f:
    dev = f.read().split()
  assert extras["photos"] == [photo_classes.SKIMAGE] and photo_classes.SKIMAGE in dev
