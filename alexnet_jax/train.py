"""Training: the update step and the loop of `train_and_evaluate`, read top to bottom:
Mesh, Input, Model & optimizer (the update step), Setup, Load checkpoint, Evals, Train loop.

Evaluation (the paper's test views, §4.1) is evaluation.py; the input convention
input_spec.py; the augmentation augment.py; the state and its sharding train_state.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from alexnet_jax import (
    augment,
    config_checks,
    evaluation,
    fine_tune,
    optim,
    preemption,
    reporting,
    run_data,
    run_dir,
    sharding,
    train_state,
)
from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import data as data_lib
from alexnet_jax import model as model_lib
from alexnet_jax.input_spec import InputSpec


class NonFiniteLossError(RuntimeError):
  pass


# ---- Mesh -----------------------------------------------------------------------------------
def make_mesh(config) -> jax.sharding.Mesh:
  """The ("data", "tower") mesh; both batch sizes, and gradient accumulation's micro-batches,
  must split over its data axis."""
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.tower)
  sharding.check_batch(mesh, config.batch_size)
  sharding.check_batch(mesh, config.eval_batch_size, "eval_batch_size")
  check_micro_batch(mesh, config)
  return mesh


def check_micro_batch(mesh, config) -> None:
  """batch_size / gradient_accumulation rows per micro-batch, a multiple of the data axis."""
  k, n = config.get("gradient_accumulation", 1), mesh.shape[sharding.DATA]
  if k > 1 and (config.batch_size % k or (config.batch_size // k) % n):
    raise config_checks.ConfigError(
        f"config.batch_size={config.batch_size} / config.gradient_accumulation={k} does not "
        f"give micro-batches that split over the mesh's data axis (size {n}): pick a batch "
        f"size that is a multiple of {k * n}, or another gradient_accumulation."
    )


# ---- Input ----------------------------------------------------------------------------------
def open_input(config, dataset=None) -> data_lib.Source:
  """The dataset (`dataset`: already opened), checked: it has validation images."""
  dataset = data_lib.open_dataset(config.dataset if dataset is None else dataset)
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
  return dataset


def total_steps(config, steps_per_epoch: int) -> int:
  """The run's length: num_train_steps, or num_epochs of steps_per_epoch."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return int(math.ceil(config.num_epochs * steps_per_epoch))


def schedule_lengths(config, info: data_lib.DatasetInfo) -> tuple[int, int, int]:
  """(steps per epoch, steps in all, steps between evaluations)."""
  steps_per_epoch = max(info.num_train // config.batch_size, 1)
  num_steps = total_steps(config, steps_per_epoch)
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  return steps_per_epoch, num_steps, eval_every


def augment_batch(
    augment_config,
    mesh,
    aug_rng,
    step,
    images,
    spec: InputSpec,
    lighting,
    dtype=jnp.float32,
    example_index=None,
) -> jax.Array:
  """The train step's augmentation (§4.1): uint8 [B, 256, 256, 3] -> float [B, crop, crop, 3]
  split over "data". Keys from (seed, step, position in the global batch): the same views
  on every mesh. example_index: the rows' positions (None: images is the global batch)."""
  if example_index is None:
    example_index = jnp.arange(images.shape[0])
  keys = augment.example_keys(aug_rng, step, example_index)
  views = augment.train_views(
      images,
      keys,
      spec,
      lighting,
      random_crop=augment_config.random_crop,
      flip=augment_config.flip,
      lighting_std=augment_config.lighting_std,
      dtype=dtype,
  )
  return jax.lax.with_sharding_constraint(views, sharding.batch_sharding(mesh))


# ---- Model & optimizer: the update step (§5: momentum SGD with weight decay) --------------
def micro_batch(mesh, x, k: int, b) -> jax.Array:
  """Micro-batch b of k: rows b, b + k, b + 2k, ... of x [B, ...] split over "data". Each
  device's block of B / n rows holds its B / (n k) of them (B / n a multiple of k), so
  nothing moves between devices, and the micro-batch is the same rows on every mesh."""
  data = sharding.batch_sharding(mesh)
  x = jax.lax.with_sharding_constraint(x.reshape(x.shape[0] // k, k, *x.shape[1:]), data)
  return jax.lax.with_sharding_constraint(jax.lax.dynamic_index_in_dim(x, b, 1, False), data)


def add_micro_batch(mesh, gradients, k: int, images, labels, b, carry):
  """carry (gradient sum, running averages, metric sums) with micro-batch b of (images,
  labels) added: `gradients(images, labels, example_index, batch_stats) -> (grads,
  batch_stats, metrics)` of its rows, keyed by their positions in the global batch."""
  total, stats, sums = carry
  index = jax.lax.with_sharding_constraint(
      b + k * jnp.arange(images.shape[0] // k), sharding.batch_sharding(mesh)
  )
  grads, stats, metrics = gradients(
      micro_batch(mesh, images, k, b), micro_batch(mesh, labels, k, b), index, stats
  )
  return _tree_add(total, grads), stats, _tree_add(sums, metrics)


def zero_carry(mesh, gradients, k: int, images, labels, batch_stats):
  """add_micro_batch's carry before the first micro-batch: zero sums, the running averages."""
  rows = images.shape[0] // k
  grads, _, metrics = jax.eval_shape(
      gradients,
      micro_batch(mesh, images, k, 0),
      micro_batch(mesh, labels, k, 0),
      jnp.arange(rows),
      batch_stats,
  )
  zeros = lambda tree: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)  # noqa: E731
  return zeros(grads), batch_stats, zeros(metrics)


def mean_of_carry(carry, k: int):
  """(mean gradients, running averages, mean metrics) of a carry holding k micro-batches."""
  total, stats, sums = carry
  mean = lambda tree: jax.tree.map(lambda a: a / k, tree)  # noqa: E731
  return mean(total), stats, mean(sums)


def accumulate_gradients(mesh, gradients, k: int, images, labels, batch_stats):
  """The k micro-batches of (images, labels) one after the other in a lax.scan (one
  micro-batch's activations live at a time): their mean gradients and metrics, and the
  running averages after the k micro-batches updated them in turn."""
  carry = zero_carry(mesh, gradients, k, images, labels, batch_stats)
  carry, _ = jax.lax.scan(
      lambda c, b: (add_micro_batch(mesh, gradients, k, images, labels, b, c), None),
      carry,
      jnp.arange(k),
  )
  return mean_of_carry(carry, k)


def accumulation_loop() -> str:
  """Where the micro-batches loop: 'scan' (accumulate_gradients, inside the one jitted step)
  off CPU; 'host' on CPU (AccumulatingStep: one jitted call per micro-batch), where XLA
  rewrites convolutions into the form its fast (Eigen) kernels take only in the entry
  computation, so those of a loop body run a naive kernel (measured here: a conv's weight
  gradient 40x slower in a scan, the demo's step 8x). Unrolling the scan instead made XLA
  keep every micro-batch's activations (the step's temporary memory 8x K=1's at K=8).
  tests/test_gradient_accumulation.py checks both loops."""
  return "host" if jax.default_backend() == "cpu" else "scan"


def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


@dataclasses.dataclass
class AccumulatingStep:
  """The train step as K + 2 jitted calls: `start` (zero sums), `micro` once per micro-batch
  (its gradients added to the sums, which it donates), `finish` (the update; donates the
  state). Called like the one-call step: `(state, batch, spec, lighting) -> (state,
  metrics)`; the calls queue on the device without waiting for each other."""

  start: Any
  micro: Any
  finish: Any
  indices: tuple  # 0 .. K - 1 on the mesh, replicated

  def __call__(self, state, batch, spec, lighting):
    carry = self.start(state, batch, spec, lighting)
    for b in self.indices:
      carry = self.micro(state, batch, spec, lighting, b, carry)
    return self.finish(state, carry)


def make_train_step(
    config, model, mesh, steps_per_epoch: int, *, augment_on_device=True, num_steps=None, loop=None
):
  """Jitted `(state, batch, spec, lighting) -> (state, metrics)`; the state is donated.

  batch: {'image': uint8 [B, 256, 256, 3], 'label': int32 [B]} split over "data"
  (with augment_on_device=False, 'image' is already float32 [B, 224, 224, 3]). With
  config.gradient_accumulation K > 1 the batch runs as K micro-batches (micro_batch) and
  one update, looped as `loop` says ('scan' or 'host'; None: accumulation_loop()).
  num_steps: the run's length, for optimizer.schedule='poly' (None: from the config, as
  train_and_evaluate counts it).
  """
  tx = optim.make_optimizer(config.optimizer)
  apply = sharding.sharded_apply(model, mesh)
  dtype = evaluation.input_dtype(config)
  k = config.get("gradient_accumulation", 1)
  if num_steps is None:
    num_steps = total_steps(config, steps_per_epoch)

  def gradients_of(state: train_state.TrainState, spec: InputSpec, lighting):
    """`(images, labels, example_index, batch_stats) -> (grads, batch_stats, metrics)` at
    the state's parameters and step."""
    base = jax.random.wrap_key_data(state.rng)
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(base, 0))

    def gradients(images, labels, example_index, batch_stats):
      # Keys from (seed, step, the rows' positions in the global batch): a micro-batch's
      # examples get the views and dropout masks the whole batch would give them.
      if augment_on_device:
        images = augment_batch(
            config.augment,
            mesh,
            aug_rng,
            state.step,
            images,
            spec,
            lighting,
            dtype,
            example_index,
        )

      def loss_fn(params):
        # BatchNorm variants: normalised by this (micro-)batch's statistics, which also
        # update the running averages ({} otherwise).
        logits, new_stats = apply(
            train_state.model_variables(params, batch_stats),
            images,
            train=True,
            dropout_rng=jax.random.fold_in(dropout_rng, state.step),
            with_batch_stats=True,
            example_index=example_index,
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, new_stats)

      (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      top1, top5 = evaluation.errors(logits, labels)
      return grads, new_stats, {"loss": loss, "top1_error": top1.mean(), "top5_error": top5.mean()}

    return gradients

  def update(state: train_state.TrainState, grads, batch_stats, metrics):
    lr = optim.learning_rate(
        config.optimizer, state.step, state.schedule, steps_per_epoch, num_steps
    )
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "learning_rate": lr, "grad_norm": optax.global_norm(grads)}
    new = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats
    )
    return new, metrics

  def train_step(state: train_state.TrainState, batch, spec: InputSpec, lighting):
    gradients = gradients_of(state, spec, lighting)
    if k == 1:
      out = gradients(batch["image"], batch["label"], None, state.batch_stats)
    else:
      out = accumulate_gradients(
          mesh, gradients, k, batch["image"], batch["label"], state.batch_stats
      )
    return update(state, *out)

  shardings = train_state.state_shardings(mesh, train_state.abstract_state(config, model))
  data = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  inputs = (shardings, {"image": data, "label": data}, replicated, replicated)
  options = evaluation.compiler_options()
  if k == 1 or (loop or accumulation_loop()) == "scan":
    return jax.jit(
        train_step,
        donate_argnums=0,
        in_shardings=inputs,
        out_shardings=(shardings, replicated),
        compiler_options=options,
    )

  def start(state, batch, spec, lighting):
    gradients = gradients_of(state, spec, lighting)
    return zero_carry(mesh, gradients, k, batch["image"], batch["label"], state.batch_stats)

  def micro(state, batch, spec, lighting, b, carry):
    gradients = gradients_of(state, spec, lighting)
    return add_micro_batch(mesh, gradients, k, batch["image"], batch["label"], b, carry)

  def finish(state, carry):
    return update(state, *mean_of_carry(carry, k))

  carry = (shardings.params, shardings.batch_stats, replicated)
  return AccumulatingStep(
      start=jax.jit(start, in_shardings=inputs, out_shardings=carry, compiler_options=options),
      micro=jax.jit(
          micro,
          donate_argnums=5,
          in_shardings=(*inputs, replicated, carry),
          out_shardings=carry,
          compiler_options=options,
      ),
      finish=jax.jit(
          finish,
          donate_argnums=0,
          in_shardings=(shardings, carry),
          out_shardings=(shardings, replicated),
          compiler_options=options,
      ),
      indices=tuple(jax.device_put(np.int32(b), replicated) for b in range(k)),
  )


# ---- Setup: everything a run works with, built once ----------------------------------------
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
  spec: InputSpec  # on the mesh, replicated
  lighting: augment.Lighting  # on the mesh, replicated
  manager: ckpt_lib.CheckpointManager
  lead: bool  # process 0: the one that writes metrics and logs

  def log(self, msg, *args):
    if self.lead:
      logging.info(msg, *args)


def setup_run(config: ml_collections.ConfigDict, workdir: str, allow=(), changes=None) -> Run:
  """Mesh, dataset, input spec, model, schedule lengths and the checkpoint manager; checks
  what can be checked before any device work. `allow`: --allow_config_change; `changes`:
  config_checks.resume_changes, recorded in config.json once the data are accepted (None:
  the caller records the config)."""
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh(config)
  # The training data and statistics (§2, §4.1): a resume reads those the run started with,
  # or stops here, before anything is written (run_data.py).
  data = run_data.open_for_run(config, workdir, config_checks.has_checkpoints(workdir), allow)
  if changes is not None and jax.process_index() == 0:
    config_checks.record(config, workdir, changes)
  dataset = open_input(config, data.dataset)
  info = dataset.info
  manager = ckpt_lib.CheckpointManager(workdir, config)
  if manager.latest_step() is None:  # a new run: check init_from, take its mean image
    fine_tune.prepare_run_dir(config, workdir)
  stats = data.stats
  spec = InputSpec.from_config(config, stats, workdir)
  if jax.process_index() == 0:
    # What inference needs without the dataset: mean image, class names, preprocessing.
    run_dir.write(workdir, config, info, stats, spec, keep_stats=data.keep_stats)
    run_data.record(workdir, data)
  steps_per_epoch, num_steps, eval_every = schedule_lengths(config, info)
  replicated = sharding.replicated(mesh)
  return Run(
      config=config,
      workdir=workdir,
      mesh=mesh,
      dataset=dataset,
      info=info,
      model=train_state.create_model(config, info.num_classes),
      steps_per_epoch=steps_per_epoch,
      num_steps=num_steps,
      eval_every=eval_every,
      spec=jax.device_put(spec, replicated),
      lighting=jax.device_put(augment.Lighting.from_config(config.augment, stats), replicated),
      manager=manager,
      lead=jax.process_index() == 0,
  )


# ---- Load checkpoint ------------------------------------------------------------------------
def restore_or_create_state(run: Run) -> train_state.TrainState:
  """The run's latest checkpoint; or a new state, with config.init_from's parameters when
  set (a resumed run ignores init_from: its own checkpoint wins)."""
  config, model, mesh = run.config, run.model, run.mesh
  shardings = train_state.state_shardings(mesh, train_state.abstract_state(config, model))

  def create():
    return train_state.create_train_state(config, model, mesh)

  if config.get("init_from") and run.manager.latest_step() is None:
    state = create()
    params, batch_stats = fine_tune.variables_from_run(config, model, state, shardings)
    return state.replace(params=params, batch_stats=batch_stats)
  return run.manager.restore_or(create, shardings)


# ---- Evals ----------------------------------------------------------------------------------
def evaluate_and_schedule(run: Run, eval_step, state: train_state.TrainState):
  """Validation errors of `state`, fed to the plateau schedule; returns (state, metrics)."""
  config = run.config
  m = evaluation.evaluate(
      config,
      eval_step,
      state.variables,
      run.spec,
      run.mesh,
      max_batches=config.max_eval_batches,
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


# ---- Train loop -----------------------------------------------------------------------------
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


def save(run: Run, step: int, state: train_state.TrainState, eval_metrics: dict | None):
  # The update can overflow one step before the loss shows it: never save that.
  if not bool(_all_finite(state.variables)):
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


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow=(), changes=None
) -> dict:
  """Train (resuming from `workdir` if it holds a checkpoint) and evaluate; returns the
  final evaluation metrics. `allow`: --allow_config_change (run_data.ALLOW: resume on other
  training data); `changes`: the config keys this launch changed, for config.json."""
  run = setup_run(config, workdir, allow, changes)
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
      model_lib.num_params(state.variables),
      start,
      num_steps,
      run.steps_per_epoch,
  )
  if start >= num_steps:
    return _finished_run(run, state)

  # Rows past the restored step (written before a kill) are dropped: one row per step.
  writer = reporting.MetricsWriter(workdir, enabled=run.lead, start_step=start)
  train_step = make_train_step(
      config, run.model, run.mesh, run.steps_per_epoch, num_steps=run.num_steps
  )
  eval_step = evaluation.make_eval_step(config, run.model, run.mesh)
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
      state, metrics = train_step(
          state, evaluation.global_batch(run.mesh, next(batches)), run.spec, run.lighting
      )
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
        run, evaluation.make_eval_step(run.config, run.model, run.mesh), state
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
