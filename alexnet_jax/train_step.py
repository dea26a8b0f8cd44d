"""The update step (§5: momentum SGD with weight decay, or Keras's Adam) and its on-device
augmentation (§4.1), jitted on the mesh: what one training step computes. The loop that
feeds it batches and saves its state is train.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import augment, evaluation, optim, sharding, train_state
from alexnet_jax.input_spec import InputSpec


def total_steps(config, steps_per_epoch: int) -> int:
  """The run's length: num_train_steps, or num_epochs of steps_per_epoch."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return int(math.ceil(config.num_epochs * steps_per_epoch))


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
    metrics = {**metrics, "learning_rate": lr, "grad_norm": optax.tree.norm(grads)}
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
