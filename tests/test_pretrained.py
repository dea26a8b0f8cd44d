"""alexnet_jax.convert against the frameworks themselves: torchvision's AlexNet module, a
grouped PyTorch AlexNet and a .caffemodel built with the protobuf runtime in Caffe's message
schema, each with random weights, give the logits of their own framework after conversion;
exports round-trip; bad input is named and writes nothing."""

import dataclasses
import io
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image
from sklearn.datasets import load_sample_images
from torch import nn

from alexnet_jax import augment, checkpoint, pretrained, run_dir, sharding, train_state
from alexnet_jax import data as ip
from configs import caffe, default, pytorch_grouped, torchvision
from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the frameworks' own networks ---------------------------------------------------------
class TorchvisionAlexNet(nn.Module):
  """torchvision.models.AlexNet (torchvision/models/alexnet.py), copied verbatim (torchvision
  does not import beside the CPU torch pinned here; the real one is used where it does)."""

  def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.features(x)
    x = self.avgpool(x)
    x = torch.flatten(x, 1)
    x = self.classifier(x)
    return x


class GroupedAlexNet(nn.Module):
  """The grouped PyTorch AlexNet: the paper's towers as groups=2, conv1 padded by 2, LRN after
  the pooling, features/classifier Sequentials."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    self.classifier = nn.Sequential(
        nn.Dropout(),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )

  def forward(self, x):
    return self.classifier(torch.flatten(self.features(x), 1))


def caffe_alexnet_forward(blobs: dict, x_bgr: torch.Tensor) -> torch.Tensor:
  """bvlc_alexnet's deploy.prototxt in PyTorch: BGR 227x227 input, conv1 96 11x11/4 unpadded,
  LRN local_size 5, alpha 1e-4, beta 0.75, k 1 (Caffe divides alpha by local_size, as
  nn.LocalResponseNorm does) before the pooling, conv2/4/5 in two groups, Caffe's ceil-mode
  pooling (the same sizes here), fc6 on the NCHW flatten."""
  w = {k: [torch.from_numpy(np.asarray(b, np.float32)) for b in v] for k, v in blobs.items()}
  lrn = lambda y: F.local_response_norm(y, 5, alpha=1e-4, beta=0.75, k=1.0)
  pool = lambda y: F.max_pool2d(y, 3, 2, ceil_mode=True)
  y = F.relu(F.conv2d(x_bgr, *w["conv1"], stride=4))
  y = pool(lrn(y))
  y = F.relu(F.conv2d(y, *w["conv2"], padding=2, groups=2))
  y = pool(lrn(y))
  y = F.relu(F.conv2d(y, *w["conv3"], padding=1))
  y = F.relu(F.conv2d(y, *w["conv4"], padding=1, groups=2))
  y = pool(F.relu(F.conv2d(y, *w["conv5"], padding=1, groups=2)))
  y = torch.flatten(y, 1)
  y = F.relu(F.linear(y, w["fc6"][0].reshape(4096, -1), w["fc6"][1].reshape(-1)))
  y = F.relu(F.linear(y, w["fc7"][0].reshape(4096, -1), w["fc7"][1].reshape(-1)))
  return F.linear(y, w["fc8"][0].reshape(-1, 4096), w["fc8"][1].reshape(-1))


# ---- helpers -------------------------------------------------------------------------------
def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def _jpegs():
  out = []
  for photo in load_sample_images().images:  # china.jpg, flower.jpg: real photos
    b = io.BytesIO()
    Image.fromarray(photo).save(b, "JPEG", quality=90)
    out.append(b.getvalue())
  return out


def _torchvision_input(data: bytes) -> np.ndarray:
  """torchvision's Resize(256) + CenterCrop(224) + Normalize, written out (as
  tests/test_presets.py checks against the project's pipeline)."""
  from tests.test_presets import _torchvision_reference

  return _torchvision_reference(data).astype(np.float32)


def _restore(workdir):
  run = checkpoint.restore_run(workdir, train_state.restore_target())
  model = train_state.create_model(run.config, run.meta["num_classes"])
  return run, model


def _variant(model, **changes):
  """The module with some of its variant's fields changed (same parameter shapes)."""
  return model.clone(variant=dataclasses.replace(model.variant, **changes))


def _apply(model, params, nhwc):
  return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(nhwc)))


def _nothing_written(tmp_path, workdir):
  assert not os.path.exists(workdir)
  assert not [n for n in os.listdir(tmp_path) if "converting" in n]


# ---- torchvision ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchvision_pth(tmp_path_factory):
  torch.manual_seed(0)
  net = TorchvisionAlexNet().eval()
  path = str(tmp_path_factory.mktemp("tv") / "alexnet-random.pth")
  torch.save(net.state_dict(), path)
  return net, path


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_torchvision_weights_give_torchvisions_logits_on_real_photos(torchvision_pth, tmp_path):
  _check_torchvision_conversion(*torchvision_pth, tmp_path)


def test_real_torchvision_weights_give_its_logits(tmp_path):
  """The same, with torchvision.models.alexnet() itself where torchvision imports."""
  from tests.test_presets import real_torchvision

  torch.manual_seed(1)
  net = real_torchvision().models.alexnet(weights=None).eval()
  path = str(tmp_path / "real.pth")
  torch.save(net.state_dict(), path)
  _check_torchvision_conversion(net, path, tmp_path)


def _check_torchvision_conversion(net, path, tmp_path):
  workdir = str(tmp_path / "tv")
  out = pretrained.import_run("torchvision", path, workdir, torchvision.get_config())
  assert out["num_params"] == 61_100_840 and out["num_classes"] == 1000
  run, model = _restore(workdir)
  assert run.step == 0 and model.num_towers == 1
  x = np.stack([_torchvision_input(d) for d in _jpegs()])  # NHWC, torchvision's values
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got = _apply(model, run.variables["params"], x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  assert np.abs(want).max() > 0.01 and _rel(got[::-1], want) > 1e-2  # distinct photos
  # The run directory carries what evaluation and prediction need.
  names = run_dir.read_class_names(workdir)
  assert len(names) == 1000 and names[0] == "n01440764" and names == sorted(names)
  spec = run_dir.input_spec_from_config(workdir, run.config)
  np.testing.assert_allclose(spec.mean, 255 * np.asarray(torchvision.IMAGENET_MEAN_RGB), rtol=1e-6)
  np.testing.assert_allclose(spec.std, 255 * np.asarray(torchvision.IMAGENET_STD_RGB), rtol=1e-6)


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_analysis_predicts_with_a_converted_run_as_torchvision_does(torchvision_pth, tmp_path):
  """analysis.load_run on a converted run (no dataset, no dataset_stats.npz: it normalises
  with torchvision's mean and std) predicts the softmax of torchvision's own forward on
  torchvision's own preprocessing of the same JPEGs, within one grey level of resizing."""
  from alexnet_jax import analysis

  net, path = torchvision_pth
  workdir = str(tmp_path / "tv")
  pretrained.import_run("torchvision", path, workdir, torchvision.get_config())
  run = analysis.load_run(workdir)
  assert run.missing == () and run.class_names[0] == "n01440764"
  data = _jpegs()
  x = np.stack([_torchvision_input(d) for d in data])
  with torch.no_grad():
    want = torch.softmax(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), -1).numpy()
  got = run.predict(data, crops=1)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=2e-3 * want.max())


@pytest.mark.slow
def test_converted_run_evaluates_like_torchvision_on_a_photo_folder(torchvision_pth, tmp_path):
  """evaluate.py on the converted run (the project's own decode, resize, crop and
  normalisation) gives the loss torchvision's preprocessing and forward give."""
  from alexnet_jax import evaluate

  net, path = torchvision_pth
  jpegs = _jpegs()
  for i, data in enumerate(jpegs):
    os.makedirs(tmp_path / "photos" / "val" / f"c{i}")
    os.makedirs(tmp_path / "photos" / "train" / f"c{i}", exist_ok=True)
    for split in ("train", "val"):
      (tmp_path / "photos" / split / f"c{i}" / "a.jpg").write_bytes(data)
  config = torchvision.get_config()
  config.dataset.name = f"folder:{tmp_path / 'photos'}"
  config.eval_batch_size = 2
  workdir = str(tmp_path / "tv")
  pretrained.import_run("torchvision", path, workdir, config)
  m = evaluate.evaluate_checkpoint(workdir, crops=1)
  x = np.stack([_torchvision_input(d) for d in jpegs])
  with torch.no_grad():
    logp = F.log_softmax(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), -1).numpy()
  want = -np.mean([logp[i, i] for i in range(len(jpegs))])
  assert m["num_images"] == 2
  assert abs(m["loss"] - want) < 1e-3 * abs(want), (m["loss"], want)


# ---- the grouped layout --------------------------------------------------------------------
@pytest.mark.slow
def test_grouped_layout_round_trips_and_computes_pytorchs_function(tmp_path):
  torch.manual_seed(1)
  net = GroupedAlexNet(num_classes=10).eval()
  with torch.no_grad():  # big enough activations that both LRNs matter
    net.features[0].weight.mul_(3.0)
  src = str(tmp_path / "grouped.pth")
  torch.save(net.state_dict(), src)
  workdir = str(tmp_path / "grouped")
  pretrained.import_run("pytorch_grouped", src, workdir, pytorch_grouped.get_config())
  run, model = _restore(workdir)
  assert model.num_towers == 2 and run_dir.read_class_names(workdir) is None
  x = np.random.default_rng(0).normal(0, 50, (2, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got = _apply(model, run.variables["params"], x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  # The per-tower LRN of the paper would be another function: the test can tell them apart.
  per_tower = _variant(model, lrn_across_towers=False)
  assert _rel(_apply(per_tower, run.variables["params"], x), want) > 1e-4
  # Export: the identical state_dict, keys, shapes and values.
  dst = str(tmp_path / "back.pth")
  out = pretrained.export_run("pytorch_grouped", workdir, dst, pytorch_grouped.get_config())
  assert out["differences"] == []
  back = torch.load(dst, weights_only=True)
  sd = net.state_dict()
  assert list(back) == list(sd)
  for k in sd:
    assert torch.equal(back[k], sd[k]), k


@pytest.mark.slow
def test_the_papers_two_tower_net_exports_to_the_grouped_layout(tmp_path):
  """The paper's network (fc6 on the (H, W, C) flatten, per-tower LRN, cuda-convnet padding)
  exports to grouped state_dict keys; a PyTorch module with the paper's settings
  (benchmarks/torch_reference.py's) computes its logits from that file."""
  from benchmarks import torch_reference

  config = default.get_config()
  config.mesh.tower = 1
  model = train_state.create_model(config, 10)
  rng = np.random.default_rng(0)
  # He-scaled weights (activations neither fade nor blow up) and distinct biases, so that a
  # misplaced row or bias shows.
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: rng.normal(
          0,
          0.1
          if path[-1].key == "bias"
          else np.sqrt(2 / np.prod(a.shape[-4:-1] if a.ndim == 5 else a.shape[-2:-1])),
          a.shape,
      ).astype(np.float32),
      sharding.abstract_variables(model)["params"],
  )
  workdir = str(tmp_path / "paper")
  pretrained.write_run(workdir, config, jax.device_get(params))
  dst = str(tmp_path / "paper.pth")
  out = pretrained.export_run("pytorch_grouped", workdir, dst, pytorch_grouped.get_config())
  assert out["differences"] == [
      "model.variant: paper -> pytorch_grouped (conv1_padding (0, 3) -> (2, 2), "
      "lrn_alpha_per_term True -> False, lrn_after_pool False -> True, "
      "lrn_across_towers False -> True, fc6_input_order hwc -> chw)"
  ]
  sd = torch.load(dst, weights_only=True)
  names = dict(zip(pretrained.FORMATS["pytorch_grouped"].keys.values(), pretrained.LAYERS))
  net = torch_reference.AlexNetTorch(num_classes=10).eval()
  net.load_state_dict(
      {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in sd.items()}
  )
  x = np.random.default_rng(0).normal(0, 50, (2, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got = _apply(model, params, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  with pytest.raises(pretrained.ConversionError, match="2-tower network.*--to=pytorch_grouped"):
    pretrained.export_run("torchvision", workdir, dst, torchvision.get_config())


@pytest.mark.slow
def test_torchvision_export_round_trips(torchvision_pth, tmp_path):
  net, path = torchvision_pth
  workdir = str(tmp_path / "tv")
  pretrained.import_run("torchvision", path, workdir, torchvision.get_config())
  dst = str(tmp_path / "back.pth")
  pretrained.export_run("torchvision", workdir, dst, torchvision.get_config())
  back, sd = torch.load(dst, weights_only=True), net.state_dict()
  assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


# ---- Caffe ---------------------------------------------------------------------------------
def caffe_messages():
  """Caffe's NetParameter, LayerParameter, V1LayerParameter, BlobProto and BlobShape (the
  fields used, with caffe.proto's numbers), built with the protobuf runtime."""
  T = descriptor_pb2.FieldDescriptorProto
  opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
  fdp = descriptor_pb2.FileDescriptorProto(
      name="caffe_subset.proto", package="caffe", syntax="proto2"
  )

  def message(name, *fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
      f = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        f.type_name = type_name
      if label == rep and ftype in (T.TYPE_FLOAT, T.TYPE_DOUBLE, T.TYPE_INT64):
        f.options.packed = True  # [packed = true] in caffe.proto
    return m

  message("BlobShape", ("dim", 1, T.TYPE_INT64, rep, None))
  message(
      "BlobProto",
      ("num", 1, T.TYPE_INT64, opt, None),
      ("channels", 2, T.TYPE_INT64, opt, None),
      ("height", 3, T.TYPE_INT64, opt, None),
      ("width", 4, T.TYPE_INT64, opt, None),
      ("data", 5, T.TYPE_FLOAT, rep, None),
      ("diff", 6, T.TYPE_FLOAT, rep, None),
      ("shape", 7, T.TYPE_MESSAGE, opt, ".caffe.BlobShape"),
      ("double_data", 8, T.TYPE_DOUBLE, rep, None),
  )
  message(
      "LayerParameter",
      ("name", 1, T.TYPE_STRING, opt, None),
      ("type", 2, T.TYPE_STRING, opt, None),
      ("bottom", 3, T.TYPE_STRING, rep, None),
      ("top", 4, T.TYPE_STRING, rep, None),
      ("blobs", 7, T.TYPE_MESSAGE, rep, ".caffe.BlobProto"),
  )
  v1 = message(
      "V1LayerParameter",
      ("bottom", 2, T.TYPE_STRING, rep, None),
      ("top", 3, T.TYPE_STRING, rep, None),
      ("name", 4, T.TYPE_STRING, opt, None),
      ("type", 5, T.TYPE_ENUM, opt, ".caffe.V1LayerParameter.LayerType"),
      ("blobs", 6, T.TYPE_MESSAGE, rep, ".caffe.BlobProto"),
  )
  enum = v1.enum_type.add(name="LayerType")
  for name, number in [("NONE", 0), ("CONVOLUTION", 4), ("DATA", 5), ("DROPOUT", 6)]:
    enum.value.add(name=name, number=number)
  for name, number in [("INNER_PRODUCT", 14), ("LRN", 15), ("POOLING", 17), ("RELU", 18)]:
    enum.value.add(name=name, number=number)
  message(
      "NetParameter",
      ("name", 1, T.TYPE_STRING, opt, None),
      ("layers", 2, T.TYPE_MESSAGE, rep, ".caffe.V1LayerParameter"),
      ("layer", 100, T.TYPE_MESSAGE, rep, ".caffe.LayerParameter"),
  )
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {
      name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
      for name in ("BlobProto", "LayerParameter", "V1LayerParameter", "NetParameter")
  }


# bvlc_alexnet's weight blobs: Caffe's shapes, (num, channels, height, width) for convs.
CAFFE_SHAPES = {
    "conv1": (96, 3, 11, 11),
    "conv2": (256, 48, 5, 5),
    "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3),
    "conv5": (256, 192, 3, 3),
    "fc6": (4096, 9216),
    "fc7": (4096, 4096),
    "fc8": (1000, 4096),
}
# The deploy net's layers in order; those without blobs are written too, as Caffe does.
CAFFE_LAYERS = [
    ("data", "DATA"),
    ("conv1", "CONVOLUTION"),
    ("relu1", "RELU"),
    ("norm1", "LRN"),
    ("pool1", "POOLING"),
    ("conv2", "CONVOLUTION"),
    ("relu2", "RELU"),
    ("norm2", "LRN"),
    ("pool2", "POOLING"),
    ("conv3", "CONVOLUTION"),
    ("relu3", "RELU"),
    ("conv4", "CONVOLUTION"),
    ("relu4", "RELU"),
    ("conv5", "CONVOLUTION"),
    ("relu5", "RELU"),
    ("pool5", "POOLING"),
    ("fc6", "INNER_PRODUCT"),
    ("relu6", "RELU"),
    ("drop6", "DROPOUT"),
    ("fc7", "INNER_PRODUCT"),
    ("relu7", "RELU"),
    ("drop7", "DROPOUT"),
    ("fc8", "INNER_PRODUCT"),
]
V1_TYPE_NAMES = {
    "DATA": "Data",
    "CONVOLUTION": "Convolution",
    "RELU": "ReLU",
    "LRN": "LRN",
    "POOLING": "Pooling",
    "INNER_PRODUCT": "InnerProduct",
    "DROPOUT": "Dropout",
}


def _fill(blob, array, v1: bool):
  a = np.asarray(array, np.float32)
  if v1:  # the old 4-D shape: fc weights 1 x 1 x out x in, biases 1 x 1 x 1 x n
    shape = (1,) * (4 - a.ndim) + a.shape
    blob.num, blob.channels, blob.height, blob.width = shape
  else:
    blob.shape.dim.extend(a.shape)
  flat = a.ravel()
  if flat.size < 1 << 20:
    blob.data.extend(flat.tolist())
  else:
    # Millions of floats: extend() takes ~5 s per fc6, so the runtime parses them from their
    # packed encoding (field 5, length-delimited) instead; checked value for value.
    n = 4 * flat.size
    size = bytearray()
    while True:
      size.append((n & 0x7F) | (0x80 if n >> 7 else 0))
      n >>= 7
      if not n:
        break
    blob.MergeFromString(bytes([5 << 3 | 2]) + bytes(size) + flat.astype("<f4").tobytes())
    assert len(blob.data) == flat.size and blob.data[-1] == flat[-1] and blob.data[1] == flat[1]


def write_caffemodel(path, blobs: dict, v1: bool, drop: tuple = ()):
  msgs = caffe_messages()
  net = msgs["NetParameter"](name="CaffeNet")
  for name, kind in CAFFE_LAYERS:
    if name in drop:
      continue
    if v1:
      layer = net.layers.add(name=name, type=msgs["V1LayerParameter"].LayerType.Value(kind))
    else:
      layer = net.layer.add(name=name, type=V1_TYPE_NAMES[kind])
    for array in blobs.get(name, ()):
      _fill(layer.blobs.add(), array, v1)
  with open(path, "wb") as f:
    f.write(net.SerializeToString())


@pytest.fixture(scope="module")
def caffe_blobs():
  rng = np.random.default_rng(0)
  blobs = {}
  for name, shape in CAFFE_SHAPES.items():
    fan_in = int(np.prod(shape[1:]))
    w = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)  # He: nothing fades
    blobs[name] = (w, rng.normal(0, 0.1, shape[0]).astype(np.float32))
  return blobs


@pytest.mark.parametrize(
    "v1",
    [pytest.param(False, marks=pytest.mark.slow), pytest.param(True, marks=pytest.mark.slow)],
    ids=["layer", "V1 layers"],
)
def test_caffemodel_gives_bvlc_alexnets_logits(caffe_blobs, tmp_path, v1):
  src = str(tmp_path / "bvlc_alexnet.caffemodel")
  write_caffemodel(src, caffe_blobs, v1=v1)
  mean_bgr = np.random.default_rng(1).uniform(90, 130, (1, 3, 256, 256)).astype(np.float32)
  mean_file = str(tmp_path / "mean.binaryproto")
  blob = caffe_messages()["BlobProto"]()
  _fill(blob, mean_bgr, v1=True)  # Caffe's mean file: one BlobProto, 1 x 3 x 256 x 256
  with open(mean_file, "wb") as f:
    f.write(blob.SerializeToString())
  workdir = str(tmp_path / "caffe")
  out = pretrained.import_run("caffe", src, workdir, caffe.get_config(), mean_file=mean_file)
  assert out["num_params"] == 60_965_224
  run, model = _restore(workdir)
  assert run.config.input.mean == "run" and run.config.input.channel_order == "bgr"
  # The project's preprocessing of real photos (RGB uint8 256x256): the mean image, BGR, 227.
  images = np.stack(
      [ip.resize_and_center_crop(p, rule="warp").numpy() for p in load_sample_images().images]
  )
  spec = run_dir.input_spec_from_config(workdir, run.config)
  np.testing.assert_array_equal(spec.mean, mean_bgr[0, ::-1].transpose(1, 2, 0))
  assert (spec.crop_size, spec.channel_order) == (227, "bgr")
  views = augment.eval_views(images, spec, crops=1)[:, 0]
  got = _apply(model, run.variables["params"], views)
  # Caffe's side, by hand: subtract the BGR mean image, crop the central 227 (offset 14).
  x = images[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) - mean_bgr
  x = x[:, :, 14:241, 14:241]
  with torch.no_grad():
    want = caffe_alexnet_forward(caffe_blobs, torch.from_numpy(x.copy())).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  # LRN matters here, and its window crosses the towers' edge, as Caffe's does.
  per_tower = _variant(model, lrn_across_towers=False)
  assert _rel(_apply(per_tower, run.variables["params"], views), want) > 1e-4
  per_term = _variant(model, lrn_alpha_per_term=True)
  assert _rel(_apply(per_term, run.variables["params"], views), want) > 1e-3


def test_caffe_blob_reader_by_hand():
  """The wire format written byte by byte: a BlobProto with shape {dim: [2, 3]} (packed
  varints) and packed floats, and one with the old num/channels/height/width."""
  floats = np.arange(6, dtype="<f4")
  shape = bytes([0x0A, 2, 2, 3])  # BlobShape: field 1, length 2, varints 2 and 3
  new = bytes([0x3A, len(shape)]) + shape + bytes([0x2A, 24]) + floats.tobytes()
  np.testing.assert_array_equal(pretrained.caffemodel.parse_blob(new), floats.reshape(2, 3))
  old = bytes([0x08, 1, 0x10, 1, 0x18, 2, 0x20, 3, 0x2A, 24]) + floats.tobytes()
  assert pretrained.caffemodel.parse_blob(old).shape == (1, 1, 2, 3)
  with pytest.raises(pretrained.caffemodel.CaffeFormatError, match="truncated"):
    pretrained.caffemodel.parse_blob(new[:-5])


# ---- bad input -----------------------------------------------------------------------------
def test_truncated_pth_writes_nothing(torchvision_pth, tmp_path):
  _, path = torchvision_pth
  bad = tmp_path / "cut.pth"
  bad.write_bytes(open(path, "rb").read()[:100_000])
  workdir = str(tmp_path / "w")
  with pytest.raises(pretrained.ConversionError, match="cut.pth.*truncated"):
    pretrained.import_run("torchvision", str(bad), workdir, torchvision.get_config())
  _nothing_written(tmp_path, workdir)


def test_another_architecture_names_keys_and_shapes(torchvision_pth, tmp_path):
  _, path = torchvision_pth
  workdir = str(tmp_path / "w")
  with pytest.raises(pretrained.ConversionError) as e:
    pretrained.import_run("pytorch_grouped", path, workdir, pytorch_grouped.get_config())
  msg = str(e.value)
  assert "missing keys features.12.bias (256,), features.12.weight (256, 192, 3, 3)" in msg
  assert "features.3.weight (192, 64, 5, 5)" in msg and "--from=torchvision" in msg
  # Grouped weights under torchvision's keys: the shapes are named.
  sd = GroupedAlexNet().state_dict()
  keys = pretrained.FORMATS
  renamed = {
      f"{keys['torchvision'].keys[n]}.{s}": sd[f"{keys['pytorch_grouped'].keys[n]}.{s}"]
      for n in pretrained.LAYERS
      for s in ("weight", "bias")
  }
  bad = str(tmp_path / "renamed.pth")
  torch.save(renamed, bad)
  with pytest.raises(
      pretrained.ConversionError,
      match=r"features.0.weight is \(96, 3, 11, 11\), expected \(64, 3, 11, 11\)",
  ):
    pretrained.import_run("torchvision", bad, workdir, torchvision.get_config())
  _nothing_written(tmp_path, workdir)


def test_missing_and_extra_keys_are_named(torchvision_pth, tmp_path):
  net, _ = torchvision_pth
  sd = dict(net.state_dict())
  del sd["classifier.6.bias"]
  sd["classifier.7.weight"] = torch.zeros(3, 4)
  bad = str(tmp_path / "keys.pth")
  torch.save(sd, bad)
  workdir = str(tmp_path / "w")
  with pytest.raises(
      pretrained.ConversionError,
      match=r"missing keys classifier.6.bias \(1000,\); unexpected keys classifier.7.weight \(3, 4\)",
  ):
    pretrained.import_run("torchvision", bad, workdir, torchvision.get_config())
  _nothing_written(tmp_path, workdir)


def test_bad_caffemodels_are_named(caffe_blobs, tmp_path):
  workdir = str(tmp_path / "w")
  src = str(tmp_path / "no_fc8.caffemodel")
  small = {k: v for k, v in caffe_blobs.items() if k not in ("fc6", "fc7", "fc8")}
  write_caffemodel(src, small, v1=False, drop=("fc6", "fc7", "fc8"))
  with pytest.raises(
      pretrained.ConversionError, match=r"no layer with weights named \['fc6', 'fc7', 'fc8'\]"
  ):
    pretrained.import_run("caffe", src, workdir, caffe.get_config())
  cut = tmp_path / "cut.caffemodel"
  cut.write_bytes(open(src, "rb").read()[:-1000])
  with pytest.raises(pretrained.ConversionError, match="cannot read .*cut.caffemodel.*truncated"):
    pretrained.import_run("caffe", str(cut), workdir, caffe.get_config())
  _nothing_written(tmp_path, workdir)


def test_missing_file_says_where_each_framework_publishes_it(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    pretrained.import_run(
        "torchvision", str(tmp_path / "x.pth"), str(tmp_path / "w"), torchvision.get_config()
    )
  msg = str(e.value)
  assert "alexnet-owt-7be5be79.pth" in msg and "AlexNet_Weights" in msg
  assert "bvlc_alexnet.caffemodel" in msg and "Nothing is downloaded" in msg


def test_without_torch_the_error_says_what_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
  src = tmp_path / "x.pth"
  src.write_bytes(b"0")
  with pytest.raises(pretrained.ConversionError, match="needs torch: pip install torch"):
    pretrained.import_run("torchvision", str(src), str(tmp_path / "w"), torchvision.get_config())


def test_existing_run_directory_is_not_overwritten(torchvision_pth, tmp_path):
  _, path = torchvision_pth
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "config.json").write_text("{}")
  with pytest.raises(FileExistsError, match="not empty"):
    pretrained.import_run("torchvision", path, str(tmp_path / "w"), torchvision.get_config())
  assert os.listdir(tmp_path / "w") == ["config.json"]


@pytest.mark.slow
def test_command_line(torchvision_pth, tmp_path):
  _, path = torchvision_pth
  names = tmp_path / "names.txt"
  names.write_text("".join(f"class {i}\n" for i in range(1000)))
  workdir = str(tmp_path / "cli")
  cmd = [sys.executable, "-m", "alexnet_jax.convert", "--from=torchvision", f"--src={path}"]
  # In a forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py).
  r = forkserver.run(
      cmd + [f"--workdir={workdir}", f"--class_names={names}"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "61,100,840 parameters, 1000 classes" in r.stdout
  assert run_dir.read_class_names(workdir)[999] == "class 999"
  r = forkserver.run(
      cmd[:3] + ["--from=caffe", f"--src={tmp_path / 'none.caffemodel'}", "--workdir=x"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert r.returncode != 0 and "dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel" in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("FATAL:")


# ---- hostile input: lengths, dimensions and sizes checked before they cost memory -----------
def _varint(v):
  out = bytearray()
  while True:
    b, v = v & 0x7F, v >> 7
    out.append(b | (0x80 if v else 0))
    if not v:
      return bytes(out)


def _ld(number, payload):
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@pytest.mark.parametrize(
    "data, says",
    [
        (_varint(100 << 3 | 2) + _varint(2**32) + b"\0" * 12, "claims 4,294,967,296 bytes, 12 are"),
        (_varint(100 << 3 | 2) + _varint(2**62) + b"abc", "claims 4,611,686,018,427,387,904 bytes"),
        (
            _ld(100, _ld(7, _ld(7, _varint(8) + _varint(2**32) + _varint(8) + _varint(2**32)))),
            "above Caffe's limit",
        ),
        (
            _ld(100, _ld(7, _varint(8) + _varint(2**32) + _varint(16) + _varint(2**32))),
            "above Caffe's limit",
        ),
        (
            _ld(100, _ld(7, _ld(7, _varint(8) + _varint(2**32) + _varint(8) + _varint(0)))),
            "above Caffe's limit",
        ),
        (_ld(100, _ld(7, _varint(5 << 3) + _varint(3))), "a numeric array field of wire type 0"),
        (_ld(100, _ld(7, _ld(7, (_varint(8) + _varint(1)) * 40))), "more than 32 axes"),
    ],
    ids=[
        "len 2^32",
        "len 2^62",
        "dims 2^32",
        "legacy 2^32",
        "dims 2^32 x 0",
        "data varint",
        "axes",
    ],
)
def test_a_hostile_caffemodel_of_a_few_bytes_is_one_line_and_allocates_nothing(
    tmp_path, data, says
):
  """The issue's probes and their neighbours: a few bytes claiming gigabytes."""
  from tests import fuzz

  assert len(data) < 100
  e = fuzz.check(
      lambda: pretrained.caffemodel.read_net(data),
      pretrained.caffemodel.CaffeFormatError,
      max_peak=1 << 20,
  )
  assert says in str(e), str(e)
  src = tmp_path / "hostile.caffemodel"
  src.write_bytes(data)
  with pytest.raises(pretrained.ConversionError) as c:
    pretrained.import_run("caffe", str(src), str(tmp_path / "w"), caffe.get_config())
  assert "\n" not in str(c.value) and says in str(c.value)
  assert not os.path.exists(tmp_path / "w")


def test_a_caffemodel_beyond_a_plausible_size_or_a_fifo_is_refused_before_reading(tmp_path):
  big = tmp_path / "big.caffemodel"
  with open(big, "wb") as f:
    f.truncate(pretrained.formats.MAX_CAFFEMODEL_BYTES + 1)  # sparse
  with pytest.raises(
      pretrained.ConversionError, match=r"is 1,073,741,825 bytes: more than a .caffemodel can be"
  ):
    pretrained.import_run("caffe", str(big), str(tmp_path / "w"), caffe.get_config())
  fifo = tmp_path / "fifo.caffemodel"
  os.mkfifo(fifo)
  with pytest.raises(
      pretrained.ConversionError, match=r"is a FIFO \(named pipe\), not a regular file"
  ):
    pretrained.import_run("caffe", str(fifo), str(tmp_path / "w"), caffe.get_config())


def _small_net() -> bytes:
  """A NetParameter with a current layer (BlobShape dims), a V1 layer (the old 4-D shape) and
  one of double values: small, valid, each path of the reader."""
  msgs = caffe_messages()
  net = msgs["NetParameter"](name="CaffeNet")
  conv = net.layer.add(name="conv1", type="Convolution")
  w = conv.blobs.add()
  w.shape.dim.extend([2, 1, 2, 2])
  w.data.extend(np.linspace(-1, 1, 8).tolist())
  b = conv.blobs.add()
  b.shape.dim.extend([2])
  b.double_data.extend([0.5, -0.25])
  fc = net.layers.add(name="fc8", type=msgs["V1LayerParameter"].LayerType.Value("INNER_PRODUCT"))
  v = fc.blobs.add()
  v.num, v.channels, v.height, v.width = 1, 1, 3, 2
  v.data.extend(np.arange(6, dtype=np.float32).tolist())
  return net.SerializeToString()


def _protobuf_reading(data: bytes):
  """The protobuf runtime's reading of `data`, as read_net gives it (layer name, blobs as
  (shape, float32 values)), sorted: the reference; None where protobuf refuses the bytes."""
  from google.protobuf.message import DecodeError

  msgs = caffe_messages()
  net = msgs["NetParameter"]()
  try:
    net.ParseFromString(data)
    layers = list(net.layer) + list(net.layers)
    out = []
    for layer in layers:
      blobs = []
      for blob in layer.blobs:
        with np.errstate(over="ignore"):
          values = np.asarray(blob.data or blob.double_data, np.float64).astype(np.float32)
        if blob.HasField("shape"):
          shape = tuple(blob.shape.dim)
        else:
          shape = (blob.num, blob.channels, blob.height, blob.width)
          while len(shape) > 1 and shape[0] == 0:
            shape = shape[1:]
          if shape == (0,):
            shape = (values.size,)
        blobs.append((shape, values.view(np.uint32).tobytes()))
      if not isinstance(layer.name, str):  # not UTF-8: protobuf keeps the bytes
        return None
      out.append((layer.name, blobs))
    return sorted(out)
  except (DecodeError, UnicodeDecodeError, ValueError):
    return None


@pytest.mark.slow
def test_fuzz_caffemodel_reader_ends_in_its_error_or_protobufs_reading():
  """Mutations of a valid .caffemodel: read_net raises CaffeFormatError (one line) or reads
  what the protobuf runtime reads from the same bytes, within a bounded memory peak."""
  import hypothesis

  from tests import fuzz

  valid = _small_net()
  assert _ours(valid) == _protobuf_reading(valid) is not None

  @fuzz.settings(examples=600)
  @hypothesis.given(data=fuzz.mutated(valid))
  def run(data):
    out = fuzz.check(
        lambda: _ours(data),
        pretrained.caffemodel.CaffeFormatError,
        max_peak=(1 << 20) + 50 * len(data),
    )
    if not isinstance(out, Exception):
      ref = _protobuf_reading(data)
      if ref is not None and "\ufffd" not in repr(out):
        assert out == ref

  run()


def _ours(data):
  _, layers = pretrained.caffemodel.read_net(data)
  out = []
  for layer in layers:
    blobs = [
        (tuple(b.shape), np.asarray(b, np.float32).view(np.uint32).tobytes()) for b in layer.blobs
    ]
    out.append((layer.name, blobs))
  return sorted(out)
