"""The Keras tutorial's BatchNorm AlexNet (model.variant='keras_bn') against Keras itself."""

import os
import shutil
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from jax.sharding import PartitionSpec as P

from alexnet_jax import (
    augment,
    checkpoint,
    config_schema,
    facts,
    fine_tune,
    optim,
    sharding,
    train_state,
)
from alexnet_jax import model as model_lib
from alexnet_jax.input_spec import InputSpec
from alexnet_jax.model import VARIANTS, AlexNet
from configs import keras_bn
from tests import tiny

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def keras_bn_model(num_classes=17, dropout=0.4):
  """The tutorial's network, as its Keras code builds it."""
  import keras
  from keras import layers

  def conv(n, k, **kw):
    return layers.Conv2D(n, (k, k), padding="valid", activation="relu", **kw)

  def pool():
    return layers.MaxPooling2D((2, 2), strides=(2, 2), padding="valid")

  def dense(n):
    return [
        layers.Dense(n, activation="relu"),
        layers.Dropout(dropout),
        layers.BatchNormalization(),
    ]

  bn = layers.BatchNormalization
  return keras.Sequential(
      [
          keras.Input((224, 224, 3)),
          conv(96, 11, strides=(4, 4)),
          pool(),
          bn(),
          conv(256, 11),
          pool(),
          bn(),
          conv(384, 3),
          bn(),
          conv(384, 3),
          bn(),
          conv(256, 3),
          pool(),
          bn(),
          layers.Flatten(),
          *dense(4096),
          *dense(4096),
          *dense(1000),
          layers.Dense(num_classes, activation="softmax"),
      ]
  )


def keras_net(num_classes=17, dropout_rate=0.4, **kw):
  return AlexNet(
      num_classes=num_classes,
      variant=VARIANTS["keras_bn"],
      lrn=False,
      overlapping_pool=False,
      dropout_rate=dropout_rate,
      **kw,
  )


EXPECTED_SHAPES = {
    "params": {
        "conv1": {"kernel": (1, 11, 11, 3, 96), "bias": (1, 96)},
        "conv2": {"kernel": (1, 11, 11, 96, 256), "bias": (1, 256)},
        "conv3": {"kernel": (1, 3, 3, 256, 384), "bias": (1, 384)},
        "conv4": {"kernel": (1, 3, 3, 384, 384), "bias": (1, 384)},
        "conv5": {"kernel": (1, 3, 3, 384, 256), "bias": (1, 256)},
        "fc6": {"kernel": (1, 256, 4096), "bias": (1, 4096)},
        "fc7": {"kernel": (1, 4096, 4096), "bias": (1, 4096)},
        "fc8": {"kernel": (4096, 1000), "bias": (1000,)},
        "head": {"kernel": (1000, 17), "bias": (17,)},
        **{
            f"bn{i}": {"scale": (c,), "bias": (c,)}
            for i, c in enumerate((96, 256, 384, 384, 256, 4096, 4096, 1000), 1)
        },
    },
    "batch_stats": {
        f"bn{i}": {"mean": (c,), "var": (c,)}
        for i, c in enumerate((96, 256, 384, 384, 256, 4096, 4096, 1000), 1)
    },
}


def _to_keras(model, variables):
  """Our variables in the Keras model's weight order (kernels without the tower axis)."""
  p, s = variables["params"], variables["batch_stats"]
  weights = []
  for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8", "head"):
    k, b = np.asarray(p[layer]["kernel"]), np.asarray(p[layer]["bias"])
    if layer in model_lib.TOWER_LAYERS:
      k, b = k[0], b[0]
    weights += [k, b]
  # Keras's order: conv1, bn1, conv2, bn2, ...: interleave each BN after its layer.
  out, bns = [], [f"bn{i}" for i in range(1, 9)]
  for i in range(8):
    out += weights[2 * i : 2 * i + 2]
    bn = bns[i]
    out += [np.asarray(p[bn]["scale"]), np.asarray(p[bn]["bias"])]
    out += [np.asarray(s[bn]["mean"]), np.asarray(s[bn]["var"])]
  return out + weights[16:]


def _random_variables(model, seed=0):
  """Random variables of the model's shapes (nothing compiled): N(0, 0.01) kernels, and
  non-trivial biases, BatchNorm parameters and running statistics."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name, layer = path[-1].key, path[-2].key
    if name == "kernel":  # the paper's scale: BatchNorm's statistics dominate the outputs
      x = rng.normal(0, 0.01, a.shape)
    elif name in ("scale", "var"):
      x = rng.uniform(0.5, 2.0, a.shape)
    else:  # biases, BatchNorm's offsets and means
      x = rng.normal(0, 0.5 if layer.startswith("bn") else 0.1, a.shape)
    return jnp.asarray(x, a.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_keras_bn_tree_count_and_forward_match_keras():
  m = keras_net()
  v = _random_variables(m)
  assert jax.tree.map(lambda x: tuple(x.shape), v) == EXPECTED_SHAPES
  assert m.classifier == "head" and AlexNet().classifier == "fc8"
  # Dropout off in the Keras model, for its training call below (inference ignores it).
  km0 = keras_bn_model(dropout=0.0)
  assert model_lib.num_params(v) == km0.count_params() == 28_096_769
  km0.set_weights(_to_keras(m, v))
  images = np.random.default_rng(1).uniform(0, 1, (3, 224, 224, 3)).astype(np.float32)
  want = np.asarray(km0(images, training=False))
  got = np.asarray(jax.nn.softmax(m.apply(v, images, train=False)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # A training call (dropout off): the same batch statistics update as Keras's.
  m0 = keras_net(dropout_rate=0.0)
  logits, state = m0.apply(v, images, train=True, mutable=["batch_stats"])
  want = np.asarray(km0(images, training=True))
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), want, rtol=1e-4, atol=1e-6)
  for i, layer in enumerate([x for x in km0.layers if "batch_normalization" in x.name], 1):
    for ours, theirs in (("mean", "moving_mean"), ("var", "moving_variance")):
      before = np.asarray(v["batch_stats"][f"bn{i}"][ours])
      got = np.asarray(state["batch_stats"][f"bn{i}"][ours])
      want = np.asarray(getattr(layer, theirs))
      assert np.abs(got - before).max() > 1e-4  # the statistics moved
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_keras_bn_layer_shapes():
  """224 -> 54 -> pool 27 -> 17 -> pool 8 -> 6 -> 4 -> 2 -> pool 1 (the issue's numbers)."""
  m = keras_net()
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  _, state = jax.eval_shape(
      lambda v: m.apply(v, jnp.zeros((2, 224, 224, 3)), mutable=["intermediates"]), v
  )
  shapes = {k: tuple(x[0].shape[1:]) for k, x in state["intermediates"].items()}
  assert shapes == {
      "conv1_out": (54, 54, 96),
      "pool1": (27, 27, 96),
      "conv2_out": (17, 17, 256),
      "pool2": (8, 8, 256),
      "conv3_out": (6, 6, 384),
      "conv4_out": (4, 4, 384),
      "conv5_out": (2, 2, 256),
      "pool5": (1, 1, 256),
      "fc6_out": (4096,),
      "fc7_out": (4096,),
      "fc8_out": (1000,),
      "logits": (17,),
  }


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "keras_bn"])
def test_other_variants_have_no_batch_norm_or_head(name):
  m = AlexNet(variant=VARIANTS[name], width=0.125)
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert set(v) == {"params"} and "head" not in v["params"] and m.classifier == "fc8"


def test_glorot_initialiser_is_keras_glorot_uniform():
  m = keras_net(initializer="glorot")
  # The initialisers the model's layers get: a conv (tower axis first) and the hidden fc8.
  cases = (
      ("conv2", (1, 11, 11, 24, 64), (1, 2, 3), (11 * 11 * 24, 11 * 11 * 64)),
      ("fc8", (1024, 250), (0,), (1024, 250)),
  )
  for layer, shape, fan_in_axes, (fan_in, fan_out) in cases:
    kinit, binit = m._init_fns(layer, fan_in_axes)
    k = np.asarray(kinit(jax.random.key(0), shape))
    limit = np.sqrt(6.0 / (fan_in + fan_out))  # Keras: sqrt(6 / (fan_in + fan_out))
    assert k.max() <= limit * (1 + 1e-6) and k.min() >= -limit * (1 + 1e-6)
    assert abs(k.std() - limit / np.sqrt(3)) < 0.01 * limit  # U(-l, l) has std l / sqrt(3)
    assert not np.any(np.asarray(binit(jax.random.key(1), (shape[-1],))))


# ---- BatchNorm on the mesh ------------------------------------------------------------------
def _train_call(model, mesh, variables, images, labels):
  apply = sharding.sharded_apply(model, mesh)

  def loss_fn(params):
    logits, stats = apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        images,
        train=True,
        dropout_rng=jax.random.key(7),
        with_batch_stats=True,
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, stats)

  fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  return jax.device_get(fn(variables["params"]))


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_batch_statistics_are_the_global_batchs_on_every_mesh():
  m = keras_net(num_classes=5, width=0.125)
  v = _random_variables(m, seed=2)
  # Each example has its own scale, so a shard's statistics are far from the whole batch's:
  # without the average over "data" the meshes would disagree.
  scales = jnp.arange(1.0, 9.0)[:, None, None, None]
  images = jax.random.uniform(jax.random.key(3), (8, 224, 224, 3)) * scales
  labels = jnp.arange(8) % 5
  results = {}
  # 4 shards of 2 rows: the most a shard's statistics can differ from the batch's (2 shards
  # would add a compilation and nothing 4 does not show).
  for data in (1, 4):
    mesh = sharding.make_mesh(data, 1, devices=jax.devices()[:data])
    results[data] = _train_call(m, mesh, v, images, labels)
  # (1, 1) is the plain module on the whole batch (the same dropout masks).
  train_apply = jax.jit(
      lambda v, x: m.apply(
          v, x, train=True, rngs={"dropout": jax.random.key(7)}, mutable=["batch_stats"]
      )
  )
  logits, state = train_apply(v, images)
  (_, (got_logits, got_stats)), _ = results[1]
  np.testing.assert_allclose(got_logits, logits, rtol=1e-5, atol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      got_stats,
      jax.device_get(state["batch_stats"]),
  )
  for data in (4,):
    (loss, (lg, st)), grads = results[data]
    (loss1, (lg1, st1)), grads1 = results[1]
    np.testing.assert_allclose(loss, loss1, rtol=1e-5)
    np.testing.assert_allclose(lg, lg1, rtol=1e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), st, st1)
    # Gradients: summed in another order on each mesh; equal to 1e-3 of each array's scale.
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads1)):
      assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max() + 1e-7


def test_batch_stats_are_replicated_in_the_state():
  config = keras_bn.get_config("demo")
  model = train_state.create_model(config, 17)
  abstract = train_state.abstract_state(config, model)
  mesh = sharding.make_mesh(2, 1, devices=jax.devices()[:2])
  shardings = train_state.state_shardings(mesh, abstract)
  specs = jax.tree.leaves(
      jax.tree.map(lambda s: s.spec, shardings.batch_stats), is_leaf=lambda x: isinstance(x, P)
  )
  assert len(specs) == 16 and all(s == P() for s in specs)
  assert shardings.params["conv1"]["kernel"].spec == P("tower")
  initial = train_state.initial_batch_stats(model)
  assert float(initial["bn3"]["var"].sum()) == 96 and float(initial["bn3"]["mean"].sum()) == 0
  paper = train_state.create_model(tiny.config(), 3)
  assert train_state.abstract_state(tiny.config(), paper).batch_stats == {}


@flax.struct.dataclass
class _StateBeforeBatchNorm:
  """The TrainState's fields as runs saved them before batch_stats existed."""

  step: Any
  params: Any
  opt_state: Any
  schedule: Any
  rng: Any


def test_a_checkpoint_saved_before_batch_stats_restores(tmp_path):
  config = tiny.config()
  model = train_state.create_model(config, 3)
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  state = jax.tree.map(  # the state's shapes and dtypes, filled with random numbers
      lambda a: rng.normal(size=a.shape).astype(a.dtype),
      train_state.abstract_state(config, model),
  )
  state = state.replace(step=np.asarray(5, np.int32))
  old = _StateBeforeBatchNorm(state.step, state.params, state.opt_state, state.schedule, state.rng)
  manager = checkpoint.CheckpointManager(str(tmp_path), config)
  manager.save(5, old, meta={"num_classes": 3, "dataset": "x"})
  manager.wait()
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  run = checkpoint.restore_run(str(tmp_path), train_state.restore_target())
  assert run.step == 5 and set(run.variables) == {"params"}
  jax.tree.map(
      np.testing.assert_array_equal,
      jax.device_get(run.variables["params"]),
      jax.device_get(state.params),
  )
  abstract = train_state.abstract_state(config, model)
  restored = manager.restore_latest(abstract, train_state.state_shardings(mesh, abstract))
  assert restored.state.batch_stats == {} and int(restored.state.step) == 5


def test_fine_tuning_replaces_the_head_and_keeps_fc8_and_the_statistics():
  fresh = {"fc8": {"kernel": np.zeros((8, 4)), "bias": np.zeros(4)}}
  fresh["head"] = {"kernel": np.zeros((4, 3)), "bias": np.zeros(3)}
  source = jax.tree.map(np.ones_like, fresh)
  source["head"] = {"kernel": np.ones((4, 17)), "bias": np.ones(17)}
  merged, notes = fine_tune.merge_params(source, fresh, keras_net().classifier)
  assert notes == ["head re-initialised: the source has 17 classes, this run 3"]
  assert merged["fc8"]["kernel"].sum() == 32 and merged["head"]["kernel"].sum() == 0
  with pytest.raises(ValueError, match=r"\['head'\]\['kernel'\]: source \(4, 17\)"):
    fine_tune.merge_params(source, fresh)  # the paper's classifier: fc8


# ---- the preset, end to end ------------------------------------------------------------------
def _keras_tiny(root, **overrides):
  """configs/keras_bn.py at width 0.125 on batches of 8 of a small folder."""
  c = keras_bn.get_config("demo")
  c.dataset.name = f"folder:{root}"
  settings = dict(
      width=0.125,
      batch_size=8,
      eval_batch_size=8,
      num_train_steps=3,
      eval_every_steps=100,
      checkpoint_every_steps=1,
      log_every_steps=1,
      max_eval_batches=1,
  )
  c.model.width = settings.pop("width")
  c.mesh.data = -1  # 8 devices: BatchNorm synced over 8 shards of the batch
  c.update({**settings, **overrides})
  return c


def _saved_state(workdir, config, step=None):
  model = train_state.create_model(config, 3)
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  abstract = train_state.abstract_state(config, model)
  manager = checkpoint.CheckpointManager(str(workdir), config, read_only=True)
  step = manager.latest_step() if step is None else step
  state = manager.restore(abstract, train_state.state_shardings(mesh, abstract), step)
  return jax.device_get(state)


@pytest.mark.slow  # two short runs of the preset on 8 devices: 25-45 s on 2 CPU cores
def test_keras_preset_trains_updates_batch_stats_and_resumes_exactly(monkeypatch, tmp_path):
  from alexnet_jax import data as data_lib
  from alexnet_jax import train
  from tests.data_helpers import fresh_user_cache, small_folder

  fresh_user_cache(monkeypatch, tmp_path)
  root = small_folder(tmp_path / "data", classes="abc", per_class=4, val=1)
  config = _keras_tiny(root, num_train_steps=2)
  train.train_and_evaluate(config, str(tmp_path))  # saves steps 1 and 2
  step1, straight = _saved_state(tmp_path, config, 1), _saved_state(tmp_path, config, 2)
  # Killed after saving step 1: the rerun restores it and takes step 2 again.
  shutil.rmtree(tmp_path / facts.CHECKPOINT_DIR / "2")
  train.train_and_evaluate(config, str(tmp_path))
  resumed = _saved_state(tmp_path, config, 2)
  assert int(resumed.step) == int(straight.step) == 2
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  assert set(resumed.batch_stats) == {f"bn{i}" for i in range(1, 9)}
  assert isinstance(resumed.opt_state.inner_state, optim.KerasAdamState)  # Adam
  assert np.abs(straight.batch_stats["bn7"]["var"] - step1.batch_stats["bn7"]["var"]).max() > 0

  # Step 1's running averages: 0.99 * (mean 0, variance 1) + 0.01 * the first batch's
  # statistics, the batch fed as the tutorial feeds it (TF's resize to 224, then / 255).
  batch = next(
      data_lib.train_iterator(
          data_lib.open_dataset(config.dataset), global_batch_size=8, seed=config.seed
      )
  )
  views = tf.image.resize(batch["image"], (224, 224), antialias=True).numpy() / 255.0
  model = train_state.create_model(config, 3)
  init = jax.device_get(
      train_state.create_train_state(
          config, model, sharding.make_mesh(1, 1, devices=jax.devices()[:1])
      ).variables
  )
  _, state = jax.jit(
      lambda v, x: model.apply(
          v,
          x,
          train=True,
          rngs={"dropout": jax.random.key(0)},
          mutable=["intermediates", "batch_stats"],
      )
  )(init, views.astype(np.float32))
  inputs = {"bn1": "pool1", "bn2": "pool2", "bn3": "conv3_out", "bn4": "conv4_out", "bn5": "pool5"}
  for bn, name in inputs.items():  # (bn6..bn8 read dropout's outputs: not reproduced here)
    x = np.asarray(state["intermediates"][name][0], np.float64)
    x = x.reshape(-1, x.shape[-1])
    want_mean = 0.01 * x.mean(0)
    want_var = 0.99 + 0.01 * ((x - x.mean(0)) ** 2).mean(0)
    np.testing.assert_allclose(step1.batch_stats[bn]["mean"], want_mean, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(step1.batch_stats[bn]["var"], want_var, rtol=1e-5, atol=1e-6)
  for bn in ("bn6", "bn7", "bn8"):
    assert np.abs(step1.batch_stats[bn]["mean"]).max() > 1e-5

  # A new run on two classes started from this one: the head is new, the rest (fc8 and the
  # running averages included) is the source's.
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  two = small_folder(tmp_path / "two", classes="ab", per_class=4, val=1)
  new = _keras_tiny(two, init_from=str(tmp_path))
  run = train.setup_run(new, str(tmp_path / "new"))
  try:
    state = jax.device_get(train.restore_or_create_state(run))
  finally:
    run.manager.close()
  assert state.params["head"]["kernel"].shape == (125, 2)
  np.testing.assert_array_equal(state.params["fc8"]["kernel"], straight.params["fc8"]["kernel"])
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats, straight.batch_stats)


def test_the_preset_is_the_tutorials_network_and_inputs():
  c = keras_bn.get_config()
  config_schema.validate(c)
  config_schema.validate(keras_bn.get_config("demo"))
  with pytest.raises(ValueError, match="the only scale is 'demo'"):
    keras_bn.get_config("paper")
  m = train_state.create_model(c, 17)
  assert (m.variant, m.lrn, m.overlapping_pool, m.dropout_rate) == (
      VARIANTS["keras_bn"],
      False,
      False,
      0.4,
  )
  assert model_lib.num_params(sharding.abstract_variables(m)) == 28_096_769
  assert (c.optimizer.name, c.optimizer.learning_rate, c.batch_size, c.mesh.tower) == (
      "adam",
      1e-3,
      64,
      1,
  )
  # Its views: the whole 256x256 image resized to 224 and scaled to [0, 1] (TF's resize as the
  # reference), the same in training (no crop, flip or lighting) and at test.
  spec = InputSpec.from_config(c)
  lighting = augment.Lighting(jnp.ones(3), jnp.eye(3))
  images = np.stack([np.asarray(tiny_photo) for tiny_photo in _photos256()])
  want = tf.image.resize(images, (224, 224), antialias=True).numpy() / 255.0
  a = c.augment
  train = augment.train_views(
      images,
      augment.example_keys(0, 0, jnp.arange(len(images))),
      spec,
      lighting,
      random_crop=a.random_crop,
      flip=a.flip,
      lighting_std=a.lighting_std,
  )
  test = augment.eval_views(images, spec, crops=c.eval_crops)[:, 0]
  np.testing.assert_allclose(train, want, atol=2e-5)
  np.testing.assert_allclose(test, want, atol=2e-5)
  assert abs(float(want.max()) - 1.0) < 0.05 and float(want.min()) < 0.05


def _photos256():
  from tests.data_helpers import real_photos

  return [
      tf.image.resize(p[..., None].repeat(3, -1) if p.ndim == 2 else p[..., :3], (256, 256))
      .numpy()
      .round()
      .astype(np.uint8)
      for p in real_photos()[:3]
  ]
