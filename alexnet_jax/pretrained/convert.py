"""The library side of `python -m alexnet_jax.convert`: a published network's file into a run
directory that restores, evaluates and fine-tunes like a trained one, and a run's parameters
back out as a PyTorch state_dict or a Keras .weights.h5.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import tempfile

import jax
import numpy as np

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import facts, fine_tune, input_spec, run_dir, sharding, train_state
from alexnet_jax.data import oxford17
from alexnet_jax.files import write_atomically
from alexnet_jax.pretrained import formats, keras_h5
from alexnet_jax.pretrained.formats import FORMATS, PRESETS, PYTORCH_FORMATS, ConversionError


def preset_config(fmt: str):
  """The format's preset, configs/<fmt>.py (keras: configs/keras_bn.py), from the
  repository's configs package (run from its root)."""
  name = PRESETS.get(fmt, fmt)
  try:
    return importlib.import_module(f"configs.{name}").get_config()
  except ImportError as e:
    raise SystemExit(
        f"cannot import configs/{name}.py ({e}): run from the repository's root, or pass "
        f"--config=path/to/configs/{name}.py"
    ) from None


def model_for(config, num_classes: int):
  return train_state.create_model(config, num_classes)


def write_run(
    workdir: str,
    config,
    params,
    *,
    class_names=None,
    mean_image=None,
    batch_stats=None,
    meta: dict | None = None,
) -> None:
  """A run directory that restores, evaluates and fine-tunes like a trained one: config.json,
  a step-0 checkpoint of the same TrainState a training run saves (with `batch_stats`, the
  BatchNorm running averages, for a network that has them), class_names.json and the mean
  image. Written in a temporary directory beside `workdir` and renamed at the end, so a
  failure leaves nothing at `workdir`."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise FileExistsError(f"{workdir} already exists and is not empty: choose a new --workdir")
  classifier = "head" if "head" in params else "fc8"  # a hidden fc8 (keras_bn) feeds "head"
  num_classes = int(np.shape(params[classifier]["bias"])[0])
  if class_names is not None and len(class_names) != num_classes:
    raise ConversionError(
        f"{len(class_names)} class names for a network with {num_classes} outputs"
    )
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.converting-", dir=parent)
  try:
    with open(os.path.join(tmp, facts.CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    model = model_for(config, num_classes)
    mesh = sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])
    state = train_state.train_state_from_params(
        config, model, mesh, params, batch_stats=batch_stats
    )
    manager = ckpt_lib.CheckpointManager(tmp, config)
    try:
      manager.save(0, state, meta={"num_classes": num_classes, "dataset": "", **(meta or {})})
      manager.wait()
    finally:
      manager.close()
    if class_names is not None:
      run_dir.write_class_names(tmp, class_names)
    if mean_image is not None:
      run_dir.write_mean_image(tmp, mean_image)
    run_dir.write_preprocessing(
        tmp, input_spec.json_of_config(config), str(config.dataset.name), config.eval_crops
    )
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty (checked above)
    os.rename(tmp, workdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def import_run(
    fmt: str,
    src: str,
    workdir: str,
    config,
    *,
    class_names_file: str | None = None,
    mean_file: str | None = None,
) -> dict:
  """Convert `src` (format `fmt`) into the run directory `workdir` with `config` (the
  format's preset). Returns {'num_classes', 'num_params'}."""
  if fmt not in FORMATS:
    raise ConversionError(f"--from must be one of {sorted(FORMATS)}, got {fmt!r}")
  if not os.path.exists(src):
    raise formats.missing_file(src, fmt)
  if mean_file and fmt != "caffe":
    raise ConversionError(
        "--mean_file is Caffe's mean image (.binaryproto): only with --from=caffe"
    )
  if mean_file and not os.path.exists(mean_file):
    raise formats.missing_file(mean_file, "caffe")
  if fmt == "keras":
    return _import_keras(src, workdir, config, class_names_file)
  if fmt == "caffe":
    # The class count is fc8's: read it from the file before building the model.
    probe = model_for(config, 1000)
    layers = formats.layers_from_caffemodel(src, probe)
    num_classes = int(np.shape(layers["fc8"][1])[0])
    describe = lambda name, i: f"layer {name} blob {i}"
  else:
    state = formats.load_state_dict(src)
    fc8_bias = state.get(FORMATS[fmt].state_key("fc8", 1))
    probe = model_for(config, int(fc8_bias.shape[0]) if fc8_bias is not None else 1000)
    layers = formats.layers_from_state_dict(state, fmt, probe)
    num_classes = int(np.shape(layers["fc8"][1])[0])
    describe = FORMATS[fmt].state_key
  model = model_for(config, num_classes)
  formats.check_shapes(layers, model, describe)
  params = formats.from_framework(layers, model)
  class_names = _class_names(class_names_file, formats.default_class_names(num_classes))
  mean_image = None
  if mean_file:
    mean_image = formats.read_caffe_mean(mean_file)
    config = config.copy_and_resolve_references()
    config.input.mean = "run"
  write_run(
      workdir,
      config,
      params,
      class_names=class_names,
      mean_image=mean_image,
      meta={"converted_from": {"format": fmt, "file": os.path.abspath(src)}},
  )
  return {
      "num_classes": num_classes,
      "num_params": sum(int(np.size(x)) for x in jax.tree.leaves(params)),
  }


def _class_names(class_names_file: str | None, default):
  if not class_names_file:
    return default
  if not os.path.exists(class_names_file):
    raise FileNotFoundError(f"--class_names={class_names_file} does not exist")
  try:
    return run_dir.read_names_file(class_names_file)
  except run_dir.RunFileError as e:
    raise ConversionError(f"--class_names: {e}") from None


def _check_keras_network(model, what: str) -> None:
  """The Keras layout holds the tutorial's BatchNorm AlexNet: model.variant 'keras_bn'."""
  v = model.variant
  if not (v.batch_norm and v.fc8_width and v.num_towers == 1 and v.fc6_input_order == "hwc"):
    raise ConversionError(
        f"{what} is not the Keras tutorial's BatchNorm AlexNet (one tower, BatchNorm, a hidden "
        "fc8 and a head): use configs/keras_bn.py (model.variant='keras_bn')"
    )


def _import_keras(src: str, workdir: str, config, class_names_file: str | None) -> dict:
  """A Keras file (keras_h5.read) -> a run directory of `config` (configs/keras_bn.py), its
  BatchNorm moving statistics as the run's batch_stats; Oxford-17's class names for a
  17-way head."""
  layers = keras_h5.read(src)
  num_classes = int(np.shape(layers["head"][1])[0])
  model = model_for(config, num_classes)
  _check_keras_network(model, f"the config's network (model.variant={config.model.variant!r})")
  want = keras_h5.keras_shapes(sharding.abstract_variables(model))
  keras_h5.check_shapes(layers, want, os.path.basename(src), num_classes)
  variables = keras_h5.to_variables(layers)
  # A 17-way head: the Oxford-17 flowers' published class names (the tutorial's dataset);
  # 1000: ImageNet's, as for the other formats.
  if num_classes == 17:
    default_names = list(oxford17.CLASS_NAMES)
  else:
    default_names = formats.default_class_names(num_classes)
  write_run(
      workdir,
      config,
      variables["params"],
      batch_stats=variables["batch_stats"],
      class_names=_class_names(class_names_file, default_names),
      meta={"converted_from": {"format": "keras", "file": os.path.abspath(src)}},
  )
  return {
      "num_classes": num_classes,
      "num_params": sum(int(np.size(x)) for x in jax.tree.leaves(variables)),
  }


def _export_keras(workdir: str, dst: str, preset_config, step: int | None) -> dict:
  if not dst.endswith(".weights.h5"):
    raise ConversionError(
        f"--dst={dst}: Keras's load_weights reads files named *.weights.h5; name it so"
    )
  run = ckpt_lib.restore_run(workdir, train_state.restore_target(), step)
  num_classes = int(run.meta["num_classes"])
  model = model_for(run.config, num_classes)
  _check_keras_network(model, f"{workdir} (model.variant={run.config.model.variant!r})")
  layers = keras_h5.from_variables(run.variables)
  want = keras_h5.keras_shapes(sharding.abstract_variables(model_for(preset_config, num_classes)))
  differences = fine_tune.architecture_differences(preset_config, run.config)
  _refuse_if_unfit(workdir, "keras", keras_h5.mismatches(layers, want), differences)
  keras_h5.write(dst, layers)
  return {"step": run.step, "keys": keras_h5.dataset_names(), "differences": differences}


def export_run(fmt: str, workdir: str, dst: str, preset_config, *, step: int | None = None) -> dict:
  """A run's parameters as a `fmt` state_dict, torch.save'd to `dst` (keras: a .weights.h5
  with the BatchNorm statistics, that Keras's load_weights reads). The run must have the
  shapes of the format's network (`preset_config`, with the run's class count). Returns
  {'step', 'keys', 'differences'}: the architecture switches in which the run differs from
  the format's preset (same weights' shapes, but a PyTorch module computes the run's function
  only if it also has these)."""
  if fmt == "keras":
    return _export_keras(workdir, dst, preset_config, step)
  if fmt not in PYTORCH_FORMATS:
    raise ConversionError(f"--to must be one of {list(PYTORCH_FORMATS)} or keras, got {fmt!r}")
  torch = formats.import_torch()
  run = ckpt_lib.restore_run(workdir, train_state.restore_target(), step)
  num_classes = run.meta["num_classes"]
  model = model_for(run.config, num_classes)
  if model.num_towers != FORMATS[fmt].towers:
    other = "pytorch_grouped" if model.num_towers == 2 else "torchvision"
    raise ConversionError(
        f"{workdir} holds a {model.num_towers}-tower network; the {fmt} layout holds "
        f"{FORMATS[fmt].towers}-tower ones: use --to={other}"
    )
  layers = formats.to_framework(run.variables["params"], model)
  bad = formats.mismatches(
      layers, model_for(preset_config, num_classes), lambda name, i: FORMATS[fmt].state_key(name, i)
  )
  _refuse_if_unfit(workdir, fmt, bad, fine_tune.architecture_differences(preset_config, run.config))
  state = {}
  for name, prefix in FORMATS[fmt].keys.items():
    state[f"{prefix}.weight"] = torch.from_numpy(layers[name][0].copy())
    state[f"{prefix}.bias"] = torch.from_numpy(layers[name][1].copy())
  write_atomically(dst, lambda f: torch.save(state, f))
  differences = [
      _with_variant_fields(d, model, model_for(preset_config, num_classes))
      for d in fine_tune.architecture_differences(preset_config, run.config)
  ]
  return {"step": run.step, "keys": list(state), "differences": differences}


def _refuse_if_unfit(workdir: str, fmt: str, bad: list, differences: list[str]) -> None:
  """One line for a run whose arrays do not fit the format's layout: the first array that
  differs, what it holds, what the layout needs, and the config whose runs fit."""
  if not bad:
    return
  name, got, want = bad[0]
  more = f" ({len(bad) - 1} more arrays differ)" if len(bad) > 1 else ""
  keys = [d for d in differences if not d.startswith("model.variant:")] or differences
  why = f"; this run differs in {'; '.join(keys)} (run -> preset)" if keys else ""
  raise ConversionError(
      f"{workdir} does not fit the {fmt} layout: its {name} is {got}, the layout needs "
      f"{want}{more}. A run of configs/{PRESETS.get(fmt, fmt)}.py fits it{why}."
  )


def init_run(workdir: str, config, num_classes: int = 1000) -> dict:
  """A run directory of `config`'s network with its initial weights (config.seed and the
  config's initializer): a format's layout tried with no file to download. Returns
  {'num_classes', 'num_params'} as import_run does."""
  model = model_for(config, num_classes)
  images = jax.numpy.zeros((1, *model.input_shape), jax.numpy.float32)
  variables = jax.jit(
      lambda rng: model.init(rng, images, train=False),
      compiler_options=train_state.init_compiler_options(),
  )(jax.random.key(config.seed))
  variables = jax.device_get(variables)
  write_run(
      workdir,
      config,
      variables["params"],
      batch_stats=variables.get("batch_stats"),
      class_names=formats.default_class_names(num_classes),
      meta={"converted_from": {"format": "init", "seed": int(config.seed)}},
  )
  return {
      "num_classes": num_classes,
      "num_params": sum(int(np.size(x)) for x in jax.tree.leaves(variables)),
  }


def _with_variant_fields(difference: str, run_model, preset_model) -> str:
  """'model.variant: a -> b' followed by the Variant fields in which a and b differ."""
  if not difference.startswith("model.variant:"):
    return difference
  fields = [
      f"{f.name} {getattr(run_model.variant, f.name)} -> {getattr(preset_model.variant, f.name)}"
      for f in dataclasses.fields(run_model.variant)
      if getattr(run_model.variant, f.name) != getattr(preset_model.variant, f.name)
  ]
  return f"{difference} ({', '.join(fields)})"
