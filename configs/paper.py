"""The paper's recipe (§5) on ILSVRC-2012: batch 128, SGD momentum 0.9, weight decay 5e-4,
lr 0.01 divided by 10 when validation error plateaus (3 times), 90 epochs, 10-view test,
the two towers on two devices of the mesh.

  python -m alexnet_jax.main --config=configs/paper.py --workdir=runs/paper \
      --config.dataset.data_dir=$HOME/tensorflow_datasets

ImageNet is never downloaded: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
$DATA_DIR/downloads/manual (or --config.dataset.manual_dir); the first run prepares it.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset.name = "imagenet2012"
  c.mesh.tower = 2
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5_000  # ~1 h on two 2012 GPUs
  return c
