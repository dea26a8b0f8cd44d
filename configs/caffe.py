"""Caffe's bvlc_alexnet (models/bvlc_alexnet in Caffe's model zoo: bvlc_alexnet.caffemodel):
the paper's two towers as `group: 2` in conv2, conv4 and conv5 (60,965,224 parameters), 227x227
BGR input with no conv1 padding, LRN k=1 with alpha/n over all 96 (or 256) channels before
the pooling, fc6 reading the NCHW flatten; inputs in 0..255 minus the mean (its
ilsvrc_2012_mean.binaryproto image, or that image's mean pixel), images warped to 256x256.

  python -m alexnet_jax.convert --from=caffe --src=bvlc_alexnet.caffemodel \
      --mean_file=ilsvrc_2012_mean.binaryproto --workdir=runs/caffe
  python -m alexnet_jax.evaluate --workdir=runs/caffe --crops=10
  python -m alexnet_jax.main --config=configs/caffe.py --workdir=runs/caffe_ft \
      --config.init_from=runs/caffe --config.dataset.name=folder:$HOME/photos
"""

from configs import default

# The mean pixel of Caffe's ilsvrc_2012_mean image (B 104.01, G 116.67, R 122.68), in RGB.
CAFFE_MEAN_RGB = (122.67891434, 116.66876762, 104.00698793)


def get_config():
  c = default.get_config()
  c.mesh.tower = 1  # both towers on each device; 2 splits them as the paper did
  c.input.crop_size = 227
  c.model.conv1_padding = (0, 0)
  c.model.lrn_k = 1.0
  c.model.lrn_alpha_per_term = False
  c.model.lrn_across_towers = True
  c.model.fc6_input_order = "chw"
  c.dataset.resize = "warp"
  c.input.mean = "pixel"  # alexnet_jax.convert --mean_file sets 'run' (the mean image)
  c.input.mean_rgb = CAFFE_MEAN_RGB
  c.input.channel_order = "bgr"
  c.optimizer.learning_rate = 0.001
  c.optimizer.schedule = "constant"
  return c
