"""The paper's test views (§4.1), the eval and predict steps and the metrics, against NumPy."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import evaluation, sharding, train_state
from alexnet_jax.input_spec import InputSpec
from tests import tiny


def _mesh(data, tower):
  return sharding.make_mesh(data, tower, devices=jax.devices()[: data * tower])


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.slow  # 10-35 s: in the full suite, out of the fast tier's 5 minutes
def test_ten_crop_eval_equals_averaging_softmax_by_hand():
  config = tiny.config(eval_crops=10)
  mesh = _mesh(2, 1)
  model = train_state.create_model(config, 10)
  params = train_state.create_train_state(config, model, mesh).params
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
  labels = np.array([1, 2, 3, 4], np.int32)
  mask = np.array([True, True, True, False])  # the padded slot must count nowhere
  mean = rng.uniform(0, 255, (256, 256, 3)).astype(np.float32)
  spec = InputSpec.from_config(config, types.SimpleNamespace(mean_image=mean))
  batch = evaluation.global_batch(mesh, {"image": images, "label": labels, "mask": mask})
  got = jax.device_get(evaluation.make_eval_step(config, model, mesh)(params, batch, spec))

  # By hand: slice the ten windows with NumPy, run the plain model, average softmaxes.
  p = jax.device_get(params)
  plain = jax.jit(model.apply)  # the plain model, compiled once for the ten views
  probs = np.zeros((4, 10))
  offsets = [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]
  for flip in (False, True):
    for y, x in offsets:
      view = images[:, y : y + 224, x : x + 224].astype(np.float32) - mean[y : y + 224, x : x + 224]
      view = view * config.input.scale
      if flip:
        view = view[:, :, ::-1]
      logits = np.asarray(plain({"params": p}, jnp.asarray(view)), np.float64)
      probs += _softmax(logits) / 10
  top1 = (probs.argmax(-1) != labels)[:3].sum()
  top5 = np.array([labels[i] not in np.argsort(-probs[i])[:5] for i in range(3)]).sum()
  nll = -np.log(probs[np.arange(3), labels[:3]]).sum()
  assert got["count"] == 3
  assert got["top1_errors"] == top1 and got["top5_errors"] == top5
  assert got["loss_sum"] == pytest.approx(nll, rel=1e-4)
  # Different from the center crop alone (the test can tell 1 view from 10).
  one = evaluation.make_eval_step(config, model, mesh, crops=1)(params, batch, spec)
  assert abs(float(one["loss_sum"]) - nll) > 1e-4 * abs(nll)
  # The predict step gives the same probabilities, padding slot included.
  predict = evaluation.make_predict_step(config, model, mesh, crops=10)
  np.testing.assert_allclose(
      np.asarray(predict(params, batch["image"], spec)), probs, rtol=1e-4, atol=1e-6
  )


def test_errors_and_metrics_from_sums_by_hand():
  probs = jnp.asarray(
      [[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]], jnp.float32
  )
  labels = jnp.asarray([1, 2, 2, 0])
  top1, top5 = evaluation.errors(probs, labels)
  np.testing.assert_array_equal(top1, [0, 1, 0, 1])
  np.testing.assert_array_equal(top5, [0, 0, 0, 0])  # 3 classes: top-3, always a hit
  mask = jnp.asarray([True, True, True, False])
  sums = evaluation.eval_sums(probs, labels, mask)
  m = evaluation.metrics_from_sums(sums)
  nll = -np.log([0.6, 0.3, 0.6]).mean()
  assert m["num_images"] == 3 and m["top1_error"] == pytest.approx(1 / 3)
  assert m["top5_error"] == 0.0 and m["loss"] == pytest.approx(nll, rel=1e-5)


def test_top_k_is_top_min_5_classes():
  """With fewer than 5 classes the top-5 error is the top-min(5, classes) error."""
  logits = np.array([[0.1, 0.5, 0.2], [3.0, 1.0, 2.0]], np.float32)
  labels = np.array([2, 0], np.int32)
  top1, top5 = evaluation.errors(logits, labels)
  np.testing.assert_array_equal(top1, (logits.argmax(-1) != labels).astype(np.float32))
  np.testing.assert_array_equal(top5, [0.0, 0.0])  # top-3 of 3 classes holds every label
