"""Every key the trainer reads, with the paper's values; other configs override this.

Not meant to be run by itself (its dataset is ImageNet): see paper.py and demo.py.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # global, over all processes and devices (§5)
  c.num_epochs = 90.0  # §5: "roughly 90 cycles through the training set"
  c.num_train_steps = -1  # > 0 overrides num_epochs

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: the devices the tower axis leaves
  c.mesh.tower = 2  # the paper's two GPUs; 1 = one device holds both towers

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "imagenet2012"  # or 'digits', 'folder:/path', any TFDS image dataset
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.dataset.manual_dir = ml_collections.FieldReference(None, field_type=str)
  c.dataset.shuffle_buffer = 16_384
  c.dataset.stats_max_images = ml_collections.FieldReference(None, field_type=int)
  c.dataset.cache = False  # decoded 256x256 uint8 in RAM: only for small datasets
  c.dataset.exif_transpose = False  # folder: JPEGs upright by EXIF (the paper/TFDS ignore it)
  # How the shorter side goes to 256 and the central 256x256 is kept: 'round' (the long side
  # rounded to the nearest pixel, the crop offset floored); 'torchvision' (its Resize(256) +
  # CenterCrop: the long side truncated, the crop offset rounded half to even); 'warp' (both
  # sides to 256, aspect ratio lost: how Caffe's ImageNet databases were made).
  c.dataset.resize = "round"
  # Prepared 256x256 shards (python -m alexnet_jax.prepare): 'auto' reads those found beside
  # the data when complete and made for this config, else the original images; 'off' never;
  # or the directory to read them from (refused if made from other data or settings).
  c.dataset.prepared = "auto"

  # python -m alexnet_jax.prepare: how the shards are written.
  c.prepare = ml_collections.ConfigDict()
  c.prepare.format = "jpeg"  # 'jpeg' (about 8x smaller) or 'raw' uint8 rows (no decoding)
  c.prepare.jpeg_quality = 95
  c.prepare.images_per_shard = 1024

  c.augment = ml_collections.ConfigDict()
  c.augment.random_crop = True  # 224x224 of 256x256, all 33x33 offsets (§4.1)
  c.augment.flip = True
  c.augment.lighting_std = 0.1  # PCA lighting alpha ~ N(0, 0.1) (§4.1); 0 disables
  c.augment.eigen = "dataset"  # 'dataset': PCA of the training pixels; 'imagenet': published

  # What the network is fed (alexnet_jax/input_spec.py), in 0..255 pixel units:
  # mean 'dataset': the training split's mean image (paper §2); 'pixel': mean_rgb
  # (torchvision and the grouped layout: 255 * (0.485, 0.456, 0.406); Caffe without its mean
  # file: (122.68, 116.67, 104.01)); 'run': the run directory's own mean image (Caffe's
  # ilsvrc_2012_mean, written by alexnet_jax.convert; a run started with init_from takes its
  # source's).
  c.input = ml_collections.ConfigDict()
  c.input.mean = "dataset"
  c.input.mean_rgb = (0.0, 0.0, 0.0)
  c.input.std_rgb = ()  # () = no division; torchvision: 255 * (0.229, 0.224, 0.225)
  c.input.channel_order = "rgb"  # 'bgr': Caffe's networks read blue, green, red
  c.input.scale = 1.0  # after mean subtraction; paper: raw pixel units
  c.input.crop_size = 224  # §4.1: 224 paper, torchvision, grouped; 227 Caffe

  c.model = ml_collections.ConfigDict()
  # The architecture: the paper's by default; the other values are those of the published
  # AlexNets that alexnet_jax.convert loads (configs/torchvision.py, configs/caffe.py,
  # configs/pytorch_grouped.py).
  c.model.width = 1.0
  c.model.one_tower = False  # True: one tower (the paper's one-GPU net; torchvision's)
  c.model.conv_widths = ()  # () = the paper's 96-256-384-384-256; torchvision (64, 192, ...)
  # conv1's zero padding (before, after): (0, 3) cuda-convnet's rule, 55x55 from 224 (paper);
  # (2, 2) torchvision and the grouped layout; (0, 0) Caffe (227 input).
  c.model.conv1_padding = (0, 3)
  c.model.lrn = True  # torchvision: False (its net has no LRN)
  c.model.lrn_alpha_per_term = True  # paper text; False = cuda-convnet/Caffe/PyTorch alpha/n
  c.model.lrn_k = 2.0  # paper; Caffe's bvlc_alexnet 1.0
  c.model.lrn_after_pool = False  # True: the grouped PyTorch layout (pool, then LRN)
  c.model.lrn_across_towers = False  # paper: per tower; True: Caffe, PyTorch (all channels)
  c.model.overlapping_pool = True
  c.model.fc6_input_order = "hwc"  # 'chw': PyTorch's and Caffe's NCHW flatten
  c.model.initializer = "paper"  # 'paper' N(0, 0.01) + unit biases; 'he' (fast start)
  c.model.dropout_rate = 0.5
  c.model.dtype = "float32"  # 'bfloat16' on accelerators; params stay float32

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.decay_biases = False  # cuda-convnet2 did not decay biases
  c.optimizer.schedule = "plateau"  # 'plateau' (paper), 'step', 'constant'
  c.optimizer.drop_factor = 0.1
  c.optimizer.patience = 2  # plateau: evaluations without improvement
  c.optimizer.min_delta = 0.001  # plateau: improvement that counts (top-1 fraction)
  c.optimizer.max_drops = 3  # §5: "reduced three times prior to termination"
  c.optimizer.drop_epochs = (30.0, 60.0, 80.0)  # step schedule

  c.eval_crops = 10  # 10 = the paper's test views; 1 = center crop
  c.eval_batch_size = 128
  c.eval_every_steps = -1  # -1: once per epoch
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5_000
  c.keep_checkpoints = 3  # the latest K, plus the best by validation top-1
  c.max_eval_batches = -1  # > 0: evaluate on a prefix only (quick checks)
  # A run directory (trained, or written by alexnet_jax.convert): a new run starts from its
  # parameters; fc8 is re-initialised when the class count differs. Ignored on resume.
  c.init_from = ""
  return c
