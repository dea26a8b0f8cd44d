"""Every dataset source, one line each in KINDS: the first whose name form matches
`dataset.name` reads it.

  digits           digits.py       the digits that ship inside scikit-learn
  folder:/path     folder.py       one subfolder per class
  oxford17:/path   oxford17.py     the Oxford 17-category flowers
  any other name   tfds_source.py  a TFDS dataset (imagenet2012 included)

Adding a source: a module declaring its `KIND` (sources.SourceKind: name form, opener,
signature, prepared location) and its line in KINDS, before TFDS (which takes every name).
"""

from __future__ import annotations

from alexnet_jax.data import digits, folder, oxford17, sources, tfds_source
from alexnet_jax.data.preprocess import RESIZE_RULES
from alexnet_jax.data.settings import DatasetError, DatasetNotFoundError, Settings

KINDS = (
    digits.KIND,
    folder.KIND,
    oxford17.KIND,
    tfds_source.KIND,  # last: any other name
)


def kind_of(name: str) -> sources.SourceKind:
  return next(kind for kind in KINDS if kind.matches(name))


def open_raw(settings: Settings) -> sources.Source:
  """The source `settings` names, read from its original images (never from prepared data)."""
  name, resize = settings.name, settings.resize
  if resize not in RESIZE_RULES:
    raise DatasetError(f"dataset.resize must be one of {RESIZE_RULES}, got {resize!r}")
  try:
    src = kind_of(name).open(settings)
  except sources.UnknownDatasetError as e:
    forms = [kind.form for kind in KINDS]
    raise DatasetError(
        f"unknown dataset {name!r}: use {', '.join(forms[:-1])} or {forms[-1]} ({e})"
    ) from None
  except DatasetError:
    raise
  except FileNotFoundError as e:  # the messages say where the data belong: one line each
    raise DatasetNotFoundError(str(e)) from None
  except ValueError as e:
    raise DatasetError(str(e)) from None
  if resize != "round":  # other pixels, other statistics
    src.stats_path = src.stats_path[: -len(".npz")] + f"_{resize}.npz"
  for split in (src.train, src.eval, src.test):  # the limit its decoding checks
    if split is not None:
      split.max_pixels = int(settings.max_image_pixels)
  return src


def cheap_identity(settings: Settings) -> tuple:
  """(class names, signature) of the original data, from what costs no file listing (each
  kind's `identity`); None for what cannot be known (the data are not here)."""
  return kind_of(settings.name).identity(settings)


def default_location(settings: Settings) -> str:
  """Where prepare writes by default and training looks first: beside the data."""
  return kind_of(settings.name).prepared_dir(settings)


def canonical_name(name: str) -> str:
  """The name prepared data record: the same data, however `name` spells them."""
  return kind_of(name).canonical(name)
