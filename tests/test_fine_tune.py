"""--config.init_from: a new run starts from another run's parameters; fc8 is re-initialised
when the class count differs, everything else is copied (compared array by array)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import evaluation, fine_tune, pretrained, run_dir, sharding, train, train_state
from tests import tiny


def _config(**overrides):
  return tiny.config(**{"mesh.data": -1, **overrides})  # all 8 test devices on "data"


def _source_run(workdir, num_classes, **overrides):
  """A run directory whose parameters are random draws unlike any fresh initialisation."""
  config = _config(**overrides)
  model = train_state.create_model(config, num_classes)
  rng = np.random.default_rng(num_classes)
  params = jax.tree.map(
      lambda a: rng.normal(0, 0.1, a.shape).astype(np.float32),
      sharding.abstract_variables(model)["params"],
  )
  pretrained.write_run(str(workdir), config, params)
  return params


def _initial_state(config, workdir):
  run = train.setup_run(config, str(workdir))
  try:
    return run, train.restore_or_create_state(run)
  finally:
    run.manager.close()


@pytest.mark.slow
@pytest.mark.parametrize("source_classes", [7, 10])
def test_init_from_copies_every_parameter_but_a_resized_fc8(tmp_path, source_classes):
  source = _source_run(tmp_path / "src", source_classes)
  config = _config(init_from=str(tmp_path / "src"))  # digits: 10 classes
  run, state = _initial_state(config, tmp_path / "new")
  # create_train_state's initialisation (key(seed)); the same values on any mesh. Compiled
  # only where fc8 is re-initialised.
  if source_classes != 10:
    fresh = jax.jit(run.model.init)(jax.random.key(config.seed), jnp.zeros((1, 224, 224, 3)))
  assert int(state.step) == 0
  for layer in source:
    for name in ("kernel", "bias"):
      got = np.asarray(state.params[layer][name])
      if layer == "fc8" and source_classes != 10:
        assert got.shape[-1] == 10
        np.testing.assert_array_equal(got, np.asarray(fresh["params"][layer][name]))
      else:
        np.testing.assert_array_equal(got, source[layer][name], err_msg=f"{layer}/{name}")
  # Momentum starts at zero, whatever the source.
  assert all(
      float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(state.opt_state.inner_state.velocity)
  )


@pytest.mark.slow
def test_a_resumed_run_ignores_init_from(tmp_path):
  source = _source_run(tmp_path / "src", 10)
  config = _config(init_from=str(tmp_path / "src"), num_train_steps=1)
  train.train_and_evaluate(config, str(tmp_path / "new"))
  _, state = _initial_state(config, tmp_path / "new")
  assert int(state.step) == 1  # its own checkpoint, not a new start from the source
  assert not np.array_equal(state.params["conv1"]["kernel"], source["conv1"]["kernel"])


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_another_architecture_is_refused_with_the_differences_named(tmp_path):
  _source_run(tmp_path / "src", 10, **{"model.variant": "pytorch_grouped", "model.lrn": False})
  config = _config(init_from=str(tmp_path / "src"))
  with pytest.raises(
      ValueError, match=r"model.variant: pytorch_grouped -> paper; model.lrn: False -> True"
  ):
    _initial_state(config, tmp_path / "new")
  _source_run(tmp_path / "wide", 10, **{"model.width": 0.25})
  config = _config(init_from=str(tmp_path / "wide"))
  with pytest.raises(ValueError, match=r"model.width: 0.25 -> 0.125"):
    _initial_state(config, tmp_path / "new2")
  _source_run(tmp_path / "caffe_crop", 10, **{"input.crop_size": 227})
  config = _config(init_from=str(tmp_path / "caffe_crop"))
  with pytest.raises(ValueError, match=r"input.crop_size: 227.0 -> 224.0"):
    _initial_state(config, tmp_path / "new3")


def test_shapes_that_do_not_fit_are_named():
  fresh = {"conv1": {"kernel": np.zeros((1, 11, 11, 3, 8)), "bias": np.zeros((1, 8))}}
  fresh["fc8"] = {"kernel": np.zeros((16, 10)), "bias": np.zeros(10)}
  source = jax.tree.map(np.ones_like, fresh)
  source["conv1"]["kernel"] = np.ones((1, 11, 11, 3, 6))
  with pytest.raises(
      ValueError,
      match=r"\['conv1'\]\['kernel'\]: source \(1, 11, 11, 3, 6\), this run \(1, 11, 11, 3, 8\)",
  ):
    fine_tune.merge_params(source, fresh)


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_mean_image_of_the_source_goes_with_it(tmp_path):
  _source_run(tmp_path / "src", 10, **{"input.mean": "run"})
  mean = np.random.default_rng(0).uniform(0, 255, (256, 256, 3)).astype(np.float32)
  run_dir.write_mean_image(str(tmp_path / "src"), mean)
  config = _config(init_from=str(tmp_path / "src"), **{"input.mean": "run"})
  run, _ = _initial_state(config, tmp_path / "new")
  np.testing.assert_array_equal(run_dir.read_mean_image(str(tmp_path / "new")), mean)
  np.testing.assert_array_equal(np.asarray(run.spec.mean), mean)


def test_errors_with_fewer_than_five_classes():
  """A folder of 2 classes (the README's fine-tuning example): top-5 error is 0, top-1 real."""
  logits = jnp.asarray([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
  top1, top5 = evaluation.errors(logits, jnp.asarray([1, 1, 1]))
  np.testing.assert_array_equal(top1, [0, 1, 0])
  np.testing.assert_array_equal(top5, [0, 0, 0])
