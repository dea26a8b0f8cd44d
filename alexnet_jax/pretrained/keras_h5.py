"""The Keras tutorials' BatchNorm AlexNet in and out of Keras's weight files, read and written
with h5py, zipfile and json only: no Keras loader is called and nothing in the file runs (a
.keras file's config.json is read as data and compared with the tutorial's layers).

The network (configs/keras_bn.py; a Keras Sequential, channels last, 224x224x3 input):
  conv1 96 11x11/4, conv2 256 11x11/1, conv3 384 3x3, conv4 384 3x3, conv5 256 3x3 ("valid"),
  each followed by ReLU, a 2x2/2 max-pool after conv1, conv2 and conv5, and BatchNormalization;
  Flatten; Dense 4096, 4096, 1000, each with ReLU, Dropout and BatchNormalization; Dense head.

Files:
  .weights.h5  model.save_weights (Keras 3): layers/<group>/vars/<i>, one group per layer,
               named by its class in snake case and numbered in model order among the layers
               of that class (conv2d, conv2d_1, ..., batch_normalization_7, dense_3), whatever
               the layers' own names; Conv2D/Dense vars are (kernel, bias), BatchNormalization
               (gamma, beta, moving_mean, moving_variance).
  .keras       model.save (Keras 3): a zip of config.json (the architecture, checked here
               against the tutorial's), metadata.json and model.weights.h5 (as above).
  .h5          Keras 2's model.save / save_weights (and Keras 3's legacy model.save('x.h5')):
               groups by layer name, in model order in the `layer_names` attribute, each with
               `weight_names` (.../kernel:0, .../gamma:0, ...).

Keras's kernels are this project's without the tower axis (conv [kh, kw, cin, cout], dense
[in, out]) and its Flatten is channels-last, like this project's "hwc" flatten, so the
conversion only adds or drops the one-tower axis.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

import numpy as np

from alexnet_jax.files import write_atomically
from alexnet_jax.pretrained.formats import ConversionError

CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
DENSE_LAYERS = ("fc6", "fc7", "fc8", "head")
TOWER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
BN_LAYERS = ("bn1", "bn2", "bn3", "bn4", "bn5", "bn6", "bn7", "bn8")
LAYERS = CONV_LAYERS + DENSE_LAYERS + BN_LAYERS
BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")
# Keras 3 names a layer's weight group by its class (keras.src.utils.naming.to_snake_case).
KERAS_CLASS = {"conv": "Conv2D", "dense": "Dense", "bn": "BatchNormalization"}
KERAS_GROUP = {"conv": "conv2d", "dense": "dense", "bn": "batch_normalization"}
NAMES_OF_KIND = {"conv": CONV_LAYERS, "dense": DENSE_LAYERS, "bn": BN_LAYERS}

# The tutorial's layers in order, as _layer_signature describes a .keras config's layers.
TUTORIAL_SIGNATURE = (
    ["conv 11x11/4 valid", "relu", "maxpool 2x2/2 valid", "batchnorm"]
    + ["conv 11x11/1 valid", "relu", "maxpool 2x2/2 valid", "batchnorm"]
    + ["conv 3x3/1 valid", "relu", "batchnorm"] * 2
    + ["conv 3x3/1 valid", "relu", "maxpool 2x2/2 valid", "batchnorm", "flatten"]
    + ["dense", "relu", "dropout", "batchnorm"] * 3
    + ["dense"]
)
KERAS_BN_MOMENTUM, KERAS_BN_EPSILON = 0.99, 1e-3


class KerasFormatError(ConversionError):
  """The file is not a Keras weights file of the tutorial's network; the message says why."""


# ---- reading -------------------------------------------------------------------------------
def read(path: str) -> dict:
  """{conv1..conv5, fc6, fc7, fc8, head: (kernel, bias); bn1..bn8: (gamma, beta, moving_mean,
  moving_variance)} (float32, Keras's layouts) of a .keras, .weights.h5 or Keras 2 .h5 file;
  a .keras file's config.json must describe the tutorial's layers."""
  name = os.path.basename(path)
  try:
    return _assign(_read_layers(path, name), name)
  except KerasFormatError:
    raise
  except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
    # A damaged file, or one with Keras's top-level layout but not its insides.
    reason = str(e).splitlines()[0] if str(e) else ""
    raise KerasFormatError(
        f"cannot read {name} as a Keras weights file ({type(e).__name__}: {reason}): a "
        "truncated, damaged or non-Keras file?"
    ) from None


def _read_layers(path: str, name: str) -> dict:
  import h5py  # noqa: PLC0415  (only conversion needs h5py)

  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      members = set(z.namelist())
      if "model.weights.h5" not in members:
        raise KerasFormatError(
            f"{name} is a zip without model.weights.h5 ({sorted(members)[:6]}): not a Keras 3 "
            ".keras file (one saved with sharded or npz weights: save it again with "
            "model.save('alexnet.keras') or model.save_weights('alexnet.weights.h5'))"
        )
      if "config.json" in members:
        check_config(json.loads(z.read("config.json")), name)
      data = z.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as f:
      layers = _weighted_layers(f, name)
  else:
    try:
      f = h5py.File(path, "r")
    except OSError as e:
      raise KerasFormatError(
          f"cannot read {name} as HDF5 or as a .keras zip ({str(e).splitlines()[0]}): "
          "a truncated or non-Keras file?"
      ) from None
    with f:
      config = f.attrs.get("model_config")  # Keras 2's model.save: the architecture
      if config is not None:
        config = json.loads(config.decode() if isinstance(config, bytes) else config)
        check_config(config, name)
      layers = _weighted_layers(f, name)
  return layers


def _weighted_layers(f, name: str) -> dict:
  """{kind: [(group name, [arrays])] in model order} of the layers with weights."""
  root = f["model_weights"] if "model_weights" in f else f
  if "layer_names" in root.attrs:
    return _legacy_layers(root)
  if "layers" not in root or not hasattr(root["layers"], "keys"):
    raise KerasFormatError(
        f"{name} has no 'layers' group (Keras 3) and no 'layer_names' attribute (Keras 2): "
        f"not a Keras weights file (top-level entries: {sorted(root.keys())[:8]})"
    )
  found = {kind: [] for kind in KERAS_GROUP}
  others = []
  for group_name, group in root["layers"].items():
    arrays = _vars_of(group)
    if not arrays:
      continue
    m = re.fullmatch(r"(.+?)(?:_(\d+))?", group_name)
    kind = next((k for k, g in KERAS_GROUP.items() if g == m.group(1)), None)
    if kind is None:
      others.append(f"{group_name} {[a.shape for a in arrays]}")
      continue
    found[kind].append((int(m.group(2) or 0), group_name, arrays))
  if others:
    raise KerasFormatError(
        f"{name} has layers with weights that the tutorial's AlexNet does not have: "
        f"{', '.join(others)}; {expected_description()}"
    )
  # The number after a group's class name is its position among that class's layers.
  return {kind: [(g, a) for _, g, a in sorted(items)] for kind, items in found.items()}


def _vars_of(group) -> list:
  if "vars" not in group or not hasattr(group["vars"], "keys"):
    return []
  v = group["vars"]
  return [np.asarray(v[str(i)], np.float32) for i in range(len(v))]


def _legacy_layers(root) -> dict:
  """Keras 2's layout: `layer_names` in model order, each group's `weight_names`."""
  found = {kind: [] for kind in KERAS_GROUP}
  for layer_name in root.attrs["layer_names"]:
    layer_name = layer_name.decode() if isinstance(layer_name, bytes) else str(layer_name)
    group = root[layer_name]
    weight_names = [
        w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs.get("weight_names", [])
    ]
    if not weight_names:
      continue
    arrays = [np.asarray(group[w], np.float32) for w in weight_names]
    short = [w.rsplit("/", 1)[-1].split(":")[0] for w in weight_names]
    if short == ["kernel", "bias"] and arrays[0].ndim in (2, 4):
      kind = "conv" if arrays[0].ndim == 4 else "dense"
    elif short == list(BN_VARS):
      kind = "bn"
    else:
      raise KerasFormatError(
          f"layer {layer_name} holds {list(zip(short, [a.shape for a in arrays]))}, which no "
          f"layer of the tutorial's AlexNet has; {expected_description()}"
      )
    found[kind].append((layer_name, arrays))
  return found


def expected_description(num_classes: int | str = "N") -> str:
  return (
      "expected the tutorial's BatchNorm AlexNet: 5 Conv2D (96 11x11, 256 11x11, 384 3x3, "
      "384 3x3, 256 3x3, with bias), 4 Dense (4096, 4096, 1000, "
      f"{num_classes}, with bias) and 8 BatchNormalization (gamma, beta, moving mean and "
      "variance), channels last"
  )


def _assign(found: dict, name: str) -> dict:
  counts = {kind: len(found[kind]) for kind in KERAS_GROUP}
  want = {kind: len(NAMES_OF_KIND[kind]) for kind in KERAS_GROUP}
  if counts != want:
    have = "; ".join(
        f"{counts[k]} {KERAS_CLASS[k]} ({', '.join(f'{g} {a[0].shape}' for g, a in found[k])})"
        for k in KERAS_GROUP
    )
    raise KerasFormatError(
        f"{name} is not the tutorial's network: its layers with weights are {have}; "
        f"{expected_description()}"
    )
  out = {}
  for kind, names in NAMES_OF_KIND.items():
    for layer, (group_name, arrays) in zip(names, found[kind]):
      n = 4 if kind == "bn" else 2
      if len(arrays) != n:
        raise KerasFormatError(
            f"{name}: {group_name} ({layer}) holds {len(arrays)} arrays "
            f"{[a.shape for a in arrays]}, expected {n} "
            + ("(gamma, beta, moving_mean, moving_variance)" if kind == "bn" else "(kernel, bias)")
        )
      out[layer] = tuple(arrays)
  return out


def _layer_signature(layer: dict) -> list[str]:
  """A .keras/.h5 config entry as the operations it computes ([] for ones without any);
  unknown classes come back as their class name, which matches nothing expected."""
  cls, cfg = layer.get("class_name"), layer.get("config", {})
  pair = lambda v: v if isinstance(v, (list, tuple)) else (v, v)
  act = cfg.get("activation", "linear")
  tail = [] if act in ("linear", None, "softmax") else [str(act)]
  if cls == "InputLayer":
    return []
  if cls == "Conv2D":
    (kh, kw), (sh, sw) = pair(cfg["kernel_size"]), pair(cfg.get("strides", 1))
    if cfg.get("data_format", "channels_last") != "channels_last" or (sh != sw):
      return [f"conv {cfg.get('data_format')} strides {sh}x{sw}"]
    if tuple(pair(cfg.get("dilation_rate", 1))) != (1, 1) or cfg.get("groups", 1) != 1:
      return ["conv with dilation or groups"]
    return [f"conv {kh}x{kw}/{sh} {cfg.get('padding', 'valid')}"] + tail
  if cls == "Dense":
    return ["dense"] + tail
  if cls == "Activation":
    return tail
  if cls == "ReLU":
    plain = not cfg.get("max_value") and not cfg.get("negative_slope") and not cfg.get("threshold")
    return ["relu" if plain else "ReLU with max_value, negative_slope or threshold"]
  if cls == "MaxPooling2D":
    (ph, pw), (sh, sw) = pair(cfg["pool_size"]), pair(cfg.get("strides") or cfg["pool_size"])
    return [f"maxpool {ph}x{pw}/{sh if sh == sw else (sh, sw)} {cfg.get('padding', 'valid')}"]
  if cls == "BatchNormalization":
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, 3, 1) or not cfg.get("center", True) or not cfg.get("scale", True):
      return [f"batchnorm axis={axis} center={cfg.get('center')} scale={cfg.get('scale')}"]
    eps = float(cfg.get("epsilon", KERAS_BN_EPSILON))
    return ["batchnorm"] if np.isclose(eps, KERAS_BN_EPSILON) else [f"batchnorm epsilon {eps}"]
  if cls == "Flatten":
    return ["flatten"]
  if cls == "Dropout":
    return ["dropout"]
  return [str(cls)]


def check_config(config: dict, name: str) -> None:
  """Raise KerasFormatError unless a saved model's config (config.json, or Keras 2's
  model_config) computes the tutorial's function at inference: its layers, strides, pooling,
  padding, activations and BatchNorm epsilon (widths are checked on the weights)."""
  inner = config.get("config", {})
  if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
    layers = inner["layers"]
  elif isinstance(inner, list):  # Keras 2.0 and 2.1 wrote a Sequential's config as its layers
    layers = inner
  else:
    raise KerasFormatError(
        f"{name}: its model config is a {config.get('class_name')} without a list of layers; "
        f"{expected_description()}"
    )
  # Dropout changes neither the weights nor inference (fine-tuning takes the config's rate).
  got = [op for layer in layers for op in _layer_signature(layer) if op != "dropout"]
  want = [op for op in TUTORIAL_SIGNATURE if op != "dropout"]
  if got != want:
    i = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    g = got[i] if i < len(got) else "the end"
    w = want[i] if i < len(want) else "the end"
    raise KerasFormatError(
        f"{name} holds a {config.get('class_name')} that differs from the tutorial's AlexNet at "
        f"operation {i + 1}: {g}, expected {w} (its operations: {', '.join(got)})"
    )


# ---- writing -------------------------------------------------------------------------------
def write(path: str, layers: dict) -> None:
  """The Keras 3 .weights.h5 layout that model.load_weights reads into the tutorial's
  Sequential (only the groups of the layers with weights: Keras needs no others). Written to
  a temporary file beside `path` and renamed."""
  import h5py  # noqa: PLC0415

  def write_h5(file):
    with h5py.File(file, "w") as f:
      top = f.create_group("layers")
      for kind, names in NAMES_OF_KIND.items():
        for i, layer in enumerate(names):
          group_name = _group_name(kind, i)
          v = top.create_group(group_name).create_group("vars")
          v.attrs["name"] = group_name
          for j, array in enumerate(layers[layer]):
            v.create_dataset(str(j), data=np.asarray(array, np.float32))
      f.create_group("vars").attrs["name"] = "sequential"

  write_atomically(path, write_h5)


def dataset_names() -> list[str]:
  """The datasets `write` creates."""
  return [
      f"layers/{_group_name(kind, i)}/vars/{j}"
      for kind, names in NAMES_OF_KIND.items()
      for i, layer in enumerate(names)
      for j in range(4 if kind == "bn" else 2)
  ]


def _group_name(kind: str, i: int) -> str:
  return KERAS_GROUP[kind] if i == 0 else f"{KERAS_GROUP[kind]}_{i}"


# ---- this project's variables --------------------------------------------------------------
def to_variables(layers: dict) -> dict:
  """Keras's arrays -> {'params', 'batch_stats'} of model.variant 'keras_bn' (the tower layers
  with their one-tower axis; fc8 and head without)."""
  params, stats = {}, {}
  for name in CONV_LAYERS + DENSE_LAYERS:
    k, b = (np.asarray(a, np.float32) for a in layers[name])
    if name in TOWER_LAYERS:
      k, b = k[None], b[None]
    params[name] = {"kernel": np.ascontiguousarray(k), "bias": np.ascontiguousarray(b)}
  for name in BN_LAYERS:
    gamma, beta, mean, var = (np.ascontiguousarray(a, np.float32) for a in layers[name])
    params[name] = {"scale": gamma, "bias": beta}
    stats[name] = {"mean": mean, "var": var}
  return {"params": params, "batch_stats": stats}


def from_variables(variables: dict) -> dict:
  """{'params', 'batch_stats'} of a one-tower keras_bn network -> Keras's arrays."""
  p, s = variables["params"], variables["batch_stats"]
  f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))
  out = {}
  for name in CONV_LAYERS + DENSE_LAYERS:
    k, b = f32(p[name]["kernel"]), f32(p[name]["bias"])
    if name in TOWER_LAYERS:
      if k.shape[0] != 1:
        raise KerasFormatError(
            f"{name} has {k.shape[0]} towers: the Keras network has one (model.variant "
            "'keras_bn')"
        )
      k, b = k[0], b[0]
    out[name] = (k, b)
  for name in BN_LAYERS:
    out[name] = tuple(
        f32(a) for a in (p[name]["scale"], p[name]["bias"], s[name]["mean"], s[name]["var"])
    )
  return out


def keras_shapes(variables: dict) -> dict:
  """{layer: shapes of its Keras arrays} of a keras_bn variable tree (concrete or abstract)."""
  shapes = {}
  p, s = variables["params"], variables["batch_stats"]
  for name in CONV_LAYERS + DENSE_LAYERS:
    k, b = tuple(p[name]["kernel"].shape), tuple(p[name]["bias"].shape)
    shapes[name] = (k[1:], b[1:]) if name in TOWER_LAYERS else (k, b)
  for name in BN_LAYERS:
    shapes[name] = tuple(
        tuple(a.shape) for a in (p[name]["scale"], p[name]["bias"], s[name]["mean"], s[name]["var"])
    )
  return shapes


def mismatches(layers: dict, want: dict) -> list[tuple[str, tuple, tuple]]:
  """(array, shape held, shape wanted) of every array whose shape is not `want`'s
  (keras_shapes), in the network's order."""
  bad = []
  for layer in LAYERS:
    labels = BN_VARS if layer in BN_LAYERS else ("kernel", "bias")
    for label, array, shape in zip(labels, layers[layer], want[layer]):
      if tuple(np.shape(array)) != tuple(shape):
        bad.append((f"{layer} {label}", tuple(np.shape(array)), tuple(shape)))
  return bad


def check_shapes(layers: dict, want: dict, name: str, num_classes: int) -> None:
  """Raise KerasFormatError naming every array whose shape is not `want`'s (keras_shapes)."""
  bad = [f"{d} is {got}, expected {shape}" for d, got, shape in mismatches(layers, want)]
  if bad:
    raise KerasFormatError(
        f"{name} is not the tutorial's network: {'; '.join(bad)} "
        f"({expected_description(num_classes)}, 224x224x3 input)"
    )
