"""config.gradient_accumulation (train.make_train_step): K micro-batches, one update, against
the whole batch's step, an unsharded BatchNorm reference, and the compiled step's memory; both
loops (a lax.scan inside the step, and the host loop of jitted calls used on CPU:
train_step.accumulation_loop)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import (
    config_checks,
    config_schema,
    evaluation,
    facts,
    sharding,
    train,
    train_state,
    train_step,
)
from tests import test_train, tiny


def _run_steps(config, mesh, batches, **step_kw):
  """Train from the config's initial state on `batches`; (state, [metrics of each step])."""
  model = train_state.create_model(config, 10)
  state = train_state.create_train_state(config, model, mesh)
  step = train.make_train_step(config, model, mesh, steps_per_epoch=10, **step_kw)
  spec, lighting = jax.device_put(test_train._inputs(config), sharding.replicated(mesh))
  out = []
  for batch in batches:
    state, metrics = step(state, evaluation.global_batch(mesh, batch), spec, lighting)
    out.append(jax.device_get(metrics))
  return jax.device_get(state), out


@pytest.mark.slow
def test_four_micro_batches_on_any_mesh_make_the_whole_batch_update():
  """Two steps of the tiny demo (random crops, flips, PCA lighting, dropout 0.5): K=4 on
  one device (scan) and on a 2-device data axis (host loop) give the losses and parameters of
  K=1, so every example kept its augmentation and dropout keys (other masks move the loss by
  ~1e-2)."""
  batches = [test_train._batch(n=16, seed=i) for i in range(2)]
  base = {"batch_size": 16, "model.dropout_rate": 0.5}  # the demo's learning rate, 0.01
  want_state, want = _run_steps(tiny.config(**base), test_train._mesh(1, 1), batches)
  for k, data, loop in ((4, 1, "scan"), (4, 2, "host")):
    config = tiny.config(**base, gradient_accumulation=k)
    got_state, got = _run_steps(config, test_train._mesh(data, 1), batches, loop=loop)
    for i, (g, w) in enumerate(zip(got, want)):
      assert g["loss"] == pytest.approx(w["loss"], rel=1e-4), (k, data, i)
      assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4), (k, data, i)
      assert g["top1_error"] == pytest.approx(w["top1_error"], abs=1e-6), (k, data, i)
    flat = dict(jax.tree_util.tree_leaves_with_path(want_state.params))
    for path, leaf in jax.tree_util.tree_leaves_with_path(got_state.params):
      assert test_train._rel(leaf, flat[path]) < 1e-4, (k, data, jax.tree_util.keystr(path))
  # The steps trained: the first update moved the second batch's loss (4.20 -> 3.77).
  assert want[0]["loss"] - want[1]["loss"] > 0.1


def _keras_bn(**kw):
  """The BatchNorm variant at the tiny width, without dropout (its running averages are then
  a function of the inputs alone)."""
  return tiny.config(
      **{
          "model.variant": "keras_bn",
          "model.lrn": False,
          "model.overlapping_pool": False,
          "model.dropout_rate": 0.0,
          **kw,
      }
  )


def _views(n=8, seed=0):
  """Float views [n, 224, 224, 3] and labels: the step's input with augment_on_device=False."""
  rng = np.random.default_rng(seed)
  return {
      "image": rng.normal(0, 1, (n, 224, 224, 3)).astype(np.float32),
      "label": rng.integers(0, 10, (n,), dtype=np.int32),
  }


@pytest.mark.slow
def test_batchnorm_micro_batches_use_their_own_statistics_on_any_mesh():
  """Both loops on 4 devices, where each micro-batch's 4 rows are split one per device: its
  statistics are still the whole micro-batch's (one device would not show a missing sync)."""
  batch = _views()
  config = _keras_bn(gradient_accumulation=2)
  got = {
      (data, loop): _run_steps(
          config, test_train._mesh(data, 1), [batch], augment_on_device=False, loop=loop
      )[0]
      for data, loop in ((4, "host"), (4, "scan"))
  }
  # Unsharded reference: micro-batch b holds rows b, b + 2, ... (0, 2, 4, 6 then 1, 3, 5, 7),
  # each normalised by its own statistics, the running averages updated after each in turn.
  model = train_state.create_model(config, 10)
  state = train_state.create_train_state(config, model, test_train._mesh(1, 1))
  stats = state.batch_stats
  for b in range(2):
    _, new = model.apply(
        {"params": state.params, "batch_stats": stats},
        jnp.asarray(batch["image"][b::2]),
        train=True,
        mutable=["batch_stats"],
    )
    stats = new["batch_stats"]
  want = jax.device_get(stats)
  for data, state_d in got.items():
    flat = dict(jax.tree_util.tree_leaves_with_path(want))
    for path, leaf in jax.tree_util.tree_leaves_with_path(state_d.batch_stats):
      np.testing.assert_allclose(leaf, flat[path], rtol=2e-4, atol=2e-5, err_msg=f"{data} {path}")
  # Which is not the whole batch's statistics applied once.
  whole = jax.device_get(
      model.apply(
          {"params": state.params, "batch_stats": state.batch_stats},
          jnp.asarray(batch["image"]),
          train=True,
          mutable=["batch_stats"],
      )[1]["batch_stats"]
  )
  diff = max(
      float(np.abs(np.asarray(a) - np.asarray(b)).max())
      for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(want))
  )
  assert diff > 1e-3


def _temp_bytes(config, micro: int, loop: str) -> tuple[int, int]:
  """(temp bytes on one device of the compiled step, or for the host loop of its per-micro-batch
  call, bytes of the parameters)."""
  mesh = test_train._mesh(1, 1)
  model = train_state.create_model(config, 10)
  abstract = train_state.abstract_state(config, model)
  n = micro * config.gradient_accumulation
  batch = {
      "image": jax.ShapeDtypeStruct((n, 256, 256, 3), jnp.uint8),
      "label": jax.ShapeDtypeStruct((n,), jnp.int32),
  }
  step = train.make_train_step(config, model, mesh, steps_per_epoch=10, loop=loop)
  inputs = (abstract, batch, *test_train._inputs(config))
  # Buffer assignment (the temp size) precedes LLVM's code generation, whose optimisations
  # take half of each compilation here: off, the same bytes, twice as fast.
  fast = {"xla_backend_optimization_level": 0}
  if isinstance(step, train_step.AccumulatingStep):
    carry = jax.eval_shape(step.start, *inputs)
    lowered = step.micro.lower(*inputs, jax.ShapeDtypeStruct((), jnp.int32), carry)
  else:
    lowered = step.lower(*inputs)
  compiled = lowered.compile(fast)
  params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.params))
  return compiled.memory_analysis().temp_size_in_bytes, params


@pytest.mark.slow
def test_step_memory_does_not_grow_with_the_number_of_micro_batches():
  """Micro-batches of 8: K=8 (a global batch of 64) needs the temporary memory of K=1 plus
  one parameter-sized gradient sum, in either loop (K=1 is the same one-call step for both);
  64 images at once need about 7 times K=1's. A K=2 compilation adds nothing: anything kept
  per micro-batch shows at K=8, 7 times over, and the bound leaves 1.2 MB beyond the sum
  (measured: K=1 19.3 MB, K=8 22.6 MB, parameters 3.6 MB), less than one micro-batch's uint8
  images (1.6 MB)."""
  one, params = _temp_bytes(tiny.config(), 8, "scan")
  for loop in ("scan", "host"):
    eight, _ = _temp_bytes(tiny.config(gradient_accumulation=8, batch_size=64), 8, loop)
    assert eight <= one + 1.25 * params, (loop, eight, one, params)
  whole, _ = _temp_bytes(tiny.config(batch_size=64), 64, "scan")
  assert whole > 3 * one, (whole, one)


def test_gradient_accumulation_is_checked_before_any_device_work():
  c = tiny.config(gradient_accumulation=3)  # batch 8
  assert any(
      "gradient_accumulation=3 does not divide config.batch_size=8" in p
      for p in config_schema.problems(c)
  )
  assert not config_schema.problems(tiny.config(gradient_accumulation=4))
  assert config_schema.problems(tiny.config(gradient_accumulation=0))
  # Micro-batches of 8 / 4 = 2 rows do not split over 4 data devices.
  with pytest.raises(config_schema.ConfigError, match="multiple of 16"):
    train.check_micro_batch(test_train._mesh(4, 1), tiny.config(gradient_accumulation=4))
  train.check_micro_batch(test_train._mesh(2, 1), tiny.config(gradient_accumulation=4))
  assert config_schema.BY_NAME["gradient_accumulation"].resume == config_schema.ALLOW


def test_changing_gradient_accumulation_on_resume_needs_allowing(tmp_path):
  """K splits the batch, not the recipe's numbers, yet BatchNorm's statistics follow the
  micro-batch: a resume that changes K stops unless the user allows it."""
  (tmp_path / facts.CHECKPOINT_DIR / "2").mkdir(parents=True)
  config_checks.record(tiny.config(), str(tmp_path), {})
  with pytest.raises(config_schema.ConfigError, match="allow_config_change=gradient_accumulation"):
    config_checks.resume_changes(tiny.config(gradient_accumulation=2), str(tmp_path))
  changes = config_checks.resume_changes(
      tiny.config(gradient_accumulation=2), str(tmp_path), allow=("gradient_accumulation",)
  )
  assert changes == {"gradient_accumulation": (1, 2)}
