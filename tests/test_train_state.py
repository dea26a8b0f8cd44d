"""The random init's compilation: the fast compiler options give the default's bits."""

import functools

import jax
import numpy as np
import pytest

from alexnet_jax import sharding, train_state
from configs import demo, keras_bn


def _demo(initializer):
  config = demo.get_config()
  config.model.initializer = initializer
  return config


@pytest.mark.parametrize(
    "config",
    [_demo("he"), _demo("paper"), keras_bn.get_config()],
    ids=["he-two-towers", "paper-two-towers", "glorot-batchnorm"],
)
def test_the_fast_init_compilation_gives_the_default_compilations_arrays(config):
  assert train_state.init_compiler_options(), "the CPU backend compiles the init differently"
  config.model.width = 0.25
  model = train_state.create_model(config, 10)
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  fast = train_state.create_train_state(config, model, mesh, rng=jax.random.key(3))
  default = jax.jit(functools.partial(train_state._init_state, config, model))(jax.random.key(3))
  fast_leaves = jax.tree_util.tree_leaves_with_path(fast)
  default_leaves = jax.tree_util.tree_leaves(default)
  assert len(fast_leaves) == len(default_leaves) > 16
  for (path, a), b in zip(fast_leaves, default_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
  # The kernels are random draws at the initializer's scale, not constants that any
  # compilation would agree on: conv1's standard deviation against its formula.
  kernel = np.asarray(fast.params["conv1"]["kernel"])  # [towers,] 11, 11, 3, out
  fan_in = np.prod(kernel.shape[-4:-1])
  fan_out = fan_in // kernel.shape[-2] * kernel.shape[-1]
  expected = {
      "he": np.sqrt(2 / fan_in),
      "paper": 0.01,
      "glorot": np.sqrt(2 / (fan_in + fan_out)),  # U(-l, l): l / sqrt(3)
  }[config.model.initializer]
  assert abs(kernel.std() / expected - 1) < 0.1
