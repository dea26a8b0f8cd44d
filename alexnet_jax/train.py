"""Training: the loop of `train_and_evaluate`, where the paper's core (the update step,
evaluation), the data and the run directory meet, read top to bottom: Mesh, Input, Model &
optimizer, Setup, Load checkpoint, Evals, Train loop.

The update step is train_step.py; the evaluation steps (the paper's test views, §4.1)
evaluation.py; the input convention input_spec.py; the augmentation augment.py; the state and
its sharding train_state.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from alexnet_jax import (
    augment,
    config_checks,
    evaluation,
    facts,
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
from alexnet_jax import train_step as train_step_lib
from alexnet_jax.input_spec import InputSpec
from alexnet_jax.train_step import make_train_step


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


def schedule_lengths(config, info: data_lib.DatasetInfo) -> tuple[int, int, int]:
  """(steps per epoch, steps in all, steps between evaluations)."""
  steps_per_epoch = max(info.num_train // config.batch_size, 1)
  num_steps = train_step_lib.total_steps(config, steps_per_epoch)
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  return steps_per_epoch, num_steps, eval_every


# ---- Model & optimizer: the update step (§5) is train_step.make_train_step ----------------


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
  spec = run_dir.input_spec_from_config(workdir, config, stats)
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
  abstract = train_state.abstract_state(config, model)
  shardings = train_state.state_shardings(mesh, abstract)

  def create():
    return train_state.create_train_state(config, model, mesh)

  if config.get("init_from") and run.manager.latest_step() is None:
    state = create()
    params, batch_stats = fine_tune.variables_from_run(config, model, state, shardings)
    return state.replace(params=params, batch_stats=batch_stats)
  return run.manager.restore_or(create, abstract, shardings)


# ---- Evals ----------------------------------------------------------------------------------
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
      out = eval_step(variables, evaluation.global_batch(mesh, batch), spec)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  finally:  # the stream's threads end now, also after max_batches or an error
    if progress:
      it.close()
    getattr(batches, "close", lambda: None)()
  return evaluation.metrics_from_sums(sums)


def evaluate_and_schedule(run: Run, eval_step, state: train_state.TrainState):
  """Validation errors of `state`, fed to the plateau schedule; returns (state, metrics)."""
  config = run.config
  t = time.perf_counter()
  m = evaluate(
      config,
      eval_step,
      state.variables,
      run.spec,
      run.mesh,
      max_batches=config.max_eval_batches,
      dataset=run.dataset,
  )
  run.log(
      "eval step %d: top-1 error %.4f  top-5 error %.4f  (%d images, %d view(s), %.1f s)",
      int(state.step),
      m["top1_error"],
      m["top5_error"],
      m["num_images"],
      config.eval_crops,
      time.perf_counter() - t,
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


def summarize_window(run: Run, step: int, window: list[dict], clock: reporting.TrainClock) -> dict:
  """One logging window's metrics (the mean of its steps; the learning rate now; its rate and
  wall time from `clock`), raising NonFiniteLossError at the first non-finite loss. `window`:
  the steps' metrics already fetched from the device, so the clock reads the end of its last
  step."""
  timing = clock.end_window(step)
  for i, w in enumerate(window):
    if not math.isfinite(w["loss"]):
      raise NonFiniteLossError(
          f"loss became non-finite ({w['loss']}) at step {step - len(window) + 1 + i}; stopping "
          f"without saving. {_last_good(run.manager, run.workdir)} Lower "
          f"--config.optimizer.learning_rate or check the data."
      )
  m = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
  m["learning_rate"] = float(window[-1]["learning_rate"])
  m["images_per_sec"] = timing["images_per_sec"]
  m["epoch"] = step / run.steps_per_epoch
  if timing["warmup"]:  # compilation, the input pipeline's start: not the training's pace
    pace = f"warm-up {timing['window_s']:.1f} s (compilation; not in img/s or ETA)"
  else:
    pace = f"{m['images_per_sec']:.1f} img/s  {clock.eta_text(step)}"
  run.log(
      "step %d/%d  epoch %.2f  loss %.4f  top-1 err %.3f  lr %.2g  %s",
      step,
      run.num_steps,
      m["epoch"],
      m["loss"],
      m["top1_error"],
      m["learning_rate"],
      pace,
  )
  return {**m, **timing, **clock.stamp()}


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
  training data); `changes`: the config keys this launch changed, for config.json.

  Everything the run opens (the checkpoint manager, the metrics files, the input stream) is
  closed here, in order, before it returns or raises: the last save committed first."""
  started = time.perf_counter()
  run = setup_run(config, workdir, allow, changes)
  with contextlib.ExitStack() as stack:
    stack.callback(run.manager.close)  # last: after the final save is committed
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
    eval_metrics, stop, step, clock = _train_loop(run, state, stack, started)
  # Closed: the input stream, metrics.jsonl and TensorBoard files, the checkpoint manager.
  if stop:
    raise preemption.Preempted(step, stop, workdir)
  run.log("trained steps %d -> %d: %s", start, step, clock.summary())
  if run.lead:
    reporting.finish(workdir, config, eval_metrics)
  return eval_metrics


def _train_loop(run: Run, state, stack: contextlib.ExitStack, started: float):
  """Steps start+1 .. num_steps (or up to a preemption); what they open goes on `stack`.
  Returns (final eval metrics, the preemption signal's name or None, last step, clock)."""
  config, workdir, start = run.config, run.workdir, int(state.step)
  # Rows past the restored step (written before a kill) are dropped: one row per step.
  writer = stack.enter_context(
      contextlib.closing(reporting.MetricsWriter(workdir, enabled=run.lead, start_step=start))
  )
  train_step = make_train_step(
      config, run.model, run.mesh, run.steps_per_epoch, num_steps=run.num_steps
  )
  eval_step = evaluation.make_eval_step(config, run.model, run.mesh)
  shard_index, num_shards = sharding.process_data_shard(run.mesh)
  batches = stack.enter_context(
      contextlib.closing(
          data_lib.train_iterator(
              run.dataset,
              global_batch_size=config.batch_size,
              seed=config.seed,
              start_step=start,
              shard_index=shard_index,
              num_shards=num_shards,
          )
      )
  )
  clock = reporting.TrainClock(
      batch_size=config.batch_size,
      start_step=start,
      num_steps=run.num_steps,
      eval_every=run.eval_every,
      checkpoint_every=config.checkpoint_every_steps,
      started=started,
  )
  # config.profile_steps: a trace of the steps after the first (compilation) window.
  trace = stack.enter_context(
      contextlib.closing(
          reporting.StepTrace(
              os.path.join(workdir, facts.TENSORBOARD_DIR), config.profile_steps, run.num_steps
          )
      )
  )
  pending, eval_metrics, stop = [], None, None
  watcher = stack.enter_context(preemption.Watcher())  # SIGTERM/SIGINT: save, then stop
  for step in range(start + 1, run.num_steps + 1):
    with trace.annotate(step):
      state, metrics = train_step(
          state, evaluation.global_batch(run.mesh, next(batches)), run.spec, run.lighting
      )
    pending.append(metrics)
    if trace.due(step):
      jax.block_until_ready(metrics)  # the traced steps, finished on the device
      with clock.pause("profile"):
        path = trace.close()
      run.log(
          "profile of steps %d-%d written to %s: `tensorboard --logdir=%s` (its Profile "
          "tab), or open %s in ui.perfetto.dev",
          trace.first,
          trace.last,
          path,
          os.path.join(workdir, facts.TENSORBOARD_DIR),
          os.path.join(path or "", "perfetto_trace.json.gz"),
      )
    last = step == run.num_steps
    stop = watcher.reason if watcher.should_stop(step) and not last else None
    evaluate_now = step % run.eval_every == 0 or last
    save_now = step % config.checkpoint_every_steps == 0 or last or stop
    if step % config.log_every_steps == 0 or evaluate_now or save_now:
      # Fetching the metrics waits for the device: done only here, so steps stay async,
      # and before the clock is read, so a window ends when its last step has.
      writer.write(step, "train", summarize_window(run, step, jax.device_get(pending), clock))
      pending = []
      run.manager.check()  # a background save that failed stops the run now
      if config.profile_steps > 0 and trace.first is None:  # after the first window
        with clock.pause("profile"):
          trace.start(step)
    if evaluate_now:
      with clock.pause("eval"):
        state, eval_metrics = evaluate_and_schedule(run, eval_step, state)
      writer.write(
          step, "eval", {**eval_metrics, **clock.stamp(), "eval_s": clock.last_pause("eval")}
      )
    if save_now:
      with clock.pause("save"):  # saving is not training time
        save(run, step, state, eval_metrics if evaluate_now else None)
    if stop:
      break
  run.manager.wait()  # committed (or raises) before the process may end
  return eval_metrics, stop, step, clock


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
