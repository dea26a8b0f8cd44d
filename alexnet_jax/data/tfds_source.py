"""TFDS datasets (`dataset.name` any other name): imagenet2012, the real TFDS builder,
prepared from ILSVRC2012_img_{train,val}.tar found in the manual directory (default
{data_dir}/downloads/manual); any other TFDS image-classification dataset already prepared under
`data_dir`. A split is read as raw records (keys file_index << 32 | offset) and decoded by the
pipeline.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from alexnet_jax.data import sources
from alexnet_jax.data.preprocess import MAX_IMAGE_PIXELS, preprocess_encoded
from alexnet_jax.data.settings import (
    DatasetError,
    DatasetNotFoundError,
    Settings,
    default_tfds_dir,
    sanitise,
)


class TfdsSplit:
  """One split of a prepared TFDS dataset, read as raw records and decoded by the pipeline."""

  random_access = False

  def __init__(
      self,
      builder,
      split: str,
      image_key: str,
      label_key: str,
      resize: str,
      max_pixels: int = MAX_IMAGE_PIXELS,
  ):
    self.resize = resize  # dataset.resize
    self.max_pixels = int(max_pixels)  # dataset.max_image_pixels
    self.builder = builder
    self.split = split
    self.image_key = image_key
    self.label_key = label_key
    self.num_examples = int(builder.info.splits[split].num_examples)
    self._file_index = {
        os.path.basename(f): i for i, f in enumerate(builder.info.splits[split].filenames)
    }
    self._files = {i: f for f, i in self._file_index.items()}

  def instructions(self, start: int = 0, stop: int | None = None):
    """(filenames, file indices, skip, take) of examples [start, stop) in the split's order."""
    stop = self.num_examples if stop is None else stop
    if stop <= start:
      return [], [], [], []
    fis = self.builder.info.splits[f"{self.split}[{start}:{stop}]"].file_instructions
    names, idx, skip, take = [], [], [], []
    for fi in fis:
      t = fi.take if fi.take is not None and fi.take >= 0 else fi.examples_in_shard - fi.skip
      if t <= 0:
        continue
      names.append(os.fspath(fi.filename))
      idx.append(self._file_index[os.path.basename(os.fspath(fi.filename))])
      skip.append(fi.skip)
      take.append(t)
    return names, idx, skip, take

  def all_keys(self) -> np.ndarray:
    _, idx, skip, take = self.instructions()
    return sources.instruction_keys(idx, skip, take)

  def canonical(self, n: int | None = None, pil_keys=sources.NO_KEYS) -> tf.data.Dataset:
    """{'key', 'image', 'label'} of the first n records in the split's order; failures dropped."""
    del pil_keys  # TFDS images are in formats TF decodes
    ds = self.records(self.instructions(0, n), cycle_length=4)
    return ds.map(
        lambda r: {"key": r["key"], **self.parse(r["data"])}, tf.data.AUTOTUNE
    ).ignore_errors()

  def file_lengths(self) -> tuple:
    """(file names, examples per file) of the split, in the split's order."""
    names = [os.path.basename(os.fspath(f)) for f in self.builder.info.splits[self.split].filenames]
    return names, [int(n) for n in self.builder.info.splits[self.split].shard_lengths]

  def records(self, instr, order=None, with_data=True, cycle_length=16) -> tf.data.Dataset:
    """Dataset of {'key', ['data']} reading the instructions' files (in `order` if given)."""
    if not with_data:
      return sources.record_keys(instr, order, cycle_length)
    names, idx, skip, take = (tf.constant(np.asarray(x)) for x in sources.as_arrays(instr))
    n = len(instr[0])
    if order is not None:
      names, idx, skip, take = (tf.gather(x, order) for x in (names, idx, skip, take))
    files = tf.data.Dataset.from_tensor_slices((names, idx, skip, take))

    def one_file(name, fidx, s, t):
      keys = tf.data.Dataset.range(s, s + t).map(
          lambda o: tf.bitwise.left_shift(fidx, sources.KEY_SHIFT) + o
      )
      data = tf.data.TFRecordDataset(name, buffer_size=1 << 20).skip(s).take(t)
      return tf.data.Dataset.zip(keys, data).map(lambda k, d: {"key": k, "data": d})

    return files.interleave(
        one_file,
        cycle_length=max(1, min(cycle_length, n)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )

  def parse(self, serialized, with_name: bool = False) -> dict:
    """Serialized tf.Example -> {'image' uint8 [256,256,3], 'label' int32} (decodes the image);
    with_name: also 'name', the record's file_name feature ('' where it has none)."""
    ex = self.builder.info.features.deserialize_example(
        serialized, decoders={self.image_key: _skip_decoding()}
    )
    out = {
        "image": preprocess_encoded(
            ex[self.image_key], rule=self.resize, max_pixels=self.max_pixels
        ),
        "label": tf.cast(ex[self.label_key], tf.int32),
    }
    if with_name:
      out["name"] = ex["file_name"] if "file_name" in ex else tf.constant("")
    return out

  def record_name(self, key: int, file_name: str = "") -> str:
    """name_of without reading the record: its file_name (when known) and position."""
    fidx, offset = int(key) >> sources.KEY_SHIFT, int(key) & ((1 << sources.KEY_SHIFT) - 1)
    where = f"{self._files[fidx]}[{offset}]"
    return f"{file_name} ({where})" if file_name else where

  def name_of(self, key: int) -> str:
    """The record's file_name feature and position (reads the record: for a few keys)."""
    fidx, offset = int(key) >> sources.KEY_SHIFT, int(key) & ((1 << sources.KEY_SHIFT) - 1)
    file_name = ""
    if "file_name" in self.builder.info.features.keys():
      path = os.path.join(os.fspath(self.builder.data_dir), self._files[fidx])
      for rec in tf.data.TFRecordDataset(path).skip(offset).take(1):
        ex = self.builder.info.features.deserialize_example(
            rec, decoders={self.image_key: _skip_decoding()}
        )
        file_name = ex["file_name"].numpy().decode()
    return self.record_name(key, file_name)

  def python_fallback(self, key):
    return None


def _skip_decoding():
  return tfds.decode.SkipDecoding()


def _imagenet_missing_message(manual_dir: str, data_dir: str) -> str:
  return (
      "ImageNet (imagenet2012) is not prepared and its archives are missing.\n"
      f"Put these two files into the manual directory {manual_dir}:\n"
      "  ILSVRC2012_img_train.tar  (138 GB, one tar per synset)\n"
      "  ILSVRC2012_img_val.tar    (6.3 GB, 50,000 validation JPEGs)\n"
      "(register at https://image-net.org/download-images to download them), then prepare the "
      "dataset once with\n"
      f"  tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir}\n"
      "(or let the first run prepare it). Set dataset.data_dir / dataset.manual_dir to use other "
      "directories."
  )


def _refuse_paths(name: str) -> None:
  """A path given as dataset.name: TFDS would list its builders; say what was meant."""
  path = os.path.expanduser(name)
  if os.path.isdir(path):
    raise DatasetError(
        f"dataset.name={name!r} is a directory, not a TFDS dataset: a folder of images (one "
        f"subfolder per class) is read with --config.dataset.name=folder:{name}"
    )
  if os.sep in name and not os.path.exists(path) and name.split(os.sep)[0] in ("", ".", "..", "~"):
    raise DatasetNotFoundError(
        f"dataset.name={name!r} looks like a path, and it does not exist; a folder of images "
        f"is read with --config.dataset.name=folder:PATH (one subfolder per class)"
    )


def open_source(settings: Settings) -> sources.Source:
  name, manual_dir, resize = settings.name, settings.manual_dir, settings.resize
  _refuse_paths(name)
  data_dir = os.path.expanduser(settings.data_dir) if settings.data_dir else default_tfds_dir()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise sources.UnknownDatasetError(f"{type(e).__name__}: {e}") from None
  if not builder.is_prepared():
    base = name.split(":")[0].split("/")[0]
    if base == "imagenet2012":
      manual_dir = os.path.expanduser(manual_dir or os.path.join(data_dir, "downloads", "manual"))
      tars = [
          os.path.join(manual_dir, f)
          for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
      ]
      if not all(os.path.exists(t) for t in tars):
        raise FileNotFoundError(_imagenet_missing_message(manual_dir, data_dir))
      logging.warning(
          "preparing imagenet2012 from %s into %s (one time; hours for the full set)",
          manual_dir,
          data_dir,
      )
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
      )
    else:
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared under {data_dir} and runs never download. "
          f"Prepare it once on a machine with internet access:\n"
          f"  tfds build {name} --data_dir={data_dir}\n"
          "or point dataset.data_dir at the directory that holds it."
      )
  info = builder.info
  image_key, label_key = info.supervised_keys or ("image", "label")
  features = info.features
  if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
    raise ValueError(f"TFDS dataset {name!r} has no image feature {image_key!r}")
  if not isinstance(features[label_key], tfds.features.ClassLabel):
    raise ValueError(f"TFDS dataset {name!r}: {label_key!r} is not a class label")
  if "train" not in info.splits:
    raise ValueError(f"TFDS dataset {name!r} has no train split (splits: {list(info.splits)})")
  eval_split = next((s for s in ("validation", "test") if s in info.splits), None)
  train = TfdsSplit(builder, "train", image_key, label_key, resize)
  evals = TfdsSplit(builder, eval_split, image_key, label_key, resize) if eval_split else None
  stats_path = os.path.join(data_dir, "alexnet_jax_stats", f"{sanitise(name)}_train.npz")
  fingerprint = f"{info.version}:{train.num_examples}"
  return sources.Source(
      name,
      tuple(features[label_key].names),
      train,
      evals,
      stats_path,
      fingerprint,
      f"TFDS records of {name} under {data_dir}",
  )


def identity(settings: Settings) -> tuple:
  """(class names, signature) from the builder's metadata (version and training-split size),
  without reading a record; (None, None) where the dataset is not prepared."""
  name = settings.name
  try:
    builder = tfds.builder(
        name, data_dir=os.path.expanduser(settings.data_dir or default_tfds_dir())
    )
    if not builder.is_prepared():
      return None, None
    info = builder.info
    label_key = (info.supervised_keys or ("image", "label"))[1]
    return (
        tuple(info.features[label_key].names),
        f"{info.version}:{info.splits['train'].num_examples}",
    )
  except Exception:  # pylint: disable=broad-except  (the prepared plan is checked without it)
    return None, None


def prepared_dir(settings: Settings) -> str:
  return sources.prepared_dir_under(settings.data_dir or default_tfds_dir(), settings)


KIND = sources.SourceKind(
    form='the name of a TFDS image-classification dataset ("imagenet2012", ...)',
    matches=lambda name: True,  # any name the sources before it do not take
    open=open_source,
    identity=identity,
    prepared_dir=prepared_dir,
)
