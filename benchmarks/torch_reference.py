"""The same two-tower AlexNet in PyTorch: the contender of `python -m benchmarks.bench`.

Benchmark-only (PyTorch is in requirements-bench.txt, not requirements.txt). The network is
the paper's grouped model written the way a PyTorch user would write it: `groups=2`
convolutions for the layers that read only their own tower (conv2, conv4, conv5), plain ones
for conv1 (both towers read the image) and conv3 (cross-tower), the paper's LRN applied to
each tower's channels separately, 3x3/2 max pooling, dropout 0.5 on fc6 and fc7, and SGD with
momentum 0.9 and weight decay 5e-4. `load_jax_params` copies the JAX model's parameters so the
two compute the same function (tests/test_bench.py checks the forward to 1e-4).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet_jax import model as model_lib


def local_response_norm(
    x: torch.Tensor,
    towers: int,
    *,
    size: int = 5,
    k: float = 2.0,
    alpha: float = 1e-4,
    beta: float = 0.75,
) -> torch.Tensor:
  """The paper's LRN (alpha per squared term) within each tower's channels of NCHW x.

  b = a / (k + alpha * sum of a^2 over the `size` channels around it, in its tower)^beta,
  written as a sum of shifted slices of the zero-padded squares, per tower. This ran the
  train step 1.17x faster than F.local_response_norm (an avg_pool3d over channels, which
  also divides alpha by `size`) on a 2-core x86 VM, so the contender is not slowed by its
  LRN. The constants are the paper's (docs/paper.md).
  """
  n, c, h, w = x.shape
  ct = c // towers
  xt = x.reshape(n, towers, ct, h, w)
  sq = F.pad(xt * xt, (0, 0, 0, 0, size // 2, size // 2))  # zero channels at tower edges
  window = sum(sq[:, :, i : i + ct] for i in range(size))
  return (xt * (k + alpha * window).pow(-beta)).reshape(n, c, h, w)


class AlexNetTorch(nn.Module):
  """PyTorch twin of `alexnet_jax.model.AlexNet(num_classes, width)` (paper settings)."""

  def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout_rate: float = 0.5):
    super().__init__()
    ref = model_lib.AlexNet(num_classes=num_classes, width=width)
    (c1, c2, c3, c4, c5), (f6, f7) = ref.layer_widths()
    self.towers = t = ref.num_towers
    self.conv1 = nn.Conv2d(3, c1, 11, stride=4)  # pads (0, 3) by hand
    self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=t)
    self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)  # cross-tower
    self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=t)
    self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=t)
    self.fc6 = nn.Linear(c5 * 6 * 6, f6)
    self.fc7 = nn.Linear(f6, f7)
    self.fc8 = nn.Linear(f7, num_classes)
    self.dropout = nn.Dropout(dropout_rate)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: float32 NCHW [B, 3, 224, 224] -> logits [B, num_classes]."""
    t = self.towers
    x = F.relu(self.conv1(F.pad(x, (0, 3, 0, 3))))
    x = F.max_pool2d(local_response_norm(x, t), 3, 2)
    x = F.relu(self.conv2(x))
    x = F.max_pool2d(local_response_norm(x, t), 3, 2)
    x = F.relu(self.conv3(x))
    x = F.relu(self.conv4(x))
    x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2)
    x = torch.flatten(x, 1)
    x = self.dropout(F.relu(self.fc6(x)))
    x = self.dropout(F.relu(self.fc7(x)))
    return self.fc8(x)


def _towers_to_out(kernel: np.ndarray) -> np.ndarray:
  """[T, ..., out/T] tower kernels -> [..., out] (tower 0's outputs first)."""
  return np.concatenate(list(np.asarray(kernel)), axis=-1)


def load_jax_params(net: AlexNetTorch, params) -> AlexNetTorch:
  """Copy a JAX AlexNet parameter tree ({conv1..fc8: {kernel, bias}}) into `net`.

  conv: [T, kh, kw, cin, cout/T] -> OIHW [cout, cin, kh, kw] (groups=2 convs take the
  tower's cin). fc6: JAX flattens pool5 as (H, W, C), PyTorch as (C, H, W), so its input
  rows are permuted.
  """
  p = {
      name: {k: np.asarray(v, np.float32) for k, v in layer.items()}
      for name, layer in params.items()
  }
  sd = {}
  for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
    w = _towers_to_out(p[name]["kernel"])  # [kh, kw, cin, cout]
    sd[f"{name}.weight"] = w.transpose(3, 2, 0, 1)
    sd[f"{name}.bias"] = p[name]["bias"].reshape(-1)
  w6 = _towers_to_out(p["fc6"]["kernel"])  # [(h, w, c), out]
  c5 = net.conv5.out_channels
  side = int(round((w6.shape[0] // c5) ** 0.5))
  w6 = w6.reshape(side, side, c5, -1).transpose(2, 0, 1, 3).reshape(w6.shape[0], -1)
  sd["fc6.weight"] = w6.T
  sd["fc6.bias"] = p["fc6"]["bias"].reshape(-1)
  sd["fc7.weight"] = _towers_to_out(p["fc7"]["kernel"]).T
  sd["fc7.bias"] = p["fc7"]["bias"].reshape(-1)
  sd["fc8.weight"] = p["fc8"]["kernel"].T
  sd["fc8.bias"] = p["fc8"]["bias"]
  net.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()})
  return net


def make_optimizer(net: nn.Module, learning_rate: float = 0.01) -> torch.optim.Optimizer:
  """The paper's §5 (docs/paper.md): SGD, momentum 0.9, weight decay 5e-4, in PyTorch's
  form of the rule (a velocity in gradient units: the paper's while the rate is constant)."""
  return torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=0.9, weight_decay=5e-4)


def make_train_step(net: nn.Module, optimizer: torch.optim.Optimizer):
  """(images NCHW float32, labels int64) -> loss: one SGD step (forward, backward, update)."""

  def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(images), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()

  net.train()
  return step
