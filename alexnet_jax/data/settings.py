"""The dataset config as the data layer reads it, its error type, and where it may write.

Every key comes from the caller's config (configs/default.py holds the defaults); a missing
key is an error that says where the complete config comes from.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile


class DatasetError(ValueError):
  """A dataset the trainer cannot use as it is; the message says what to change."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
  """The data are not where the config says: the message says where to put or find them."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.dataset`, every key documented in configs/default.py."""

  name: str
  data_dir: str | None
  manual_dir: str | None
  shuffle_buffer: int
  stats_max_images: int | None
  cache: bool
  exif_transpose: bool
  resize: str
  prepared: str
  # The most pixels an image may declare to be decoded (preprocess.MAX_IMAGE_PIXELS, PIL's
  # bomb limit); larger ones are skipped as undecodable. A default: configs written before
  # the key read the same.
  max_image_pixels: int = 89_478_485

  @classmethod
  def of(cls, dataset_config) -> Settings:
    if isinstance(dataset_config, Settings):
      return dataset_config
    keys = [f.name for f in dataclasses.fields(cls)]
    optional = [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]
    keys = [k for k in keys if k not in optional or k in dataset_config]
    missing = [k for k in keys if k not in dataset_config]
    if missing:
      raise DatasetError(
          f"the dataset config has no {', '.join(missing)}: start from the complete one, "
          "configs.default.get_config().dataset, and override what differs."
      )
    return cls(**{k: dataset_config[k] for k in keys})


def default_tfds_dir() -> str:
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def sanitise(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"


def writable_dir(path: str) -> bool:
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):
      pass
    return True
  except OSError:
    return False
