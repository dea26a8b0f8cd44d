"""FLOP counts of the network, for the benchmark's MFU (model FLOPs utilisation)."""


def forward_macs(model) -> int:
  """Multiply-adds of one forward pass at 224x224: 724.4M for the paper's net (its layer
  table is in docs/paper.md).

  model: an alexnet_jax.model.AlexNet (its layer_widths(), num_towers, num_classes). conv2,
  conv4 and conv5 read only their own tower's channels, conv1 and conv3 all of them.
  """
  (c1, c2, c3, c4, c5), (f6, f7) = model.layer_widths()
  t = model.num_towers
  convs = [
      (55, 11, 3, c1),
      (27, 5, c1 // t, c2),
      (13, 3, c2, c3),
      (13, 3, c3 // t, c4),
      (13, 3, c4 // t, c5),
  ]
  macs = sum(side * side * k * k * cin * cout for side, k, cin, cout in convs)
  return macs + 6 * 6 * c5 * f6 + f6 * f7 + f7 * model.num_classes


def train_flops_per_image(model) -> float:
  """Forward + backward ~ 3 x forward, 2 FLOPs per multiply-add (4.35e9 for the paper's
  net): the backward pass computes two products per forward one, the gradients with
  respect to the inputs and to the weights."""
  return 3 * 2 * forward_macs(model)
