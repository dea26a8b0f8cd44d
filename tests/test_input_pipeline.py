"""Host pipeline against independent references: PIL, NumPy, the real TFDS imagenet2012 builder."""

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_images

from alexnet_jax import data as ip
from alexnet_jax.data import streams
from tests.data_config import dataset_config


def _photos():
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


def _encode(array_or_image, fmt="JPEG", mode=None, **kw):
  im = (
      array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
  )
  if mode:
    im = im.convert(mode)
  b = io.BytesIO()
  im.save(b, fmt, **kw)
  return b.getvalue()


def _pil_reference(im: Image.Image) -> np.ndarray:
  """PIL: to RGB, shorter side to 256 (BILINEAR, antialiased), central 256x256."""
  im = im.convert("RGB")
  w, h = im.size
  s = min(w, h)
  nw, nh = (w * 256 + s // 2) // s, (h * 256 + s // 2) // s
  r = np.asarray(im.resize((nw, nh), Image.BILINEAR))
  t, l = (nh - 256) // 2, (nw - 256) // 2
  return r[t : t + 256, l : l + 256]


def _digest(image) -> str:
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _in_tf_data(fn, x):
  return next(iter(tf.data.Dataset.from_tensors(x).map(fn)))


# ---------------------------------------------------------------------------------------------
# Preprocessing ops, eagerly and inside tf.data.


def test_resize_center_crop_matches_pil_on_real_photos():
  photos = _photos() + [skimage.data.astronaut()[100:220, 50:400]]  # also an upscale (120 px)
  for photo in photos:
    ref = _pil_reference(Image.fromarray(photo)).astype(int)
    eager = ip.resize_and_center_crop(photo).numpy()
    graph = _in_tf_data(ip.resize_and_center_crop, photo).numpy()
    assert eager.shape == (256, 256, 3) and eager.dtype == np.uint8
    np.testing.assert_array_equal(eager, graph)
    assert np.abs(eager.astype(int) - ref).max() <= 1, photo.shape
    # Same through JPEG bytes: decode equals PIL's decoder exactly, the whole op within 1.
    data = _encode(photo, quality=90)
    decoded = Image.open(io.BytesIO(data))
    np.testing.assert_array_equal(ip.decode_image(data).numpy(), np.asarray(decoded.convert("RGB")))
    np.testing.assert_array_equal(
        _in_tf_data(ip.decode_image, data).numpy(), np.asarray(decoded.convert("RGB"))
    )
    full = ip.preprocess_encoded(data).numpy()
    np.testing.assert_array_equal(full, _in_tf_data(ip.preprocess_encoded, data).numpy())
    assert np.abs(full.astype(int) - _pil_reference(decoded).astype(int)).max() <= 1


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
    data = _encode(photo, fmt, mode=mode)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    for got in (ip.decode_image(data), _in_tf_data(ip.decode_image, data)):
      assert got.shape == (60, 90, 3), (mode, fmt)
      assert np.abs(got.numpy().astype(int) - ref).max() <= 1, (mode, fmt)


# ---------------------------------------------------------------------------------------------
# folder: mixed formats, a corrupt file, the statistics.

_MIXED = {  # relative path -> (photo index, format, mode)
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
_BROKEN = "train/c/zz_broken.jpg"  # last in canonical order: a scan of the first 9 misses it


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("mixed")
  photos = _photos()
  refs = {}
  for k, (rel, (i, fmt, mode)) in enumerate(sorted(_MIXED.items())):
    crop = photos[i][20 * k : 20 * k + 72, 30:140]  # small, distinct real-photo patches
    path = root / "train" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode(crop, fmt, mode=mode))
    refs[rel] = (_pil_reference(Image.open(path)), "abc".index(rel[0]))
  good = _encode(photos[2][:50, :50], "JPEG")
  (root / _BROKEN).write_bytes(good[:200] + b"\x00garbage" * 40)  # valid header, broken body
  for c in "abc":
    (root / "val" / c).mkdir(parents=True)
    (root / "val" / c / "v.png").write_bytes(
        _encode(photos[3][:40, : 40 + 10 * "abc".index(c)], "PNG")
    )
  return str(root), refs


def _match(images, labels, refs, tol):
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


def test_folder_mixed_formats_skips_exactly_the_corrupt_file(mixed_folder):
  root, refs = mixed_folder
  cfg = dataset_config(name=f"folder:{root}")
  info = ip.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (3, 10, 3)
  assert info.class_names == ("a", "b", "c")
  stats = ip.dataset_stats(cfg)
  assert stats.bad_files == (_BROKEN,)
  assert stats.num_images == 9
  it = ip.train_iterator(cfg, global_batch_size=3, seed=0, shard_index=0, num_shards=1)
  batches = [next(it) for _ in range(3)]  # one epoch of the 9 good images
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert images.dtype == np.uint8 and images.shape == (9, 256, 256, 3) and labels.dtype == np.int32
  # CMYK and lossy formats may differ from PIL by one more level in decoding.
  assert sorted(_match(images, labels, refs, tol=2)) == sorted(refs)
  assert it.skipped == []  # known up front: excluded, never shifts the stream


def test_folder_runtime_decode_failure_is_counted_and_named(mixed_folder):
  root, refs = mixed_folder
  cfg = dataset_config(name=f"folder:{root}", stats_max_images=9)  # the scan misses the broken file
  assert ip.dataset_stats(cfg).bad_files == ()
  it = ip.train_iterator(cfg, global_batch_size=3, seed=1, shard_index=0, num_shards=1)
  batches = [next(it) for _ in range(4)]
  first9 = np.concatenate([b["image"] for b in batches])[:9]
  labels = np.concatenate([b["label"] for b in batches])[:9]
  assert sorted(_match(first9, labels, refs, tol=2)) == sorted(refs)
  assert it.skipped == [_BROKEN] and it.num_skipped == 1
  # Exactly the stream with the broken image alone left out, in order (its whole batch was
  # dropped by tf.data and decoded again image by image).
  src = ip.open_dataset(cfg)
  split, pil = src.train, ip.stats.source_stats(src, src.settings)["pil_keys"]
  key_of = streams._random_access_positions(split.all_keys(), 1, 0, 1, 3)
  keys = [k for k in (int(key_of(q)) for q in range(13)) if split.name_of(k) != _BROKEN][:12]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), split.labels[keys])
  for image, key in zip(np.concatenate([b["image"] for b in batches]), keys):
    want = next(
        iter(
            tf.data.Dataset.from_tensors(np.int64(key)).map(
                lambda k: split.element(k, pil)["image"]
            )
        )
    )
    np.testing.assert_array_equal(image, want.numpy())


def test_folder_eval_covers_every_image_once(mixed_folder):
  root, _ = mixed_folder
  batches = list(
      ip.eval_iterator(
          dataset_config(name=f"folder:{root}"), global_batch_size=2, shard_index=0, num_shards=1
      )
  )
  assert len(batches) == 2
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.tolist() == [True, True, True, False]
  assert sorted(np.concatenate([b["label"] for b in batches])[mask].tolist()) == [0, 1, 2]


def test_stats_equal_numpy_and_are_cached(mixed_folder, monkeypatch):
  root, _ = mixed_folder
  cfg = dataset_config(name=f"folder:{root}")
  stats = ip.dataset_stats(cfg)
  it = ip.train_iterator(cfg, global_batch_size=9, seed=3, shard_index=0, num_shards=1)
  images = next(it)["image"].astype(np.float64)  # the 9 good images, as the pipeline makes them
  np.testing.assert_allclose(stats.mean_image, images.mean(0), atol=1e-3)
  px = images.reshape(-1, 3) / 255.0
  cov = np.cov(px.T, bias=True)
  np.testing.assert_allclose(stats.covariance, cov, rtol=1e-6, atol=1e-9)
  w, v = np.linalg.eigh(cov)
  np.testing.assert_allclose(stats.eigval, w[::-1], rtol=1e-5)
  for j in range(3):  # eigenvectors up to sign
    assert abs(abs(float(stats.eigvec[:, j] @ v[:, 2 - j])) - 1) < 1e-5
  np.testing.assert_allclose(stats.eigvec.T @ stats.eigvec, np.eye(3), atol=1e-6)
  path = ip.stats_cache_path(cfg)
  assert path == os.path.join(root, ".alexnet_jax_stats", "train.npz") and os.path.exists(path)
  monkeypatch.setattr(ip.stats, "stats_pass", lambda *a: pytest.fail("cache not used"))
  again = ip.dataset_stats(cfg)
  np.testing.assert_array_equal(again.mean_image, stats.mean_image)
  assert again.bad_files == stats.bad_files


def test_imagenet_constants():
  np.testing.assert_allclose(ip.IMAGENET_EIGVEC[:, 0], [-0.5675, -0.5808, -0.5836])
  np.testing.assert_allclose(ip.IMAGENET_EIGVEC[:, 1], [0.7192, -0.0045, -0.6948])
  np.testing.assert_allclose(ip.IMAGENET_EIGVEC[:, 2], [0.4009, -0.8140, 0.4203])
  np.testing.assert_allclose(ip.IMAGENET_EIGVAL, [0.2175, 0.0188, 0.0045])


# ---------------------------------------------------------------------------------------------
# Per-process streams: disjoint, complete, resumable, independent of the process count.


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
  """32 solid-colour PNGs in 3 classes; pixel (0, 0) identifies the image.

  With no train/ folder, the ~10% held out for evaluation are the files with
  crc32(relative path) % 10 == 0: here img10 and img22, leaving 30 for training.
  """
  root = tmp_path_factory.mktemp("colors")
  for i in range(32):
    d = root / f"class{i % 3}"
    d.mkdir(exist_ok=True)
    rgb = np.zeros((12, 20, 3), np.uint8) + np.array([8 * i, 255 - 8 * i, 77], np.uint8)
    (d / f"img{i:02d}.png").write_bytes(_encode(rgb, "PNG"))
  (root / "class0" / ".hidden.png").write_bytes(b"not an image")  # hidden files are ignored
  return str(root)


def _ids(batch):
  return (batch["image"][:, 0, 0, 0].astype(int) // 8).tolist()


def test_process_streams_disjoint_cover_split_and_match_single_process(color_folder):
  cfg = dataset_config(name=f"folder:{color_folder}")
  info = ip.dataset_info(cfg)
  n = info.num_train
  assert (n, info.num_eval, info.num_classes) == (30, 2, 3)
  streams = [
      ip.train_iterator(cfg, global_batch_size=6, seed=5, shard_index=p, num_shards=2)
      for p in range(2)
  ]
  single = ip.train_iterator(cfg, global_batch_size=6, seed=5, shard_index=0, num_shards=1)
  steps = 3 * n // 6 + 2
  local = [[next(s) for _ in range(steps)] for s in streams]
  glob = [next(single) for _ in range(steps)]
  order = []
  for t in range(steps):
    for p in range(2):
      assert local[p][t]["image"].shape == (3, 256, 256, 3)
      # Labels follow the images (class = id % 3).
      assert [i % 3 for i in _ids(local[p][t])] == local[p][t]["label"].tolist()
    # Process p holds positions [3p, 3p+3) of the global batch, whatever the process count.
    assert _ids(local[0][t]) + _ids(local[1][t]) == _ids(glob[t])
    order += _ids(local[0][t]) + _ids(local[1][t])
  train_ids = sorted(order[:n])
  assert len(set(train_ids)) == n  # each training image exactly once in epoch 0 ...
  assert sorted(order[n : 2 * n]) == train_ids and sorted(order[2 * n : 3 * n]) == train_ids
  assert order[:n] != order[n : 2 * n]  # ... reshuffled every epoch
  assert set(train_ids) == set(range(32)) - {10, 22}
  per_process = [sum((_ids(b) for b in local[p][: n // 6]), []) for p in range(2)]
  assert len(set(per_process[0])) == len(set(per_process[1])) == n // 2
  assert not set(per_process[0]) & set(per_process[1])
  assert set(per_process[0]) | set(per_process[1]) == set(train_ids)
  # Exact resume, including across an epoch boundary.
  for start in (1, n // 6 + 1, steps - 2):
    resumed = ip.train_iterator(
        cfg, global_batch_size=6, seed=5, start_step=start, shard_index=1, num_shards=2
    )
    np.testing.assert_array_equal(next(resumed)["image"], local[1][start]["image"])
  other_seed = ip.train_iterator(cfg, global_batch_size=6, seed=6, shard_index=0, num_shards=1)
  assert _ids(next(other_seed)) != _ids(glob[0])
  with pytest.raises(ValueError, match="divisible"):
    ip.train_iterator(cfg, global_batch_size=5, seed=0, shard_index=0, num_shards=2)


def test_padded_eval_mask_counts_every_image_once(color_folder, mixed_folder):
  cfg = dataset_config(name=f"folder:{color_folder}")
  per_process = [
      list(ip.eval_iterator(cfg, global_batch_size=4, shard_index=p, num_shards=2))
      for p in range(2)
  ]
  assert [len(b) for b in per_process] == [1, 1]
  seen = [i for batches in per_process for b in batches for i, m in zip(_ids(b), b["mask"]) if m]
  assert sorted(seen) == [10, 22]
  # Uneven shares (3 images, 2 processes: 1 and 2): same number of batches, padding masked out.
  cfg = dataset_config(name=f"folder:{mixed_folder[0]}")
  per_process = [
      list(ip.eval_iterator(cfg, global_batch_size=2, shard_index=p, num_shards=2))
      for p in range(2)
  ]
  assert [len(b) for b in per_process] == [2, 2]
  masks = [np.concatenate([b["mask"] for b in batches]).tolist() for batches in per_process]
  assert masks == [[True, False], [True, True]]
  labels = [int(l) for batches in per_process for b in batches for l in b["label"][b["mask"]]]
  assert sorted(labels) == [0, 1, 2]  # each validation image (one per class) exactly once
  for batches in per_process:
    for b in batches:
      assert b["image"].shape == (1, 256, 256, 3) and b["mask"].dtype == bool
      assert (b["image"][~b["mask"]] == 0).all()


# ---------------------------------------------------------------------------------------------
# The real TFDS imagenet2012 builder on a tiny ILSVRC-format pair of tars.

_SYNSETS = ["n01751748", "n09193705", "n02105855"]  # official labels of val images 1, 2, 3


def _tar_add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  manual = root / "manual"
  manual.mkdir()
  photos = _photos()
  expected = {}  # digest of the 256x256 image -> (split, label)
  import tensorflow_datasets as tfds

  names = tfds.features.ClassLabel(
      names_file=os.path.join(os.path.dirname(tfds.__file__), "datasets/imagenet2012/labels.txt")
  )

  def jpeg(k):
    photo = photos[k % len(photos)]
    data = _encode(photo[10 * k : 10 * k + 300, 15 * k : 15 * k + 400], "JPEG", mode="RGB")
    return data, ip.preprocess_encoded(data).numpy()

  with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
    k = 0
    for synset in _SYNSETS:
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for j in range(2):
          data, image = jpeg(k)
          _tar_add(inner, f"{synset}_{100 + j}.JPEG", data)
          expected[_digest(image)] = ("train", names.str2int(synset))
          k += 1
      _tar_add(outer, f"{synset}.tar", buf.getvalue())
  with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
    for v, synset in enumerate(_SYNSETS):
      data, image = jpeg(10 + v)
      _tar_add(tar, f"ILSVRC2012_val_{v + 1:08d}.JPEG", data)
      expected[_digest(image)] = ("validation", names.str2int(synset))
  cfg = dataset_config(
      name="imagenet2012", data_dir=str(root / "data"), manual_dir=str(manual), shuffle_buffer=4
  )
  info = ip.dataset_info(cfg)  # runs the real builder's download_and_prepare on the tars
  return cfg, info, expected


def test_imagenet2012_builder_prepares_and_pipeline_reads_labels(tiny_imagenet):
  cfg, info, expected = tiny_imagenet
  assert (info.name, info.num_classes, info.num_train, info.num_eval) == (
      "imagenet2012",
      1000,
      6,
      3,
  )
  assert info.class_names[:2] == ("n01440764", "n01443537")
  it = ip.train_iterator(cfg, global_batch_size=2, seed=0, shard_index=0, num_shards=1)
  got = []
  for _ in range(3):
    b = next(it)
    got += [(_digest(im), int(l)) for im, l in zip(b["image"], b["label"])]
  want = sorted((d, l) for d, (s, l) in expected.items() if s == "train")
  assert sorted(got) == want
  evals = list(ip.eval_iterator(cfg, global_batch_size=2, shard_index=0, num_shards=1))
  assert len(evals) == 2 and evals[-1]["mask"].tolist() == [True, False]
  got_eval = sorted(
      (_digest(im), int(l))
      for b in evals
      for im, l, m in zip(b["image"], b["label"], b["mask"])
      if m
  )
  assert got_eval == sorted((d, l) for d, (s, l) in expected.items() if s == "validation")
  stats = ip.dataset_stats(cfg)
  assert stats.num_images == 6 and stats.bad_files == ()
  assert os.path.exists(
      os.path.join(cfg["data_dir"], "alexnet_jax_stats", "imagenet2012_train.npz")
  )


def test_imagenet2012_process_shards_and_resume(tiny_imagenet):
  cfg, _, expected = tiny_imagenet
  streams = [
      ip.train_iterator(cfg, global_batch_size=2, seed=3, shard_index=p, num_shards=2)
      for p in range(2)
  ]
  local = [[_digest(next(s)["image"][0]) for _ in range(7)] for s in streams]
  train = {d for d, (s, _) in expected.items() if s == "train"}
  # 3 steps = one epoch: each process reads its own 3 images; together the split once.
  assert not set(local[0][:3]) & set(local[1][:3])
  assert set(local[0][:3]) | set(local[1][:3]) == train
  assert set(local[0][3:6]) == set(local[0][:3])  # the next epoch: same share, again once
  for start in (2, 4):  # resume within an epoch and after crossing into the next one
    resumed = ip.train_iterator(
        cfg, global_batch_size=2, seed=3, start_step=start, shard_index=1, num_shards=2
    )
    assert [_digest(next(resumed)["image"][0]) for _ in range(2)] == local[1][start : start + 2]
  evals = [
      list(ip.eval_iterator(cfg, global_batch_size=2, shard_index=p, num_shards=2))
      for p in range(2)
  ]
  assert len(evals[0]) == len(evals[1]) == 2  # same count on every process (collectives)
  assert sum(int(b["mask"].sum()) for e in evals for b in e) == 3


def test_imagenet2012_missing_tars_fail_with_instructions(tmp_path):
  cfg = dataset_config(name="imagenet2012", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError) as e:
    ip.dataset_info(cfg)
  msg = str(e.value)
  manual = os.path.join(str(tmp_path / "tfds"), "downloads", "manual")
  for part in (
      "ILSVRC2012_img_train.tar",
      "ILSVRC2012_img_val.tar",
      manual,
      f"tfds build imagenet2012 --data_dir={tmp_path / 'tfds'} --manual_dir={manual}",
  ):
    assert part in msg, part


def test_unprepared_tfds_dataset_and_unknown_name_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"tfds build mnist --data_dir="):
    ip.dataset_info(dataset_config(name="mnist", data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="unknown dataset"):
    ip.dataset_info(dataset_config(name="no_such_dataset_xyz", data_dir=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ip.dataset_info(dataset_config(name=f"folder:{tmp_path}/missing"))


# ---------------------------------------------------------------------------------------------
# The embedded default.


def test_digits_is_embedded_and_split_fixed(tmp_path):
  from sklearn.datasets import load_digits

  cfg = dataset_config(name="digits", data_dir=str(tmp_path))
  info = ip.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 1500, 297)
  evals = list(ip.eval_iterator(cfg, global_batch_size=128, shard_index=0, num_shards=1))
  assert len(evals) == 3 and sum(int(b["mask"].sum()) for b in evals) == 297
  digits = load_digits()
  first = evals[0]["image"][0]
  assert first.shape == (256, 256, 3) and (first[..., 0] == first[..., 2]).all()
  # The first validation image is one of sklearn's digits, upscaled: compare at 8x8.
  small = first[16::32, 16::32, 0].astype(float) * 16 / 255
  idx = np.argmin(((digits.images - small) ** 2).sum((1, 2)))
  assert np.abs(digits.images[idx] - small).max() < 1.5
  assert digits.target[idx] == evals[0]["label"][0]
  labels = np.concatenate([b["label"][b["mask"]] for b in evals])
  assert set(labels.tolist()) == set(range(10))
