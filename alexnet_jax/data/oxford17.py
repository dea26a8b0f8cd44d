"""Oxford-17 flowers (Visual Geometry Group, University of Oxford) as a source:
`dataset.name='oxford17:/path'`.

/path is the published archive 17flowers.tgz (jpg/image_0001.jpg ... jpg/image_1360.jpg and
jpg/files.txt), a directory holding it, or its extracted directory (holding jpg/ or the images
themselves). Image i (1-based) has label (i - 1) // 80: 80 images per class, classes in the
order of CLASS_NAMES. With the authors' datasplits.mat beside the images (or the archive), its
split 1 is used: train = trn1 (40 per class), eval = val1 (20), test = tst1 (20; read by
`python -m alexnet_jax.evaluate --split=test`). Without it, a fixed seeded 80/20 split of each
class: 64 train, 16 eval, no test split.

The archive is extracted once, into a directory keyed by the archive's path, size and
modification time (beside it, else in the user's cache), and read from there: TF reads files
in parallel, while a member of a .tgz can only be reached by decompressing the stream up to it
(gzip has no random access), which tf.data's parallel decoding cannot share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time

import numpy as np
from absl import logging
from scipy import io as scipy_io

from alexnet_jax.data import sources
from alexnet_jax.data.settings import (
    DatasetError,
    Settings,
    sanitise,
    writable_dir,
)
from alexnet_jax.files import user_cache_dir

PREFIX = "oxford17:"
ARCHIVE = "17flowers.tgz"
SPLITS_FILE = "datasplits.mat"
URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
PER_CLASS = 80
# The dataset's published class list, in label order (80 consecutive images each).
CLASS_NAMES = (
    "Daffodil",
    "Snowdrop",
    "Lily Valley",
    "Bluebell",
    "Crocus",
    "Iris",
    "Tigerlily",
    "Tulip",
    "Fritillary",
    "Sunflower",
    "Daisy",
    "Colts' Foot",
    "Dandelion",
    "Cowslip",
    "Buttercup",
    "Windflower",
    "Pansy",
)
NUM_IMAGES = PER_CLASS * len(CLASS_NAMES)  # 1,360
FALLBACK_SEED = 0  # the seeded 80/20 split without datasplits.mat: fixed, never changes
FALLBACK_TRAIN = 64  # of each class's 80
_IMAGE_RE = re.compile(r"image_(\d{4})\.jpg")
_CACHE_DIR = ".alexnet_jax_oxford17"
_STALE_S = 3600  # an extraction takes seconds: an older temporary one was killed


def image_name(i: int) -> str:
  """The file name of image i (1-based)."""
  return f"image_{i:04d}.jpg"


def label_of(i) -> np.ndarray:
  """The label of image(s) i (1-based): 80 per class, in class order."""
  return (np.asarray(i, np.int64) - 1) // PER_CLASS


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the files of `oxford17:/path` are, found without reading or extracting anything."""

  base: str  # the directory the name means (the archive's own for a .tgz)
  images: str | None  # a directory of image_NNNN.jpg (extracted), else None
  archive: str | None  # 17flowers.tgz, read when there is no extracted directory
  splits_file: str | None  # datasplits.mat, when there is one


def root(name: str) -> str:
  """'oxford17:/path' (or '~/path', relative) -> its absolute path."""
  return os.path.abspath(os.path.expanduser(name[len(PREFIX) :]))


def missing_message(path: str) -> str:
  """One line: the file expected, where its authors publish it, where to put it."""
  where = os.path.dirname(path) if path.endswith((".tgz", ".tar.gz")) else path
  expected = path if where != path else os.path.join(path, ARCHIVE)
  return (
      f"Oxford-17 not found: {expected} does not exist; download {ARCHIVE} (and "
      f"{SPLITS_FILE} for the authors' splits) from the Visual Geometry Group, University of "
      f"Oxford, {URL} and put them in {where} (or point oxford17: at the extracted directory)."
  )


def layout(name: str) -> Layout:
  """The files `name` reads: extracted images are preferred to the archive beside them.
  FileNotFoundError (one line, missing_message) when neither is there."""
  path = root(name)
  images = archive = None
  if os.path.isfile(path):
    base, archive = os.path.dirname(path), path
  elif os.path.isdir(path):
    base = path
    images = next(
        (
            d
            for d in (os.path.join(path, "jpg"), path)
            if os.path.isfile(os.path.join(d, "image_0001.jpg"))
        ),
        None,
    )
    if images is None and os.path.isfile(os.path.join(path, ARCHIVE)):
      archive = os.path.join(path, ARCHIVE)
  if images is None and archive is None:
    raise FileNotFoundError(missing_message(path))
  # datasplits.mat in the named directory, or beside the images (jpg/ or its parent).
  places = [base] + ([images, os.path.dirname(images)] if images else [])
  splits_file = next(
      (
          os.path.join(d, SPLITS_FILE)
          for d in places
          if os.path.isfile(os.path.join(d, SPLITS_FILE))
      ),
      None,
  )
  return Layout(base, images, archive, splits_file)


def canonical_name(name: str) -> str:
  """'oxford17:' and the files read (the image directory, else the archive), whichever way
  the name spells them (the archive or its directory): what prepared data are checked by."""
  try:
    lay = layout(name)
  except FileNotFoundError:
    return PREFIX + root(name)
  return PREFIX + (lay.images or lay.archive)


def split_kind(lay: Layout) -> str:
  """'split1' (datasplits.mat) or 'seeded' (the fixed 80/20 fallback): names cached files."""
  return "split1" if lay.splits_file else "seeded"


def _file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha1(f.read()).hexdigest()[:16]


def split_identity(lay: Layout) -> str:
  """Which split the streams read: the .mat's contents, or the fallback's seed."""
  if lay.splits_file:
    return f"{SPLITS_FILE}:{_file_digest(lay.splits_file)}"
  return f"seeded{FALLBACK_TRAIN}/{PER_CLASS - FALLBACK_TRAIN}:{FALLBACK_SEED}"


def signature(lay: Layout) -> str:
  """The data's identity without listing the images: the archive's size and modification
  time, or the image directory's (changed by adding, removing or renaming a file in it), and
  the split."""
  if lay.images:
    data = f"dir:{os.stat(lay.images).st_mtime_ns}"
  else:
    st = os.stat(lay.archive)
    data = f"archive:{st.st_size}:{st.st_mtime_ns}"
  return f"oxford17:{data}:{split_identity(lay)}"


# ---- the splits -----------------------------------------------------------------------------


def read_splits(path: str) -> tuple:
  """(trn1, val1, tst1) of datasplits.mat: sorted 1-based image indices."""
  try:
    mat = scipy_io.loadmat(path)
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(
        f"{path} cannot be read as a MATLAB file ({type(e).__name__}: {e}): download "
        f"{SPLITS_FILE} again from {URL}, or remove it to use a seeded 80/20 split."
    ) from None
  parts = []
  for var in ("trn1", "val1", "tst1"):
    if var not in mat:
      has = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
      raise DatasetError(
          f"{path} has no variable {var!r} (its variables: {has}): it is not Oxford-17's "
          f"{SPLITS_FILE}; download it again from {URL}."
      )
    a = np.asarray(mat[var], np.float64).ravel()
    if not len(a) or np.any(a != np.round(a)) or a.min() < 1 or a.max() > NUM_IMAGES:
      raise DatasetError(
          f"{path}: {var} must hold image indices 1..{NUM_IMAGES}; download {SPLITS_FILE} "
          f"again from {URL}."
      )
    parts.append(np.sort(a.astype(np.int64)))
  every = np.concatenate(parts)
  if len(np.unique(every)) != len(every):
    raise DatasetError(
        f"{path}: trn1, val1 and tst1 share or repeat images; download {SPLITS_FILE} again "
        f"from {URL}."
    )
  return tuple(parts)


def seeded_split() -> tuple:
  """(train, eval) 1-based indices: a fixed random 64/16 of each class's 80 images."""
  rng = np.random.RandomState(FALLBACK_SEED)
  train, held = [], []
  for c in range(len(CLASS_NAMES)):
    perm = rng.permutation(PER_CLASS) + c * PER_CLASS + 1
    train.append(perm[:FALLBACK_TRAIN])
    held.append(perm[FALLBACK_TRAIN:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


# ---- the archive, extracted once ------------------------------------------------------------


def _remove_stale(parent: str) -> None:
  """Temporary directories of killed extractions (an extraction takes seconds)."""
  for d in os.listdir(parent):
    path = os.path.join(parent, d)
    try:
      if d.startswith(".tmp-") and time.time() - os.stat(path).st_mtime > _STALE_S:
        shutil.rmtree(path, ignore_errors=True)
    except OSError:
      pass


def extracted(archive: str) -> str:
  """The directory of the archive's images, extracted on first use: into a temporary
  directory, renamed into place once complete, so that a killed extraction leaves nothing a
  later run reads and concurrent ones (several hosts) each finish whole; the first rename wins."""
  st = os.stat(archive)
  key = hashlib.sha1(f"{archive}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
  parent = os.path.join(os.path.dirname(archive), _CACHE_DIR)
  if not writable_dir(parent):  # read-only data: the user's cache
    parent = os.path.join(user_cache_dir(), "oxford17")
    os.makedirs(parent, exist_ok=True)
  final = os.path.join(parent, f"{sanitise(os.path.basename(archive))}-{key}")
  if os.path.isdir(final):
    return os.path.join(final, "jpg")
  _remove_stale(parent)
  logging.info("extracting %s into %s (once)", archive, final)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
  try:
    os.makedirs(os.path.join(tmp, "jpg"))
    found = set()
    try:
      with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # one pass over the stream
          base = posixpath.basename(member.name)
          # Written under names of our own: nothing in the archive chooses a path.
          if member.isfile() and (_IMAGE_RE.fullmatch(base) or base == "files.txt"):
            with tar.extractfile(member) as src, open(os.path.join(tmp, "jpg", base), "wb") as dst:
              shutil.copyfileobj(src, dst)
            found.add(base)
    except (tarfile.TarError, EOFError, OSError) as e:
      raise DatasetError(
          f"{archive} cannot be extracted into {parent} ({type(e).__name__}: {e}); if the "
          f"archive is damaged, download {ARCHIVE} again from {URL}."
      ) from None
    _check_all_present(archive, found, f"download {ARCHIVE} again from {URL}.")
    os.chmod(tmp, 0o755)  # mkdtemp's is 0o700: others sharing the data read it too
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.isdir(final):  # else another process finished first: its copy is used
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return os.path.join(final, "jpg")


# ---- the source -----------------------------------------------------------------------------


def _check_all_present(where: str, present, fix: str) -> None:
  """DatasetError naming the first images of the 1,360 that `present` lacks, and `fix`."""
  missing = [image_name(i) for i in range(1, NUM_IMAGES + 1) if image_name(i) not in present]
  if missing:
    raise DatasetError(
        f"{where} lacks {len(missing)} of Oxford-17's {NUM_IMAGES} images "
        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): {fix}"
    )


def _check_images(images: str) -> None:
  _check_all_present(
      images,
      set(os.listdir(images)),
      f"extract {ARCHIVE} there again, or point oxford17: at the archive.",
  )


def stats_path(lay: Layout, exif: bool) -> str:
  """Where the training split's statistics are cached: beside the data when writable."""
  stats_name = f"oxford17_{split_kind(lay)}_train{'_exif' if exif else ''}.npz"
  stats_dir = os.path.join(lay.base, ".alexnet_jax_stats")
  if writable_dir(stats_dir):
    return os.path.join(stats_dir, stats_name)
  tag = f"{sanitise(lay.base)}_{hashlib.sha1(os.fsencode(lay.base)).hexdigest()[:8]}"
  return os.path.join(user_cache_dir(), f"{tag}_{stats_name}")


def prepared_location(settings: Settings) -> str:
  """Where prepare writes by default and training looks first: beside the data, one
  directory per split kind (adding datasplits.mat later prepares anew, beside the old)."""
  variant = sources.prepared_variant(settings)
  try:
    lay = layout(settings.name)
  except FileNotFoundError:
    path = root(settings.name)
    base = os.path.dirname(path) if path.endswith((".tgz", ".tar.gz")) else path
    return os.path.join(base, ".alexnet_jax_prepared", f"oxford17_{variant}")
  return os.path.join(lay.base, ".alexnet_jax_prepared", f"oxford17_{split_kind(lay)}_{variant}")


def open_source(settings: Settings) -> sources.Source:
  name, resize, exif = settings.name, settings.resize, settings.exif_transpose
  lay = layout(name)
  images = lay.images or extracted(lay.archive)
  _check_images(images)
  if lay.splits_file:
    train, held, test = read_splits(lay.splits_file)
    how = f"split 1 of {lay.splits_file}"
  else:
    (train, held), test = seeded_split(), None
    how = f"a seeded {FALLBACK_TRAIN}/{PER_CLASS - FALLBACK_TRAIN} split of each class"
    logging.warning(
        "no %s beside the Oxford-17 images (%s): using %s (download it from %s for the "
        "authors' splits)",
        SPLITS_FILE,
        lay.base,
        how,
        URL,
    )

  def split(idx):
    paths = [os.path.join(images, image_name(int(i))) for i in idx]
    return sources.FileSplit(paths, label_of(idx), images, resize, exif)

  digest = hashlib.sha1(signature(lay).encode())
  if lay.images:  # the files themselves (the archive's identity is in its signature)
    for i in range(1, NUM_IMAGES + 1):
      st = os.stat(os.path.join(images, image_name(i)))
      digest.update(f"{i}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  suffix = "_exif" if exif else ""
  return sources.Source(
      PREFIX + (lay.images or lay.archive),  # canonical_name
      CLASS_NAMES,
      split(train),
      split(held),
      stats_path(lay, exif),
      digest.hexdigest() + suffix,
      f"Oxford-17 images in {images} ({how})",
      test=split(test) if test is not None else None,
  )


def identity(settings: Settings) -> tuple:
  """(class names, signature) without listing the images; (None, None) where they are not."""
  try:
    return CLASS_NAMES, signature(layout(settings.name))
  except FileNotFoundError:
    return None, None


KIND = sources.SourceKind(
    form=f'"{PREFIX}/path"',
    matches=lambda name: name.startswith(PREFIX),
    open=open_source,
    identity=identity,
    prepared_dir=prepared_location,
    canonical=canonical_name,
)
