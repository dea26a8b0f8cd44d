"""The paper's test: softmax averaged over 1 or 10 views of each image (§4.1), as jitted steps
on the mesh, over a whole validation split, and its metrics.

Evaluation, prediction (analysis.py) and ensembles all go through `view_probs`; the train
step shares `errors` and `compiler_options`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import augment, reporting, sharding
from alexnet_jax import data as data_lib
from alexnet_jax.input_spec import InputSpec

# XLA:CPU hands convolutions to YNNPACK fusions by default, and their weight-gradient
# convolutions run 3-7x slower than XLA's own (Eigen) ones on x86 CPUs: a 2.5x slower
# training step (docs/performance.md#xlas-own-convolutions). So the steps keep YNNPACK to
# dots. ALEXNET_JAX_YNN_CONVS=1 (or an ynn option already in XLA_FLAGS) keeps jaxlib's default.
_CPU_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options() -> dict | None:
  """`jax.jit(..., compiler_options=...)` for the train and eval steps on this backend."""
  if (
      jax.default_backend() != "cpu"
      or os.environ.get("ALEXNET_JAX_YNN_CONVS") == "1"
      or "ynn_fusion_type" in os.environ.get("XLA_FLAGS", "")
  ):
    return None
  return dict(_CPU_CONV_OPTIONS)


def input_dtype(config):
  """The views' dtype: float32, or float64 for model.dtype float64 (x64 runs)."""
  return jnp.float64 if config.model.dtype == "float64" else jnp.float32


def global_batch(mesh, local_batch: dict) -> dict:
  """This process's slice of the global batch -> global arrays split over "data"."""
  data = sharding.batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(data, np.asarray(v)) for k, v in local_batch.items()
  }


# ---- one batch ------------------------------------------------------------------------------
def errors(logits, labels):
  """Per-example top-1 and top-5 errors (0/1 floats). With fewer than 5 classes the second
  is top-min(5, classes) (then always 0); its metric keeps the name top5_error."""
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hit5 = jnp.any(top5 == labels[:, None], axis=-1)
  return (top5[:, 0] != labels).astype(jnp.float32), 1.0 - hit5.astype(jnp.float32)


def view_probs(apply, mesh, variables, images, spec: InputSpec, *, crops: int, dtype=jnp.float32):
  """uint8 [B, 256, 256, 3] -> float32 [B, C]: the softmax (not the logits) averaged over
  the `crops` views (1: center; 10: corners, center and their reflections, §4.1), each view
  normalised as in training (augment.eval_views with the run's InputSpec). variables:
  {"params", "batch_stats"} (BatchNorm runs on the running averages), or bare parameters."""
  views = augment.eval_views(images, spec, crops=crops, dtype=dtype)
  b, v = views.shape[:2]
  views = jax.lax.with_sharding_constraint(
      views.reshape(b * v, *views.shape[2:]), sharding.batch_sharding(mesh)
  )
  logits = apply(variables, views, train=False)
  return jax.nn.softmax(logits).reshape(b, v, -1).mean(axis=1)


def eval_sums(probs, labels, mask) -> dict:
  """Summed top-1/top-5 errors and negative log-likelihood of [B, C] probabilities over the
  examples with mask True (padding counts nowhere), and their count."""
  mask = mask.astype(jnp.float32)
  top1, top5 = errors(probs, labels)
  nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], -1)[:, 0] + 1e-12)
  return {
      "top1_errors": (top1 * mask).sum(),
      "top5_errors": (top5 * mask).sum(),
      "loss_sum": (nll * mask).sum(),
      "count": mask.sum(),
  }


def metrics_from_sums(sums) -> dict:
  """Summed eval_sums -> {'top1_error', 'top5_error', 'loss', 'num_images'}."""
  sums = jax.tree.map(float, jax.device_get(sums))
  n = max(sums["count"], 1.0)
  return {
      "top1_error": sums["top1_errors"] / n,
      "top5_error": sums["top5_errors"] / n,
      "loss": sums["loss_sum"] / n,
      "num_images": int(sums["count"]),
  }


def make_eval_step(config, model, mesh, crops: int | None = None):
  """Jitted `(variables, batch, spec) -> sums` over the paper's views (view_probs, eval_sums;
  crops: config.eval_crops unless given). Padding examples (mask False) count nowhere."""
  crops = config.eval_crops if crops is None else crops
  apply = sharding.sharded_apply(model, mesh)
  dtype = input_dtype(config)

  def eval_step(variables, batch, spec):
    probs = view_probs(apply, mesh, variables, batch["image"], spec, crops=crops, dtype=dtype)
    return eval_sums(probs, batch["label"], batch["mask"])

  return jax.jit(
      eval_step, out_shardings=sharding.replicated(mesh), compiler_options=compiler_options()
  )


def make_predict_step(config, model, mesh, *, crops: int):
  """Jitted `(variables, images, spec) -> probs [B, C]`: the eval step's probabilities
  (view_probs) of uint8 [B, 256, 256, 3] images, B a multiple of the mesh's data axis."""
  apply = sharding.sharded_apply(model, mesh)
  dtype = input_dtype(config)

  def predict_step(variables, images, spec):
    return view_probs(apply, mesh, variables, images, spec, crops=crops, dtype=dtype)

  return jax.jit(
      predict_step, out_shardings=sharding.replicated(mesh), compiler_options=compiler_options()
  )


# ---- a whole split ----------------------------------------------------------------------
def evaluate(
    config,
    eval_step,
    variables,
    spec: InputSpec,
    mesh,
    *,
    max_batches: int = -1,
    progress: bool = False,
    dataset=None,
    split: str = "eval",
) -> dict:
  """Top-1/top-5 error over the whole validation split (every image once: the last batch is
  padded, and padding counts nowhere); progress: a progress bar with an ETA on stderr;
  dataset: the Source data_lib.open_dataset made of config.dataset (opened here when None);
  variables: the model's {"params", "batch_stats"} (or bare parameters).
  split: 'eval', or 'test' for a dataset with a held-out test split (oxford17)."""
  sums = None
  shard_index, num_shards = sharding.process_data_shard(mesh)
  dataset = data_lib.open_dataset(config.dataset if dataset is None else dataset)
  batches = data_lib.split_iterator(
      dataset,
      split,
      global_batch_size=config.eval_batch_size,
      shard_index=shard_index,
      num_shards=num_shards,
  )
  it = batches
  if progress:
    total = -(-data_lib.split_size(dataset, split) // config.eval_batch_size)
    total = min(total, max_batches) if max_batches > 0 else total
    it = reporting.progress(it, total=total, desc="evaluating")
  try:
    for i, batch in enumerate(it):
      if 0 < max_batches <= i:
        break
      out = eval_step(variables, global_batch(mesh, batch), spec)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  finally:  # the stream's threads end now, also after max_batches or an error
    if progress:
      it.close()
    getattr(batches, "close", lambda: None)()
  return metrics_from_sums(sums)
