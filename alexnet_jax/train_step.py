"""The update step (§5: momentum SGD with weight decay, or Keras's Adam) and its on-device
augmentation (§4.1), jitted on the mesh: what one training step computes. The loop that
feeds it batches and saves its state is train.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from alexnet_jax import augment, evaluation, optim, sharding, train_state
from alexnet_jax.input_spec import InputSpec


def augment_batch(
    augment_config, mesh, aug_rng, step, images, spec: InputSpec, lighting, dtype=jnp.float32
) -> jax.Array:
  """The train step's augmentation (§4.1): uint8 [B, 256, 256, 3] -> float [B, crop, crop, 3]
  split over "data". Keys from (seed, step, position in the global batch): the same views
  on every mesh."""
  keys = augment.example_keys(aug_rng, step, jnp.arange(images.shape[0]))
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


def make_train_step(config, model, mesh, steps_per_epoch: int, *, augment_on_device=True):
  """Jitted `(state, batch, spec, lighting) -> (state, metrics)`; the state is donated.

  batch: {'image': uint8 [B, 256, 256, 3], 'label': int32 [B]} split over "data"
  (with augment_on_device=False, 'image' is already float32 [B, 224, 224, 3]).
  """
  tx = optim.make_optimizer(config.optimizer)
  apply = sharding.sharded_apply(model, mesh)
  dtype = evaluation.input_dtype(config)

  def train_step(state: train_state.TrainState, batch, spec: InputSpec, lighting):
    base = jax.random.wrap_key_data(state.rng)
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(base, 0))
    images, labels = batch["image"], batch["label"]
    if augment_on_device:
      images = augment_batch(
          config.augment, mesh, aug_rng, state.step, images, spec, lighting, dtype
      )

    def loss_fn(params):
      # BatchNorm variants: normalised by this batch's statistics, which also update the
      # running averages ({} otherwise).
      logits, batch_stats = apply(
          train_state.model_variables(params, state.batch_stats),
          images,
          train=True,
          dropout_rng=jax.random.fold_in(dropout_rng, state.step),
          with_batch_stats=True,
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    lr = optim.learning_rate(config.optimizer, state.step, state.schedule, steps_per_epoch)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    top1, top5 = evaluation.errors(logits, labels)
    metrics = {
        "loss": loss,
        "top1_error": top1.mean(),
        "top5_error": top5.mean(),
        "learning_rate": lr,
        "grad_norm": optax.global_norm(grads),
    }
    new = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats
    )
    return new, metrics

  shardings = train_state.state_shardings(mesh, train_state.abstract_state(config, model))
  data = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  return jax.jit(
      train_step,
      donate_argnums=0,
      in_shardings=(shardings, {"image": data, "label": data}, replicated, replicated),
      out_shardings=(shardings, replicated),
      compiler_options=evaluation.compiler_options(),
  )
