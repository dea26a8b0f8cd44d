"""A folder of class subfolders (`dataset.name='folder:/path'`): either
/path/{train,val}/<class>/... or /path/<class>/... (then a fixed ~10% of each class, chosen by a
hash of the file's path, is held out for evaluation). Files are read by extension
(IMAGE_EXTENSIONS); others are ignored with one warning. At least two classes, no empty class
folder and a non-empty validation split are required. `dataset.exif_transpose=True` turns JPEGs
upright by their EXIF orientation, as PIL's ImageOps.exif_transpose (default False: the paper's
and TFDS's pipelines ignore EXIF).
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib

from absl import logging

from alexnet_jax.data import sources
from alexnet_jax.data.preprocess import IMAGE_EXTENSIONS
from alexnet_jax.data.settings import DatasetError, Settings, sanitise, writable_dir
from alexnet_jax.files import user_cache_dir

PREFIX = "folder:"


def list_classes(root: str) -> list:
  return sorted(
      d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
  )


def _list_files(class_dir: str) -> tuple[list, list]:
  """(image files, other files) under class_dir, sorted; hidden ones skipped. Only regular
  files (a symbolic link to one counts) are images: a FIFO, device or socket with an image's
  name is an other file, never opened (a FIFO would block the reader)."""
  images, other = [], []
  for dirpath, dirnames, filenames in os.walk(class_dir):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for f in sorted(filenames):
      if not f.startswith("."):
        path = os.path.join(dirpath, f)
        is_image = os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and _is_file(path)
        (images if is_image else other).append(path)
  return images, other


def _is_file(path: str) -> bool:
  try:
    return stat.S_ISREG(os.stat(path).st_mode)
  except OSError:  # a dangling link: not an image to read
    return False


def folder_root(name: str) -> str:
  """'folder:/path' (or '~/path', relative) -> the folder's absolute path."""
  return os.path.abspath(os.path.expanduser(name[len(PREFIX) :]))


def _folder_layout(root: str) -> tuple:
  """(train root, validation dir or None): root/train and root/{val,validation,test} when
  root/train exists, else root itself and no validation dir (a hash holds out ~10%)."""
  eval_dir = next(
      (
          os.path.join(root, d)
          for d in ("val", "validation", "test")
          if os.path.isdir(os.path.join(root, d))
      ),
      None,
  )
  if os.path.isdir(os.path.join(root, "train")):
    return os.path.join(root, "train"), eval_dir
  return root, None


def open_source(settings: Settings) -> sources.Source:
  path, resize, exif = settings.name[len(PREFIX) :], settings.resize, settings.exif_transpose
  root = folder_root(settings.name)
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'dataset folder {root!r} (from "folder:{path}") does not exist; it '
        "must hold one subfolder per class, or train/ and val/ each holding "
        "one subfolder per class."
    )
  train_root, eval_dir = _folder_layout(root)
  split_layout = train_root != root
  classes = list_classes(train_root)
  if not classes:
    raise FileNotFoundError(f"no class subfolders in {train_root!r}")
  if len(classes) < 2:
    raise DatasetError(
        f"dataset folder {train_root!r} has one class folder ({classes[0]!r}): a classifier "
        f"needs at least two classes, one subfolder each."
    )
  splits = {"train": ([], []), "eval": ([], [])}
  empty, ignored = [], []
  for label, cls in enumerate(classes):
    files, other = _list_files(os.path.join(train_root, cls))
    ignored += other
    if not files:
      empty.append(os.path.join(train_root, cls))
    for f in files:
      held_out = not split_layout and zlib.crc32(os.path.relpath(f, root).encode()) % 10 == 0
      part = splits["eval" if held_out else "train"]
      part[0].append(f)
      part[1].append(label)
    if split_layout and eval_dir and os.path.isdir(os.path.join(eval_dir, cls)):
      files, other = _list_files(os.path.join(eval_dir, cls))
      ignored += other
      for f in files:
        splits["eval"][0].append(f)
        splits["eval"][1].append(label)
  if empty:
    raise DatasetError(
        f"class folder(s) without images: {', '.join(empty)} (images: "
        f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)."
    )
  if ignored:
    logging.warning(
        "ignoring %d file(s) that are not images (by extension, or not regular files: "
        "FIFOs, devices, sockets) under %s: %s%s",
        len(ignored),
        root,
        ", ".join(os.path.relpath(f, root) for f in ignored[:5]),
        ", ..." if len(ignored) > 5 else "",
    )
  if not splits["train"][0]:
    raise FileNotFoundError(f"no image files under the class folders of {train_root!r}")
  if not splits["eval"][0]:
    raise DatasetError(
        f"the validation split of {root!r} is empty: "
        + (
            f"put images in {root}/val/<class>/ beside train/."
            if split_layout
            else f"the fixed ~10% hold-out picked none of its {len(splits['train'][0])} "
            f"images; add images, or use {root}/train/<class>/ and {root}/val/<class>/."
        )
    )
  digest = hashlib.sha1()
  for f in splits["train"][0]:
    st = os.stat(f)
    digest.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  suffix = "_exif" if exif else ""  # upright images have other statistics
  stats_dir = os.path.join(root, ".alexnet_jax_stats")
  if not writable_dir(stats_dir):  # read-only data: keep the cache in the user's cache dir
    stats_dir = user_cache_dir()
    stats_name = (
        f"folder_{sanitise(root)}_{hashlib.sha1(os.fsencode(root)).hexdigest()[:8]}_"
        f"train{suffix}.npz"
    )
  else:
    stats_name = f"train{suffix}.npz"
  return sources.Source(
      f"folder:{root}",
      tuple(classes),
      sources.FileSplit(*splits["train"], root, resize, exif),
      sources.FileSplit(*splits["eval"], root, resize, exif),
      os.path.join(stats_dir, stats_name),
      digest.hexdigest() + suffix,
      f"image files under {root}",
  )


def identity(settings: Settings) -> tuple:
  """(class names, signature) from the class directories and their modification times (a
  directory's changes when a file is added, removed or renamed in it), without listing the
  files; (None, None) where the folder is not there."""
  root = folder_root(settings.name)
  train_root, eval_dir = _folder_layout(root)
  if not os.path.isdir(train_root):
    return None, None
  classes = list_classes(train_root)
  digest = hashlib.sha1()
  for base in (train_root, eval_dir) if eval_dir else (train_root,):
    for cls in classes:
      path = os.path.join(base, cls)
      if os.path.isdir(path):
        digest.update(f"{os.path.relpath(path, root)}\0{os.stat(path).st_mtime_ns}\n".encode())
  return tuple(classes), digest.hexdigest()


def prepared_dir(settings: Settings) -> str:
  variant = sources.prepared_variant(settings)
  return os.path.join(folder_root(settings.name), ".alexnet_jax_prepared", variant)


def canonical_name(name: str) -> str:
  return PREFIX + folder_root(name)


KIND = sources.SourceKind(
    form=f'"{PREFIX}/path"',
    matches=lambda name: name.startswith(PREFIX),
    open=open_source,
    identity=identity,
    prepared_dir=prepared_dir,
    canonical=canonical_name,
    changed="training files were replaced, renamed or modified (names, sizes or times)",
)
