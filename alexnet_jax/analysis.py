"""Use what a run trained: predictions, any layer's activations, the paper's figures, per-class
errors and ensembles. For notebooks (notebooks/explore_a_run.ipynb) and the commands
predict.py, figures.py and evaluate.py.

  from alexnet_jax import analysis
  run = analysis.load_run("runs/demo")        # latest checkpoint; step=N for another
  probs = run.predict(["cat.jpg", pil_image, uint8_array])   # [N, num_classes]
  run.top_k(probs)                            # [[(class name, probability), ...], ...]
  fc7 = run.features(images, "fc7")           # [N, 4096] at width 1
  analysis.conv1_kernels_figure(run.variables)              # Fig. 3
  analysis.nearest_neighbours_figure(run, queries)          # Fig. 4
  analysis.ensemble_evaluate(["runs/a", "runs/b"], crops=10)

Everything that turns an image into probabilities is the evaluation's own code: the host
pipeline's decode and resize (alexnet_jax.data), the run's InputSpec (its preprocessing.json),
augment.eval_views and the jitted evaluation.view_probs. A run needs no dataset for predict,
features and Fig. 3 (run_dir.py); scanning a split (Fig. 4, the confusion matrix, ensembles)
reads the dataset.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np
import sklearn.metrics
import tensorflow as tf
from absl import logging
from matplotlib.figure import Figure
from PIL import Image

from alexnet_jax import (
    augment,
    checkpoint,
    evaluation,
    facts,
    files,
    reporting,
    run_data,
    run_dir,
    sharding,
    train_state,
)
from alexnet_jax import data as data_lib
from alexnet_jax import model as model_lib
from alexnet_jax.input_spec import InputSpec

# Names `features` accepts, in the network's order (model.py sows each under this name or
# name + "_out").
LAYERS = (
    "conv1",
    "pool1",
    "conv2",
    "pool2",
    "conv3",
    "conv4",
    "conv5",
    "pool5",
    "fc6",
    "fc7",
    "fc8",  # a hidden fc8 only (keras_bn); otherwise fc8's outputs are the logits
    "logits",
)
_SOWN = {n: (f"{n}_out" if n.startswith(("conv", "fc")) else n) for n in LAYERS}
_MAX_BATCH = 32
# How JPEG, PNG, GIF and BMP files start (WebP: "WEBP" at byte 8): what TF's decode_image
# reads. Anything else goes straight to PIL, without a TF error in the log.
_TF_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


class RunError(ValueError):
  """A run that cannot be used as asked; the message says why and what to do."""


class ImageError(ValueError):
  """An image that cannot be read or decoded; the message names it."""


# ---- images -------------------------------------------------------------------------------
def quoted(name: str) -> str:
  """`name` as one printable token for a line of output: as it is when it holds only printable
  characters without spaces, quotes, backslashes or ": "; else as a JSON string (double quotes,
  backslash escapes, ASCII), which json.loads reads back. A name holding a newline then cannot
  split a line, nor a space or ": " the fields after it."""
  plain = name.isprintable() and ": " not in name and not any(c in name for c in " \"'\\")
  return name if plain and name else json.dumps(name)


def _rgb_array(array: np.ndarray, name: str) -> np.ndarray:
  a = np.asarray(array)
  if a.dtype != np.uint8:
    raise ImageError(
        f"{name}: images must be uint8 (0..255), got {a.dtype}; for floats in [0, 1] pass "
        f"(x * 255).round().astype(np.uint8)"
    )
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  if a.ndim != 3 or a.shape[-1] not in (3, 4) or 0 in a.shape:
    raise ImageError(
        f"{name}: expected an [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] image, "
        f"got shape {a.shape}"
    )
  return a[..., :3]  # RGBA: alpha dropped, as decoding does


def load_image(source, max_pixels: int | None = None) -> np.ndarray:
  """A path, encoded bytes, a PIL image or a uint8 array -> uint8 [H, W, 3] RGB.

  Files and bytes are decoded as the input pipeline decodes them (data_lib.decode_image:
  grayscale, palette, RGBA and CMYK become RGB), with PIL for formats TF does not read (as
  the pipeline's fallback). Raises ImageError, naming the image, for anything else: a path
  that is not a regular file (a FIFO, a device: refused before it is opened), a file larger
  than an image of the pixel limit can be, and an image whose header declares more than
  `max_pixels` (default data_lib.MAX_IMAGE_PIXELS, PIL's bomb limit; checked before decoding).
  """
  limit = data_lib.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
  if isinstance(source, Image.Image):
    try:
      data_lib.check_pixels(source.size[0] * source.size[1], limit, "the PIL image")
    except data_lib.ImageTooLargeError as e:
      raise ImageError(str(e)) from None
    return np.asarray(source.convert("RGB"))
  if isinstance(source, np.ndarray):
    return _rgb_array(source, "array")
  if isinstance(source, (bytes, bytearray)):
    name, data = "<bytes>", bytes(source)
  else:
    name = os.fspath(source)
    try:
      st = os.stat(name)
      if not stat.S_ISREG(st.st_mode):  # refused before any open: a FIFO would block
        raise ImageError(
            f"cannot read {quoted(name)}: it is {files.describe_kind(st.st_mode)}, not a "
            "regular file"
        )
      most = data_lib.max_image_bytes(limit)
      if st.st_size > most:
        raise ImageError(
            f"cannot read {quoted(name)}: {st.st_size:,} bytes, more than an image of "
            f"{limit:,} pixels can be ({most:,}; --max_image_pixels)"
        )
      with files.open_regular(name, "image", most, ImageError) as f:
        data = f.read(min(st.st_size, most) + 1)
    except files.BadFileError as e:
      raise ImageError(f"cannot read {quoted(name)}: {e}") from None
    except OSError as e:
      raise ImageError(f"cannot read {quoted(name)}: {e.strerror or e}") from None
  pixels = data_lib.image_pixels(data)
  if pixels > limit and not data.startswith(b"GIF"):  # a GIF's frames: PIL reads only one
    raise ImageError(_too_large(name, pixels, limit))
  if (data.startswith(_TF_IMAGE_SIGNATURES) or data[8:12] == b"WEBP") and pixels <= limit:
    try:
      return data_lib.decode_image(data, limit).numpy()
    except (tf.errors.OpError, ValueError):
      pass
  try:
    with data_lib.pil_open(io.BytesIO(data), quoted(name), limit) as im:
      return np.asarray(im.convert("RGB"))
  except data_lib.ImageTooLargeError as e:
    raise ImageError(_too_large(name, e.pixels or pixels, limit)) from None
  except Exception as e:  # pylint: disable=broad-except
    raise ImageError(
        f"cannot decode {quoted(name)}: not an image that TensorFlow or PIL can read "
        f"({type(e).__name__})"
    ) from None


def _too_large(name: str, pixels: int, limit: int) -> str:
  return f"cannot decode {quoted(name)}: {data_lib.too_many_pixels(pixels, limit)}"


def _image_list(images) -> list:
  if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)):
    return [images]
  if isinstance(images, np.ndarray):
    return list(images) if images.ndim == 4 else [images]
  return list(images)


def preprocess(images, rule: str = "round", max_pixels: int | None = None) -> np.ndarray:
  """Images (one, a list, or a uint8 [N, H, W, C] batch; see load_image) -> uint8
  [N, 256, 256, 3]: the shorter side resized to 256, the center kept, as the input pipeline
  does (data_lib.resize_and_center_crop; `rule`: the run's dataset.resize)."""
  return _stack(
      [
          data_lib.resize_and_center_crop(load_image(x, max_pixels), rule=rule).numpy()
          for x in _image_list(images)
      ]
  )


def _stack(images: list) -> np.ndarray:
  size = facts.IMAGE_SIZE
  return np.stack(images) if images else np.zeros([0, size, size, 3], np.uint8)


def _padded_batches(n: int, max_batch: int) -> Iterator[tuple[int, int, int]]:
  """(start, stop, padded size): sizes are powers of two up to max_batch, so a jitted
  function compiles at most log2(max_batch) + 1 times whatever the number of images."""
  for start in range(0, n, max_batch):
    stop = min(start + max_batch, n)
    size = 1
    while size < stop - start:
      size *= 2
    yield start, stop, min(size, max_batch)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  return (
      np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)]) if size > len(x) else x
  )


# ---- a run --------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class TrainedRun:
  """A restored run: what it is, its parameters and what inference needs (run_dir.py)."""

  workdir: str
  config: ml_collections.ConfigDict
  variables: dict  # {"params": ...} (and "batch_stats" with BatchNorm) on one local device
  step: int
  meta: dict  # saved beside the state: num_classes, dataset, eval metrics
  model: model_lib.AlexNet
  class_names: tuple[str, ...]
  eval_crops: int  # the views `predict` averages by default (§4.1)
  stats: data_lib.DatasetStats | None  # None: a run from before dataset_stats.npz
  missing: tuple[str, ...]  # run files the workdir lacks
  _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def resize_rule(self) -> str:
    return self.config.dataset.resize

  @property
  def mesh(self):
    if "mesh" not in self._compiled:
      self._compiled["mesh"] = sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])
    return self._compiled["mesh"]

  def input_spec(self) -> InputSpec:
    """How training normalised its inputs (the run's preprocessing.json:
    run_dir.read_input_spec), with its arrays on the device."""
    if "spec" not in self._compiled:
      if self.stats is None and self.config.input.mean == "dataset":
        raise RunError(
            f"{self.workdir} has no {facts.STATS_FILE} (it was trained before runs kept "
            f"it), and predicting needs the training mean image: "
            f"analysis.load_run({self.workdir!r}, from_dataset=True) recomputes it from the "
            f"dataset and writes it into the run."
        )
      self._compiled["spec"] = jax.device_put(
          run_dir.read_input_spec(self.workdir, self.config, self.stats)
      )
    return self._compiled["spec"]

  def describe(self) -> str:
    conv, fc = self.model.layer_widths()
    p = self.config.input
    views = (
        f"{self.eval_crops} view(s) of {p.crop_size}"
        if p.get("view", "crop") == "crop"
        else f"the image resized to {p.crop_size}x{p.crop_size}"
    )
    lines = [
        f"{self.workdir}: step {self.step}, {self.meta.get('dataset', self.config.dataset.name)}"
        f", {self.num_classes} classes ({', '.join(self.class_names[:10])}"
        f"{', ...' if self.num_classes > 10 else ''})",
        f"model: {self.model.num_towers} tower(s), conv widths {conv}, fc widths {fc}, "
        f"{model_lib.num_params(self.variables):,} parameters"
        f"{' (BatchNorm statistics included)' if 'batch_stats' in self.variables else ''}",
        f"preprocessing: shorter side to {facts.IMAGE_SIZE} ({self.resize_rule}), center "
        f"{facts.IMAGE_SIZE}, {p.mean} mean subtracted"
        f"{', divided by std' if p.std_rgb else ''}, x {p.scale:g}, {p.channel_order.upper()}, "
        f"{views}",
    ]
    if "eval" in self.meta:
      e = self.meta["eval"]
      lines.append(
          f"validation at this step: top-1 error {e['top1_error']:.4f}, top-5 error "
          f"{e['top5_error']:.4f}"
      )
    if self.missing:
      lines.append(f"missing run files: {', '.join(self.missing)}")
    return "\n".join(lines)

  # -- probabilities
  def _predict_step(self, crops: int):
    key = ("predict", crops)
    if key not in self._compiled:
      self._compiled[key] = evaluation.make_predict_step(
          self.config, self.model, self.mesh, crops=crops
      )
    return self._compiled[key]

  def crops_or_default(self, crops: int | None) -> int:
    crops = self.eval_crops if crops is None else int(crops)
    if crops not in facts.VIEW_COUNTS:
      raise ValueError(f"crops must be one of {facts.VIEW_COUNTS}, got {crops}")
    return crops

  def views_used(self, crops: int | None = None, asked: str = "--crops") -> str:
    """How every command says which views it averaged: the run's own eval_crops unless
    `crops` (the command's `asked`, e.g. --crops) says otherwise."""
    n = self.crops_or_default(crops)
    return f"{n} view(s), " + ("the run's eval_crops" if crops is None else f"from {asked}")

  def dataset(self):
    """The run's dataset, opened once (data_lib.open_dataset logs which data it reads)."""
    if "dataset" not in self._compiled:
      self._compiled["dataset"] = data_lib.open_dataset(self.config.dataset)
    return self._compiled["dataset"]

  def probs_of_batch(self, images256, crops: int | None = None) -> jax.Array:
    """uint8 [B, 256, 256, 3] (already preprocessed) -> probs [B, C] on the device: the
    evaluation's own step (evaluation.view_probs)."""
    step = self._predict_step(self.crops_or_default(crops))
    return step(self.variables, images256, self.input_spec())

  def predict_preprocessed(self, images256: np.ndarray, crops: int | None = None) -> np.ndarray:
    """uint8 [N, 256, 256, 3] -> float32 [N, C]."""
    images256 = np.asarray(images256, np.uint8)
    out = []
    for start, stop, size in _padded_batches(len(images256), _MAX_BATCH):
      probs = self.probs_of_batch(_pad(images256[start:stop], size), crops)
      out.append(np.asarray(probs)[: stop - start])
    return np.concatenate(out) if out else np.zeros([0, self.num_classes], np.float32)

  def predict(self, images, crops: int | None = None) -> np.ndarray:
    """Class probabilities [N, C] of images of any size and mode (paths, bytes, PIL images,
    uint8 arrays; see load_image), preprocessed exactly as evaluation does: shorter side to
    256, center 256, mean image subtracted, times the run's scale, softmax averaged over
    `crops` views (default: the run's eval_crops)."""
    return self.predict_preprocessed(preprocess(images, self.resize_rule), crops)

  def top_k(self, probs: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
    """[(class name, probability)] of the k most probable classes of each row of probs."""
    probs = np.asarray(probs)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[(self.class_names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]

  # -- activations
  def _features_fn(self, layer: str):
    key = ("features", layer)
    if key not in self._compiled:
      model, sown = self.model, _SOWN[layer]
      dtype = evaluation.input_dtype(self.config)  # as the eval step normalises

      def fn(variables, images, spec):
        views = augment.eval_views(images, spec, crops=1, dtype=dtype)[:, 0]
        _, state = model.apply(variables, views, train=False, mutable=["intermediates"])
        return state["intermediates"][sown][0]

      self._compiled[key] = jax.jit(fn, compiler_options=evaluation.compiler_options())
    return self._compiled[key]

  def features_preprocessed(self, images256: np.ndarray, layer: str = "fc7") -> np.ndarray:
    """uint8 [N, 256, 256, 3] -> the layer's activations of their center views."""
    layer = _layer_name(layer)
    if layer == "fc8" and not self.model.variant.fc8_width:
      raise ValueError("this network's fc8 is its class layer: ask for layer='logits'")
    fn = self._features_fn(layer)
    images256 = np.asarray(images256, np.uint8)
    out = []
    for start, stop, size in _padded_batches(len(images256), _MAX_BATCH):
      f = fn(self.variables, _pad(images256[start:stop], size), self.input_spec())
      out.append(np.asarray(f)[: stop - start])
    return np.concatenate(out)

  def features(self, images, layer: str = "fc7") -> np.ndarray:
    """Activations [N, ...] of one layer (LAYERS; "fc7" = the 4096-d code of Fig. 4; conv
    and fc layers after their ReLU, both towers' channels concatenated) for the center
    224 view of each image, preprocessed as `predict` does."""
    return self.features_preprocessed(preprocess(images, self.resize_rule), layer)


def predict_files(
    run: TrainedRun,
    paths: Sequence[str],
    crops: int | None = None,
    chunk: int = _MAX_BATCH,
    max_pixels: int | None = None,
) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
  """(path, probs [C], None) for each image file in order, or (path, None, one-line error)
  for one that cannot be read or decoded (a FIFO or device, an image above `max_pixels`:
  load_image); the others are still predicted. Decodes `chunk` files at a time, so any number
  of files fits in memory."""
  for start in range(0, len(paths), chunk):
    part = paths[start : start + chunk]
    images, errors = [], {}
    for path in part:
      try:
        images.append(data_lib.resize_and_center_crop(load_image(path, max_pixels)).numpy())
      except ImageError as e:
        errors[path] = str(e)
    probs = iter(run.predict_preprocessed(_stack(images), crops))
    for path in part:
      yield (path, None, errors[path]) if path in errors else (path, next(probs), None)


def _layer_name(layer: str) -> str:
  name = layer[: -len("_out")] if layer.endswith("_out") else layer
  if name not in LAYERS:
    raise ValueError(f"unknown layer {layer!r}; the layers are {', '.join(LAYERS)}")
  return name


def _from_dataset(workdir: str, config, num_classes: int):
  """Recompute the run files of an older run from its dataset and write them into it."""
  try:
    dataset = data_lib.open_dataset(config.dataset)
    info, stats = dataset.info, data_lib.dataset_stats(dataset)
  except (OSError, ValueError) as e:
    raise RunError(
        f"{workdir} lacks {', '.join(run_dir.missing(workdir))} and its dataset "
        f"{config.dataset.name!r} cannot be read to recompute them: {e}"
    ) from e
  if info.num_classes != num_classes:
    raise RunError(
        f"{workdir} was trained on {num_classes} classes but its dataset "
        f"{config.dataset.name!r} now has {info.num_classes}"
    )
  try:
    spec = run_dir.input_spec_from_config(workdir, config, stats)
    run_dir.write(workdir, config, info, stats, spec)
    logging.info("recomputed %s from %s and wrote them into %s", facts.FILES, info.name, workdir)
  except OSError as e:
    logging.warning("cannot write the run files into %s (%s); using them from memory", workdir, e)
  return info.class_names, stats


def load_run(workdir: str, step: int | None = None, *, from_dataset: bool = False) -> TrainedRun:
  """Restore a run (read-only; checkpoint.restore_run) with what inference needs.

  Runs trained before training wrote facts.FILES still restore: the missing files are
  named in a warning and in `.missing`; predict then asks for the mean image. from_dataset:
  recompute what is missing from the run's dataset (if it can be read) and write it into
  the run.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{workdir} is not a directory: pass the --workdir of a run")
  restored = checkpoint.restore_run(workdir, train_state.restore_target(), step)
  config, meta = restored.config, restored.meta
  num_classes = int(meta["num_classes"])
  model = train_state.create_model(config, num_classes)
  stats, names = run_data.read_stats(workdir), run_dir.read_class_names(workdir)
  missing = run_dir.missing(workdir, config)
  if missing and from_dataset:
    names, stats = _from_dataset(workdir, config, num_classes)
    missing = run_dir.missing(workdir, config)
  if missing:
    effects = (
        [f"predict and features need {facts.STATS_FILE}"] if (facts.STATS_FILE in missing) else []
    )
    effects += ["class names are shown as label numbers"] if names is None else []
    logging.warning(
        "%s lacks %s (it was trained before runs kept them)%s. load_run(%r, "
        "from_dataset=True) recomputes them from the dataset and writes them into the run.",
        workdir,
        ", ".join(missing),
        f": {'; '.join(effects)}" if effects else "",
        workdir,
    )
  names = tuple(str(i) for i in range(num_classes)) if names is None else tuple(names)
  if len(names) != num_classes:
    raise RunError(
        f"{os.path.join(workdir, facts.CLASS_NAMES_FILE)} holds {len(names)} class names "
        f"but the checkpoint has {num_classes} classes"
    )
  saved = run_dir.read_preprocessing(workdir) or {}
  return TrainedRun(
      workdir=workdir,
      config=config,
      variables=restored.variables,
      step=restored.step,
      meta=meta,
      model=model,
      class_names=names,
      eval_crops=int(saved.get("eval_crops", config.eval_crops)),
      stats=stats,
      missing=tuple(missing),
  )


def _as_run(run) -> TrainedRun:
  return run if isinstance(run, TrainedRun) else load_run(run, from_dataset=True)


# ---- scanning a split ---------------------------------------------------------------------
def scan_split(
    run: TrainedRun,
    split: str = "eval",
    *,
    max_examples: int | None = None,
    batch_size: int | None = None,
    desc: str | None = None,
):
  """Batches {'image' uint8 [B, 256, 256, 3], 'label', 'mask'} of one pass over a split of
  the run's dataset (data_lib.split_iterator), with a progress bar and ETA. The stream is
  closed when the pass ends or the generator is closed (a loop that breaks early)."""
  dataset = run.dataset()
  bs = batch_size or run.config.eval_batch_size
  total = -(-data_lib.split_size(dataset, split, max_examples) // bs)
  it = data_lib.split_iterator(
      dataset, split, global_batch_size=bs, shard_index=0, num_shards=1, max_examples=max_examples
  )
  bar = reporting.progress(it, total=total, desc=desc or f"{split} split")
  try:
    yield from bar
  finally:
    bar.close()
    getattr(it, "close", lambda: None)()


def dataset_images(run: TrainedRun, split: str = "eval", count: int = 5):
  """(uint8 [n, 256, 256, 3], labels [n]): `count` images spread over a split, e.g. queries."""
  images, labels = [], []
  it = data_lib.split_iterator(
      run.dataset(),
      split,
      global_batch_size=count,
      shard_index=0,
      num_shards=1,
      max_examples=count,
  )
  try:
    for batch in it:
      images.append(batch["image"][batch["mask"]])
      labels.append(batch["label"][batch["mask"]])
  finally:  # the stream's threads end now, not when it is collected
    getattr(it, "close", lambda: None)()
  return np.concatenate(images), np.concatenate(labels)


def predict_split(
    run: TrainedRun, split: str = "eval", crops: int | None = None, max_examples=None
) -> tuple[np.ndarray, np.ndarray]:
  """(probs [N, C], labels [N]) of every image of a split (padding dropped)."""
  probs, labels = [], []
  for batch in scan_split(run, split, max_examples=max_examples, desc=f"predicting {split}"):
    p = np.asarray(run.probs_of_batch(batch["image"], crops))
    probs.append(p[batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(probs), np.concatenate(labels)


def per_class_errors(probs_or_predictions, labels, num_classes: int) -> np.ndarray:
  """Top-1 error of each class [C] (its images that were not predicted as it); NaN for a
  class with no image."""
  pred = _predictions(probs_or_predictions)
  labels = np.asarray(labels)
  wrong = np.bincount(labels[pred != labels], minlength=num_classes).astype(np.float64)
  count = np.bincount(labels, minlength=num_classes).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, wrong / count, np.nan)


def _predictions(probs_or_predictions) -> np.ndarray:
  x = np.asarray(probs_or_predictions)
  return np.argmax(x, axis=-1) if x.ndim == 2 else x.astype(np.int64)


def confusion_matrix(probs_or_predictions, labels, num_classes: int) -> np.ndarray:
  """int [C, C]: row = true class, column = predicted class."""
  return sklearn.metrics.confusion_matrix(
      np.asarray(labels), _predictions(probs_or_predictions), labels=np.arange(num_classes)
  )


def confusion_figure(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
  """The confusion matrix, each row normalised to the fraction of that class's images
  (counts written in the cells up to 20 classes, names on the axes up to 40)."""
  c = len(class_names)
  counts = np.asarray(cm)
  rows = counts.sum(1, keepdims=True)
  frac = np.divide(counts, rows, out=np.zeros(counts.shape, np.float64), where=rows > 0)
  side = min(max(4.0, 0.4 * c + 2.0), 14.0)
  fig = Figure(figsize=(side + 1.5, side))
  ax = fig.subplots()
  im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
  if c <= 40:
    ax.set_xticks(range(c), class_names, rotation=90 if c > 10 else 0)
    ax.set_yticks(range(c), class_names)
  if c <= 20:
    for i in range(c):
      for j in range(c):
        if counts[i, j]:
          ax.text(
              j,
              i,
              int(counts[i, j]),
              ha="center",
              va="center",
              fontsize=8,
              color="white" if frac[i, j] > 0.5 else "black",
          )
  err = 1.0 - np.trace(counts) / max(counts.sum(), 1)
  ax.set(
      xlabel="predicted class",
      ylabel="true class",
      title=f"confusion matrix: {int(counts.sum())} images, top-1 error {err:.2%}",
  )
  fig.tight_layout()
  return fig


# ---- Fig. 3: conv1's kernels ----------------------------------------------------------------
_TILE_COLUMNS = 16  # 48 kernels of a paper tower -> 3 rows of 16


def conv1_tiles(variables) -> np.ndarray:
  """float [T, K, 11, 11, 3] in [0, 1]: each conv1 kernel (tower t, output channel k) min-max
  normalised on its own over its 11x11x3 weights; a constant kernel becomes 0.5 grey."""
  kernel = np.asarray(jax.device_get(variables["params"]["conv1"]["kernel"]), np.float64)
  tiles = np.moveaxis(kernel, -1, 1)  # [T, 11, 11, 3, K] -> [T, K, 11, 11, 3]
  lo = tiles.min(axis=(2, 3, 4), keepdims=True)
  span = tiles.max(axis=(2, 3, 4), keepdims=True) - lo
  safe = np.where(span > 0, span, 1.0)
  return np.where(span > 0, (tiles - lo) / safe, 0.5)


def kernel_mosaic(tiles: np.ndarray, columns: int = _TILE_COLUMNS) -> np.ndarray:
  """[K, h, w, 3] tiles -> one image, row-major, `columns` wide, 1-pixel white gaps."""
  k, h, w, _ = tiles.shape
  cols = min(columns, k)
  rows = -(-k // cols)
  out = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, 3))
  for i in range(k):
    r, c = divmod(i, cols)
    out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tiles[i]
  return out


def conv1_kernels_figure(variables) -> Figure:
  """Fig. 3: every conv1 kernel as an 11x11 RGB tile (conv1_tiles), one block per tower,
  labelled. In the paper, tower 1 (GPU 1) learned largely colour-agnostic kernels and
  tower 2 colour-specific ones (§6.1)."""
  tiles = conv1_tiles(variables)
  t, k = tiles.shape[:2]
  mosaics = [kernel_mosaic(tiles[i]) for i in range(t)]
  h, w = mosaics[0].shape[:2]
  fig = Figure(figsize=(8.0, 8.0 * t * h / w + 0.6 * t + 0.4))
  axes = fig.subplots(t, 1, squeeze=False)[:, 0]
  for i, (ax, mosaic) in enumerate(zip(axes, mosaics)):
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_title(f"tower {i + 1} (GPU {i + 1} in the paper): {k} kernels")
    ax.set_axis_off()
  fig.suptitle(
      f"conv1: {t * k} kernels of {tiles.shape[2]}x{tiles.shape[3]}x3, each min-max "
      f"normalised to [0, 1]"
  )
  fig.tight_layout()
  return fig


# ---- Fig. 4: nearest neighbours in fc7 space ------------------------------------------------
class Neighbours(NamedTuple):
  indices: np.ndarray  # int [Q, k]: positions in the scan of the training split
  distances: np.ndarray  # float [Q, k], ascending: Euclidean distance of fc7 features
  images: np.ndarray  # uint8 [Q, k, 256, 256, 3]
  labels: np.ndarray  # int [Q, k]
  num_scanned: int  # training images compared


def nearest_neighbours(
    run: TrainedRun,
    queries,
    k: int = 5,
    max_train_images: int | None = 2000,
    layer: str = "fc7",
) -> Neighbours:
  """The k training images nearest each query by Euclidean distance of their `layer`
  features (center view), scanning at most max_train_images training images spread over
  the split (None: all); ties go to the earlier image in the scan."""
  q = run.features(queries, layer).reshape(len(_image_list(queries)), -1).astype(np.float64)
  nq = len(q)
  dist = np.zeros((nq, 0))
  idx = np.zeros((nq, 0), np.int64)
  labels = np.zeros((nq, 0), np.int64)
  images = np.zeros((nq, 0, facts.IMAGE_SIZE, facts.IMAGE_SIZE, 3), np.uint8)
  seen = 0
  scan = scan_split(run, "train", max_examples=max_train_images, desc=f"{layer} of training images")
  for batch in scan:
    imgs, labs = batch["image"][batch["mask"]], batch["label"][batch["mask"]]
    if not len(imgs):
      continue
    f = run.features_preprocessed(imgs, layer).reshape(len(imgs), -1).astype(np.float64)
    d = np.sqrt(((q[:, None, :] - f[None, :, :]) ** 2).sum(-1))  # [Q, B]
    all_d = np.concatenate([dist, d], axis=1)
    keep = np.argsort(all_d, axis=1, kind="stable")[:, :k]  # earlier entries win ties
    old = dist.shape[1]
    new_images = np.stack(
        [np.stack([images[i, j] if j < old else imgs[j - old] for j in keep[i]]) for i in range(nq)]
    )
    all_idx = np.concatenate(
        [idx, np.broadcast_to(seen + np.arange(len(imgs)), (nq, len(imgs)))], 1
    )
    all_lab = np.concatenate([labels, np.broadcast_to(labs, (nq, len(imgs)))], 1)
    dist = np.take_along_axis(all_d, keep, 1)
    idx = np.take_along_axis(all_idx, keep, 1)
    labels = np.take_along_axis(all_lab, keep, 1)
    images = new_images
    seen += len(imgs)
  if seen == 0:
    raise RunError(f"no training image of {run.config.dataset.name!r} could be read")
  return Neighbours(idx, dist, images, labels, seen)


def nearest_neighbours_figure(
    run: TrainedRun,
    queries,
    k: int = 5,
    max_train_images: int | None = 2000,
    *,
    query_labels=None,
    neighbours: Neighbours | None = None,
) -> Figure:
  """Fig. 4: each query (left column, as the network sees it: shorter side 256, center)
  beside its k nearest training images in fc7 space (nearest_neighbours), labelled with
  their classes and distances."""
  if neighbours is None:
    neighbours = nearest_neighbours(run, queries, k, max_train_images)
  shown = preprocess(queries)
  nq, k = neighbours.indices.shape
  fig = Figure(figsize=(1.7 * (k + 1), 1.9 * nq + 0.5))
  axes = fig.subplots(nq, k + 1, squeeze=False)
  for i in range(nq):
    axes[i, 0].imshow(shown[i])
    title = "query"
    if query_labels is not None:
      title += f"\n({run.class_names[int(query_labels[i])]})"
    axes[i, 0].set_title(title, fontsize=8, fontweight="bold")
    for j in range(k):
      axes[i, j + 1].imshow(neighbours.images[i, j])
      axes[i, j + 1].set_title(
          f"{run.class_names[int(neighbours.labels[i, j])]}\nd={neighbours.distances[i, j]:.3g}",
          fontsize=8,
      )
  for ax in axes.ravel():
    ax.set_axis_off()
  fig.suptitle(
      f"{k} nearest training images by Euclidean distance of fc7 features "
      f"({neighbours.num_scanned} scanned)",
      fontsize=10,
  )
  fig.tight_layout()
  return fig


# ---- all figures of a run ----------------------------------------------------------------
# What write_figures draws from the dataset (Fig. 3 needs only the checkpoint).
DATASET_FIGURES = ("fig4_neighbours.png", "confusion.png", "per_class_errors.json")


def write_figures(
    workdir: str,
    out: str,
    *,
    step=None,
    crops=None,
    num_queries: int = 5,
    k: int = 5,
    max_train_images: int | None = 2000,
) -> dict:
  """What `python -m alexnet_jax.figures` writes into `out`: fig3_conv1_kernels.png,
  fig4_neighbours.png (num_queries validation images spread over the split), confusion.png
  and per_class_errors.json. Returns their paths and the validation top-1 error.

  Fig. 3 needs only the checkpoint. The others read the run's dataset: where it cannot be
  opened (a run copied to another machine), they are skipped, and `skipped` names each with
  what it needs (the top-1 error is then None)."""
  run = load_run(workdir, step)
  os.makedirs(out, exist_ok=True)
  paths = {}

  def save(fig, name):
    paths[name] = os.path.join(out, name)
    fig.savefig(paths[name], dpi=120)

  save(conv1_kernels_figure(run.variables), "fig3_conv1_kernels.png")
  try:
    run.dataset()
  except (OSError, ValueError) as e:
    need = (
        f"the training and validation images of {run.config.dataset.name!r}, which cannot be "
        f"read here ({e})"
    )
    skipped = {name: need for name in DATASET_FIGURES}
    return {"paths": paths, "skipped": skipped, "top1_error": None, "num_images": 0}
  if run.missing:  # a run trained before it kept its run files: recomputed from the data
    run = load_run(workdir, step, from_dataset=True)
  queries, labels = dataset_images(run, "eval", num_queries)
  neighbours = nearest_neighbours(run, queries, k, max_train_images or None)
  save(
      nearest_neighbours_figure(run, queries, query_labels=labels, neighbours=neighbours),
      "fig4_neighbours.png",
  )
  probs, truth = predict_split(run, "eval", crops)
  cm = confusion_matrix(probs, truth, run.num_classes)
  save(confusion_figure(cm, run.class_names), "confusion.png")
  errors = per_class_errors(probs, truth, run.num_classes)
  counts = cm.sum(1)
  paths["per_class_errors.json"] = os.path.join(out, "per_class_errors.json")
  with open(paths["per_class_errors.json"], "w") as f:
    json.dump(
        {
            "step": run.step,
            "crops": run.crops_or_default(crops),
            "classes": [
                {"class": n, "top1_error": None if c == 0 else float(e), "images": int(c)}
                for n, e, c in zip(run.class_names, errors, counts)
            ],
        },
        f,
        indent=2,
    )
  top1 = float(1.0 - cm.trace() / max(cm.sum(), 1))
  return {
      "paths": paths,
      "skipped": {},
      "top1_error": top1,
      "num_images": int(cm.sum()),
      "views": run.views_used(crops),
  }


# ---- ensembles ------------------------------------------------------------------------------
def ensemble_evaluate(
    runs: Sequence[Any],
    crops: int | None = None,
    *,
    batch_size: int | None = None,
    max_batches: int = -1,
    split: str = "eval",
) -> dict:
  """Top-1/top-5 error and loss over the whole validation split (split='test': a dataset's
  held-out test split) of the softmax averaged over several runs (§6: the 5-CNN ensemble), each
  run preprocessing as its own evaluation does; padding counts nowhere. runs: workdirs or
  TrainedRuns; they must share one class list. crops: the views of every run (None: each
  run's own eval_crops). Also returns each member's own errors on the same images, with
  `same_data`: whether the member was trained on the first run's dataset (its errors are then
  those of its own evaluation)."""
  runs = [_as_run(r) for r in runs]
  if not runs:
    raise RunError("an ensemble needs at least one run")
  first = runs[0]
  for r in runs[1:]:
    if r.class_names != first.class_names:
      raise RunError(
          f"cannot ensemble runs with different class sets: {first.workdir} has "
          f"{first.num_classes} classes ({_head(first.class_names)}), {r.workdir} has "
          f"{r.num_classes} ({_head(r.class_names)})"
      )
  sums_fn = jax.jit(evaluation.eval_sums)
  member_sums = [None] * len(runs)
  total = None
  scan = scan_split(first, split, batch_size=batch_size, desc=f"ensemble of {len(runs)}")
  for i, batch in enumerate(scan):
    if 0 < max_batches <= i:
      scan.close()
      break
    images = jax.device_put(batch["image"])
    probs = [r.probs_of_batch(images, crops) for r in runs]  # None: each run's eval_crops
    for m, p in enumerate(probs):
      s = sums_fn(p, batch["label"], batch["mask"])
      member_sums[m] = (
          s if member_sums[m] is None else jax.tree.map(lambda a, b: a + b, member_sums[m], s)
      )
    s = sums_fn(sum(probs[1:], probs[0]) / len(probs), batch["label"], batch["mask"])
    total = s if total is None else jax.tree.map(lambda a, b: a + b, total, s)
  if total is None:
    which = "test" if split == "test" else "validation"
    raise RunError(f"the {which} split of {first.config.dataset.name!r} is empty")
  views = sorted({r.crops_or_default(crops) for r in runs})
  return {
      "crops": views[0] if len(views) == 1 else None,  # None: the runs' own, not all equal
      **evaluation.metrics_from_sums(total),
      "members": [
          {
              "workdir": r.workdir,
              "step": r.step,
              "crops": r.crops_or_default(crops),
              "same_data": r.config.dataset.to_dict() == first.config.dataset.to_dict(),
              **evaluation.metrics_from_sums(s),
          }
          for r, s in zip(runs, member_sums)
      ],
  }


def ensemble_runs(workdir: str) -> list[str]:
  """`workdir` and the runs beside it (its parent's other run directories, by name) trained
  on the same dataset with the same classes: what an ensemble of `workdir` can average, e.g.
  runs/demo and runs/demo_seed1. Only `workdir` when it has no such neighbour."""
  workdir = os.path.normpath(workdir)
  parent = os.path.dirname(os.path.abspath(workdir))

  def key(w):
    try:
      return (run_dir.read_config(w).dataset.to_dict(), run_dir.read_class_names(w))
    except (OSError, ValueError):
      return None

  own = key(workdir)
  found = [workdir]
  for name in sorted(os.listdir(parent)):
    w = os.path.join(os.path.dirname(workdir), name)
    if os.path.samefile(w, workdir):
      continue
    if os.path.isdir(os.path.join(w, facts.CHECKPOINT_DIR)) and own is not None and key(w) == own:
      found.append(w)
  return found


def _head(names: Sequence[str]) -> str:
  return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
