"""alexnet_jax.data.preprocess against PIL: decoding, the 256x256 resize and centre crop
(eagerly and inside tf.data), EXIF orientation, PIL's restricted formats, ImageNet's PCA."""

import io
import os

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image, ImageOps

from alexnet_jax import data as data_lib
from alexnet_jax import facts
from tests import data_helpers
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
  np.testing.assert_allclose(facts.IMAGENET_EIGVEC[:, 0], [-0.5675, -0.5808, -0.5836])
  np.testing.assert_allclose(facts.IMAGENET_EIGVEC[:, 1], [0.7192, -0.0045, -0.6948])
  np.testing.assert_allclose(facts.IMAGENET_EIGVEC[:, 2], [0.4009, -0.8140, 0.4203])
  np.testing.assert_allclose(facts.IMAGENET_EIGVAL, [0.2175, 0.0188, 0.0045])


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


# ---- hostile input: the pixel limit, read from the header before decoding ---------------------
def test_the_pixel_limit_is_pils_bomb_limit_everywhere_it_is_declared():
  from alexnet_jax import config_schema
  from alexnet_jax.data import settings

  assert data_lib.MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
  assert config_schema.BY_NAME["dataset.max_image_pixels"].default == Image.MAX_IMAGE_PIXELS
  assert (
      settings.Settings.__dataclass_fields__["max_image_pixels"].default == Image.MAX_IMAGE_PIXELS
  )


def _gif(frames, size=(30, 20)):
  images = [Image.new("RGB", size, (40 * i % 256, 7 * i % 256, 90)) for i in range(frames)]
  b = io.BytesIO()
  images[0].save(b, "GIF", save_all=True, append_images=images[1:])
  return b.getvalue()


@pytest.mark.parametrize(
    "fmt, kw, mode",
    [
        ("JPEG", {}, None),
        ("JPEG", {"progressive": True}, None),
        ("JPEG", {}, "CMYK"),
        ("PNG", {}, None),
        ("PNG", {}, "P"),
        ("GIF", {}, None),
        ("BMP", {}, None),
        ("WEBP", {}, None),
        ("WEBP", {"lossless": True}, None),
    ],
)
def test_image_pixels_reads_the_size_from_the_header_as_pil_does(fmt, kw, mode):
  photo = real_photos()[2][:123, :77]
  data = encode(photo, fmt, mode, **kw)
  with Image.open(io.BytesIO(data)) as im:
    assert data_lib.image_pixels(data) == im.size[0] * im.size[1] == 123 * 77
  assert data_lib.image_pixels(data[:5]) == 0  # too short to say: the decoder decides


def test_a_gif_counts_every_frame_tf_decodes_and_other_headers_are_left_to_their_decoder():
  data = _gif(5)
  with Image.open(io.BytesIO(data)) as im:
    assert im.n_frames == 5
  assert data_lib.image_pixels(data) == 5 * 30 * 20
  assert data_lib.image_pixels(encode(real_photos()[0][:20, :20], "TIFF")) == 0
  assert data_lib.image_pixels(b"not an image at all") == 0


def test_an_image_above_the_limit_is_refused_before_decoding_eagerly_and_in_tf_data():
  bomb = data_helpers.png_bomb(16000)  # 256 million pixels
  assert len(bomb) < 1_000_000 and data_lib.image_pixels(bomb) == 16000 * 16000
  with pytest.raises(tf.errors.InvalidArgumentError, match="more than 89478485 pixels"):
    data_lib.decode_image(bomb)
  small = encode(real_photos()[0][:100, :100], "PNG")
  ds = tf.data.Dataset.from_tensor_slices([small, bomb, small]).map(data_lib.preprocess_encoded)
  assert len(list(ds.ignore_errors())) == 2  # the bomb fails like an undecodable file
  # The limit is the caller's: lowered below the small image, raised for the bomb's header.
  with pytest.raises(tf.errors.InvalidArgumentError):
    data_lib.decode_image(small, max_pixels=9_999)
  assert data_lib.decode_image(small, max_pixels=10_000).shape == (100, 100, 3)
  gif = _gif(4, (100, 100))  # 40,000 pixels in four frames: TF would decode all of them
  with pytest.raises(tf.errors.InvalidArgumentError):
    data_lib.decode_image(gif, max_pixels=30_000)
  assert data_lib.decode_image(gif, max_pixels=40_000).shape == (100, 100, 3)


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_decoding_a_bomb_costs_no_memory_in_a_fresh_process(tmp_path):
  """The 16000 x 16000 PNG would take 768 MB as pixels (3 GB as floats): refused from its
  header, the process's peak memory moves by far less than that."""
  import subprocess
  import sys

  path = tmp_path / "bomb.png"
  path.write_bytes(data_helpers.png_bomb(16000))
  code = (
      "import resource, sys\n"
      "import tensorflow as tf\n"
      "from alexnet_jax import data\n"
      "good = tf.io.read_file(sys.argv[2])\n"
      "data.decode_image(good).numpy()\n"
      "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
      "try:\n"
      "  data.decode_image(tf.io.read_file(sys.argv[1])).numpy()\n"
      "except tf.errors.InvalidArgumentError:\n"
      "  print('refused', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
  )
  good = tmp_path / "good.png"
  good.write_bytes(encode(real_photos()[0][:50, :50], "PNG"))
  # A real process: a forked child would inherit the zygote's peak memory (ru_maxrss).
  r = subprocess.run(
      [sys.executable, "-c", code, str(path), str(good)],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  word, grew_kb = r.stdout.split()
  assert word == "refused" and int(grew_kb) < 64 * 1024, r.stdout + r.stderr[-2000:]


def test_pil_load_checks_the_limit_before_decoding(tmp_path):
  path = tmp_path / "big.tif"
  Image.new("RGB", (200, 100)).save(path)
  assert data_lib.pil_load(str(path), max_pixels=20_000).shape == (100, 200, 3)
  with pytest.raises(
      data_lib.ImageTooLargeError, match=r"declares 20,000 pixels, more than the 19,999"
  ):
    data_lib.pil_load(str(path), max_pixels=19_999)
