"""The published AlexNets' file formats and this project's parameter layout.

Formats (each with a preset in configs/ that describes its network and its inputs):
  torchvision       torchvision.models.alexnet's state_dict (alexnet-owt-7be5be79.pth): one
                    tower; features.{0,3,6,8,10} convs, classifier.{1,4,6} linears.
  pytorch_grouped   the grouped PyTorch AlexNet: two towers as groups=2 in conv2/4/5;
                    features.{0,4,8,10,12} convs (LRN modules at 3 and 7), classifier.{1,4,6}.
  caffe             Caffe's bvlc_alexnet.caffemodel: layers conv1..conv5, fc6..fc8, two blobs
                    each (weights, bias); conv2/4/5 grouped.
  keras             the Keras tutorials' BatchNorm AlexNet (model.variant 'keras_bn'): .keras,
                    .weights.h5 or Keras 2 .h5, read and written by keras_h5.py.

PyTorch and Caffe store conv weights [out, in/groups, kh, kw] and fc weights [out, in]; a
grouped layer's output channels are tower 0's then tower 1's, which is exactly how the towers
of this project concatenate (model.py), so tower t is the t-th block of output channels.
fc6's input is the (C, H, W) flatten of pool5 there; a variant with fc6_input_order='hwc' (the
paper's) gets its rows permuted.

torch is imported only inside the functions that read or write .pth files: the library never
needs it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import zipfile

import jax
import numpy as np

from alexnet_jax import files, run_dir, sharding
from alexnet_jax.pretrained import caffemodel

# Plausible sizes, checked before a file is read: bvlc_alexnet.caffemodel is 233 MB (float32;
# 466 MB as doubles), its mean file 0.8 MB, torchvision's .pth 233 MB.
MAX_CAFFEMODEL_BYTES = 1 << 30
MAX_MEAN_BYTES = 16 << 20
MAX_PTH_BYTES = 2 << 30

CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_LAYERS = ("fc6", "fc7", "fc8")
LAYERS = CONV_LAYERS + FC_LAYERS


@dataclasses.dataclass(frozen=True)
class Format:
  name: str
  keys: dict  # layer -> state_dict prefix (PyTorch) or layer name (Caffe)
  towers: int
  where: str  # where its framework publishes or keeps such a file

  def state_key(self, layer: str, i: int) -> str:
    """The state_dict key of a layer's weight (i=0) or bias (i=1)."""
    return f"{self.keys[layer]}.{('weight', 'bias')[i]}"

  def state_keys(self) -> set:
    return {self.state_key(layer, i) for layer in self.keys for i in (0, 1)}


FORMATS = {
    "torchvision": Format(
        "torchvision",
        {
            "conv1": "features.0",
            "conv2": "features.3",
            "conv3": "features.6",
            "conv4": "features.8",
            "conv5": "features.10",
            "fc6": "classifier.1",
            "fc7": "classifier.4",
            "fc8": "classifier.6",
        },
        towers=1,
        where=(
            "torchvision publishes its ImageNet weights as alexnet-owt-7be5be79.pth "
            "(torchvision.models.AlexNet_Weights.IMAGENET1K_V1, "
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth; torchvision keeps "
            "downloads in ~/.cache/torch/hub/checkpoints/)"
        ),
    ),
    "pytorch_grouped": Format(
        "pytorch_grouped",
        {
            "conv1": "features.0",
            "conv2": "features.4",
            "conv3": "features.8",
            "conv4": "features.10",
            "conv5": "features.12",
            "fc6": "classifier.1",
            "fc7": "classifier.4",
            "fc8": "classifier.6",
        },
        towers=2,
        where=(
            "a grouped AlexNet's weights are the file its PyTorch code wrote with "
            "torch.save(model.state_dict(), FILE) (no framework publishes one)"
        ),
    ),
    "caffe": Format(
        "caffe",
        {name: name for name in LAYERS},
        towers=2,
        where=(
            "Caffe's model zoo publishes bvlc_alexnet.caffemodel "
            "(models/bvlc_alexnet/readme.md in Caffe's repository, "
            "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel; "
            "scripts/download_model_binary.py models/bvlc_alexnet fetches it), and its mean "
            "image as ilsvrc_2012_mean.binaryproto (data/ilsvrc12/get_ilsvrc_aux.sh)"
        ),
    ),
    "keras": Format(
        "keras",
        # Keras 3's weight groups (keras_h5.py); bn1..bn8 and head are keras_h5's too.
        {
            "conv1": "conv2d",
            "conv2": "conv2d_1",
            "conv3": "conv2d_2",
            "conv4": "conv2d_3",
            "conv5": "conv2d_4",
            "fc6": "dense",
            "fc7": "dense_1",
            "fc8": "dense_2",
        },
        towers=1,
        where=(
            "a Keras model's weights are the file its training script saved: "
            "model.save('alexnet.keras') or model.save_weights('alexnet.weights.h5') (Keras 3), "
            "model.save('alexnet.h5') (Keras 2)"
        ),
    ),
}
PYTORCH_FORMATS = ("torchvision", "pytorch_grouped")
# configs/<preset>.py of each format, where it is not the format's own name.
PRESETS = {"keras": "keras_bn"}


class ConversionError(ValueError):
  """The input does not hold the network the format describes; the message says why."""


# ---- the layouts ---------------------------------------------------------------------------
def _fc6_permutation(fan_in: int, channels: int, order: str) -> np.ndarray | None:
  """Row order that turns a (C, H, W)-flattened fc6 input into `order` (None: already)."""
  if order == "chw":
    return None
  side = int(round((fan_in // channels) ** 0.5))
  if channels * side * side != fan_in:
    raise ConversionError(f"fc6 reads {fan_in} inputs, not {channels} maps of a square size")
  # hwc position (h, w, c) reads chw input c * side^2 + h * side + w.
  return np.arange(fan_in).reshape(channels, side, side).transpose(1, 2, 0).reshape(-1)


def to_framework(params, model) -> dict:
  """This project's parameters -> {layer: (weight, bias)} in PyTorch/Caffe layout (float32)."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  out = {}
  for name in CONV_LAYERS:
    k, b = p[name]["kernel"], p[name]["bias"]  # [T, kh, kw, cin, co], [T, co]
    out[name] = (np.concatenate([kt.transpose(3, 2, 0, 1) for kt in k]), b.reshape(-1))
  for name in ("fc6", "fc7"):
    k, b = p[name]["kernel"], p[name]["bias"]  # [T, fan_in, o], [T, o]
    w = np.concatenate([kt.T for kt in k])  # [out, fan_in]
    if name == "fc6":
      perm = _fc6_permutation(w.shape[1], model.layer_widths()[0][4], model.variant.fc6_input_order)
      if perm is not None:
        w = w[:, np.argsort(perm)]
    out[name] = (w, b.reshape(-1))
  out["fc8"] = (p["fc8"]["kernel"].T, p["fc8"]["bias"])
  return {k: (np.ascontiguousarray(w), np.ascontiguousarray(b)) for k, (w, b) in out.items()}


def from_framework(layers: dict, model) -> dict:
  """{layer: (weight, bias)} in PyTorch/Caffe layout -> this project's parameter tree for
  `model` (shapes checked by the caller against expected_shapes)."""
  t = model.num_towers
  params = {}
  for name in CONV_LAYERS:
    w, b = (np.asarray(a, np.float32) for a in layers[name])
    co = w.shape[0] // t
    params[name] = {
        "kernel": np.stack([w[i * co : (i + 1) * co].transpose(2, 3, 1, 0) for i in range(t)]),
        "bias": b.reshape(t, co),
    }
  for name in ("fc6", "fc7"):
    w, b = (np.asarray(a, np.float32) for a in layers[name])
    if name == "fc6":
      perm = _fc6_permutation(w.shape[1], model.layer_widths()[0][4], model.variant.fc6_input_order)
      if perm is not None:
        w = w[:, perm]
    o = w.shape[0] // t
    params[name] = {
        "kernel": np.stack([w[i * o : (i + 1) * o].T for i in range(t)]),
        "bias": b.reshape(t, o),
    }
  w, b = (np.asarray(a, np.float32) for a in layers["fc8"])
  params["fc8"] = {"kernel": w.T, "bias": b}
  return jax.tree.map(np.ascontiguousarray, params)


def expected_shapes(model) -> dict:
  """{layer: (weight shape, bias shape)} of `model` in PyTorch/Caffe layout."""
  abstract = sharding.abstract_variables(model)["params"]
  out = {}
  for name in CONV_LAYERS:
    t, kh, kw, cin, co = abstract[name]["kernel"].shape
    out[name] = ((t * co, cin, kh, kw), (t * co,))
  for name in ("fc6", "fc7"):
    t, fan_in, o = abstract[name]["kernel"].shape
    out[name] = ((t * o, fan_in), (t * o,))
  fan_in, c = abstract["fc8"]["kernel"].shape
  out["fc8"] = ((c, fan_in), (c,))
  return out


def mismatches(layers: dict, model, describe) -> list[tuple[str, tuple, tuple]]:
  """(name, shape held, shape `model` needs) of every array of `layers` that differs, in the
  network's order; describe(layer, i) names array i (0 weight, 1 bias)."""
  want = expected_shapes(model)
  bad = []
  for name in LAYERS:
    for i in (0, 1):
      got = tuple(np.shape(layers[name][i]))
      if got != want[name][i]:
        bad.append((describe(name, i), got, tuple(want[name][i])))
  return bad


def check_shapes(layers: dict, model, describe) -> None:
  """Raise ConversionError naming every layer whose arrays do not have `model`'s shapes;
  describe(layer, i) names array i (0 weight, 1 bias) in the file's own terms."""
  bad = [f"{d} is {got}, expected {want}" for d, got, want in mismatches(layers, model, describe)]
  if bad:
    raise ConversionError(
        "the weights are not this network's: "
        + "; ".join(bad)
        + f" (expected: {_describe_model(model)})"
    )


def _describe_model(model) -> str:
  conv, fc = model.layer_widths()
  return (
      f"{model.num_towers} tower(s), conv widths {list(conv)}, fc widths {list(fc)}, "
      f"{model.image_size}x{model.image_size} input"
  )


# ---- reading ---------------------------------------------------------------------------------
def import_torch():
  try:
    import torch  # noqa: PLC0415  (only .pth conversion needs torch: never the library)
  except ImportError:
    raise ConversionError(
        "reading or writing PyTorch files needs torch: pip install torch==2.13.0 "
        "(a CPU build is enough)"
    ) from None
  return torch


def missing_file(path: str, fmt: str) -> FileNotFoundError:
  others = "; ".join(f.where for name, f in FORMATS.items() if name != fmt)
  return FileNotFoundError(
      f"{path} does not exist. {FORMATS[fmt].where}. (Other formats: {others}.) "
      "Nothing is downloaded here: fetch the file yourself and pass its path as --src."
  )


def load_state_dict(path: str) -> dict:
  """A .pth state_dict as {key: float32 ndarray}, read with torch.load(weights_only=True)
  (tensors and plain containers only: no pickled code runs). A FIFO or device is refused
  before any open; the file and its zip records' sizes are checked before torch reads them."""
  torch = import_torch()
  with files.open_regular(path, ".pth file", MAX_PTH_BYTES, ConversionError) as f:
    if zipfile.is_zipfile(f):
      files.check_zip_entries(f, 100_000, ConversionError, path)
      with zipfile.ZipFile(f) as z:
        claimed = sum(i.file_size for i in z.infolist())
      if claimed > MAX_PTH_BYTES:
        raise ConversionError(
            f"{path}: its records claim {claimed:,} bytes, more than a PyTorch AlexNet's "
            f"({MAX_PTH_BYTES:,}); refused before reading them"
        )
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
        f"cannot read {path} as a PyTorch state_dict ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}); a truncated or non-PyTorch file?"
    ) from None
  for key in ("state_dict", "model"):  # training checkpoints that wrap the state_dict
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict) or not obj:
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ConversionError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
    key = key[len("module.") :] if key.startswith("module.") else key  # nn.DataParallel
    out[key] = value.detach().to(torch.float32).numpy()
  return out


def layers_from_state_dict(state: dict, fmt: str, model) -> dict:
  """{layer: (weight, bias)} from a state_dict in `fmt`'s keys; missing or extra keys are an
  error that names them with their shapes (`model`'s for the missing ones), and the format
  the keys belong to if it is another."""
  f = FORMATS[fmt]
  missing, extra = sorted(f.state_keys() - set(state)), sorted(set(state) - f.state_keys())
  if missing or extra:
    want = expected_shapes(model)
    want = {f.state_key(layer, i): want[layer][i] for layer in LAYERS for i in (0, 1)}
    others = [o for o in PYTORCH_FORMATS if o != fmt and FORMATS[o].state_keys() == set(state)]
    problems = []
    if missing:
      problems.append("missing keys " + ", ".join(f"{k} {want[k]}" for k in missing))
    if extra:
      problems.append("unexpected keys " + ", ".join(f"{k} {tuple(state[k].shape)}" for k in extra))
    raise ConversionError(
        f"not a {fmt} AlexNet state_dict: "
        + "; ".join(problems)
        + "."
        + "".join(f" It has the keys of the {o} layout: use --from={o}." for o in others)
    )
  return {name: (state[f.state_key(name, 0)], state[f.state_key(name, 1)]) for name in f.keys}


def layers_from_caffemodel(path: str, model) -> dict:
  """{layer: (weight, bias)} of a .caffemodel, each blob reshaped to the layout `model` needs
  (Caffe's V1 files store fc weights as 1 x 1 x out x in). The file's size is checked before
  it is read (MAX_CAFFEMODEL_BYTES), and a FIFO or device is refused before any open."""
  data = files.read_bytes(path, ".caffemodel", MAX_CAFFEMODEL_BYTES, ConversionError)
  try:
    _, layers = caffemodel.read_net(data)
  except caffemodel.CaffeFormatError as e:
    raise ConversionError(f"cannot read {path} as a .caffemodel: {e}") from None
  with_blobs = {layer.name: layer for layer in layers if layer.blobs}
  missing = [n for n in LAYERS if n not in with_blobs]
  extra = [n for n in with_blobs if n not in LAYERS]
  if missing or extra:
    shapes = lambda n: [tuple(b.shape) for b in with_blobs[n].blobs][:4]  # noqa: E731
    show = lambda n: files.printable(n)[:100]  # noqa: E731  (text from the file)
    raise ConversionError(
        f"{path} is not bvlc_alexnet: "
        + (f"no layer with weights named {missing}" if missing else "")
        + ("; " if missing and extra else "")
        + (
            f"other layers with weights: {', '.join(f'{show(n)} {shapes(n)}' for n in extra[:8])}"
            if extra
            else ""
        )
        + f" (layers with weights: {[show(n) for n in list(with_blobs)[:30]]})"
    )
  fc8_bias = with_blobs["fc8"].blobs[1:2]
  if not fc8_bias or fc8_bias[0].size < 1 or fc8_bias[0].size != max(fc8_bias[0].shape, default=0):
    raise ConversionError(f"{path}: fc8's bias is not a vector of class scores")
  want = expected_shapes(model)
  out = {}
  for name in LAYERS:
    blobs = with_blobs[name].blobs
    if len(blobs) != 2:
      raise ConversionError(
          f"{path}: layer {name} has {len(blobs)} blobs {[tuple(b.shape) for b in blobs]}, "
          "expected 2 (weights and bias)"
      )
    pair = []
    for blob, shape in zip(blobs, want[name]):
      squeezed = tuple(blob.shape)
      while len(squeezed) > len(shape) and squeezed[0] == 1:
        squeezed = squeezed[1:]
      pair.append(blob.reshape(squeezed))
    out[name] = tuple(pair)
  return out


def read_caffe_mean(path: str) -> np.ndarray:
  """ilsvrc_2012_mean.binaryproto (1 x 3 x 256 x 256, BGR) -> float32 [256, 256, 3] RGB."""
  data = files.read_bytes(path, "Caffe mean file", MAX_MEAN_BYTES, ConversionError)
  try:
    blob = caffemodel.parse_blob(data)
  except caffemodel.CaffeFormatError as e:
    raise ConversionError(f"cannot read {path} as a Caffe mean BlobProto: {e}") from None
  squeezed = blob.reshape(blob.shape[-3:]) if blob.ndim >= 3 else blob
  if squeezed.shape != (3, 256, 256):
    raise ConversionError(f"{path}: mean blob of shape {blob.shape}, expected 1 x 3 x 256 x 256")
  return np.ascontiguousarray(squeezed[::-1].transpose(1, 2, 0), np.float32)


def default_class_names(num_classes: int) -> list[str] | None:
  """ImageNet's 1000 WordNet ids in label order (sorted: torchvision's and Caffe's order),
  from the list that ships with tensorflow_datasets; None for other class counts."""
  if num_classes != 1000:
    return None
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or spec.origin is None:
    return None
  path = os.path.join(os.path.dirname(spec.origin), "datasets", "imagenet2012", "labels.txt")
  names = run_dir.read_names_file(path)
  return names if len(names) == 1000 else None
