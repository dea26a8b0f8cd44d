"""Process setup shared by the entry points: keep TensorFlow off accelerators."""
import os


def setup():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  # tf.data runs on the host; TF must not reserve GPU/TPU memory that JAX needs.
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None
