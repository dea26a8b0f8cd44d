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
import posixpath
import re
import zipfile

import numpy as np

from alexnet_jax import files
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


# Bounds checked before anything is read (the tutorial's network: 28M float32 parameters, a
# 110 MB file): a weights file, a .keras member and all arrays together; a config; the
# entries of a group and of a zip.
MAX_WEIGHTS_BYTES = 1 << 30
MAX_CONFIG_BYTES = 16 << 20
MAX_ENTRIES = 10_000
MAX_ZIP_MEMBERS = 1_000


# ---- reading -------------------------------------------------------------------------------
def read(path: str) -> dict:
  """{conv1..conv5, fc6, fc7, fc8, head: (kernel, bias); bn1..bn8: (gamma, beta, moving_mean,
  moving_variance)} (float32, Keras's layouts) of a .keras, .weights.h5 or Keras 2 .h5 file;
  a .keras file's config.json must describe the tutorial's layers.

  A hostile file fails with one line (KerasFormatError) before it costs memory: the file and
  a .keras file's members are bounded (MAX_WEIGHTS_BYTES, MAX_CONFIG_BYTES), every array's
  size is checked from its header before it is read, and compressed, external or virtual
  datasets are refused (Keras writes none). No HDF5 link is followed that the format does
  not need: external links, soft links that leave the weights group, chains and loops of
  soft links are refused."""
  name = files.printable(os.path.basename(path))
  try:
    files.check_regular(path, "Keras weights file", KerasFormatError)
    with files.open_regular(path, "Keras weights file", MAX_WEIGHTS_BYTES, KerasFormatError) as f:
      return _assign(_read_layers(f, name), name)
  except KerasFormatError:
    raise
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a damaged or hostile file: one line)
    # A damaged file, or one with Keras's top-level layout but not its insides.
    reason = files.printable(str(e).splitlines()[0])[:200] if str(e) else ""
    raise KerasFormatError(
        f"cannot read {name} as a Keras weights file ({type(e).__name__}: {reason}): a "
        "truncated, damaged or non-Keras file?"
    ) from None


class _Budget:
  """What the arrays read so far take: refused past MAX_WEIGHTS_BYTES, before reading."""

  def __init__(self, name: str):
    self.name, self.left = name, MAX_WEIGHTS_BYTES

  def take(self, nbytes: int, what: str) -> None:
    if nbytes > self.left:
      raise KerasFormatError(
          f"{self.name}: {what} would take {nbytes:,} bytes, more than the "
          f"{MAX_WEIGHTS_BYTES:,} a Keras AlexNet's weights can (refused before reading it)"
      )
    self.left -= nbytes


def _read_layers(f, name: str) -> dict:
  import h5py  # noqa: PLC0415  (only conversion needs h5py)

  if zipfile.is_zipfile(f):
    f.seek(0)
    files.check_zip_entries(f, MAX_ZIP_MEMBERS, KerasFormatError, name)
    with zipfile.ZipFile(f) as z:
      members = {i.filename: i for i in z.infolist()}
      if "model.weights.h5" not in members:
        raise KerasFormatError(
            f"{name} is a zip without model.weights.h5 ({sorted(members)[:6]}): not a Keras 3 "
            ".keras file (one saved with sharded or npz weights: save it again with "
            "model.save('alexnet.keras') or model.save_weights('alexnet.weights.h5'))"
        )
      if "config.json" in members:
        text = _member(z, members["config.json"], MAX_CONFIG_BYTES, name)
        check_config(json.loads(text), name)
      data = _member(z, members["model.weights.h5"], MAX_WEIGHTS_BYTES, name)
    with h5py.File(io.BytesIO(data), "r") as h5:
      layers = _weighted_layers(h5, name)
  else:
    f.seek(0)
    try:
      h5 = h5py.File(f, "r")
    except OSError as e:
      raise KerasFormatError(
          f"cannot read {name} as HDF5 or as a .keras zip ({str(e).splitlines()[0]}): "
          "a truncated or non-Keras file?"
      ) from None
    with h5:
      config = _attr(h5, "model_config", name)  # Keras 2's model.save: the architecture
      if config is not None:
        config = json.loads(config.decode() if isinstance(config, bytes) else config)
        check_config(config, name)
      layers = _weighted_layers(h5, name)
  return layers


def _member(z, info, limit: int, name: str) -> bytes:
  """A zip member's bytes, its declared size checked first and the read bounded by it."""
  if info.file_size > limit:
    raise KerasFormatError(
        f"{name}: its {files.printable(info.filename)} claims {info.file_size:,} bytes, more "
        f"than a Keras AlexNet's can ({limit:,}); refused before reading it"
    )
  with z.open(info) as member:
    data = member.read(info.file_size + 1)  # zipfile stops at the size it declares
  if len(data) > limit:
    raise KerasFormatError(f"{name}: {files.printable(info.filename)} is larger than it claims")
  return data


def _attr(obj, key: str, name: str):
  """An attribute's value (None if absent), its stored size checked before it is read."""
  if key not in obj.attrs:
    return None
  aid = obj.attrs.get_id(key)  # what reading it allocates, from its dataspace and type
  size = int(np.prod(aid.shape or (), dtype=object)) * aid.dtype.itemsize
  if size > MAX_CONFIG_BYTES:
    raise KerasFormatError(
        f"{name}: attribute {key!r} of {files.printable(obj.name)} takes {size:,} bytes: not "
        "a Keras file's"
    )
  return obj.attrs[key]


def _get(f, base, relpath: str, root, name: str):
  """base[relpath] following only hard links, and soft links whose target is inside `root`
  (the weights group) and reached through hard links; KerasFormatError for external links,
  soft links that leave `root`, chains and loops of soft links, and missing entries."""
  import h5py  # noqa: PLC0415

  obj = base
  for part in [p for p in relpath.split("/") if p]:
    if not isinstance(obj, h5py.Group):
      raise KerasFormatError(f"{name}: {files.printable(obj.name)} is not a group")
    link = obj.get(part, getlink=True)
    where = files.printable(posixpath.join(obj.name, part))
    if link is None:
      raise KerasFormatError(f"{name} has no {where}: not the tutorial's Keras file")
    if isinstance(link, h5py.ExternalLink):
      raise KerasFormatError(
          f"{name}: {where} is an external link (to {files.printable(link.path)} in "
          f"{files.printable(link.filename)}): a weights file's values are its own; refused"
      )
    if isinstance(link, h5py.SoftLink):
      target = posixpath.normpath(posixpath.join(obj.name, link.path))
      inside = root.name == "/" or target == root.name or target.startswith(root.name + "/")
      if not inside:
        raise KerasFormatError(
            f"{name}: {where} is a soft link to {files.printable(target)}, outside the weights "
            f"group {files.printable(root.name)}; refused"
        )
      obj = _hard_path(f, target, name, where)
    else:
      obj = obj[part]
  return obj


def _hard_path(f, target: str, name: str, where: str):
  """The object at an absolute path reached through hard links only."""
  import h5py  # noqa: PLC0415

  obj = f
  for part in [p for p in target.split("/") if p]:
    link = obj.get(part, getlink=True) if isinstance(obj, h5py.Group) else None
    if not isinstance(link, h5py.HardLink):
      raise KerasFormatError(
          f"{name}: {where} is a soft link to {files.printable(target)}, which "
          + ("does not exist" if link is None else "is a link again (a chain or a loop)")
          + "; refused"
      )
    obj = obj[part]
  return obj


def _names(group, name: str) -> list[str]:
  """A group's entry names, their number checked first."""
  if len(group) > MAX_ENTRIES:
    raise KerasFormatError(
        f"{name}: {files.printable(group.name)} holds {len(group):,} entries: not a Keras "
        "AlexNet's weights"
    )
  return list(group.keys())


def _array(ds, budget: _Budget, name: str) -> np.ndarray:
  """A dataset as float32, after checking from its header what reading it would take:
  numbers only, no compression, external or virtual storage, within the budget."""
  import h5py  # noqa: PLC0415

  where = files.printable(ds.name)
  if not isinstance(ds, h5py.Dataset):
    raise KerasFormatError(f"{name}: {where} is a group, not an array")
  if ds.dtype.kind not in "fiu" or ds.dtype.itemsize > 8:
    raise KerasFormatError(f"{name}: {where} holds {ds.dtype}, not numbers")
  if ds.is_virtual or ds.external:
    raise KerasFormatError(
        f"{name}: {where} keeps its values in other files (external or virtual storage): a "
        "weights file's values are its own; refused"
    )
  if ds.id.get_create_plist().get_nfilters():
    raise KerasFormatError(
        f"{name}: {where} is compressed or filtered, which Keras never writes; refused"
    )
  count = int(np.prod(ds.shape, dtype=object)) if ds.shape is not None else 0
  budget.take(count * (ds.dtype.itemsize + 4), f"{where} {tuple(ds.shape or ())}")
  if ds.chunks is not None:
    chunk = int(np.prod(ds.chunks, dtype=object)) * ds.dtype.itemsize
    if chunk > MAX_WEIGHTS_BYTES:
      raise KerasFormatError(f"{name}: {where} has chunks of {chunk:,} bytes; refused")
  return np.asarray(ds[()], np.float32)


def _weighted_layers(f, name: str) -> dict:
  """{kind: [(group name, [arrays])] in model order} of the layers with weights."""
  import h5py  # noqa: PLC0415

  budget = _Budget(name)
  root = _get(f, f, "model_weights", f, name) if "model_weights" in _names(f, name) else f
  if not isinstance(root, h5py.Group):
    raise KerasFormatError(f"{name}: model_weights is not a group")
  if "layer_names" in root.attrs:
    return _legacy_layers(f, root, budget, name)
  entries = _names(root, name)
  layers = _get(f, root, "layers", root, name) if "layers" in entries else None
  if not isinstance(layers, h5py.Group):
    raise KerasFormatError(
        f"{name} has no 'layers' group (Keras 3) and no 'layer_names' attribute (Keras 2): "
        f"not a Keras weights file (top-level entries: "
        f"{[files.printable(e)[:50] for e in sorted(entries)[:8]]})"
    )
  found = {kind: [] for kind in KERAS_GROUP}
  others = []
  for group_name in _names(layers, name):
    group = _get(f, layers, group_name, root, name)
    arrays = _vars_of(f, group, root, budget, name)
    if not arrays:
      continue
    m = re.fullmatch(r"(.+?)(?:_(\d+))?", group_name)
    kind = next((k for k, g in KERAS_GROUP.items() if g == m.group(1)), None)
    if kind is None:
      others.append(f"{files.printable(group_name)[:100]} {[a.shape for a in arrays]}")
      continue
    found[kind].append((int(m.group(2) or 0), group_name, arrays))
  if others:
    raise KerasFormatError(
        f"{name} has layers with weights that the tutorial's AlexNet does not have: "
        f"{', '.join(others[:8])}; {expected_description()}"
    )
  # The number after a group's class name is its position among that class's layers.
  return {kind: [(g, a) for _, g, a in sorted(items)] for kind, items in found.items()}


def _vars_of(f, group, root, budget: _Budget, name: str) -> list:
  import h5py  # noqa: PLC0415

  if not isinstance(group, h5py.Group) or "vars" not in _names(group, name):
    return []
  v = _get(f, group, "vars", root, name)
  if not isinstance(v, h5py.Group):
    return []
  return [_array(_get(f, v, str(i), root, name), budget, name) for i in range(len(_names(v, name)))]


def _legacy_layers(f, root, budget: _Budget, name: str) -> dict:
  """Keras 2's layout: `layer_names` in model order, each group's `weight_names`."""
  found = {kind: [] for kind in KERAS_GROUP}
  layer_names = _attr(root, "layer_names", name)
  if len(layer_names) > MAX_ENTRIES:
    raise KerasFormatError(f"{name}: {len(layer_names):,} layer names: not a Keras AlexNet's")
  for layer_name in layer_names:
    layer_name = layer_name.decode() if isinstance(layer_name, bytes) else str(layer_name)
    group = _get(f, root, layer_name, root, name)
    weight_names = _attr(group, "weight_names", name)
    weight_names = [
        w.decode() if isinstance(w, bytes) else str(w)
        for w in (weight_names if weight_names is not None else [])
    ]
    if not weight_names:
      continue
    arrays = [_array(_get(f, group, w, root, name), budget, name) for w in weight_names]
    short = [w.rsplit("/", 1)[-1].split(":")[0] for w in weight_names]
    if short == ["kernel", "bias"] and arrays[0].ndim in (2, 4):
      kind = "conv" if arrays[0].ndim == 4 else "dense"
    elif short == list(BN_VARS):
      kind = "bn"
    else:
      shown = [(files.printable(n)[:50], a.shape) for n, a in zip(short, arrays)]
      raise KerasFormatError(
          f"layer {files.printable(layer_name)[:100]} holds {shown[:8]}, which no "
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
        f"{counts[k]} {KERAS_CLASS[k]} ("
        + ", ".join(f"{files.printable(g)[:100]} {a[0].shape}" for g, a in found[k][:20])
        + ")"
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
            f"{name}: {files.printable(group_name)[:100]} ({layer}) holds {len(arrays)} arrays "
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
  if not isinstance(config, dict):
    raise KerasFormatError(f"{name}: its model config is not a JSON object")
  inner = config.get("config", {})
  if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
    layers = inner["layers"]
  elif isinstance(inner, list):  # Keras 2.0 and 2.1 wrote a Sequential's config as its layers
    layers = inner
  else:
    raise KerasFormatError(
        f"{name}: its model config is a {files.printable(str(config.get('class_name')))[:100]} "
        f"without a list of layers; {expected_description()}"
    )
  # Dropout changes neither the weights nor inference (fine-tuning takes the config's rate).
  if not all(isinstance(layer, dict) for layer in layers):
    raise KerasFormatError(f"{name}: its model config lists layers that are not JSON objects")
  got = [op for layer in layers for op in _layer_signature(layer) if op != "dropout"]
  want = [op for op in TUTORIAL_SIGNATURE if op != "dropout"]
  if got != want:
    i = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    g = got[i] if i < len(got) else "the end"
    w = want[i] if i < len(want) else "the end"
    shown = files.printable(", ".join(got[:40]) + (", ..." if len(got) > 40 else ""))
    raise KerasFormatError(
        f"{name} holds a {files.printable(str(config.get('class_name')))[:100]} that differs "
        f"from the tutorial's AlexNet at operation {i + 1}: {files.printable(g)[:100]}, "
        f"expected {w} (its operations: {shown[:2000]})"
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
