"""Start a new run from another run's parameters (`--config.init_from=W`): a trained run, or
one written by alexnet_jax.convert (torchvision's, Caffe's or the grouped layout's weights).

Every parameter (and BatchNorm running average) is copied, except the class layer when the
class count differs (the model's `classifier`: fc8, or the head after keras_bn's hidden fc8):
that layer keeps the new run's fresh initialisation. The step, optimizer state, schedule and
RNG start afresh. The new run must have the source's architecture (the same model switches),
since the weights mean something only for the network that learned them.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from alexnet_jax import checkpoint, config_schema, facts, run_dir, train_state

# Declared in config_schema: the keys whose values change the function the weights compute
# (the network and its input size), and the input convention the source's conv1 learned.
ARCHITECTURE_KEYS = config_schema.keys_with(role=config_schema.ARCHITECTURE)
INPUT_KEYS = config_schema.keys_with(role=config_schema.INPUT)


def _normalised(value):
  if isinstance(value, (list, tuple)):
    return tuple(_normalised(v) for v in value)
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return value
  return float(value)


def _get(config, dotted: str):
  section, key = dotted.split(".")
  return config[section][key]


def _differences(keys, config, source_config) -> list[str]:
  """'key: source value -> this run's value' for each key that differs; both configs in
  today's layout (run_dir.read_config upgrades a source written before), so every key is
  there."""
  out = []
  for key in keys:
    src, new = _normalised(_get(source_config, key)), _normalised(_get(config, key))
    if src != new:
      out.append(f"{key}: {src} -> {new}")
  return out


def architecture_differences(config, source_config) -> list[str]:
  """Every architecture key that differs, the crop size included."""
  return _differences(ARCHITECTURE_KEYS, config, source_config)


def input_differences(config, source_config) -> list[str]:
  return _differences(INPUT_KEYS, config, source_config)


def check_source(config) -> None:
  """Before any device work: config.init_from is a run directory whose network is this
  run's (its config.json is read; the parameters are checked by shape when loaded)."""
  source_dir = config.init_from
  if not os.path.isdir(source_dir):
    raise FileNotFoundError(
        f"init_from={source_dir!r} is not a directory: give the --workdir of a run, or one "
        "written by python -m alexnet_jax.convert."
    )
  diffs = architecture_differences(config, run_dir.read_config(source_dir))
  if diffs:
    raise ValueError(
        f"init_from={source_dir}: this run's network differs from the source's in "
        + "; ".join(diffs)
        + ". Use the source's config (its config.json, or the preset it was converted "
        "with) or override these keys."
    )


def prepare_run_dir(config, workdir: str) -> None:
  """For a new run with config.init_from (before it reads its inputs): check the source
  (check_source) and, with input.mean='run', take the source's mean image (the one its
  weights were trained with) unless the run already has one."""
  source = config.get("init_from")
  if not source:
    return
  check_source(config)
  if config.input.mean != "run":
    return
  if not run_dir.has_mean_image(workdir):
    if not run_dir.has_mean_image(source):
      raise FileNotFoundError(
          f"input.mean='run' but neither {workdir} nor init_from={source} holds "
          f"{facts.MEAN_IMAGE_FILE}; use input.mean='pixel' or 'dataset'."
      )
    run_dir.copy_mean_image(source, workdir)


def merge_params(
    source_params, fresh_params, classifier: str | None = "fc8"
) -> tuple[dict, list[str]]:
  """(params, notes): the source's arrays in the fresh tree's structure; the `classifier`
  layer stays fresh when its shape differs (None: no layer may). Any other missing, extra or
  differently shaped array is an error that names each offending key with both shapes."""
  src = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(source_params)}
  new = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(fresh_params)}
  head = f"['{classifier}']" if classifier else None
  problems, notes, head_fresh = [], [], False
  for key in sorted(set(src) | set(new)):
    if key not in src:
      problems.append(f"{key} missing from the source (this run: {tuple(new[key].shape)})")
    elif key not in new:
      problems.append(f"{key} only in the source ({tuple(src[key].shape)})")
    elif tuple(src[key].shape) != tuple(new[key].shape):
      if head and key.startswith(head):
        head_fresh = True
      else:
        problems.append(f"{key}: source {tuple(src[key].shape)}, this run {tuple(new[key].shape)}")
  if problems:
    raise ValueError(
        "init_from: the source's parameters do not fit this run's network: "
        + "; ".join(problems)
        + ". Use the config the source was made with (configs/torchvision.py, "
        "configs/caffe.py, configs/pytorch_grouped.py or the source run's own)."
    )
  if head_fresh:
    bias = f"{head}['bias']"
    notes.append(
        f"{classifier} re-initialised: the source has {src[bias].shape[0]} classes, this run "
        f"{new[bias].shape[0]}"
    )

  def pick(path, fresh):
    key = jax.tree_util.keystr(path)
    if head_fresh and key.startswith(head):
      return fresh
    return np.asarray(src[key], np.float32)

  return jax.tree_util.tree_map_with_path(pick, fresh_params), notes


def variables_from_run(config, model, fresh_state, shardings) -> tuple[dict, dict]:
  """The new run's initial (params, batch_stats) on `shardings` (a TrainState of shardings):
  config.init_from's, merged into the freshly initialised state (see merge_params; the
  class layer is `model.classifier`)."""
  source_dir = config.init_from
  check_source(config)
  source = checkpoint.restore_run(source_dir, train_state.restore_target())
  for d in input_differences(config, source.config):
    logging.warning("init_from=%s: input convention differs from the source's: %s", source_dir, d)
  # Only shapes are read from the fresh state (a re-initialised class layer stays where it
  # is): nothing is gathered, so this works on any mesh and number of processes.
  src = jax.device_get(source.variables)
  params, notes = merge_params(src["params"], fresh_state.params, model.classifier)
  batch_stats, _ = merge_params(src.get("batch_stats", {}), fresh_state.batch_stats, None)
  logging.info(
      "initialised from %s (step %d)%s", source_dir, source.step, "".join(f"; {n}" for n in notes)
  )
  return (
      jax.device_put(params, shardings.params),
      jax.device_put(batch_stats, shardings.batch_stats),
  )
