r"""The paper's recipe (§5) on ILSVRC-2012: batch 128, SGD momentum 0.9, weight decay 5e-4,
lr 0.01 divided by 10 when validation error plateaus (3 times), 90 epochs, 10-view test,
the two towers on two devices of the mesh. These are the defaults (configs/default.py).

  python -m alexnet_jax.main --config=configs/paper.py --workdir=runs/paper \
      --config.dataset.data_dir=$HOME/tensorflow_datasets

Expected run time: the paper's 90 epochs took 5-6 days on two GTX 580 3GB GPUs (about 230
images/s); a checkpoint every 5,000 steps is about an hour at that speed.

ImageNet is never downloaded: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
$DATA_DIR/downloads/manual (or --config.dataset.manual_dir); the first run prepares it.
"""

from configs import default


def get_config():
  return default.get_config()
