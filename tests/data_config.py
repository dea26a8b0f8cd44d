"""Complete dataset configs for the tests: configs/default.py's, with overrides."""

from configs import default


def dataset_config(**overrides):
  config = default.get_config().dataset
  config.update(overrides)
  return config
