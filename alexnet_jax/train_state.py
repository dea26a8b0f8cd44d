"""The train state: what a run is, in one pytree, and where each part of it lives on a mesh.

train.py steps and saves it; checkpoint.py restores it onto any mesh from the abstract tree
(`abstract_state`) and sharding rule (`state_shardings`) that `restore_target` gives it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from alexnet_jax import model as model_lib
from alexnet_jax import optim, sharding


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly; the data position is `step`."""

  step: jax.Array
  params: Any
  opt_state: Any
  schedule: optim.PlateauState
  rng: jax.Array  # raw uint32[2] base key; per-step keys fold in the step
  # BatchNorm's running averages ({bn_i: {mean, var}}) for variants with BatchNorm; {} for the
  # others (and for runs saved before it existed: an empty tree has nothing to restore).
  batch_stats: Any = flax.struct.field(default_factory=dict)

  @property
  def variables(self) -> dict:
    """What the model applies: {"params": ...}, plus "batch_stats" when it has any."""
    return model_variables(self.params, self.batch_stats)


def model_variables(params, batch_stats=None) -> dict:
  """{"params": params} plus {"batch_stats": batch_stats} when non-empty."""
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def create_model(config, num_classes: int) -> model_lib.AlexNet:
  """The network of config.model, fed config.input.crop_size views."""
  return model_lib.from_config(config.model, num_classes, int(config.input.crop_size))


def _init_state(config, model, rng) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *model.input_shape)), train=False)
  return _state_around(config, variables["params"], variables.get("batch_stats", {}))


def _state_around(config, params, batch_stats) -> TrainState:
  tx = optim.make_optimizer(config.optimizer)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      schedule=optim.PlateauState.create(),
      rng=jax.random.key_data(jax.random.key(config.seed)),
      batch_stats=batch_stats,
  )


def initial_batch_stats(model) -> dict:
  """BatchNorm's running averages before any training (mean 0, variance 1); {} without
  BatchNorm. Computed from the shapes alone."""
  abstract = sharding.abstract_variables(model).get("batch_stats", {})
  return jax.tree_util.tree_map_with_path(
      lambda path, a: (jnp.ones if path[-1].key == "var" else jnp.zeros)(a.shape, a.dtype),
      abstract,
  )


def abstract_state(config, model) -> TrainState:
  return jax.eval_shape(functools.partial(_init_state, config, model), jax.random.key(0))


def state_shardings(mesh, abstract: TrainState) -> TrainState:
  """The one sharding rule (sharding.param_specs) applied to the whole state: parameters
  and their velocities split by tower; scalars and BatchNorm statistics replicated."""
  return sharding.tree_shardings(mesh, sharding.param_specs(abstract))


def init_compiler_options() -> dict | None:
  """`jax.jit(..., compiler_options=...)` for a random init on this backend.

  XLA:CPU's default LLVM level (-O3) spends 4-9 s compiling the initialisers' random-number
  code, most of a cold start (9.3 s at width 0.0625, 4.5 s at 0.25, 3.7 s at 1.0); level 2
  takes 1 s and gives the same bits (the init is elementwise: nothing to reorder).
  tests/test_train_state.py checks the arrays against a default compilation.
  """
  return {"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else None


def create_train_state(config, model, mesh, rng=None) -> TrainState:
  sharding.check_towers(mesh, model)
  rng = jax.random.key(config.seed) if rng is None else rng
  init = jax.jit(
      functools.partial(_init_state, config, model),
      out_shardings=state_shardings(mesh, abstract_state(config, model)),
      compiler_options=init_compiler_options(),
  )
  return init(rng)


def train_state_from_params(config, model, mesh, params, batch_stats=None) -> TrainState:
  """A new run's state (step 0, zero momentum, fresh schedule) around given parameters, such
  as converted ones, and BatchNorm running averages (None: initial_batch_stats); no random
  initialisation is computed."""
  sharding.check_towers(mesh, model)
  shardings = state_shardings(mesh, abstract_state(config, model))
  params = jax.device_put(params, shardings.params)
  if batch_stats is None:
    batch_stats = initial_batch_stats(model)
  batch_stats = jax.device_put(batch_stats, shardings.batch_stats)
  return jax.jit(functools.partial(_state_around, config), out_shardings=shardings)(
      params, batch_stats
  )


def restore_target(mesh=None):
  """checkpoint.restore_run's target for a run's TrainState: (config, num_classes) ->
  (abstract state, shardings on `mesh`; default: the first local device). Orbax reshards
  onto it, so a notebook on one CPU restores a run trained on any mesh or number of
  processes."""
  if mesh is None:
    mesh = sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])

  def target(config, num_classes: int):
    abstract = abstract_state(config, create_model(config, num_classes))
    return abstract, state_shardings(mesh, abstract)

  return target
