"""torchvision's AlexNet (`torchvision.models.alexnet`, weights alexnet-owt-7be5be79.pth): one
tower of 64-192-384-256-256 kernels, conv1 padded by 2, no LRN, fc6 reading the NCHW flatten
(Krizhevsky's "one weird trick" variant; 61,100,840 parameters), fed as torchvision feeds it:
RGB, Resize(256) + CenterCrop(224), (x / 255 - mean) / std with ImageNet's mean and std.
Dropout stays on fc6's and fc7's outputs as in the paper (torchvision's is on their inputs:
the same network at evaluation; a different one while fine-tuning).

Import its weights, evaluate them, fine-tune them on a folder of photos (one subfolder per
class):

  python -m alexnet_jax.convert --from=torchvision --src=alexnet-owt-7be5be79.pth \
      --workdir=runs/torchvision
  python -m alexnet_jax.evaluate --workdir=runs/torchvision --crops=1
  python -m alexnet_jax.main --config=configs/torchvision.py --workdir=runs/finetune \
      --config.init_from=runs/torchvision --config.dataset.name=folder:$HOME/photos
"""

from configs import default

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # torchvision's Normalize, on [0, 1] pixels
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def set_torchvision_input(c):
  """torchvision's preprocessing in 0..255 pixel units (the pipeline's)."""
  c.dataset.resize = "torchvision"
  c.input.mean = "pixel"
  c.input.mean_rgb = tuple(255.0 * m for m in IMAGENET_MEAN_RGB)
  c.input.std_rgb = tuple(255.0 * s for s in IMAGENET_STD_RGB)
  c.input.channel_order = "rgb"
  c.input.scale = 1.0


def get_config():
  c = default.get_config()
  c.mesh.tower = 1
  c.model.one_tower = True
  c.model.conv_widths = (64, 192, 384, 256, 256)
  c.input.crop_size = 224
  c.model.conv1_padding = (2, 2)
  c.model.lrn = False
  c.model.fc6_input_order = "chw"
  set_torchvision_input(c)
  # Fine-tuning: a pretrained net needs no warm-up from the paper's init, and a small rate.
  c.optimizer.learning_rate = 0.001
  c.optimizer.schedule = "constant"
  c.eval_crops = 1  # torchvision reports center-crop accuracy
  return c
