"""The mesh ("data", "tower") and the one place that says how everything is sharded.

- Tower parameters (leading axis of size 2) are split over "tower" and replicated over
  "data"; fc8 is replicated everywhere. `param_specs` holds that rule; every sharding of
  parameters, optimizer state and checkpoints is derived from it.
- BatchNorm's parameters and running averages (one-tower variants) are replicated.
- Batches are split over "data"; BatchNorm's batch statistics are averaged over "data" inside
  the model, so they are the global batch's on any mesh.
- The model runs under `jax.shard_map`: a device runs plain convolutions on the towers it
  holds, and the only collectives in the forward pass are the four all-gathers at the
  paper's cross-tower points (docs/paper.md#how-the-two-towers-map-onto-devices), plus
  BatchNorm's means over "data" in training (keras_bn). GSPMD on a grouped convolution would
  instead all-gather kernels and activations and run the whole layer on every device.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import model as model_lib
from alexnet_jax.facts import ConfigError

DATA, TOWER = "data", "tower"


def make_mesh(data: int = -1, tower: int = 1, devices=None) -> Mesh:
  """Mesh of shape (data, tower) over `devices` (default: all devices of all processes).

  One of the sizes may be -1: it takes the devices the other leaves.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and tower == -1:
    raise ConfigError("at most one of mesh.data and mesh.tower can be -1")
  if tower == -1:
    tower = n // data if data > 0 and n % data == 0 else 0
  if data == -1:
    data = n // tower if tower > 0 and n % tower == 0 else 0
  if data <= 0 or tower <= 0 or data * tower != n:  # ConfigErrors: one line from a command
    raise ConfigError(
        f"mesh data={data} x tower={tower} does not match the {n} device(s) found: "
        f"{devices}. Choose sizes whose product is {n} (e.g. --config.mesh.data=-1 "
        f"--config.mesh.tower=1), or change the device count (on CPU: XLA_FLAGS="
        f"--xla_force_host_platform_device_count=N)."
    )
  return Mesh(np.asarray(devices, dtype=object).reshape(data, tower), (DATA, TOWER))


# ---- which part of each global batch a process feeds ---------------------------------------
def data_block(device_grid, data_axis: int, process_index: int) -> tuple[int, int]:
  """(index, count): this process's devices hold block `index` of `count` equal, contiguous
  blocks of the mesh's data axis. `device_grid`: the mesh's array of devices.

  A process can hold several data shards (2 devices on data=2 -> its half of the batch), or
  share one with other processes (towers split across processes: data=1, tower=2 on two
  processes -> both hold, and must both feed, the whole batch: (0, 1)).
  """
  grid = np.moveaxis(np.asarray(device_grid, dtype=object), data_axis, 0)
  n = grid.shape[0]
  held = sorted({i for i in range(n) for d in grid[i].ravel() if d.process_index == process_index})
  if not held:
    raise ValueError(f"process {process_index} holds no device of the mesh")
  k, a = len(held), held[0]
  if held != list(range(a, a + k)) or n % k or a % k:
    raise ValueError(
        f"process {process_index} holds data shards {held} of {n}: each process must hold "
        f"one contiguous, equal block of the mesh's data axis (use a mesh built from "
        f"jax.devices(), whose order groups the devices of each process)"
    )
  return a // k, n // k


def process_data_shard(mesh: Mesh) -> tuple[int, int]:
  """(shard_index, num_shards) for the input pipeline: this process reads exactly the rows
  of each global batch that its devices hold (data_block). Processes that share a data
  shard (towers split across processes) read the same rows."""
  return data_block(mesh.devices, mesh.axis_names.index(DATA), jax.process_index())


# ---- the sharding rule ------------------------------------------------------------------
def param_specs(params) -> Any:
  """PartitionSpec tree for a parameter-shaped tree: tower layers split on "tower"."""

  def spec(path, leaf):
    # Match the layer name anywhere in the path, so {"params": ...} trees and optimizer
    # states (which nest the parameter tree) get the same rule.
    names = {getattr(k, "key", None) for k in path}
    if names & set(model_lib.TOWER_LAYERS) and getattr(leaf, "ndim", 0) >= 1:
      return P(TOWER)
    return P()

  return jax.tree_util.tree_map_with_path(spec, params)


def tree_shardings(mesh: Mesh, specs) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def param_shardings(mesh: Mesh, params) -> Any:
  return tree_shardings(mesh, param_specs(params))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data", everything else replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch(mesh: Mesh, batch_size: int, what: str = "batch_size") -> None:
  n = mesh.shape[DATA]
  if batch_size % n:  # a ConfigError: the commands print it as one line
    raise ConfigError(
        f"config.{what}={batch_size} is not divisible by the mesh's data axis (size {n}, "
        f"{mesh.devices.size} device(s)); pick a multiple of {n}, or set --config.mesh.data."
    )


def check_towers(mesh: Mesh, model: model_lib.AlexNet) -> None:
  if model.num_towers % mesh.shape[TOWER]:
    raise ConfigError(
        f"the model has {model.num_towers} tower(s) but the mesh's tower "
        f"axis has size {mesh.shape[TOWER]}; set mesh.tower to 1"
        f"{'' if model.num_towers == 1 else ' or 2'}."
    )


def abstract_variables(model: model_lib.AlexNet) -> Any:
  """Shapes/dtypes of `model.init` without computing anything."""
  images = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)


def init_variables(model: model_lib.AlexNet, mesh: Mesh, rng: jax.Array) -> Any:
  """Initialise directly into the mesh's shardings (no full copy on one device)."""
  check_towers(mesh, model)
  abstract = abstract_variables(model)
  images = jnp.zeros((1, *model.input_shape), jnp.float32)
  init = jax.jit(
      functools.partial(model.init, train=False), out_shardings=param_shardings(mesh, abstract)
  )
  return init(rng, images)


def sharded_apply(model: model_lib.AlexNet, mesh: Mesh):
  """`apply(variables, images, *, train, dropout_rng=None, with_batch_stats=False,
  example_index=None) -> logits` on global arrays; with_batch_stats: `(logits, batch_stats)`,
  the running averages a training call updates (BatchNorm variants; {} for the others;
  unchanged when not training); example_index: int [B] split over "data", the rows'
  positions in the global batch that dropout keys by (None: images is the global batch).

  variables: {"params": ..., "batch_stats": ...} (or a bare parameter tree). images
  [B, 224, 224, 3] split over "data"; logits [B, num_classes] split over "data". BatchNorm's
  batch statistics are averaged over "data": the global batch's, whatever the mesh.
  Call it inside `jax.jit` (and under `jax.grad`): autodiff through shard_map turns each
  forward all-gather into a reduce-scatter of the cotangents.
  """
  check_towers(mesh, model)
  spmd_model = model.clone(tower_axis=TOWER, data_axis=DATA)

  def apply(
      variables,
      images,
      *,
      train: bool,
      dropout_rng=None,
      with_batch_stats=False,
      example_index=None,
  ):
    check_batch(mesh, images.shape[0])
    variables = model_lib.as_variables(variables)
    stats = variables.get("batch_stats") or {}
    update = bool(train and stats)

    def body(variables, images, rng, *index):
      rngs = {"dropout": rng} if train else {}
      kwargs = {"example_index": index[0]} if index else {}
      if update:
        logits, new = spmd_model.apply(
            variables, images, train=True, rngs=rngs, mutable=["batch_stats"], **kwargs
        )
        new_stats = new["batch_stats"]
      else:
        logits = spmd_model.apply(variables, images, train=train, rngs=rngs, **kwargs)
        new_stats = {}
      # The towers compute identical logits. Returning them stacked over "tower" and
      # keeping one copy outside is what makes autodiff correct: only one copy's
      # cotangent is non-zero, and the all-gathers transpose to reduce-scatters. The batch
      # statistics (averaged over "data" by BatchNorm) come back the same way.
      return logits[None], jax.tree.map(lambda x: x[None], new_stats)

    if dropout_rng is None:
      dropout_rng = jax.random.key(0)
    index = () if example_index is None else (example_index,)
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(param_specs(variables), P(DATA), P(), *(P(DATA) for _ in index)),
        out_specs=(P(TOWER, DATA), jax.tree.map(lambda _: P(TOWER), stats) if update else {}),
    )
    logits, new_stats = fn(variables, images, dropout_rng, *index)
    if with_batch_stats:
      return logits[0], jax.tree.map(lambda x: x[0], new_stats) if update else stats
    return logits[0]

  return apply
