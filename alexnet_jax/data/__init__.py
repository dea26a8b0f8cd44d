"""The data layer: sources, the paper's 256x256 preprocessing, statistics, streams, preparation.

  preprocess    decode and resize ops (uint8 256x256, eagerly and inside tf.data)
  settings      config.dataset as the layer reads it; DatasetError
  sources       what every source shares: Source, its splits, SourceKind
  registry      every source, one line each: digits, folder:, oxford17:, TFDS (imagenet2012
                included), each declared in its own module (digits, folder, oxford17,
                tfds_source): name form, opener, signature, prepared location
  shards        reading prepared shards (256x256 JPEG or raw rows, written once)
  dataset       open_dataset: prepared shards when there are any, else the originals
  stats         the training split's mean image and RGB PCA, cached
  streams       per-process training and evaluation batches (exactly resumable)
  shard_writer  writing prepared shards (python -m alexnet_jax.prepare)

Open a dataset once (`open_dataset(config.dataset)`) and pass the Source to the functions
below; each also accepts config.dataset itself and then opens it.
"""

from alexnet_jax.data.dataset import dataset_info, open_dataset
from alexnet_jax.data.preprocess import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    PIL_FORMATS,
    RESIZE_RULES,
    ImageTooLargeError,
    apply_orientation,
    check_pixels,
    decode_image,
    exif_orientation,
    image_pixels,
    max_image_bytes,
    pil_load,
    pil_open,
    preprocess_encoded,
    resize_and_center_crop,
    too_many_pixels,
)
from alexnet_jax.data.settings import DatasetError, DatasetNotFoundError, Settings
from alexnet_jax.data.shards import PreparedDataError
from alexnet_jax.data.sources import DatasetInfo, Source
from alexnet_jax.data.stats import DatasetStats, dataset_stats, stats_cache_path
from alexnet_jax.data.streams import eval_iterator, split_iterator, split_size, train_iterator

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageTooLargeError",
    "check_pixels",
    "image_pixels",
    "max_image_bytes",
    "pil_open",
    "too_many_pixels",
    "PIL_FORMATS",
    "RESIZE_RULES",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetInfo",
    "DatasetStats",
    "PreparedDataError",
    "Settings",
    "Source",
    "apply_orientation",
    "dataset_info",
    "dataset_stats",
    "decode_image",
    "eval_iterator",
    "exif_orientation",
    "open_dataset",
    "pil_load",
    "preprocess_encoded",
    "resize_and_center_crop",
    "split_iterator",
    "split_size",
    "stats_cache_path",
    "train_iterator",
]
