"""benchmarks/photo_classes.py: the folder of real photos the keras_bn demo trains on."""

import os

import numpy as np
from PIL import Image

from benchmarks import photo_classes


def test_each_class_is_crops_of_its_own_photo(tmp_path):
  """Counts, sizes and labels: each class's crops are nearer in mean colour to their own
  photograph than to any other; the same seed writes the same bytes."""
  assert photo_classes.write(str(tmp_path / "a"), train=3, val=1) == 8 * 4
  photo_classes.write(str(tmp_path / "b"), train=3, val=1)
  photos = photo_classes.photos()
  means = {k: v.reshape(-1, 3).mean(0) for k, v in photos.items()}
  for name in photos:
    files = [
        os.path.join(tmp_path, "a", s, name, f"{i}.jpg")
        for s, n in (("train", 3), ("val", 1))
        for i in range(n)
    ]
    crops = [np.asarray(Image.open(f)) for f in files]
    assert all(c.shape == (160, 160, 3) for c in crops)
    m = np.mean([c.reshape(-1, 3).mean(0) for c in crops], 0)
    assert min(means, key=lambda k: np.linalg.norm(means[k] - m)) == name
    assert all(open(f, "rb").read() == open(f.replace("/a/", "/b/"), "rb").read() for f in files)
