"""What several layers share, each stated once. Imports neither JAX nor TensorFlow: the config
checks, the commands' flags and the data layer read it before (or without) either.

A run directory's files (run_dir.py reads and writes those that are not checkpoints):

  config.json           the launch's config (config_checks.record)
  config_history.jsonl  every launch that created the run or changed its config
  run.lock              held by the training run writing here: host, pid, start, heartbeat
                        (run_lock.py; empty once it exits)
  checkpoints/          Orbax steps of the TrainState (checkpoint.py)
  checkpoints_unreadable/  steps a resume set aside because they did not verify
  metrics.jsonl         one JSON object per logged step (reporting.MetricsWriter)
  tensorboard/          the same scalars as TensorBoard events
  learning_curve.png    drawn when the run finishes
  dataset_stats.npz     the training split's statistics: the mean image that input.mean
                        'dataset' subtracts and the RGB eigen-basis of the PCA lighting
                        (data_lib.DatasetStats, every field)
  training_data.json    what identifies the training data (source: originals or which
                        prepared shards; the dataset's signature and split sizes; the SHA-256
                        of dataset_stats.npz): a resume on other data is refused (run_data.py)
  class_names.json      the label names in label order: TFDS ClassLabel names, folder names,
                        "0".."9" for digits
  preprocessing.json    the run's InputSpec (input_spec.py) without its mean image, the
                        dataset's name and the default number of eval views
  mean_image.npy        only for input.mean == 'run' (a converted net's own mean, e.g.
                        Caffe's ilsvrc_2012_mean): float32 [256, 256, 3], RGB, 0..255
  eval_<step>_<crops>crop.json  python -m alexnet_jax.evaluate's results
  figures/              python -m alexnet_jax.figures' default --out
"""

from __future__ import annotations

import numpy as np

# ---- the images ---------------------------------------------------------------------------
# Every image is stored as uint8 [256, 256, 3]: its shorter side resized to 256, the central
# 256x256 kept (§2; the data layer); views are cut from it on the device.
IMAGE_SIZE = 256
MEAN_IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)

# PCA of ImageNet RGB pixels scaled to [0, 1] (docs/paper.md#pca-lighting). Columns of
# IMAGENET_EIGVEC are the eigenvectors, in the order of IMAGENET_EIGVAL (descending).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)

# Views averaged per test image (§4.1): the center crop, or the paper's ten (the four corners,
# the center and their reflections).
VIEW_COUNTS = (1, 10)

# ---- the model ----------------------------------------------------------------------------
# The config.model keys that held a model.Variant's fields one by one: run directories written
# with them name no variant (model.variant_of finds it; config_schema.upgrade reads them).
MODEL_SWITCH_KEYS = (
    "one_tower",
    "conv_widths",
    "conv1_padding",
    "lrn_k",
    "lrn_alpha_per_term",
    "lrn_after_pool",
    "lrn_across_towers",
    "fc6_input_order",
)

# ---- a run directory's files (the table above) ---------------------------------------------
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = "run.lock"
CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVE_FILE = "learning_curve.png"
STATS_FILE = "dataset_stats.npz"
DATA_FILE = "training_data.json"
CLASS_NAMES_FILE = "class_names.json"
PREPROCESSING_FILE = "preprocessing.json"
MEAN_IMAGE_FILE = "mean_image.npy"
FIGURES_DIR = "figures"
# What inference needs without the dataset (training writes them; run_dir.missing checks them).
FILES = (STATS_FILE, CLASS_NAMES_FILE, PREPROCESSING_FILE)
# Every name a training run writes at the top of its directory.
TRAINING_NAMES = (
    CONFIG_FILE,
    HISTORY_FILE,
    LOCK_FILE,
    CHECKPOINT_DIR,
    METRICS_FILE,
    TENSORBOARD_DIR,
    CURVE_FILE,
    DATA_FILE,
    *FILES,
)


def eval_results_file(step: int, crops: int) -> str:
  return f"eval_{step}_{crops}crop.json"


# ---- the error a config the run cannot use raises -------------------------------------------
class ConfigError(ValueError):
  """An impossible config, workdir or config change; the message is meant for the user.
  Raised by the config checks and by the mesh (sharding.py); a command prints it as one line."""
