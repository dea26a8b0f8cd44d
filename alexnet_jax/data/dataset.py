"""Which data a config reads: prepared shards when there are any, else the original images."""

from __future__ import annotations

import os

from absl import logging

from alexnet_jax.data import registry, sources
from alexnet_jax.data import shards as shards_lib
from alexnet_jax.data.settings import DatasetError, Settings


def open_dataset(dataset_config) -> sources.Source:
  """The dataset `dataset_config` (config.dataset) names, opened once: pass the result to the
  stream and statistics functions so that they do not list the data again.

  dataset.prepared: 'auto' reads prepared shards found beside the data (where
  `python -m alexnet_jax.prepare` writes by default) when they are complete and match the
  config, else the original images; 'off' always reads the original images; a directory
  reads the prepared shards there and refuses them if they do not match.
  """
  if isinstance(dataset_config, sources.Source):
    return dataset_config
  settings = Settings.of(dataset_config)
  where = settings.prepared
  if not where:
    raise DatasetError(
        f"dataset.prepared={where!r}: it must be 'auto' (shards found beside the data), 'off' or "
        "a directory of prepared shards."
    )
  if where == "off":
    src = registry.open_raw(settings)
  elif where == "auto":
    src = None
    location = registry.default_location(settings)
    if os.path.exists(os.path.join(location, shards_lib.PLAN_FILE)):
      try:
        src = shards_lib.open_prepared(location, settings, registry.cheap_identity(settings))
      except DatasetError as e:
        logging.warning("not reading the prepared data beside the dataset: %s", e)
    if src is None:
      src = registry.open_raw(settings)
  else:
    src = shards_lib.open_prepared(where, settings, registry.cheap_identity(settings))
  src.settings = settings
  # Prepared shards are another source of pixels than the originals: said where it is seen.
  log = logging.warning if getattr(src.train, "prepared", False) else logging.info
  log("dataset %s: reading %s", settings.name, src.description)
  return src


def dataset_info(dataset) -> sources.DatasetInfo:
  """Name, class names and split sizes (`dataset`: config.dataset or an opened Source); for
  imagenet2012 with its tars present, prepares the TFDS dataset first."""
  return open_dataset(dataset).info
