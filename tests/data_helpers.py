"""Shared by the data tests: complete dataset configs, real photos, the PIL reference of the
paper's 256x256 image, and small datasets built from them (folder: and TFDS imagenet2012)."""

import hashlib
import io
import os
import tarfile

import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

from alexnet_jax import data as data_lib
from configs import default


def dataset_config(**overrides):
  """configs/default.py's config.dataset, with overrides."""
  config = default.get_config().dataset
  config.update(overrides)
  return config


def fresh_user_cache(monkeypatch, tmp_path):
  """This test's own user cache (tmp_path/user_cache): no statistics from another test."""
  monkeypatch.setenv("ALEXNET_JAX_CACHE", str(tmp_path / "user_cache"))


def real_photos():
  """Real photos that ship with scikit-learn and scikit-image."""
  china, flower = load_sample_images().images
  return [
      china,
      flower,
      skimage.data.astronaut(),
      skimage.data.chelsea(),
      skimage.data.coffee(),
      skimage.data.camera(),
      skimage.data.rocket(),
  ]


def encode(array_or_image, fmt="JPEG", mode=None, **kw):
  im = (
      array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
  )
  if mode:
    im = im.convert(mode)
  b = io.BytesIO()
  im.save(b, fmt, **kw)
  return b.getvalue()


def pil_reference(im: Image.Image) -> np.ndarray:
  """PIL: to RGB, shorter side to 256 (BILINEAR, antialiased), central 256x256."""
  im = im.convert("RGB")
  w, h = im.size
  s = min(w, h)
  nw, nh = (w * 256 + s // 2) // s, (h * 256 + s // 2) // s
  r = np.asarray(im.resize((nw, nh), Image.BILINEAR))
  t, l = (nh - 256) // 2, (nw - 256) // 2
  return r[t : t + 256, l : l + 256]


def digest(image) -> str:
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def write_photo(path, array, fmt="JPEG", **kw):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, fmt, quality=95, **kw)


def small_folder(root, classes="abc", per_class=2, val=1):
  """A folder: dataset with train/ and val/: `per_class` photo crops per class, `val` each."""
  images = real_photos()
  for c, cls in enumerate(classes):
    for i in range(per_class):
      write_photo(
          root / "train" / cls / f"{i}.jpg", images[(c + i) % 5][40 * i : 40 * i + 90, 10:130]
      )
    for i in range(val):
      write_photo(root / "val" / cls / f"v{i}.jpg", images[(c + 2) % 5][100:180, 60:160])
  return root


# ---------------------------------------------------------------------------------------------
# folder: of mixed formats and a corrupt file.

MIXED = {  # relative path -> (photo index, format, mode)
    "a/gray.png": (0, "PNG", "L"),
    "a/palette.png": (1, "PNG", "P"),
    "a/rgb.jpg": (2, "JPEG", "RGB"),
    "b/cmyk.jpg": (3, "JPEG", "CMYK"),
    "b/pic.bmp": (4, "BMP", "RGB"),
    "b/rgba.png": (5, "PNG", "RGBA"),
    "c/anim.gif": (6, "GIF", "P"),
    "c/photo.webp": (0, "WEBP", "RGB"),
    "c/scan.tiff": (1, "TIFF", "RGB"),
}
BROKEN = "train/c/zz_broken.jpg"  # last in canonical order: a scan of the first 9 misses it


def mixed_folder(root):
  """The MIXED images under root/train, the BROKEN one, and one PNG per class under root/val.
  Returns (root, {relative path: (PIL reference, label)})."""
  images = real_photos()
  refs = {}
  for k, (rel, (i, fmt, mode)) in enumerate(sorted(MIXED.items())):
    crop = images[i][20 * k : 20 * k + 72, 30:140]  # small, distinct real-photo patches
    path = root / "train" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(crop, fmt, mode=mode))
    refs[rel] = (pil_reference(Image.open(path)), "abc".index(rel[0]))
  good = encode(images[2][:50, :50], "JPEG")
  (root / BROKEN).write_bytes(good[:200] + b"\x00garbage" * 40)  # valid header, broken body
  for c in "abc":
    (root / "val" / c).mkdir(parents=True)
    (root / "val" / c / "v.png").write_bytes(
        encode(images[3][:40, : 40 + 10 * "abc".index(c)], "PNG")
    )
  return str(root), refs


def match(images, labels, refs, tol):
  """Each pipeline image to the one reference it equals within tol; returns matched names."""
  names = []
  for image, label in zip(images, labels):
    hits = [
        n
        for n, (r, l) in refs.items()
        if np.abs(r.astype(int) - image.astype(int)).max() <= tol and l == label
    ]
    assert len(hits) == 1, hits
    names.append(hits[0])
  return names


# ---------------------------------------------------------------------------------------------
# The real TFDS imagenet2012 builder on a tiny ILSVRC-format pair of tars.

SYNSETS = ["n01751748", "n09193705", "n02105855"]  # official labels of val images 1, 2, 3


def _tar_add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def tiny_imagenet(root):
  """6 training and 3 validation JPEGs as ILSVRC2012 tars, built by the real TFDS builder.
  Returns (config.dataset, DatasetInfo, {digest of the 256x256 image: (split, label)})."""
  manual = root / "manual"
  manual.mkdir()
  images = real_photos()
  expected = {}
  import tensorflow_datasets as tfds

  names = tfds.features.ClassLabel(
      names_file=os.path.join(os.path.dirname(tfds.__file__), "datasets/imagenet2012/labels.txt")
  )

  def jpeg(k):
    photo = images[k % len(images)]
    data = encode(photo[10 * k : 10 * k + 300, 15 * k : 15 * k + 400], "JPEG", mode="RGB")
    return data, data_lib.preprocess_encoded(data).numpy()

  with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
    k = 0
    for synset in SYNSETS:
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for j in range(2):
          data, image = jpeg(k)
          _tar_add(inner, f"{synset}_{100 + j}.JPEG", data)
          expected[digest(image)] = ("train", names.str2int(synset))
          k += 1
      _tar_add(outer, f"{synset}.tar", buf.getvalue())
  with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
    for v, synset in enumerate(SYNSETS):
      data, image = jpeg(10 + v)
      _tar_add(tar, f"ILSVRC2012_val_{v + 1:08d}.JPEG", data)
      expected[digest(image)] = ("validation", names.str2int(synset))
  cfg = dataset_config(
      name="imagenet2012", data_dir=str(root / "data"), manual_dir=str(manual), shuffle_buffer=4
  )
  info = data_lib.dataset_info(cfg)  # runs the real builder's download_and_prepare on the tars
  return cfg, info, expected


# ---------------------------------------------------------------------------------------------
# Oxford-17 as its authors publish it: 17flowers.tgz and datasplits.mat.

OXFORD17_SIZE = 40  # pixels of each image's square crop


def oxford17(root):
  """The published layout, written here: root/archive/17flowers.tgz (jpg/image_0001.jpg ...
  jpg/image_1360.jpg and jpg/files.txt) with a datasplits.mat beside it, the same archive
  alone in root/nomat, and its extraction in root/extracted (with the .mat). Image i of class
  c = (i - 1) // 80 is a 40x40 crop of a real photo at an offset of its own (classes: other
  photos or other regions). Returns {'root', 'tgz', 'extracted', 'nomat', 'mat', 'splits':
  {'trn1': 1-based indices, ..., 'tst3'}, 'jpegs': {i: the JPEG's bytes}}."""
  from scipy import io as scipy_io

  photos = real_photos()
  jpegs = {}
  for i in range(1, 1361):
    c, j = (i - 1) // 80, (i - 1) % 80
    photo = photos[c % len(photos)]
    y, x = (c // len(photos)) * 60 + (j // 10) * 16, (c // len(photos)) * 90 + (j % 10) * 16
    jpegs[i] = encode(photo[y : y + OXFORD17_SIZE, x : x + OXFORD17_SIZE], "JPEG", quality=90)
  archive_dir = root / "archive"
  archive_dir.mkdir(parents=True)
  tgz = archive_dir / "17flowers.tgz"
  with tarfile.open(tgz, "w:gz", compresslevel=1) as tar:
    info = tarfile.TarInfo("jpg")
    info.type = tarfile.DIRTYPE
    tar.addfile(info)
    for i, data in jpegs.items():
      _tar_add(tar, f"jpg/image_{i:04d}.jpg", data)
    listing = "".join(f"image_{i:04d}.jpg\n" for i in jpegs).encode()
    _tar_add(tar, "jpg/files.txt", listing)
  # The authors' three splits: per class 40 train, 20 validation, 20 test, in a shuffled
  # order, as MATLAB 1xN double row vectors.
  rng = np.random.RandomState(2024)
  splits = {}
  for s in (1, 2, 3):
    parts = {"trn": [], "val": [], "tst": []}
    for c in range(17):
      perm = rng.permutation(80) + 80 * c + 1
      parts["trn"].append(perm[:40])
      parts["val"].append(perm[40:60])
      parts["tst"].append(perm[60:])
    for k, v in parts.items():
      splits[f"{k}{s}"] = rng.permutation(np.concatenate(v)).astype(np.float64)[None, :]
  mat = archive_dir / "datasplits.mat"
  scipy_io.savemat(mat, splits)
  extracted = root / "extracted"
  with tarfile.open(tgz) as tar:
    tar.extractall(extracted, filter="data")
  (extracted / "datasplits.mat").write_bytes(mat.read_bytes())
  (root / "nomat").mkdir()
  (root / "nomat" / "17flowers.tgz").write_bytes(tgz.read_bytes())
  return {
      "root": root,
      "tgz": tgz,
      "extracted": extracted,
      "nomat": root / "nomat",
      "mat": mat,
      "splits": {k: v[0].astype(np.int64) for k, v in splits.items()},
      "jpegs": jpegs,
  }


def oxford17_references(jpegs: dict) -> dict:
  """{digest of the paper's 256x256 image: 1-based index} of each JPEG, decoded from its
  bytes (not from the source's files)."""
  import tensorflow as tf

  ids = sorted(jpegs)
  ds = tf.data.Dataset.from_tensor_slices([jpegs[i] for i in ids])
  ds = ds.map(data_lib.preprocess_encoded, tf.data.AUTOTUNE).batch(128)
  images = np.concatenate(list(ds.as_numpy_iterator()))
  refs = {digest(im): i for im, i in zip(images, ids)}
  assert len(refs) == len(ids), "the crops must all differ"
  return refs


def png_bomb(side: int = 16000) -> bytes:
  """A valid PNG of side x side black RGB pixels, compressed to well under a megabyte (the
  rows are compressed as they are made: 768 MB of pixels never exist here)."""
  import struct
  import zlib

  def chunk(kind, payload):
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )

  z = zlib.compressobj(9)
  row = b"\0" * (3 * side + 1)  # filter byte 0, then the pixels
  idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
  ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
