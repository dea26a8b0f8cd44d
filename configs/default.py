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

  c.augment = ml_collections.ConfigDict()
  c.augment.random_crop = True  # 224x224 of 256x256, all 33x33 offsets (§4.1)
  c.augment.flip = True
  c.augment.lighting_std = 0.1  # PCA lighting alpha ~ N(0, 0.1) (§4.1); 0 disables
  c.augment.eigen = "dataset"  # 'dataset': PCA of the training pixels; 'imagenet': published
  c.augment.scale = 1.0  # after mean subtraction; paper: raw pixel units

  c.model = ml_collections.ConfigDict()
  c.model.width = 1.0
  c.model.one_tower = False
  c.model.lrn = True
  c.model.lrn_alpha_per_term = True  # paper text; False = cuda-convnet/Caffe alpha/n
  c.model.lrn_k = 2.0
  c.model.overlapping_pool = True
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
  return c
