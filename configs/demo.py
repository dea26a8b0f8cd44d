"""A demo that learns in 75 s on 2 CPU cores (61 s the next time, its compiled steps cached;
README.md): the embedded scikit-learn `digits` (1,797 real 8x8 handwritten digits, upscaled to
256x256; nothing to download), a quarter-width AlexNet, He init and inputs scaled to [-1, 1]
(the paper's init sits on a plateau for hundreds of steps: docs/paper.md#initialization),
center-crop eval.

  python -m alexnet_jax.main --config=configs/demo.py --workdir=runs/demo
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset.name = "digits"
  c.dataset.cache = True
  c.batch_size = 64
  c.num_train_steps = 125
  c.mesh.tower = 1
  c.model.width = 0.25
  c.model.initializer = "he"
  c.input.scale = 1.0 / 128
  c.optimizer.schedule = "step"
  c.optimizer.drop_epochs = (4.0,)
  c.eval_crops = 1
  c.eval_batch_size = 100
  c.eval_every_steps = 125
  c.log_every_steps = 25
  c.checkpoint_every_steps = 125
  return c
