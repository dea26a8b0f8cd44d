r"""A folder of real photos to train on without a download: one class per photograph that
ships with scikit-learn and scikit-image, each class random square crops of its photo (train/
and val/ subfolders, 160x160 JPEGs, seeded). scikit-image is not in requirements.txt: it comes
with requirements-dev.txt, or alone with `pip install -e ".[photos]"` (the same pin).

  pip install scikit-image==0.26.0
  python -m benchmarks.photo_classes /tmp/photo_classes
  python -m alexnet_jax.main --config=configs/keras_bn.py:demo --workdir=runs/keras_bn_demo \
      --config.dataset.name=folder:/tmp/photo_classes

A toy task (which photo a crop comes from), for checking that a network and its recipe learn.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image


def photos() -> dict[str, np.ndarray]:
  """{class name: RGB uint8 photo}: 8 photographs that ship with the two libraries."""
  import skimage.data
  from sklearn.datasets import load_sample_images

  china, flower = load_sample_images().images
  return {
      "astronaut": skimage.data.astronaut(),
      "cat": skimage.data.chelsea(),
      "coffee": skimage.data.coffee(),
      "rocket": skimage.data.rocket(),
      "china": china,
      "flower": flower,
      "motorcycle": skimage.data.stereo_motorcycle()[0],
      "hubble": skimage.data.hubble_deep_field(),
  }


def write(root: str, train: int = 48, val: int = 12, size: int = 160, seed: int = 0) -> int:
  """Writes root/{train,val}/<class>/<i>.jpg: crops of 30-70% of each photo's shorter side at
  random places, resized to size x size. Returns the number of images written."""
  rng = np.random.default_rng(seed)
  n = 0
  for name, img in photos().items():
    h, w = img.shape[:2]
    for split, count in (("train", train), ("val", val)):
      d = os.path.join(root, split, name)
      os.makedirs(d, exist_ok=True)
      for i in range(count):
        s = int(min(h, w) * rng.uniform(0.3, 0.7))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = Image.fromarray(img[y : y + s, x : x + s]).resize((size, size), Image.BILINEAR)
        crop.save(os.path.join(d, f"{i}.jpg"), quality=90)
        n += 1
  return n


SKIMAGE = "scikit-image==0.26.0"  # pyproject.toml's photos extra and requirements-dev.txt


def main(argv) -> None:
  if len(argv) != 2:
    sys.exit(f"usage: python -m benchmarks.photo_classes DIR\n\n{__doc__}")
  try:
    import skimage.data  # noqa: F401
  except ImportError:
    sys.exit(
        f"FATAL: the photos come from scikit-image, which is not installed: pip install "
        f'{SKIMAGE} (or pip install -e ".[photos]")'
    )
  print(f"{argv[1]}: {write(argv[1])} images")


if __name__ == "__main__":
  main(sys.argv)
