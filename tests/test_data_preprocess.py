"""alexnet_jax.data.preprocess against PIL: decoding, the 256x256 resize and centre crop
(eagerly and inside tf.data), EXIF orientation, PIL's restricted formats, ImageNet's PCA."""

import io

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image, ImageOps

from alexnet_jax import data as data_lib
from tests.data_helpers import (
    dataset_config,
    encode,
    fresh_user_cache,
    pil_reference,
    real_photos,
    small_folder,
    write_photo,
)


def _in_tf_data(fn, x):
  return next(iter(tf.data.Dataset.from_tensors(x).map(fn)))


def test_resize_center_crop_matches_pil_on_real_photos():
  photos = real_photos() + [skimage.data.astronaut()[100:220, 50:400]]  # also an upscale (120 px)
  for photo in photos:
    ref = pil_reference(Image.fromarray(photo)).astype(int)
    eager = data_lib.resize_and_center_crop(photo).numpy()
    graph = _in_tf_data(data_lib.resize_and_center_crop, photo).numpy()
    assert eager.shape == (256, 256, 3) and eager.dtype == np.uint8
    np.testing.assert_array_equal(eager, graph)
    assert np.abs(eager.astype(int) - ref).max() <= 1, photo.shape
    # Same through JPEG bytes: decode equals PIL's decoder exactly, the whole op within 1.
    data = encode(photo, quality=90)
    decoded = Image.open(io.BytesIO(data))
    np.testing.assert_array_equal(
        data_lib.decode_image(data).numpy(), np.asarray(decoded.convert("RGB"))
    )
    np.testing.assert_array_equal(
        _in_tf_data(data_lib.decode_image, data).numpy(), np.asarray(decoded.convert("RGB"))
    )
    full = data_lib.preprocess_encoded(data).numpy()
    np.testing.assert_array_equal(full, _in_tf_data(data_lib.preprocess_encoded, data).numpy())
    assert np.abs(full.astype(int) - pil_reference(decoded).astype(int)).max() <= 1


@pytest.mark.parametrize("rule", ["round", "torchvision", "warp"])
def test_grayscale_is_resized_as_its_rgb_copy(rule):
  """A one-channel image (the digits) gives the bytes of its three-channel copy, eagerly and
  inside tf.data, up- and downscaled."""
  rng = np.random.default_rng(0)
  for shape in [(8, 8), (13, 7), (300, 200)]:
    gray = rng.integers(0, 256, (*shape, 1), np.uint8)
    rgb = data_lib.resize_and_center_crop(np.repeat(gray, 3, axis=-1), rule=rule).numpy()
    for image in (gray, gray[..., 0]):
      np.testing.assert_array_equal(data_lib.resize_and_center_crop(image, rule=rule).numpy(), rgb)
    graph = _in_tf_data(lambda x: data_lib.resize_and_center_crop(x, rule=rule), gray)
    np.testing.assert_array_equal(graph.numpy(), rgb)


def test_decode_modes_become_rgb():
  photo = skimage.data.coffee()[:60, :90]
  for mode, fmt in [
      ("L", "PNG"),
      ("P", "PNG"),
      ("RGBA", "PNG"),
      ("CMYK", "JPEG"),
      ("RGB", "BMP"),
      ("P", "GIF"),
      ("RGB", "WEBP"),
  ]:
    data = encode(photo, fmt, mode=mode)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    for got in (data_lib.decode_image(data), _in_tf_data(data_lib.decode_image, data)):
      assert got.shape == (60, 90, 3), (mode, fmt)
      assert np.abs(got.numpy().astype(int) - ref).max() <= 1, (mode, fmt)


def test_imagenet_constants():
  np.testing.assert_allclose(data_lib.IMAGENET_EIGVEC[:, 0], [-0.5675, -0.5808, -0.5836])
  np.testing.assert_allclose(data_lib.IMAGENET_EIGVEC[:, 1], [0.7192, -0.0045, -0.6948])
  np.testing.assert_allclose(data_lib.IMAGENET_EIGVEC[:, 2], [0.4009, -0.8140, 0.4203])
  np.testing.assert_allclose(data_lib.IMAGENET_EIGVAL, [0.2175, 0.0188, 0.0045])


def test_pil_fallback_never_opens_eps(tmp_path, monkeypatch):
  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "data", classes="ab")
  trap = root / "train" / "a" / "trap.tif"  # an EPS behind an image extension
  trap.write_bytes(
      b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
      b"0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
  )
  assert Image.open(trap).format == "EPS"  # unrestricted, PIL would take it (to Ghostscript)
  stats = data_lib.dataset_stats(dataset_config(name=f"folder:{root}"))
  assert stats.bad_files == ("train/a/trap.tif",)
  with pytest.raises(Exception, match="cannot identify"):
    data_lib.pil_load(str(trap))


ORIENTATIONS = range(1, 9)


@pytest.mark.parametrize("exif_transpose", [False, True])
def test_exif_orientation_switch(tmp_path, exif_transpose, monkeypatch):
  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "data", classes="ab", val=0)
  photo = real_photos()[2][:150, 40:260]  # 150 x 220, not symmetric
  for o in ORIENTATIONS:
    exif = Image.Exif()
    exif[0x0112] = o
    write_photo(root / "val" / "a" / f"o{o}.jpg", photo, exif=exif.tobytes())
  write_photo(root / "val" / "b" / "plain.jpg", photo)
  cfg = dataset_config(name=f"folder:{root}", exif_transpose=exif_transpose)
  batches = list(data_lib.eval_iterator(cfg, global_batch_size=9, shard_index=0, num_shards=1))
  images = batches[0]["image"]
  for o, image in zip(ORIENTATIONS, images):
    im = Image.open(root / "val" / "a" / f"o{o}.jpg")
    assert im.getexif()[0x0112] == o
    want = pil_reference(ImageOps.exif_transpose(im) if exif_transpose else im)
    assert np.abs(image.astype(int) - want.astype(int)).max() <= 2, o
  if exif_transpose:  # the views really differ (the test can tell the switch)
    assert np.abs(images[5].astype(int) - images[0].astype(int)).max() > 50
