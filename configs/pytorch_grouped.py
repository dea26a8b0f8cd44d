"""The grouped AlexNet that PyTorch ports of the paper use: the paper's two towers as
`groups=2` in conv2, conv4 and conv5 (96-256-384-384-256 kernels, 60,965,224 parameters),
`features`/`classifier` Sequentials, conv1 padded by 2, LRN (PyTorch's
nn.LocalResponseNorm(5, 1e-4, 0.75, k=2): alpha/n over all channels) after the pooling,
fc6 reading the NCHW flatten, fed as torchvision feeds its nets (RGB, Resize(256) +
CenterCrop(224), ImageNet mean and std). The paper's own network (configs/paper.py) exports to
this layout's state_dict too (same shapes).

  python -m alexnet_jax.convert --from=pytorch_grouped --src=alexnet_grouped.pth \
      --workdir=runs/grouped
  python -m alexnet_jax.main --config=configs/pytorch_grouped.py --workdir=runs/grouped_ft \
      --config.init_from=runs/grouped --config.dataset.name=folder:$HOME/photos
  python -m alexnet_jax.convert --to=pytorch_grouped --workdir=runs/paper --dst=paper.pth
"""

from configs import default, torchvision


def get_config():
  c = default.get_config()
  c.mesh.tower = 1
  c.input.crop_size = 224
  c.model.conv1_padding = (2, 2)
  c.model.lrn_after_pool = True
  c.model.lrn_across_towers = True
  c.model.lrn_alpha_per_term = False
  c.model.lrn_k = 2.0
  c.model.fc6_input_order = "chw"
  torchvision.set_torchvision_input(c)
  c.optimizer.learning_rate = 0.001
  c.optimizer.schedule = "constant"
  c.eval_crops = 1
  return c
