"""The library side of `python -m alexnet_jax.convert`: a published network's file into a run
directory that restores, evaluates and fine-tunes like a trained one, and a run's parameters
back out as a PyTorch state_dict.
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
from alexnet_jax import fine_tune, input_spec, run_dir, sharding, train_state
from alexnet_jax.pretrained import formats
from alexnet_jax.pretrained.formats import FORMATS, PYTORCH_FORMATS, ConversionError


def preset_config(fmt: str):
  """configs/<fmt>.py's config (the repository's configs package, from its root)."""
  try:
    return importlib.import_module(f"configs.{fmt}").get_config()
  except ImportError as e:
    raise SystemExit(
        f"cannot import configs/{fmt}.py ({e}): run from the repository's root, or pass "
        f"--config=path/to/configs/{fmt}.py"
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
    meta: dict | None = None,
) -> None:
  """A run directory that restores, evaluates and fine-tunes like a trained one: config.json,
  a step-0 checkpoint of the same TrainState a training run saves, class_names.json and the
  mean image. Written in a temporary directory beside `workdir` and renamed at the end, so a
  failure leaves nothing at `workdir`."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise FileExistsError(f"{workdir} already exists and is not empty: choose a new --workdir")
  num_classes = int(np.shape(params["fc8"]["bias"])[0])
  if class_names is not None and len(class_names) != num_classes:
    raise ConversionError(
        f"{len(class_names)} class names for a network with {num_classes} outputs"
    )
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.converting-", dir=parent)
  try:
    with open(os.path.join(tmp, run_dir.CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    model = model_for(config, num_classes)
    mesh = sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])
    state = train_state.train_state_from_params(config, model, mesh, params)
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
  if class_names_file:
    if not os.path.exists(class_names_file):
      raise FileNotFoundError(f"--class_names={class_names_file} does not exist")
    class_names = run_dir.read_names_file(class_names_file)
  else:
    class_names = formats.default_class_names(num_classes)
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


def export_run(fmt: str, workdir: str, dst: str, preset_config, *, step: int | None = None) -> dict:
  """A run's parameters as a `fmt` state_dict, torch.save'd to `dst`. The run must have the
  shapes of the format's network (`preset_config`, with the run's class count). Returns
  {'step', 'keys', 'differences'}: the architecture switches in which the run differs from
  the format's preset (same weights' shapes, but a PyTorch module computes the run's function
  only if it also has these)."""
  if fmt not in PYTORCH_FORMATS:
    raise ConversionError(f"--to must be one of {list(PYTORCH_FORMATS)}, got {fmt!r}")
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
  formats.check_shapes(
      layers,
      model_for(preset_config, num_classes),
      lambda name, i: f"{name} {('weight', 'bias')[i]} of {workdir}",
  )
  state = {}
  for name, prefix in FORMATS[fmt].keys.items():
    state[f"{prefix}.weight"] = torch.from_numpy(layers[name][0].copy())
    state[f"{prefix}.bias"] = torch.from_numpy(layers[name][1].copy())
  d = os.path.dirname(os.path.abspath(dst))
  fd, tmp = tempfile.mkstemp(dir=d, suffix=".pth.tmp")
  os.close(fd)
  try:
    torch.save(state, tmp)
    os.replace(tmp, dst)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  differences = [
      _with_variant_fields(d, model, model_for(preset_config, num_classes))
      for d in fine_tune.architecture_differences(preset_config, run.config)
  ]
  return {"step": run.step, "keys": list(state), "differences": differences}


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
