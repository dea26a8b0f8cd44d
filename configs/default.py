"""Every key the trainer reads, at the paper's values; the other configs start from it.

Each key, with its default, the values it allows, whether a resumed run may change it and the
paper section it implements, is declared once in alexnet_jax/config_schema.py.

Not meant to be run by itself (its dataset is ImageNet): see paper.py and demo.py.
"""

import ml_collections

from alexnet_jax import config_schema


def get_config() -> ml_collections.ConfigDict:
  return config_schema.default_config()
