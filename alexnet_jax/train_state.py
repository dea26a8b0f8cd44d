"""The train state: what a run is, in one pytree, and where each part of it lives on a mesh.

train.py steps and saves it; `restore_run` reads a run's checkpoint onto any mesh by giving
checkpoint.py the abstract tree (`abstract_state`) and sharding rule (`state_shardings`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from alexnet_jax import checkpoint, optim, sharding
from alexnet_jax import model as model_lib


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly; the data position is `step`."""

  step: jax.Array
  params: Any
  opt_state: Any
  schedule: optim.PlateauState
  rng: jax.Array  # raw uint32[2] base key; per-step keys fold in the step


def create_model(config, num_classes: int) -> model_lib.AlexNet:
  """The network of config.model, fed config.input.crop_size views."""
  return model_lib.from_config(
      {**config.model, "image_size": int(config.input.crop_size)}, num_classes
  )


def _init_state(config, model, rng) -> TrainState:
  params = model.init(rng, jnp.zeros((1, *model.input_shape)), train=False)["params"]
  return _state_around(config, params)


def _state_around(config, params) -> TrainState:
  tx = optim.make_optimizer(config.optimizer)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      schedule=optim.PlateauState.create(),
      rng=jax.random.key_data(jax.random.key(config.seed)),
  )


def abstract_state(config, model) -> TrainState:
  return jax.eval_shape(functools.partial(_init_state, config, model), jax.random.key(0))


def state_shardings(mesh, abstract: TrainState) -> TrainState:
  """The one sharding rule (sharding.param_specs) applied to the whole state: parameters
  and their velocities split by tower, scalars replicated."""
  return sharding.tree_shardings(mesh, sharding.param_specs(abstract))


def create_train_state(config, model, mesh, rng=None) -> TrainState:
  sharding.check_towers(mesh, model)
  rng = jax.random.key(config.seed) if rng is None else rng
  init = jax.jit(
      functools.partial(_init_state, config, model),
      out_shardings=state_shardings(mesh, abstract_state(config, model)),
  )
  return init(rng)


def train_state_from_params(config, model, mesh, params) -> TrainState:
  """A new run's state (step 0, zero momentum, fresh schedule) around given parameters, such
  as converted ones; no random initialisation is computed."""
  sharding.check_towers(mesh, model)
  shardings = state_shardings(mesh, abstract_state(config, model))
  params = jax.device_put(params, shardings.params)
  return jax.jit(functools.partial(_state_around, config), out_shardings=shardings)(params)


def restore_run(workdir: str, step: int | None = None, mesh=None) -> checkpoint.RestoredRun:
  """A run's config, variables, step and metadata on `mesh` (default: the first local
  device), read-only. Orbax reshards onto the abstract state built here from the run's
  config, so a notebook on one CPU restores a run trained on any mesh or number of
  processes."""
  if mesh is None:
    mesh = sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])

  def target(config, num_classes: int):
    abstract = abstract_state(config, create_model(config, num_classes))
    return abstract, state_shardings(mesh, abstract)

  return checkpoint.restore_run(workdir, target, step)


def restore(workdir: str, step: int | None = None, mesh=None):
  """(config, variables) of a run: restore_run without the step and metadata."""
  run = restore_run(workdir, step, mesh)
  return run.config, run.variables
