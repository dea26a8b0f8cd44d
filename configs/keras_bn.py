r"""The BatchNorm AlexNet of a widely copied Keras tutorial (trained there on Oxford-17 on a
CPU): one tower of "valid" convolutions 96-256-384-384-256 (conv1 11x11 stride 4, conv2
11x11, conv3-conv5 3x3), 2x2/2 max-pooling after conv1, conv2 and conv5, no LRN,
BatchNorm after every block (Keras's momentum 0.99, epsilon 1e-3), fc6 and fc7 of 4096 and a
hidden fc8 of 1000, each with ReLU, dropout 0.4 and BatchNorm, then the class layer
(28,096,769 parameters and BatchNorm statistics with 17 classes: Keras's count_params()).
Trained as the tutorial trains it: Adam with Keras's defaults, categorical cross-entropy,
batch 64, Glorot-uniform initialisation; its inputs are the whole images resized to 224x224
and scaled to [0, 1] (no mean, no crop, no flip, no PCA lighting). The resize takes two
steps here: every dataset is stored warped to 256x256 (dataset.resize='warp'), and the
device resizes that to 224 (input.view='resize'), within about 1% of a direct resize's
pixels. Evaluation uses BatchNorm's running averages, which follow the training statistics
slowly (momentum 0.99): a run of fewer than a few hundred steps evaluates poorly however low
its training loss.

Train on Oxford-17 (17flowers.tgz and datasplits.mat from
https://www.robots.ox.ac.uk/~vgg/data/flowers/17/ in one directory; the test split scored by
evaluate --split=test), or on a folder of photos (one subfolder per class):

  python -m alexnet_jax.main --config=configs/keras_bn.py --workdir=runs/keras_bn \
      --config.dataset.name=oxford17:$HOME/flowers17
  python -m alexnet_jax.evaluate --workdir=runs/keras_bn --split=test
  python -m alexnet_jax.main --config=configs/keras_bn.py --workdir=runs/keras_bn_photos \
      --config.dataset.name=folder:/path/to/photos

At demo scale (a quarter-width network, 300 steps of 32: about 1.5 minutes on 2 CPU cores),
on a folder of crops of the photos that ship with scikit-learn and scikit-image:

  python -m benchmarks.photo_classes /tmp/photo_classes
  python -m alexnet_jax.main --config=configs/keras_bn.py:demo --workdir=runs/keras_bn_demo \
      --config.dataset.name=folder:/tmp/photo_classes

Keras weights in and out (the tutorial's .keras or .weights.h5):

  python -m alexnet_jax.convert --from=keras --src=alexnet.keras --workdir=runs/keras
  python -m alexnet_jax.convert --to=keras --workdir=runs/keras --dst=alexnet.weights.h5
"""

from configs import default


def set_keras_input(c):
  """The tutorial's inputs: the whole image resized to 224x224 (warped to 256x256 by the data
  layer, then resized to 224), RGB scaled to [0, 1]; no augmentation, one test view."""
  c.dataset.resize = "warp"
  c.input.view = "resize"
  c.input.mean = "pixel"
  c.input.mean_rgb = (0.0, 0.0, 0.0)
  c.input.std_rgb = ()
  c.input.channel_order = "rgb"
  c.input.scale = 1.0 / 255
  c.input.crop_size = 224
  c.augment.random_crop = False
  c.augment.flip = False
  c.augment.lighting_std = 0.0
  c.eval_crops = 1


def get_config(scale: str | None = None):
  """scale 'demo' (--config=configs/keras_bn.py:demo): a quarter-width network trained for a
  few epochs of a small folder on a CPU."""
  if scale not in (None, "", "demo"):
    raise ValueError(f"configs/keras_bn.py:{scale}: the only scale is 'demo'")
  c = default.get_config()
  # The tutorial's dataset: 17flowers.tgz and datasplits.mat in data/flowers17 (any folder:
  # dataset works too).
  c.dataset.name = "oxford17:data/flowers17"
  c.mesh.tower = 1
  c.model.variant = "keras_bn"  # valid convs, 11x11 conv2, BatchNorm, hidden fc8 + head
  c.model.lrn = False
  c.model.overlapping_pool = False  # 2x2 stride-2 pooling
  c.model.initializer = "glorot"  # Keras's default
  c.model.dropout_rate = 0.4
  set_keras_input(c)
  c.batch_size = 64
  c.eval_batch_size = 64
  c.num_epochs = 100.0
  c.optimizer.name = "adam"  # Keras's defaults
  c.optimizer.learning_rate = 1e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.epsilon = 1e-7
  c.optimizer.weight_decay = 0.0  # Keras's Adam decays nothing by default
  c.optimizer.schedule = "constant"
  c.log_every_steps = 10
  c.checkpoint_every_steps = 500
  if scale == "demo":
    c.model.width = 0.25
    c.batch_size = 32
    c.eval_batch_size = 32
    # Steps, not epochs: the running averages (momentum 0.99) forget their start (mean 0,
    # variance 1) only after a few hundred steps, whatever the folder's size.
    c.num_train_steps = 300
    c.eval_every_steps = 60
    c.log_every_steps = 60
    c.checkpoint_every_steps = 300
    c.dataset.cache = True
  return c
