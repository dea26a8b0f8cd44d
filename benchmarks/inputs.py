"""The input benchmark: host images/s from JPEG bytes to the 256x256 uint8 batches the
device receives, per core and on all cores (see bench.py's docstring for the figures).

Imports TensorFlow (through alexnet_jax.data): import it after alexnet_jax.runtime.setup().
No model, no PyTorch.
"""

from __future__ import annotations

import functools
import gc
import os
import tempfile
import time

import tensorflow as tf

from alexnet_jax import data as data_lib
from alexnet_jax.data import shard_writer
from benchmarks import jpegs, timing
from configs import default as default_config

# Contender -> what it reads, in the order the first repeat runs them.
SOURCES = ("decode", "pipeline", "prepared", "prepared_raw")
# Timed batches per --input_batches: the prepared sources run 4-30x faster than the decode,
# and a timed unit of a few tens of ms is at the mercy of one scheduler tick (at 1x their
# per-core rates vary 3x between repeats).
BATCHES_FACTOR = {"decode": 1, "pipeline": 1, "prepared": 4, "prepared_raw": 16}
# The figures (and ratios) run_input_benchmark returns; None when the input benchmark is off.
FIGURES = tuple(
    f"input_{name}_images_per_sec_{suffix}"
    for suffix in ("per_core", "all_cores")
    for name in SOURCES
) + (
    "input_pipeline_vs_decode",
    "input_prepared_vs_decode",
    "input_prepared_raw_vs_decode",
    "input_targets_met",
    "input_cores_needed_per_1000_images_per_sec",
    "input_cores_needed_per_1000_images_per_sec_raw_jpegs",
    "input_cores",
)
# ImageNet's training JPEGs: about 400x350 on average, saved at quality 90-95.
IMAGE_SIZE = (400, 350)
JPEG_QUALITY = (90, 95)


def folder_config(root: str, prepared: str):
  """A complete config.dataset for the JPEG folder (prepared: 'off' or a directory)."""
  cfg = default_config.get_config().dataset
  cfg.name = f"folder:{root}"
  cfg.prepared = prepared
  return cfg


def decode_dataset(encoded: list, batch_size: int, one_thread: bool) -> tf.data.Dataset:
  """The bare decode + resize: the project's own ops over JPEG bytes already in memory,
  nothing else (no file reads, no shuffling by key, no prefetch)."""
  ds = (
      tf.data.Dataset.from_tensor_slices(encoded)
      .repeat()
      .map(data_lib.preprocess_encoded, num_parallel_calls=tf.data.AUTOTUNE)
      .batch(batch_size)
  )
  if one_thread:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
  return ds


def measure_rate(make_iterator, *, batch_size: int, warmup: int, batches: int, cpus=None) -> float:
  """images/s of a FRESH iterator from make_iterator(), after `warmup` untimed batches (tf.data
  instantiates its functions, autotunes and fills its buffers), over `batches` batches, with
  the whole process on `cpus` (None: unpinned). A fresh iterator per measurement, deleted
  after it: an idle one would refill its buffers in the background, stealing the pinned
  core from the contender being timed and giving itself a head start at its next turn."""
  with timing.pinned(cpus):
    it = make_iterator()
    for _ in range(warmup):
      b = next(it)
      images = b["image"] if isinstance(b, dict) else b  # the bare decode yields images
      assert images.shape == (batch_size, 256, 256, 3), images.shape
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    seconds = time.perf_counter() - t0
    del it
    gc.collect()
  return batch_size * batches / seconds


def run_input_benchmark(
    *, batch_size=128, input_images=384, input_batches=6, warmup=3, repeats=3, log=print
) -> dict:
  """Writes the JPEG folder and its two preparations to a temporary directory and times the
  four sources per core and on all cores, alternated; returns the input_* figures."""
  cores = sorted(os.sched_getaffinity(0))
  one_core = {cores[-1]}  # not core 0, which takes most interrupts
  with tempfile.TemporaryDirectory(prefix="alexnet_bench_input_") as tmp:
    root = os.path.join(tmp, "jpegs")
    log(
        f"input: writing {input_images} JPEGs (~{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, quality "
        f"{JPEG_QUALITY[0]}-{JPEG_QUALITY[1]}) and preparing them as JPEG and raw shards..."
    )
    jpegs.write_jpeg_folder(root, input_images, size=IMAGE_SIZE, quality=JPEG_QUALITY)
    configs = {"pipeline": folder_config(root, "off")}
    for name, fmt in (("prepared", "jpeg"), ("prepared_raw", "raw")):
      out = os.path.join(tmp, name)
      shard_writer.prepare(
          configs["pipeline"],
          out,
          fmt=fmt,
          jpeg_quality=95,
          images_per_shard=1024,
          progress=False,
      )
      configs[name] = folder_config(root, out)
    # The decode reads the training split's own files, as the pipeline does.
    encoded = []
    for path in data_lib.open_dataset(configs["pipeline"]).train.paths:
      with open(path, "rb") as f:
        encoded.append(f.read())
    decode = {one: decode_dataset(encoded, batch_size, one_thread=one) for one in (True, False)}

    def stream(name, one):
      if name == "decode":
        return decode[one].as_numpy_iterator
      return lambda: data_lib.train_iterator(
          configs[name], global_batch_size=batch_size, seed=0, shard_index=0, num_shards=1
      )

    contenders = {}
    for suffix, cpus in (("per_core", one_core), ("all_cores", None)):
      for name in SOURCES:
        contenders[f"{name}_images_per_sec_{suffix}"] = functools.partial(
            measure_rate,
            stream(name, cpus is not None),
            batch_size=batch_size,
            warmup=warmup,
            batches=input_batches * BATCHES_FACTOR[name],
            cpus=cpus,
        )
    log(
        f"input: timing {len(contenders)} contenders ({len(cores)} cores; per core = the "
        f"process on core {cores[-1]}): {repeats} repeats x {input_batches} batches of "
        f"{batch_size} (x {BATCHES_FACTOR} by source), alternating..."
    )
    jiffies = timing.read_cpu_jiffies()
    median, rates = timing.rates_in_rotation(contenders, repeats=repeats)
    steal = timing.steal_fraction(jiffies, timing.read_cpu_jiffies())

  # input_{decode,pipeline,prepared,prepared_raw}_images_per_sec_{per_core,all_cores}
  r = {f"input_{name}": rate for name, rate in median.items()}
  decode_rate = r["input_decode_images_per_sec_per_core"]
  for name in ("pipeline", "prepared", "prepared_raw"):
    r[f"input_{name}_vs_decode"] = r[f"input_{name}_images_per_sec_per_core"] / decode_rate
  r["input_targets_met"] = (
      r["input_pipeline_vs_decode"] >= 0.9
      and r["input_prepared_vs_decode"] >= 4
      and r["input_prepared_raw_vs_decode"] >= 20
  )
  # Host cores an accelerator eating 1000 images/s needs, from prepared JPEG shards / from the
  # original JPEG files.
  r["input_cores_needed_per_1000_images_per_sec"] = (
      1000 / r["input_prepared_images_per_sec_per_core"]
  )
  r["input_cores_needed_per_1000_images_per_sec_raw_jpegs"] = (
      1000 / r["input_pipeline_images_per_sec_per_core"]
  )
  r["input_cores"] = len(cores)
  r["input_images"] = input_images
  r["input_train_images"] = len(encoded)
  r["input_batch_size"] = batch_size
  r["input_batches"] = input_batches
  r["input_timed_batches"] = {name: input_batches * f for name, f in BATCHES_FACTOR.items()}
  r["input_warmup_batches"] = warmup
  r["input_repeats"] = repeats
  r["input_host_steal_fraction"] = steal
  r["input_images_per_sec_all_repeats"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
  return r
