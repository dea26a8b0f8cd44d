"""Per-process streams of batches: endless training batches and one-pass evaluation.

Stream semantics (what makes runs exactly resumable):
  * Sources with random access (digits, folder): epoch e is a stateless permutation of the good
    examples, seeded by (seed, e). Global batch b holds global stream positions [b*G, (b+1)*G);
    shard p reads positions [b*G + p*L, b*G + (p+1)*L) with L = G / num_shards. The global
    stream is therefore the same for any number of processes, and resuming at step N computes
    positions directly (nothing is read or decoded for skipped steps).
  * TFDS sources: shard p reads its contiguous 1/num_shards of the split (TFDS records are
    sequential). Each epoch permutes the order of the record files (stateless, seeded by
    (seed, epoch)) and shuffles records through a buffer seeded the same way. Resuming at step N
    jumps to the right epoch and skips records BEFORE decoding.
  * Prepared data (shards.py) keep the source's keys and layout: the same keys in the same
    order, only read from the shards instead of decoded from the originals.
  * A split smaller than one batch wraps around: a batch then holds some images twice (with
    different augmentations); an epoch counts as one step.
  * Files found undecodable by the statistics pass (or by the preparation) are excluded before
    the stream is built, so they never shift it. Anything else that fails to decode at run time
    is dropped by `ignore_errors`, counted and named by the iterator (`.skipped`). Prepared rows
    never fail silently: a damaged shard stops the run with its name.
"""

from __future__ import annotations

import gc
import re
import threading
from typing import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.python.eager import context
from tensorflow.python.framework import ops

from alexnet_jax.data import stats as stats_lib
from alexnet_jax.data.dataset import open_dataset
from alexnet_jax.data.settings import DatasetError
from alexnet_jax.data.shards import PreparedDataError
from alexnet_jax.data.sources import instruction_keys
from alexnet_jax.facts import IMAGE_SIZE

AUTOTUNE = tf.data.AUTOTUNE


def _shard(shard_index, num_shards):
  if shard_index is None or num_shards is None:
    shard_index = jax.process_index() if shard_index is None else shard_index
    num_shards = jax.process_count() if num_shards is None else num_shards
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
  return int(shard_index), int(num_shards)


def _local_batch(global_batch_size, num_shards):
  if global_batch_size % num_shards:
    raise ValueError(
        f"global batch size {global_batch_size} is not divisible by the "
        f"{num_shards} shards (processes)"
    )
  return global_batch_size // num_shards


def _epoch_seed(seed, epoch):
  """int64 tensor seed for epoch `epoch` (tf.data shuffle takes tensor seeds)."""
  return (tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64) * 7_919 + 17) % (2**31 - 1)


def _shuffle(ds, buffer: int, seed):
  """ds.shuffle(buffer, seed) with the order this seed alone gives. TensorFlow pairs an op's
  seed with the global one when one is set (tf.random.set_seed, keras.utils.set_random_seed in
  the same process): the order would then depend on it, and a traced seed fails outright
  ("a symbolic tf.Tensor as a Python bool"). So the global seed is hidden while the shuffle
  takes its seeds."""
  if tf.executing_eagerly():
    holder, attr = context.context(), "_seed"
  else:
    holder, attr = ops.get_default_graph(), "seed"
  saved = getattr(holder, attr)
  setattr(holder, attr, None)
  try:
    return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
  finally:
    setattr(holder, attr, saved)


def _is_in(key, sorted_keys: np.ndarray):
  if not len(sorted_keys):
    return tf.constant(False)
  table = tf.constant(sorted_keys)
  i = tf.searchsorted(table, tf.reshape(key, [1]))[0]
  return tf.logical_and(
      i < len(sorted_keys), tf.gather(table, tf.minimum(i, len(sorted_keys) - 1)) == key
  )


def _prepared_error(e: tf.errors.OpError):
  """A PreparedDataError raised inside tf.data, as the DatasetError it was (else None)."""
  m = re.search(r"PreparedDataError: (.*?)(?:\n|$)", e.message)
  return PreparedDataError(m.group(1)) if m else None


def _next(it):
  """next(it), or the PreparedDataError that a damaged prepared shard raised inside tf.data.

  The error is raised by the caller after it let go of `it` (`_released`): a tf.data iterator
  whose threads are still in a Python function when the interpreter shuts down (the FATAL
  exit that follows) can wait on them for ever. Returned, not raised, so that no traceback
  keeps the iterator alive."""
  try:
    return next(it), None
  except tf.errors.OpError as e:
    error = _prepared_error(e)
    if error is None:
      raise
  return None, error


def _released(error: Exception) -> Exception:
  gc.collect()  # the iterator the caller dropped: stopped now, while its threads can finish
  return error


def _release(holder) -> None:
  """Drop the tf.data iterator in `holder` (a one-element list, its only reference) without
  waiting. Its destructor joins tf.data's autotuning thread, which at times sleeps until its
  next wake-up (the period doubles up to a minute) before it sees the cancellation: measured
  14 s for one of seven training streams released together. A daemon thread drops the last
  reference instead; the stream stops producing either way, and an interpreter that exits
  meanwhile neither waits for that thread nor fails."""
  threading.Thread(target=holder.clear, name="release-tf.data-iterator", daemon=True).start()


class _Batches:
  """Python iterator over a tf.data stream of batches; counts and names dropped examples.

  Each element carries its position `q` in this process's stream: a gap means `ignore_errors`
  dropped what failed to decode at run time. With `recover` (random-access sources), the
  stream is batched before `ignore_errors`, so that tf.data fuses the decoding map with the
  batching (about 5% more images/s per core); a failure then drops its whole batch, whose
  positions `recover(qs)` decodes again one by one, and the good ones refill the batches: the
  result is the same stream of examples as dropping the failed image alone.
  """

  def __init__(self, ds, first_q, name_of_q: Callable[[int], str], batch_size: int, recover=None):
    self._it = ds.as_numpy_iterator()
    self._size = batch_size
    self._next_q = first_q
    self._name_of_q = name_of_q
    self._recover = recover
    self._pending: list = []  # examples ({'q', 'image', 'label'} arrays) not yet handed out
    self.skipped: list = []  # names of images dropped at run time

  def __iter__(self):
    return self

  def _pull(self) -> dict:
    b, error = _next(self._it)
    if error is not None:
      self._it = None
      raise _released(error)
    q = b["q"]
    missing = np.setdiff1d(np.arange(self._next_q, q[-1] + 1), q)
    self._next_q = int(q[-1]) + 1
    if not len(missing):
      return b
    parts = []
    if self._recover is not None:
      parts.append(self._recover(missing))
      missing = np.setdiff1d(missing, parts[0]["q"])
    for m in missing:
      name = self._name_of_q(int(m))
      self.skipped.append(name)
      logging.warning(
          "skipped an image that failed to decode: %s (%d skipped so far)", name, len(self.skipped)
      )
    merged = {k: np.concatenate([p[k] for p in parts] + [b[k]]) for k in ("q", "image", "label")}
    order = np.argsort(merged["q"], kind="stable")
    return {k: v[order] for k, v in merged.items()}

  def __next__(self) -> dict:
    if not self._pending:
      b = self._pull()
      if len(b["q"]) == self._size:  # the usual case: the batch as tf.data made it
        return {"image": b["image"], "label": b["label"]}
      self._pending = [b]
    while sum(len(p["q"]) for p in self._pending) < self._size:
      self._pending.append(self._pull())
    merged = {k: np.concatenate([p[k] for p in self._pending]) for k in ("q", "image", "label")}
    rest = {k: v[self._size :] for k, v in merged.items()}
    self._pending = [rest] if len(rest["q"]) else []
    return {k: merged[k][: self._size] for k in ("image", "label")}

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def close(self):
    """Release the tf.data iterator (its threads and buffers) now, not when collected."""
    holder, self._it = [self._it], None
    _release(holder)


def _random_access_positions(good: np.ndarray, seed, p, count, lb):
  """Function q -> key: local stream position q of process p -> example key."""
  g = lb * count
  m = len(good)
  good_t = tf.constant(good)
  seed = int(seed)

  def key_of(q):
    q = tf.cast(q, tf.int64)
    pos = (q // lb) * g + p * lb + q % lb  # global stream position
    epoch = pos // m
    i = tf.random.experimental.index_shuffle(
        pos % m, tf.stack([tf.constant(seed, tf.int64), epoch]), tf.constant(m - 1, tf.int64)
    )
    return tf.gather(good_t, i)

  return key_of


def train_iterator(
    dataset,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Iterator[dict]:
  """Endless training batches of this process: {'image': uint8 [L,256,256,3], 'label': int32 [L]}.

  `dataset`: config.dataset, or the Source that open_dataset made of it.
  L = global_batch_size // num_shards; shard p holds positions [p*L, (p+1)*L) of each global
  batch (sharding.process_data_shard(mesh) gives a process its shard). `start_step=N` yields
  exactly what an uninterrupted run yields from its batch N+1 on. Returns an iterator whose
  `.skipped` lists images dropped at run time (known bad files are excluded up front and listed
  in dataset_stats(...).bad_files).
  """
  p, count = _shard(shard_index, num_shards)
  lb = _local_batch(global_batch_size, count)
  src = open_dataset(dataset)
  settings = src.settings
  split = src.train
  stats = stats_lib.source_stats(src, settings)
  bad = np.asarray(stats["bad_keys"], np.int64)
  if getattr(split, "prepared", False):  # rows that failed when prepared (stats_max_images
    bad = np.union1d(bad, split.bad_keys)  # may have scanned only some of them)
  bad = np.sort(bad)
  pil_keys = np.asarray(stats["pil_keys"], np.int64)
  if len(bad):
    logging.warning(
        "excluding %d undecodable training files: %s",
        len(bad),
        ", ".join(map(str, stats["bad_files"])),
    )
  q0 = int(start_step) * lb
  by_key = settings.cache or getattr(split, "prepared", False)
  if split.random_access:
    good = np.setdiff1d(split.all_keys(), bad)
    key_of = _random_access_positions(good, seed, p, count, lb)
    name_of_q = lambda q: split.name_of(int(key_of(q)))  # noqa: E731
    if by_key:
      ds = tf.data.Dataset.counter(q0).map(lambda q: {"q": q, "key": key_of(q)})
    else:  # one parallel map: position -> key -> decoded example
      load = lambda q: {"q": q, **split.element(key_of(q), pil_keys)}  # noqa: E731
      ds = tf.data.Dataset.counter(q0).map(load, AUTOTUNE)
  else:
    ds, name_of_q = _tfds_train_stream(settings, split, bad, seed, p, count, q0, by_key)
  if settings.cache:
    return _cached_batches(ds, split, lb, pil_keys)
  recover = None
  if getattr(split, "prepared", False):
    ds = split.batches(ds, lb)  # prepared rows never fail silently: no ignore_errors
  elif split.random_access:
    ds = ds.batch(lb).ignore_errors()  # map + batch fused (see _Batches)

    def recover(qs):
      again = tf.data.Dataset.from_tensor_slices(qs).map(load).ignore_errors()
      parts = list(again.batch(len(qs)).as_numpy_iterator())
      empty = {
          "q": np.zeros([0], np.int64),
          "image": np.zeros([0, IMAGE_SIZE, IMAGE_SIZE, 3], np.uint8),
          "label": np.zeros([0], np.int32),
      }
      return parts[0] if parts else empty

  else:
    ds = ds.ignore_errors().batch(lb)
  return _Batches(ds.prefetch(AUTOTUNE), q0, name_of_q, lb, recover)


def _tfds_train_stream(settings, split, bad, seed, p, count, q0, by_key):
  n = split.num_examples
  start, stop = p * n // count, (p + 1) * n // count  # this process's contiguous share
  instr = split.instructions(start, stop)
  shard_keys = instruction_keys(*instr[1:])
  length = len(shard_keys) - int(np.isin(bad, shard_keys).sum())  # good examples per epoch
  if length <= 0:
    raise ValueError(f"process {p} has no training examples ({n} examples, {count} processes)")
  buffer = max(1, min(int(settings.shuffle_buffer), length))
  n_files = len(instr[0])

  def epoch(e):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n_files, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), e])
    )
    ds = split.records(instr, order=order, with_data=not by_key)
    if len(bad):
      ds = ds.filter(lambda r: tf.logical_not(_is_in(r["key"], bad)))
    return _shuffle(ds, buffer, _epoch_seed(seed, e))

  e0, offset = divmod(q0, length)
  ds = (
      epoch(tf.constant(e0, tf.int64))
      .skip(offset)
      .concatenate(tf.data.Dataset.counter(e0 + 1).flat_map(epoch))
  )  # skip before decoding
  ds = ds.enumerate(q0).map(lambda q, r: {"q": q, **r})
  if not by_key:
    ds = ds.map(lambda r: {"q": r["q"], **split.parse(r["data"])}, num_parallel_calls=AUTOTUNE)
  name_of_q = lambda q: f"example #{q} of process {p} in {split.split}"  # noqa: E731
  return ds, name_of_q


def _cached_batches(key_stream: tf.data.Dataset, split, lb: int, pil_keys):
  """dataset.cache=True: decode the split once into RAM, then gather batches by key (same
  stream)."""
  keys = split.all_keys()
  images = np.zeros([len(keys), IMAGE_SIZE, IMAGE_SIZE, 3], np.uint8)
  labels = np.zeros([len(keys)], np.int32)
  filled = np.zeros([len(keys)], bool)
  decoded = split.canonical(None, pil_keys).batch(256).as_numpy_iterator()
  while True:
    try:
      b, error = _next(decoded)
    except StopIteration:
      break
    if error is not None:
      decoded = None
      raise _released(error)
    rows = np.searchsorted(keys, b["key"])
    images[rows], labels[rows], filled[rows] = b["image"], b["label"], True
  for key in keys[~filled]:
    logging.warning("image failed to decode; its cached copy stays black: %s", split.name_of(key))
  return _CachedBatches(key_stream.batch(lb).prefetch(AUTOTUNE), keys, images, labels)


class _CachedBatches:
  """Batches gathered from the decoded split in RAM by the key stream's keys."""

  def __init__(self, key_batches: tf.data.Dataset, keys, images, labels):
    self._it = key_batches.as_numpy_iterator()
    self._keys, self._images, self._labels = keys, images, labels

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    rows = np.searchsorted(self._keys, next(self._it)["key"])
    return {"image": self._images[rows], "label": self._labels[rows]}

  def close(self):
    """Release the tf.data iterator now, not when collected."""
    holder, self._it = [self._it], None
    _release(holder)


def eval_iterator(
    dataset,
    *,
    global_batch_size: int,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Iterator[dict]:
  """One pass over the whole validation split: {'image', 'label', 'mask'} per local batch.

  Process p reads its contiguous share of the split; every process yields the same number of
  batches (padding with mask=False), and the masked-in examples of all processes are exactly the
  split, each once. An image that fails to decode is reported and replaced by padding.
  """
  return split_iterator(
      dataset,
      "eval",
      global_batch_size=global_batch_size,
      shard_index=shard_index,
      num_shards=num_shards,
  )


def _split(src, split: str):
  if split not in ("train", "eval", "test"):
    raise ValueError(f"split must be 'train', 'eval' or 'test', got {split!r}")
  if split == "test" and src.test is None:
    raise DatasetError(
        f"dataset {src.name} has no test split (oxford17: has one with datasplits.mat beside "
        "the images); evaluate the validation split instead."
    )
  return {"train": src.train, "eval": src.eval, "test": src.test}[split]


def _covered(split, max_examples) -> int:
  n = 0 if split is None else split.num_examples
  return min(n, int(max_examples)) if max_examples else n


def split_size(dataset, split: str, max_examples: int | None = None) -> int:
  """How many examples split_iterator(dataset, split, max_examples=...) covers."""
  return _covered(_split(open_dataset(dataset), split), max_examples)


def split_iterator(
    dataset,
    split: str,
    *,
    global_batch_size: int,
    shard_index: int | None = None,
    num_shards: int | None = None,
    max_examples: int | None = None,
) -> Iterator[dict]:
  """One pass over a split ('train', 'eval', or 'test' where the dataset has one) in a fixed
  order, as eval_iterator does it.

  max_examples: cover only that many, spread over the split: evenly spaced keys of
  random-access sources (whose canonical order is class by class), a prefix of TFDS
  records (which TFDS shuffled when it prepared them).
  """
  p, count = _shard(shard_index, num_shards)
  lb = _local_batch(global_batch_size, count)
  split = _split(open_dataset(dataset), split)
  n = _covered(split, max_examples)
  if n == 0:
    return iter(())
  start, stop = p * n // count, (p + 1) * n // count
  num_batches = -(-(-(-n // count)) // lb)  # ceil(ceil(n / count) / lb): same on every process
  prepared = getattr(split, "prepared", False)
  if split.random_access:
    # Evenly spaced over the whole split (all of it when n == num_examples).
    chosen = np.unique(np.linspace(0, split.num_examples - 1, n).round().astype(np.int64))
    expected = split.all_keys()[chosen[start:stop]]
    keys = tf.data.Dataset.from_tensor_slices({"key": expected})
    if not prepared:
      ds = keys.map(lambda r: {"key": r["key"], **split.element(r["key"])}, AUTOTUNE)
  else:
    instr = split.instructions(start, stop)
    expected = instruction_keys(*instr[1:])
    keys = split.records(instr, cycle_length=4, with_data=not prepared)
    if not prepared:
      ds = keys.map(lambda r: {"key": r["key"], **split.parse(r["data"])}, AUTOTUNE)
  if prepared:  # rows that failed when prepared become padding, as failures do below
    keys = keys.filter(lambda r: tf.logical_not(_is_in(r["key"], np.sort(split.bad_keys))))
    ds = split.examples(keys)
  else:
    ds = ds.ignore_errors()
  ds = ds.map(
      lambda r: {"q": r["key"], "image": r["image"], "label": r["label"], "mask": tf.constant(True)}
  )
  pad = tf.data.Dataset.from_tensors(
      {
          "q": tf.constant(-1, tf.int64),
          "image": tf.zeros([IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8),
          "label": tf.constant(0, tf.int32),
          "mask": tf.constant(False),
      }
  ).repeat()
  ds = ds.concatenate(pad).take(num_batches * lb).batch(lb).prefetch(AUTOTUNE)
  return _EvalBatches(ds, expected, split)


class _EvalBatches:
  """Reports validation images dropped by ignore_errors (their slots became padding)."""

  def __init__(self, ds, expected_keys, split):
    self._it = ds.as_numpy_iterator()
    self._expected = expected_keys
    self._seen = []
    self._split = split
    self.skipped: list = []

  def __iter__(self):
    return self

  def __next__(self):
    try:
      b, error = _next(self._it)
    except StopIteration:
      seen = np.concatenate(self._seen) if self._seen else np.zeros([0], np.int64)
      for key in np.setdiff1d(self._expected, seen):
        name = self._split.name_of(int(key))
        self.skipped.append(name)
        logging.warning("validation image failed to decode and was left out: %s", name)
      self._expected = np.zeros([0], np.int64)
      raise
    if error is not None:
      self._it = None
      raise _released(error)
    self._seen.append(b["q"][b["mask"]])
    return {"image": b["image"], "label": b["label"], "mask": b["mask"]}

  def close(self):
    """Release the tf.data iterator now (a pass stopped early still prefetches)."""
    holder, self._it = [self._it], None
    _release(holder)
