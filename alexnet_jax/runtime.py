"""Process setup shared by the entry points: quiet library logs, keep TensorFlow off
accelerators, and start jax.distributed when the run has several processes
(alexnet_jax/distributed.py)."""

import os

from absl import logging

from alexnet_jax import distributed as distributed_lib


def _quiet_library_logs():
  """Orbax logs a dozen INFO lines per checkpoint through absl; keep its warnings only, so
  the run's own lines (step, loss, ETA) stay readable."""
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= logging.converter.STANDARD_WARNING or "/orbax/" not in r.pathname
  )


def setup(distributed=None):
  """Call first, before anything touches JAX devices.

  distributed: a `distributed.Options` (alexnet_jax.main passes its flags) to join a
  multi-process run when the flags or the environment ask for one; None: single process.
  Returns the multi-process plan, or None.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _quiet_library_logs()
  import tensorflow as tf  # late: TF reads TF_CPP_MIN_LOG_LEVEL once, when first imported

  # tf.data runs on the host; TF must not reserve GPU/TPU memory that JAX needs.
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None
  if distributed is None:
    return None
  return distributed_lib.initialize(distributed)
