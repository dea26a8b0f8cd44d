"""The towers on a (data, tower) mesh: same numbers as one device, collectives only at the
paper's four cross-tower points, each device holding only its own tower."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import sharding
from alexnet_jax.model import VARIANTS, AlexNet

B = 8
MODEL = AlexNet(num_classes=10, width=0.25)


@pytest.fixture(scope="module")
def setup():
  variables = MODEL.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  images = jax.random.normal(jax.random.key(1), (B, 224, 224, 3)) * 50
  labels = jax.random.randint(jax.random.key(2), (B,), 0, 10)
  return variables, images, labels


def _loss(logits, labels):
  return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def _mesh(data, tower):
  return sharding.make_mesh(data, tower, devices=jax.devices()[: data * tower])


@pytest.fixture(scope="module")
def single_device_result(setup):
  variables, images, labels = setup

  def f(v):
    logits = MODEL.apply(v, images, train=True, rngs={"dropout": jax.random.key(5)})
    return _loss(logits, labels), logits

  return jax.jit(jax.value_and_grad(f, has_aux=True))(variables)


@pytest.mark.parametrize(
    "shape",
    [(2, 2)] + [pytest.param(s, marks=pytest.mark.slow) for s in [(1, 1), (2, 1), (1, 2), (4, 2)]],
)
def test_forward_and_gradients_do_not_depend_on_the_mesh(shape, setup, single_device_result):
  variables, images, labels = setup
  (want_loss, want_logits), want_grads = single_device_result
  mesh = _mesh(*shape)
  apply = sharding.sharded_apply(MODEL, mesh)

  def f(v, x):
    logits = apply(v, x, train=True, dropout_rng=jax.random.key(5))
    return _loss(logits, labels), logits

  v = jax.device_put(variables, sharding.param_shardings(mesh, variables))
  x = jax.device_put(images, sharding.batch_sharding(mesh))
  (loss, logits), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(v, x)
  assert _rel(logits, want_logits) < 1e-5
  assert abs(float(loss) - float(want_loss)) < 1e-5 * abs(float(want_loss))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    want = want_grads
    for k in path:
      want = want[k.key]
    assert _rel(g, want) < 1e-5, jax.tree_util.keystr(path)
  # Gradients come back with the parameters' shardings: towers stay split.
  g = grads["params"]["conv1"]["kernel"]
  assert g.sharding.is_equivalent_to(
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("tower")), g.ndim
  )


def _collectives(hlo: str):
  out = []
  for line in hlo.splitlines():
    m = re.search(
        r"= (\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|"
        r"collective-permute|collective-broadcast)(-start)?\(",
        line,
    )
    if m:
      out.append((m.group(2), re.sub(r"\{[^}]*\}", "", m.group(1))))
  return out


def test_compiled_training_step_has_collectives_only_at_cross_tower_points(setup):
  variables, images, labels = setup
  mesh = _mesh(1, 2)
  apply = sharding.sharded_apply(MODEL, mesh)

  def loss(v, x):
    return _loss(apply(v, x, train=True, dropout_rng=jax.random.key(5)), labels)

  v = jax.device_put(variables, sharding.param_shardings(mesh, variables))
  x = jax.device_put(images, sharding.batch_sharding(mesh))
  hlo = jax.jit(jax.grad(loss)).lower(v, x).compile().as_text()
  ops = _collectives(hlo)
  # width 0.25: pool2 -> 13x13x64, pool5 -> 6x6x64, fc6 / fc7 -> 1024, over 2 towers.
  cross_tower = sorted(["f32[8,13,13,64]", "f32[8,6,6,64]", "f32[8,1024]", "f32[8,1024]"])
  # Forward: exactly four all-gathers, each of a cross-tower input.
  assert sorted(s for op, s in ops if op == "all-gather") == cross_tower
  # Backward: each all-gather transposes to a reduce-scatter of the same tensor's halves.
  halves = sorted(["f32[8,13,13,32]", "f32[8,6,6,32]", "f32[8,512]", "f32[8,512]"])
  assert sorted(s for op, s in ops if op == "reduce-scatter") == halves
  # Nothing moves inside conv1, conv2, conv4, conv5: no permutes or all-to-alls, and the
  # only all-reduces are fc8's gradient (replicated over towers) and the [1, B, 10] logits.
  assert not [
      o for o in ops if o[0] in ("all-to-all", "collective-permute", "collective-broadcast")
  ]
  allowed = {"f32[1024,10]", "f32[10]", "f32[1,8,10]", "f32[]"}
  assert {s for op, s in ops if op == "all-reduce"} <= allowed, ops


def test_each_device_holds_only_its_own_tower(setup):
  variables, _, _ = setup
  mesh = _mesh(2, 2)
  v = jax.device_put(variables, sharding.param_shardings(mesh, variables))
  for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
    for leaf in ("kernel", "bias"):
      arr = v["params"][name][leaf]
      full = np.asarray(variables["params"][name][leaf])
      for shard in arr.addressable_shards:
        _, tower = np.argwhere(mesh.devices == shard.device)[0]
        assert shard.data.shape == (1, *full.shape[1:])
        np.testing.assert_array_equal(np.asarray(shard.data), full[tower : tower + 1])
  for shard in v["params"]["fc8"]["kernel"].addressable_shards:  # shared by the towers
    assert shard.data.shape == variables["params"]["fc8"]["kernel"].shape


def test_init_directly_into_the_mesh_equals_plain_init():
  mesh = _mesh(4, 2)
  got = sharding.init_variables(MODEL, mesh, jax.random.key(0))
  want = MODEL.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # same draws (jit rounding)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
  assert got["params"]["fc6"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("tower")


def test_mesh_sizes_fill_with_minus_one():
  assert dict(sharding.make_mesh(-1, 2).shape) == {"data": 4, "tower": 2}
  assert dict(sharding.make_mesh(2, -1).shape) == {"data": 2, "tower": 4}


def test_mesh_that_does_not_divide_the_devices_lists_them():
  with pytest.raises(ValueError, match=r"data=3 x tower=2 .* 8 device\(s\).*CpuDevice"):
    sharding.make_mesh(3, 2)
  with pytest.raises(ValueError, match=r"8 device"):
    sharding.make_mesh(-1, 3)


def test_batch_that_does_not_divide_the_data_axis(setup):
  variables, images, _ = setup
  mesh = _mesh(4, 2)
  apply = sharding.sharded_apply(MODEL, mesh)
  with pytest.raises(ValueError, match=r"batch_size=6 .*data axis \(size 4"):
    apply(variables, images[:6], train=False)


def test_one_tower_model_refuses_a_split_tower_axis():
  with pytest.raises(ValueError, match="1 tower"):
    sharding.sharded_apply(AlexNet(variant=VARIANTS["one_gpu"]), _mesh(1, 2))
