"""Which data a config reads: prepared shards when there are any, else the original images."""

from __future__ import annotations

import logging
import os

from alexnet_jax.data import prepared as prepared_lib
from alexnet_jax.data import sources
from alexnet_jax.data.settings import DatasetError, Settings

log = logging.getLogger(__name__)


def _class_names_of_raw(settings: Settings) -> tuple | None:
  """The class list of the original data when it is cheap to know (no file listing), else None."""
  name = settings.name
  if name == 'digits':
    return tuple(str(i) for i in range(10))
  if name.startswith('folder:'):
    root = os.path.abspath(os.path.expanduser(name[len('folder:') :]))
    train_root = os.path.join(root, 'train') if os.path.isdir(os.path.join(root, 'train')) else root
    return tuple(sources.list_classes(train_root)) if os.path.isdir(train_root) else None
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder(name, data_dir=settings.data_dir or None)
    if not builder.is_prepared():
      return None
    label_key = (builder.info.supervised_keys or ('image', 'label'))[1]
    return tuple(builder.info.features[label_key].names)
  except Exception:  # pylint: disable=broad-except  (the prepared plan is checked without it)
    return None


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
  where = settings.prepared or 'auto'
  if where == 'off':
    src = sources.open_raw(settings)
  elif where == 'auto':
    src = None
    location = prepared_lib.default_location(settings)
    if os.path.exists(os.path.join(location, prepared_lib.PLAN_FILE)):
      try:
        src = prepared_lib.open_prepared(location, settings, _class_names_of_raw(settings))
      except DatasetError as e:
        log.warning('not reading the prepared data beside the dataset: %s', e)
    if src is None:
      src = sources.open_raw(settings)
  else:
    src = prepared_lib.open_prepared(where, settings, _class_names_of_raw(settings))
  src.settings = settings
  log.info('dataset %s: reading %s', settings.name, src.description)
  return src


def dataset_info(dataset) -> sources.DatasetInfo:
  """Name, class names and split sizes (`dataset`: config.dataset or an opened Source); for
  imagenet2012 with its tars present, prepares the TFDS dataset first."""
  return open_dataset(dataset).info
