"""ImageNet-like JPEGs for the input-pipeline benchmark, made from photos that ship with
scikit-learn / scikit-image (no download)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def _sample_photos():
  """Real photographs that ship with scikit-learn / scikit-image (no download)."""
  photos = []
  try:
    from sklearn.datasets import load_sample_images

    photos += list(load_sample_images().images)
  except Exception:  # noqa: BLE001 - any missing optional data is fine
    pass
  try:
    from skimage import data as skdata

    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"):
      try:
        img = getattr(skdata, name)()
        if img.ndim == 3 and img.shape[-1] == 3:
          photos.append(img)
      except Exception:  # noqa: BLE001
        pass
  except ImportError:
    pass
  if not photos:
    raise RuntimeError("no sample photos found (scikit-learn or scikit-image needed)")
  return photos


def write_jpeg_folder(
    root: str,
    num_images: int,
    num_classes: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (500, 375),
    quality: tuple[int, int] = (85, 95),
) -> str:
  """num_images ImageNet-like JPEGs made from real photos by random crops, resizes and colour
  jitter, in root/<class>/; returns root. Each is `size` (width, height) landscape, or
  portrait for a quarter of them, each side jittered by up to 20 pixels, at a JPEG quality
  drawn from `quality` (both ends included)."""
  rng = np.random.default_rng(seed)
  photos = [Image.fromarray(np.asarray(p, np.uint8)) for p in _sample_photos()]
  for c in range(num_classes):
    os.makedirs(os.path.join(root, f"class_{c}"), exist_ok=True)
  for i in range(num_images):
    photo = photos[i % len(photos)]
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = size if rng.random() < 0.75 else size[::-1]
    out = (out[0] + int(rng.integers(-20, 21)), out[1] + int(rng.integers(-20, 21)))
    img = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize(out, Image.BILINEAR)
    arr = np.asarray(img, np.float32) * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 3, (1, 1, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    img.save(
        os.path.join(root, f"class_{i % num_classes}", f"img_{i:05d}.jpg"),
        quality=int(rng.integers(quality[0], quality[1] + 1)),
    )
  return root
