"""The jitted train and eval steps on the mesh, and the training loop."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from alexnet_jax import (
    augment,
    fine_tune,
    optim,
    preemption,
    reporting,
    run_files,
    sharding,
    train_state,
)
from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import data as data_lib
from alexnet_jax import model as model_lib


@flax.struct.dataclass
class AugmentConstants:
  mean_image: jax.Array  # [256, 256, 3] float32, pixel units; or a [3] mean pixel
  eigval: jax.Array  # [3]
  eigvec: jax.Array  # [3, 3], columns
  std: jax.Array | None = None  # [3] pixel units: divide by it (torchvision's inputs)


def input_mean_and_std(config, stats, workdir: str | None = None):
  """(mean, std) the network's inputs are normalised with (config.input.mean/mean_rgb/
  std_rgb): mean [256, 256, 3] or [3] float32 in pixel units, std [3] or None."""
  acfg = config.input
  kind = acfg.mean
  if kind == "dataset":
    mean = np.asarray(stats.mean_image, np.float32)
  elif kind == "pixel":
    mean = np.asarray(acfg.mean_rgb, np.float32).reshape(3)
  elif kind == "run":
    if workdir is None:
      raise ValueError("input.mean='run' needs the run directory that holds the mean image")
    mean = run_files.read_mean_image(workdir)
  else:
    raise ValueError(f"input.mean must be 'dataset', 'pixel' or 'run', got {kind!r}")
  std = tuple(acfg.get("std_rgb", ()) or ())
  if std and (len(std) != 3 or min(std) <= 0):
    raise ValueError(f"input.std_rgb must be () or 3 positive numbers, got {std}")
  return mean, (np.asarray(std, np.float32) if std else None)


def augment_constants(
    config, stats: data_lib.DatasetStats, workdir: str | None = None
) -> AugmentConstants:
  if config.augment.eigen == "imagenet":
    eigval, eigvec = data_lib.IMAGENET_EIGVAL, data_lib.IMAGENET_EIGVEC
  elif config.augment.eigen == "dataset":
    eigval, eigvec = stats.eigval, stats.eigvec
  else:
    raise ValueError(
        f"augment.eigen must be 'dataset' or 'imagenet', got " f"{config.augment.eigen!r}"
    )
  mean, std = input_mean_and_std(config, stats, workdir)
  return AugmentConstants(
      jnp.asarray(mean, jnp.float32),
      jnp.asarray(eigval, jnp.float32),
      jnp.asarray(eigvec, jnp.float32),
      None if std is None else jnp.asarray(std, jnp.float32),
  )


# ---- steps -------------------------------------------------------------------------------
# jaxlib 0.10.2's XLA:CPU hands convolutions to YNNPACK fusions by default; their
# weight-gradient convolutions ran 3-7x slower than XLA's own (Eigen) ones on x86 CPUs, a
# 2.5x slower training step (docs/performance.md#xlas-own-convolutions). So the steps keep YNNPACK to dots only.
# ALEXNET_JAX_YNN_CONVS=1 (or an ynn option already in XLA_FLAGS) keeps jaxlib's default.
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


def _errors(logits, labels):
  """Per-example top-1 and top-5 errors (0/1 floats). With fewer than 5 classes the second
  is top-min(5, classes) (then always 0); its metric keeps the name top5_error."""
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hit5 = jnp.any(top5 == labels[:, None], axis=-1)
  return (top5[:, 0] != labels).astype(jnp.float32), 1.0 - hit5.astype(jnp.float32)


def input_dtype(config):
  """The augmented images' dtype: float32, or float64 for model.dtype float64 (x64 runs)."""
  return jnp.float64 if config.model.dtype == "float64" else jnp.float32


def augment_batch(
    config,
    mesh,
    aug_rng,
    step,
    images,
    aug: AugmentConstants,
    crop_size: int = 224,
    dtype=jnp.float32,
) -> jax.Array:
  """The train step's augmentation: uint8 [B, 256, 256, 3] -> float32 [B, crop, crop, 3]
  split over "data". Keys from (seed, step, position in the global batch): the same views
  on every mesh."""
  acfg = config.augment
  keys = augment.example_keys(aug_rng, step, jnp.arange(images.shape[0]))
  views = augment.train_views(
      images,
      keys,
      mean_image=aug.mean_image,
      eigval=aug.eigval,
      eigvec=aug.eigvec,
      random_crop=acfg.random_crop,
      flip=acfg.flip,
      lighting_std=acfg.lighting_std,
      scale=config.input.scale,
      crop_size=crop_size,
      std=aug.std,
      bgr=config.input.channel_order == "bgr",
      dtype=dtype,
  )
  return jax.lax.with_sharding_constraint(views, sharding.batch_sharding(mesh))


def make_train_step(config, model, mesh, steps_per_epoch: int, *, augment_on_device=True):
  """Jitted `(state, batch, aug) -> (state, metrics)`; the state is donated.

  batch: {'image': uint8 [B, 256, 256, 3], 'label': int32 [B]} split over "data"
  (with augment_on_device=False, 'image' is already float32 [B, 224, 224, 3]).
  """
  tx = optim.make_optimizer(config.optimizer)
  apply = sharding.sharded_apply(model, mesh)

  def train_step(state: train_state.TrainState, batch, aug: AugmentConstants):
    base = jax.random.wrap_key_data(state.rng)
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(base, 0))
    images, labels = batch["image"], batch["label"]
    if augment_on_device:
      images = augment_batch(
          config,
          mesh,
          aug_rng,
          state.step,
          images,
          aug,
          model.image_size,
          input_dtype(config),
      )

    def loss_fn(params):
      logits = apply(
          {"params": params},
          images,
          train=True,
          dropout_rng=jax.random.fold_in(dropout_rng, state.step),
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    lr = optim.learning_rate(config.optimizer, state.step, state.schedule, steps_per_epoch)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    top1, top5 = _errors(logits, labels)
    metrics = {
        "loss": loss,
        "top1_error": top1.mean(),
        "top5_error": top5.mean(),
        "learning_rate": lr,
        "grad_norm": optax.global_norm(grads),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  shardings = train_state.state_shardings(mesh, train_state.abstract_state(config, model))
  data = sharding.batch_sharding(mesh)
  return jax.jit(
      train_step,
      donate_argnums=0,
      in_shardings=(shardings, {"image": data, "label": data}, sharding.replicated(mesh)),
      out_shardings=(shardings, sharding.replicated(mesh)),
      compiler_options=compiler_options(),
  )


def view_probs(
    apply,
    mesh,
    params,
    images,
    mean_image,
    *,
    crops: int,
    scale: float,
    crop_size: int = 224,
    std=None,
    bgr: bool = False,
    dtype=jnp.float32,
):
  """uint8 [B, 256, 256, 3] -> float32 [B, C]: the softmax (not the logits) averaged over
  the `crops` views (1: center; 10: corners, center and their reflections, §4.1), each view
  normalised as in training (augment.eval_views: mean, std, scale, channel order).
  Evaluation, prediction and ensembles all go through here."""
  views = augment.eval_views(
      images,
      mean_image=mean_image,
      crops=crops,
      crop_size=crop_size,
      scale=scale,
      std=std,
      bgr=bgr,
      dtype=dtype,
  )
  b, v = views.shape[:2]
  views = jax.lax.with_sharding_constraint(
      views.reshape(b * v, *views.shape[2:]), sharding.batch_sharding(mesh)
  )
  logits = apply({"params": params}, views, train=False)
  return jax.nn.softmax(logits).reshape(b, v, -1).mean(axis=1)


def view_options(config, model) -> dict:
  """view_probs' keywords that come from the run: its crop size, scale, channel order, dtype."""
  return dict(
      crop_size=model.image_size,
      scale=config.input.scale,
      bgr=config.input.channel_order == "bgr",
      dtype=input_dtype(config),
  )


def eval_sums(probs, labels, mask) -> dict:
  """Summed top-1/top-5 errors and negative log-likelihood of [B, C] probabilities over the
  examples with mask True (padding counts nowhere), and their count."""
  mask = mask.astype(jnp.float32)
  top1, top5 = _errors(probs, labels)
  nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], -1)[:, 0] + 1e-12)
  return {
      "top1_errors": (top1 * mask).sum(),
      "top5_errors": (top5 * mask).sum(),
      "loss_sum": (nll * mask).sum(),
      "count": mask.sum(),
  }


def make_eval_step(config, model, mesh, crops: int | None = None):
  """Jitted `(params, batch, mean_image, std=None) -> sums` over the paper's views
  (view_probs, eval_sums). Padding examples (mask False) count nowhere."""
  crops = config.eval_crops if crops is None else crops
  apply = sharding.sharded_apply(model, mesh)
  options = view_options(config, model)

  def eval_step(params, batch, mean_image, std=None):
    probs = view_probs(
        apply, mesh, params, batch["image"], mean_image, crops=crops, std=std, **options
    )
    return eval_sums(probs, batch["label"], batch["mask"])

  return jax.jit(
      eval_step, out_shardings=sharding.replicated(mesh), compiler_options=compiler_options()
  )


def make_predict_step(config, model, mesh, *, crops: int):
  """Jitted `(params, images, mean_image, std=None) -> probs [B, C]`: the eval step's
  probabilities (view_probs) of uint8 [B, 256, 256, 3] images, B a multiple of the mesh's
  data axis."""
  apply = sharding.sharded_apply(model, mesh)
  options = view_options(config, model)

  def predict_step(params, images, mean_image, std=None):
    return view_probs(apply, mesh, params, images, mean_image, crops=crops, std=std, **options)

  return jax.jit(
      predict_step, out_shardings=sharding.replicated(mesh), compiler_options=compiler_options()
  )


def global_batch(mesh, local_batch: dict) -> dict:
  """This process's slice of the global batch -> global arrays split over "data"."""
  data = sharding.batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(data, np.asarray(v)) for k, v in local_batch.items()
  }


def evaluate(
    config,
    eval_step,
    params,
    mean_image,
    mesh,
    *,
    max_batches: int = -1,
    std=None,
    progress: bool = False,
    dataset=None,
) -> dict:
  """Top-1/top-5 error over the whole validation split (every image once); progress: a
  progress bar with an ETA on stderr; dataset: the Source data_lib.open_dataset made of
  config.dataset (opened here when None)."""
  sums = None
  shard_index, num_shards = sharding.process_data_shard(mesh)
  dataset = data_lib.open_dataset(config.dataset if dataset is None else dataset)
  it = data_lib.eval_iterator(
      dataset,
      global_batch_size=config.eval_batch_size,
      shard_index=shard_index,
      num_shards=num_shards,
  )
  if progress:
    total = -(-dataset.info.num_eval // config.eval_batch_size)
    total = min(total, max_batches) if max_batches > 0 else total
    it = reporting.progress(it, total=total, desc="evaluating")
  for i, batch in enumerate(it):
    if 0 < max_batches <= i:
      break
    out = eval_step(params, global_batch(mesh, batch), mean_image, std)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  return metrics_from_sums(sums)


def metrics_from_sums(sums) -> dict:
  sums = jax.tree.map(float, jax.device_get(sums))
  n = max(sums["count"], 1.0)
  return {
      "top1_error": sums["top1_errors"] / n,
      "top5_error": sums["top5_errors"] / n,
      "loss": sums["loss_sum"] / n,
      "num_images": int(sums["count"]),
  }


# ---- the loop ----------------------------------------------------------------------------
class NonFiniteLossError(RuntimeError):
  pass


def _last_good(manager, workdir) -> str:
  step = manager.latest_step()
  return (
      f"The last good checkpoint in {workdir} is step {step}."
      if step is not None
      else f"No checkpoint had been written to {workdir} yet (no last good checkpoint)."
  )


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@dataclasses.dataclass
class Run:
  """What one call of train_and_evaluate works with, built once by `setup_run`."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  dataset: data_lib.Source  # opened once: the streams and the evaluations read it
  info: data_lib.DatasetInfo
  model: model_lib.AlexNet
  steps_per_epoch: int
  num_steps: int
  eval_every: int
  aug: AugmentConstants
  manager: ckpt_lib.CheckpointManager
  lead: bool  # process 0: the one that writes metrics and logs

  def log(self, msg, *args):
    if self.lead:
      logging.info(msg, *args)


def setup_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Mesh, dataset, model, schedule lengths, augmentation constants and the checkpoint
  manager; checks what can be checked before any device work."""
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.tower)
  sharding.check_batch(mesh, config.batch_size)
  sharding.check_batch(mesh, config.eval_batch_size, "eval_batch_size")
  dataset = data_lib.open_dataset(config.dataset)
  info = dataset.info
  if info.num_eval == 0:  # evaluation (and the plateau schedule) would fail after training
    raise data_lib.DatasetError(
        f"dataset {info.name} has no validation images (no 'validation' or 'test' split): "
        f"evaluation needs them."
    )
  if info.num_train < config.batch_size:
    logging.warning(
        "the training split has %d images, fewer than one batch (%d): batches wrap around "
        "and repeat images (one epoch = one step).",
        info.num_train,
        config.batch_size,
    )
  steps_per_epoch = max(info.num_train // config.batch_size, 1)
  num_steps = (
      config.num_train_steps
      if config.num_train_steps > 0
      else int(math.ceil(config.num_epochs * steps_per_epoch))
  )
  manager = ckpt_lib.CheckpointManager(workdir, config)
  if manager.latest_step() is None:  # a new run: check init_from, take its mean image
    fine_tune.prepare_run_dir(config, workdir)
  stats = data_lib.dataset_stats(dataset)
  if stats.bad_files:
    logging.warning(
        "%d training image(s) cannot be decoded and are skipped: %s",
        len(stats.bad_files),
        ", ".join(stats.bad_files[:20]),
    )
  if jax.process_index() == 0:
    # What inference needs without the dataset: mean image, class names, preprocessing.
    run_files.write(workdir, config, info, stats)
  return Run(
      config=config,
      workdir=workdir,
      mesh=mesh,
      dataset=dataset,
      info=info,
      model=train_state.create_model(config, info.num_classes),
      steps_per_epoch=steps_per_epoch,
      num_steps=num_steps,
      eval_every=config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch,
      aug=jax.device_put(augment_constants(config, stats, workdir), sharding.replicated(mesh)),
      manager=manager,
      lead=jax.process_index() == 0,
  )


def restore_or_create_state(run: Run) -> train_state.TrainState:
  """The run's latest checkpoint; or a new state, with config.init_from's parameters when
  set (a resumed run ignores init_from: its own checkpoint wins)."""
  config, model, mesh = run.config, run.model, run.mesh
  shardings = train_state.state_shardings(mesh, train_state.abstract_state(config, model))

  def create():
    return train_state.create_train_state(config, model, mesh)

  if config.get("init_from") and run.manager.latest_step() is None:
    state = create()
    return state.replace(params=fine_tune.params_from_run(config, state.params, shardings.params))
  return run.manager.restore_or(create, shardings)


def summarize_window(run: Run, step: int, window: list[dict], seconds: float) -> dict:
  """One logging window's metrics (the mean of its steps; the learning rate now), raising
  NonFiniteLossError at the first non-finite loss."""
  for i, w in enumerate(window):
    if not math.isfinite(w["loss"]):
      raise NonFiniteLossError(
          f"loss became non-finite ({w['loss']}) at step {step - len(window) + 1 + i}; stopping "
          f"without saving. {_last_good(run.manager, run.workdir)} Lower "
          f"--config.optimizer.learning_rate or check the data."
      )
  m = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
  m["learning_rate"] = float(window[-1]["learning_rate"])
  m["images_per_sec"] = len(window) * run.config.batch_size / seconds
  m["epoch"] = step / run.steps_per_epoch
  eta = (run.num_steps - step) * run.config.batch_size / max(m["images_per_sec"], 1e-9)
  run.log(
      "step %d/%d  epoch %.2f  loss %.4f  top-1 err %.3f  lr %.2g  %.1f img/s  ETA %s",
      step,
      run.num_steps,
      m["epoch"],
      m["loss"],
      m["top1_error"],
      m["learning_rate"],
      m["images_per_sec"],
      reporting.format_duration(eta),
  )
  return m


def evaluate_and_schedule(run: Run, eval_step, state: train_state.TrainState):
  """Validation errors of `state`, fed to the plateau schedule; returns (state, metrics)."""
  config = run.config
  m = evaluate(
      config,
      eval_step,
      state.params,
      run.aug.mean_image,
      run.mesh,
      max_batches=config.max_eval_batches,
      std=run.aug.std,
      dataset=run.dataset,
  )
  run.log(
      "eval step %d: top-1 error %.4f  top-5 error %.4f  (%d images, %d view(s))",
      int(state.step),
      m["top1_error"],
      m["top5_error"],
      m["num_images"],
      config.eval_crops,
  )
  if config.optimizer.schedule == "plateau":
    state = state.replace(
        schedule=jax.device_put(
            optim.plateau_update(
                state.schedule,
                m["top1_error"],
                patience=config.optimizer.patience,
                max_drops=config.optimizer.max_drops,
                min_delta=config.optimizer.min_delta,
            ),
            sharding.replicated(run.mesh),
        )
    )
  return state, m


def save(run: Run, step: int, state: train_state.TrainState, eval_metrics: dict | None):
  # The update can overflow one step before the loss shows it: never save that.
  if not bool(_all_finite(state.params)):
    raise NonFiniteLossError(
        f"parameters became non-finite at step {step}; stopping without saving. "
        f"{_last_good(run.manager, run.workdir)} Lower --config.optimizer.learning_rate or "
        f"check the data."
    )
  run.manager.save(
      step,
      state,
      eval_metrics,
      meta={"num_classes": run.info.num_classes, "dataset": run.info.name},
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train (resuming from `workdir` if it holds a checkpoint) and evaluate; returns the
  final evaluation metrics."""
  run = setup_run(config, workdir)
  state = restore_or_create_state(run)
  start, num_steps = int(state.step), run.num_steps
  run.log(
      "mesh %s on %d device(s), %d process(es); %s: %d train / %d eval images, %d "
      "classes; %d parameters; steps %d -> %d (%d per epoch)",
      dict(run.mesh.shape),
      run.mesh.size,
      jax.process_count(),
      run.info.name,
      run.info.num_train,
      run.info.num_eval,
      run.info.num_classes,
      model_lib.num_params(state.params),
      start,
      num_steps,
      run.steps_per_epoch,
  )
  if start >= num_steps:
    return _finished_run(run, state)

  writer = reporting.MetricsWriter(workdir, enabled=run.lead)
  train_step = make_train_step(config, run.model, run.mesh, run.steps_per_epoch)
  eval_step = make_eval_step(config, run.model, run.mesh)
  shard_index, num_shards = sharding.process_data_shard(run.mesh)
  batches = data_lib.train_iterator(
      run.dataset,
      global_batch_size=config.batch_size,
      seed=config.seed,
      start_step=start,
      shard_index=shard_index,
      num_shards=num_shards,
  )

  pending, t_window, eval_metrics = [], time.perf_counter(), None
  with preemption.Watcher() as watcher:  # SIGTERM/SIGINT: save this step, then stop
    for step in range(start + 1, num_steps + 1):
      state, metrics = train_step(state, global_batch(run.mesh, next(batches)), run.aug)
      pending.append(metrics)
      last = step == num_steps
      stop = watcher.should_stop(step) and not last
      evaluate_now = step % run.eval_every == 0 or last
      save_now = step % config.checkpoint_every_steps == 0 or last or stop
      if step % config.log_every_steps == 0 or evaluate_now or save_now:
        # Fetching metrics syncs with the device: done only here, so steps stay async.
        now = time.perf_counter()
        writer.write(
            step, "train", summarize_window(run, step, jax.device_get(pending), now - t_window)
        )
        pending, t_window = [], now
        run.manager.check()  # a background save that failed stops the run now
      if evaluate_now:
        state, eval_metrics = evaluate_and_schedule(run, eval_step, state)
        writer.write(step, "eval", eval_metrics)
      if save_now:
        save(run, step, state, eval_metrics if evaluate_now else None)
        t_window = time.perf_counter()  # saving is not training time
      if stop:
        break
    run.manager.wait()  # committed (or raises) before the process may end
  writer.close()
  if stop:
    raise preemption.Preempted(step, watcher.reason, workdir)
  if run.lead:
    reporting.finish(workdir, config, eval_metrics)
  return eval_metrics


def _finished_run(run: Run, state: train_state.TrainState) -> dict:
  """Rerunning a finished run: report its final evaluation without appending to its
  metrics or TensorBoard files (evaluate only if its last checkpoint has none)."""
  step = int(state.step)
  eval_metrics = run.manager.restore_meta(step).get("eval")
  if eval_metrics is None:
    eval_metrics = evaluate_and_schedule(
        run, make_eval_step(run.config, run.model, run.mesh), state
    )[1]
  run.log(
      "%s already finished at step %d (num_train_steps %d); nothing to train.",
      run.workdir,
      step,
      run.num_steps,
  )
  if run.lead:
    reporting.finish(run.workdir, run.config, eval_metrics)
  return eval_metrics
