"""Oxford-17 flowers (Visual Geometry Group, University of Oxford) as a source:
`dataset.name='oxford17:/path'`.

/path is the published archive 17flowers.tgz (jpg/image_0001.jpg ... jpg/image_1360.jpg and
jpg/files.txt), a directory holding it, or its extracted directory (holding jpg/ or the images
themselves). Image i (1-based) has label (i - 1) // 80: 80 images per class, classes in the
order of CLASS_NAMES. With the authors' datasplits.mat beside the images (or the archive), its
split 1 is used: train = trn1 (40 per class), eval = val1 (20), test = tst1 (20; read by
`python -m alexnet_jax.evaluate --split=test`). Without it, a fixed seeded 80/20 split of each
class: 64 train, 16 eval, no test split.

A hostile or damaged archive is refused with one line (DatasetError) before it costs memory
or disk: every member's size is checked from its header before its data are read or skipped
(MAX_MEMBER_BYTES each, MAX_ARCHIVE_BYTES in all, MAX_MEMBERS of them), and no single read
of the decompressed stream (a tar header's long name or pax data included) exceeds
MAX_MEMBER_BYTES. Members are written under names of our own; links and other entries are
ignored. datasplits.mat is read only if small (MAX_SPLITS_BYTES) and its three variables'
shapes, read from their headers, are Oxford-17's.

The archive is extracted once, into a directory keyed by the archive's path, size and
modification time (beside it, else in the user's cache), and read from there: TF reads files
in parallel, while a member of a .tgz can only be reached by decompressing the stream up to it
(gzip has no random access), which tf.data's parallel decoding cannot share.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import re
import shutil
import struct
import tarfile
import tempfile
import time
import zlib

import numpy as np
from absl import logging
from scipy import io as scipy_io

from alexnet_jax import files
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
# The published archive holds 1,361 files (1,360 JPEGs of 5 to 250 KB, files.txt): 60 MB.
# Far more than any of it, and refused before a byte of it is read:
MAX_MEMBER_BYTES = 32 << 20  # one member (an image, files.txt, a header's long name)
MAX_ARCHIVE_BYTES = 1 << 30  # every member's bytes together, the ones not extracted too
MAX_MEMBERS = 20_000
MAX_SPLITS_BYTES = 16 << 20  # datasplits.mat: 15 KB
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
  data = files.read_bytes(path, SPLITS_FILE, MAX_SPLITS_BYTES, DatasetError)
  return hashlib.sha1(data).hexdigest()[:16]


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
  names = ("trn1", "val1", "tst1")
  data = files.read_bytes(path, SPLITS_FILE, MAX_SPLITS_BYTES, DatasetError)
  try:
    # The shapes from the variables' headers first: nothing is allocated for a variable
    # that claims more than Oxford-17's images.
    shapes = _mat_shapes(data)
    for var in names:
      if var in shapes and int(np.prod(shapes[var], dtype=object)) > NUM_IMAGES:
        raise DatasetError(
            f"{path}: {var} has shape {shapes[var]}, more than Oxford-17's {NUM_IMAGES} "
            f"images; download {SPLITS_FILE} again from {URL}."
        )
    mat = scipy_io.loadmat(io.BytesIO(data), variable_names=[n for n in names if n in shapes])
  except DatasetError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(
        f"{path} cannot be read as a MATLAB file ({type(e).__name__}: "
        f"{files.printable(str(e))[:200]}): download {SPLITS_FILE} again from {URL}, or remove "
        "it to use a seeded 80/20 split."
    ) from None
  parts = []
  for var in names:
    if var not in mat:
      has = ", ".join(sorted(files.printable(k) for k in shapes)) or "none"
      raise DatasetError(
          f"{path} has no variable {var!r} (its variables: {has}): it is not Oxford-17's "
          f"{SPLITS_FILE}; download it again from {URL}."
      )
    try:
      a = np.asarray(mat[var], np.float64).ravel()
    except (TypeError, ValueError):
      a = np.zeros([0])
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


def _mat_shapes(data: bytes) -> dict:
  """{name: shape} of a MATLAB 5 file's variables, from their headers alone (a compressed
  variable: its first kilobytes inflated): what loading one would allocate is known before."""
  if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
    raise ValueError("not a MATLAB 5 file")
  end = "<" if data[126:128] == b"IM" else ">"
  shapes, pos = {}, 128
  while pos + 8 <= len(data):
    kind, size = struct.unpack(end + "II", data[pos : pos + 8])
    body = data[pos + 8 : pos + 8 + size]
    pos += 8 + size + (-size % 8 if kind != 15 else 0)
    if kind == 15:  # miCOMPRESSED: a zlib stream of one element
      body = zlib.decompressobj().decompress(body, 1 << 16)
      if len(body) < 8:
        continue
      kind, _ = struct.unpack(end + "II", body[:8])
      body = body[8:]
    if kind != 14 or len(body) < 16:  # not an miMATRIX
      continue
    sub = 16  # after the array flags
    dims_kind, dims_size = struct.unpack(end + "II", body[sub : sub + 8])
    dims = struct.unpack(end + "%di" % (dims_size // 4), body[sub + 8 : sub + 8 + dims_size])
    sub += 8 + dims_size + (-dims_size % 8)
    tag = struct.unpack(end + "I", body[sub : sub + 4])[0]
    if tag >> 16:  # the small element format: size in the upper half, data in 4 bytes
      name = body[sub + 4 : sub + 4 + (tag >> 16)]
    else:
      size = struct.unpack(end + "I", body[sub + 4 : sub + 8])[0]
      name = body[sub + 8 : sub + 8 + size]
    if dims_kind == 5:  # miINT32
      shapes[name.decode("latin-1")] = tuple(dims)
  return shapes


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
      with files.open_regular(archive, "Oxford-17 archive", error=DatasetError) as raw:
        stream = _Bounded(_decompressed(raw), archive)
        with tarfile.open(fileobj=stream, mode="r:") as tar:
          _extract_members(tar, archive, os.path.join(tmp, "jpg"), found)
    except DatasetError:
      raise
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as e:
      raise DatasetError(
          f"{archive} cannot be extracted into {parent} ({type(e).__name__}: "
          f"{files.printable(str(e))[:200]}); if the archive is damaged, download {ARCHIVE} "
          f"again from {URL}."
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


def _decompressed(raw):
  """The tar stream of a .tgz, .tar.bz2, .tar.xz or plain .tar file object."""
  head = raw.read(6)
  raw.seek(0)
  if head[:2] == b"\x1f\x8b":
    return gzip.GzipFile(fileobj=raw, mode="rb")
  if head[:3] == b"BZh":
    return bz2.BZ2File(raw, "rb")
  if head == b"\xfd7zXZ\x00":
    return lzma.LZMAFile(raw, "rb")
  return raw


class _Bounded(io.RawIOBase):
  """The decompressed stream, refusing any read (or skip) past MAX_ARCHIVE_BYTES and any
  single read larger than MAX_MEMBER_BYTES (tarfile reads a GNU long name or pax header
  whole, at the size its header claims)."""

  def __init__(self, stream, archive: str):
    super().__init__()
    self._stream, self._archive, self._pos = stream, archive, 0

  def _refuse(self, what: str):
    return DatasetError(
        f"{self._archive} {what}: not Oxford-17's {ARCHIVE} (refused before reading it); "
        f"download it again from {URL}."
    )

  def readable(self):
    return True

  def seekable(self):
    return True

  def tell(self):
    return self._pos

  def read(self, size=-1):
    if size is None or size < 0 or size > MAX_MEMBER_BYTES:
      raise self._refuse(f"asks for a read of {size:,} bytes at once")
    if self._pos + size > MAX_ARCHIVE_BYTES + tarfile.RECORDSIZE:
      raise self._refuse(f"holds more than {MAX_ARCHIVE_BYTES:,} bytes")
    data = self._stream.read(size)
    self._pos += len(data)
    return data

  def readinto(self, b):
    data = self.read(len(b))
    b[: len(data)] = data
    return len(data)

  def seek(self, offset, whence=io.SEEK_SET):
    target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset}.get(whence)
    if target is None:
      raise OSError("only forward seeks in an archive stream")
    if target > MAX_ARCHIVE_BYTES + tarfile.RECORDSIZE:
      raise self._refuse(f"holds more than {MAX_ARCHIVE_BYTES:,} bytes")
    self._pos = self._stream.seek(target)
    return self._pos


def _extract_members(tar, archive: str, dest: str, found: set) -> None:
  """One pass over the stream: each member's size checked from its header before its data
  are read or skipped; the images and files.txt written under names of our own (nothing in
  the archive chooses a path)."""
  total = 0
  for n, member in enumerate(tar):
    if n >= MAX_MEMBERS:
      raise DatasetError(
          f"{archive} holds more than {MAX_MEMBERS:,} entries: not Oxford-17's {ARCHIVE}; "
          f"download it again from {URL}."
      )
    total += max(member.size, 0)
    if member.size > MAX_MEMBER_BYTES or total > MAX_ARCHIVE_BYTES:
      what = (
          f"a member of {member.size:,} bytes ({files.printable(member.name)[:100]})"
          if member.size > MAX_MEMBER_BYTES
          else f"more than {MAX_ARCHIVE_BYTES:,} bytes in all"
      )
      raise DatasetError(
          f"{archive} holds {what}, more than Oxford-17's {ARCHIVE} can (at most "
          f"{MAX_MEMBER_BYTES:,} a member, {MAX_ARCHIVE_BYTES:,} in all): refused before "
          f"reading it; download {ARCHIVE} again from {URL}."
      )
    tar.members = []  # tarfile keeps every header it has read: none is needed again
    base = posixpath.basename(member.name)
    if member.isfile() and (_IMAGE_RE.fullmatch(base) or base == "files.txt"):
      with tar.extractfile(member) as src, open(os.path.join(dest, base), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 16)
      found.add(base)


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
      st = files.check_regular(  # a FIFO in its place would block the reader
          os.path.join(images, image_name(i)),
          error=DatasetError,
          fix=f"put Oxford-17's image there, or point oxford17: at {ARCHIVE}",
      )
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
