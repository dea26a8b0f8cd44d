"""configs/lars.py against You, Gitman & Ginsburg's numbers (docs/paper.md#large-batches), and
its schedule as the real training loop logs it."""

import json
import math

import pytest

from alexnet_jax import config_schema, sharding, train, train_step
from configs import lars

IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012's training images


@pytest.mark.parametrize(
    "scale, variant, learning_rate, warmup, reported",
    [
        (None, "keras_bn", 14.0, 5.0, 60.1),  # Table 3(b), B=8K
        ("alexnet", "caffe", 10.0, 2.0, 58.2),  # Table 3(a), B=8K
    ],
)
def test_the_8k_recipes_are_the_papers(scale, variant, learning_rate, warmup, reported):
  c = lars.get_config(scale)
  assert config_schema.problems(c) == []
  assert c.model.variant == variant
  assert c.batch_size == 8192 and c.num_epochs == 100.0  # §5: 100 epochs
  o = c.optimizer
  assert (o.name, o.schedule, o.power) == ("lars", "poly", 2.0)  # polynomial decay, p = 2
  assert (o.momentum, o.weight_decay, o.trust_coefficient) == (0.9, 0.0005, 0.001)
  assert (o.learning_rate, o.warmup_epochs) == (learning_rate, warmup)
  assert c.eval_crops == 1
  # 100 epochs at 8K are the 15,600 iterations of the authors' NVCaffe 8K solver.
  steps_per_epoch = IMAGENET_TRAIN // c.batch_size
  assert (steps_per_epoch, train_step.total_steps(c, steps_per_epoch)) == (156, 15_600)
  assert f"{reported}% top-1" in lars.__doc__  # the paper's own figure, quoted


def test_the_8k_batch_on_the_meshes_the_docstring_names(devices):
  """8 hosts x 8 devices x 128 (K=1) and 8 devices x 128 x K=8 (here: 8 CPU devices)."""
  c = lars.get_config()
  assert 8 * 8 * 128 == c.batch_size == 8 * 128 * 8
  mesh = sharding.make_mesh(8, 1, devices=devices)
  for k in (1, 8, 32):
    c.gradient_accumulation = k
    assert config_schema.problems(c) == []
    train.check_micro_batch(mesh, c)
    assert c.batch_size // k // mesh.shape["data"] == {1: 1024, 8: 128, 32: 32}[k]
  assert "lars.py:demo" in lars.__doc__ and "gradient_accumulation=8" in lars.__doc__
  with pytest.raises(ValueError, match="the scales are"):
    lars.get_config("huge")


def test_the_demo_is_a_large_batch_of_digits_through_accumulation():
  c = lars.get_config("demo")
  assert config_schema.problems(c) == []
  assert c.dataset.name == "digits" and c.model.variant == "keras_bn"
  assert (c.batch_size, c.gradient_accumulation) == (512, 8)
  assert c.optimizer.learning_rate == 2.0  # Table 3(b)'s batch-512 row
  assert train_step.total_steps(c, 1500 // c.batch_size) == 60
  assert c.optimizer.trust_coefficient == 0.01  # 10x the paper's: 60 steps, not 250,000


@pytest.mark.slow
def test_the_demo_logs_warmup_times_poly_decay(tmp_path):
  """The demo's recipe at the tiny width through train_and_evaluate: the learning rate each
  step logged is 2 (1 - t/T)^2 min(1, t/W) of its step t (before the update), W = 2 epochs
  of 1,500 digits at batch 16 (186 steps), T = 4."""
  c = lars.get_config("demo")
  c.model.width = 0.125
  c.batch_size = 16
  c.gradient_accumulation = 2
  c.num_train_steps = 4
  c.log_every_steps = 1
  c.eval_every_steps = 4
  c.max_eval_batches = 1
  c.checkpoint_every_steps = 4
  c.eval_batch_size = 16
  c.mesh.data = -1  # 8 devices: micro-batches of 8, one row each
  train.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  lrs = {r["step"]: r["learning_rate"] for r in rows if r["split"] == "train"}
  warmup = round(2.0 * (1500 // 16))
  for step, lr in lrs.items():
    t = step - 1
    want = 2.0 * (1 - t / 4) ** 2 * min(1.0, t / warmup)
    assert lr == pytest.approx(want, rel=1e-5, abs=1e-9), step
  assert sorted(lrs) == [1, 2, 3, 4] and lrs[4] > 0
  assert all(math.isfinite(r["loss"]) for r in rows if r["split"] == "train")
