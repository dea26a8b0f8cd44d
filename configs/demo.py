"""A demo that learns in 35 s on 2 CPU cores (27 s the next time, its compiled steps cached;
README.md): the embedded scikit-learn `digits` (1,797 real 8x8 handwritten digits, upscaled to
256x256; nothing to download), a quarter-width AlexNet with both towers, He init and inputs
scaled to [-1, 1], center-crop eval.

  python -m alexnet_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m alexnet_jax.main --config=configs/demo.py:sgd --workdir=runs/demo_sgd

The default recipe trades the paper's optimizer for speed: 64 steps of 32 (2,048 images, 1.4
epochs) with Adam (Keras's rule, rate 1e-3, /10 after 1.2 epochs) and no dropout: 5.05%, 4.04%
and 8.75% top-1 error for seeds 0, 1 and 2 (120 steps of 16, 1,920 images, gave 6.06-7.74%
in about the same time). In 100 steps of 16 the paper's SGD (rate 0.01, dropout 0.5) leaves
44% (it sits on a loss plateau for its first ~50 steps), SGD without dropout 32%, Adam with
dropout 13%.

`:sgd` is the paper's optimizer and dropout (§5, §4.2: SGD + momentum 0.9, rate 0.01 /10 after 4
epochs, weight decay 5e-4, dropout 0.5) on 125 steps of 64 (8,000 images, 5.4 epochs): 81 s
on a first start, 71 s on the next (README.md). The ablations at demo scale
(configs/ablations.py:demo) and the tests' tiny runs (tests/tiny.py) use its optimizer.
"""

from configs import default

RECIPES = ("", "sgd")


def get_config(recipe: str | None = None):
  """recipe '' (the demo) or 'sgd' (--config=configs/demo.py:sgd, the paper's optimizer)."""
  if (recipe or "") not in RECIPES:
    raise ValueError(f"configs/demo.py:{recipe}: the recipes are '' (the default) and 'sgd'")
  c = default.get_config()
  c.dataset.name = "digits"
  c.dataset.cache = True
  c.mesh.tower = 1
  c.model.width = 0.25
  c.model.initializer = "he"
  c.input.scale = 1.0 / 128
  c.optimizer.schedule = "step"
  c.eval_crops = 1
  c.eval_batch_size = 100
  if recipe == "sgd":
    c.batch_size = 64
    c.num_train_steps = 125
    c.optimizer.drop_epochs = (4.0,)
    c.log_every_steps = 25
  else:
    c.batch_size = 32
    c.num_train_steps = 64
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.drop_epochs = (1.2,)
    c.model.dropout_rate = 0.0
    c.log_every_steps = 16
    # Batches decoded as they are needed, beside the steps, instead of the whole split up
    # front: the same batches, 1-4 s sooner in all (docs/performance.md#the-demo-end-to-end).
    c.dataset.cache = False
  c.eval_every_steps = c.num_train_steps
  c.checkpoint_every_steps = c.num_train_steps
  return c
