"""The one tiny run every test of the real training loop uses: configs/demo.py's `sgd` recipe
(the paper's optimizer and dropout) at width 0.125 on batches of 8 (a step takes about a second
on one CPU core).

  tiny.config(num_train_steps=2, **{"mesh.data": -1})   # a ConfigDict, in process
  tiny.flags(num_train_steps=6)                         # python -m alexnet_jax.main flags
"""

from configs import demo

_SGD = demo.get_config("sgd")

# Both forms: the model, the batches and the logging of a tiny run.
SETTINGS = {
    # configs/demo.py:sgd's optimizer and dropout (the demo's default recipe uses Adam and no
    # dropout), read from it and named key by key so that the command-line form carries them.
    "optimizer.name": _SGD.optimizer.name,
    "optimizer.learning_rate": _SGD.optimizer.learning_rate,
    "optimizer.drop_epochs": tuple(_SGD.optimizer.drop_epochs),
    "model.dropout_rate": _SGD.model.dropout_rate,
    "model.width": 0.125,
    "batch_size": 8,
    "eval_batch_size": 8,
    "log_every_steps": 1,
}
# In process: a short run on one device, evaluated and saved every other step.
CONFIG = {
    **SETTINGS,
    "num_train_steps": 4,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
    "max_eval_batches": 2,
    "mesh.data": 1,
    "mesh.tower": 1,
}
# On the command line: one evaluation batch, the dataset read from disk by each process.
FLAGS = {**SETTINGS, "max_eval_batches": 1, "dataset.cache": False}


def config(**overrides):
  """configs/demo.py with CONFIG, then `overrides` (dotted keys: **{"mesh.data": -1})."""
  c = demo.get_config()
  for key, value in {**CONFIG, **overrides}.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return c


def flags(**overrides) -> list[str]:
  """`--config=configs/demo.py --config.KEY=VALUE ...` for FLAGS, then `overrides`."""
  return ["--config=configs/demo.py"] + [
      f"--config.{key}={value}" for key, value in {**FLAGS, **overrides}.items()
  ]
