"""The paper's update rule and schedules against NumPy and hand-worked sequences."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from alexnet_jax import optim


def _opt_config(**kw):
  c = ml_collections.ConfigDict(
      dict(
          learning_rate=0.01,
          momentum=0.9,
          weight_decay=5e-4,
          decay_biases=False,
          schedule="step",
          drop_factor=0.1,
          drop_epochs=(0.5,),
          patience=2,
          max_drops=3,
          min_delta=0.0,
      )
  )
  c.update(kw)
  return c


def _run(tx_update, params, grads_seq, lrs):
  out = []
  for g, lr in zip(grads_seq, lrs):
    params = tx_update(params, g, lr)
    out.append(params)
  return out


@pytest.mark.parametrize("decay_biases", [False, True])
def test_update_equals_the_papers_two_lines_across_a_learning_rate_drop(decay_biases):
  rng = np.random.default_rng(0)
  params = {
      "conv": {
          "kernel": rng.normal(size=(3, 4)).astype(np.float32),
          "bias": rng.normal(size=(4,)).astype(np.float32),
      }
  }
  grads_seq = [
      jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(10)
  ]
  steps_per_epoch = 10  # drop at epoch 0.5 = step 5
  cfg = _opt_config(decay_biases=decay_biases)
  lrs = [
      float(optim.learning_rate(cfg, s, optim.PlateauState.create(), steps_per_epoch))
      for s in range(10)
  ]
  assert lrs[:5] == pytest.approx([0.01] * 5) and lrs[5:] == pytest.approx([0.001] * 5)

  # NumPy, §5 verbatim: v <- 0.9 v - 0.0005 eps w - eps g;  w <- w + v.
  w = {k: v.copy() for k, v in params["conv"].items()}
  vel = {k: np.zeros_like(v) for k, v in w.items()}
  want = []
  for g, eps in zip(grads_seq, lrs):
    for k in w:
      wd = 5e-4 if (k == "kernel" or decay_biases) else 0.0
      vel[k] = 0.9 * vel[k] - wd * eps * w[k] - eps * g["conv"][k]
      w[k] = w[k] + vel[k]
    want.append({k: v.copy() for k, v in w.items()})

  tx = optim.make_optimizer(cfg)
  p, state = jax.tree.map(jnp.asarray, params), tx.init(params)
  for i, (g, eps) in enumerate(zip(grads_seq, lrs)):
    state.hyperparams["learning_rate"] = jnp.asarray(eps)
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    for k in ("kernel", "bias"):
      np.testing.assert_allclose(p["conv"][k], want[i][k], rtol=1e-5, atol=1e-7)

  # optax's chain(add_decayed_weights, sgd(momentum)) keeps eps outside the velocity: it
  # agrees before the drop and differs right after it, so this test can tell them apart.
  ref = optax.inject_hyperparams(
      lambda learning_rate: optax.chain(
          optax.add_decayed_weights(5e-4), optax.sgd(learning_rate, momentum=0.9)
      )
  )(0.01)
  q, rs = jax.tree.map(jnp.asarray, params), ref.init(params)
  for i, (g, eps) in enumerate(zip(grads_seq, lrs)):
    rs.hyperparams["learning_rate"] = jnp.asarray(eps)
    u, rs = ref.update(g, rs, q)
    q = optax.apply_updates(q, u)
    diff = float(np.max(np.abs(q["conv"]["kernel"] - want[i]["kernel"])))
    assert (diff < 1e-6) if i < 5 else (diff > 1e-3), (i, diff)


def test_plateau_schedule_on_scripted_validation_errors():
  errors = [
      0.60,
      0.50,
      0.45,
      0.45,
      0.46,  # 2 evals without improvement -> drop 1
      0.40,
      0.41,
      0.40,  # improves, then 2 bad evals -> drop 2
      0.30,
      0.30,
      0.30,
      0.30,  # improves; 2 bad -> drop 3; 2 bad -> capped
      0.30,
      0.30,
  ]
  want_drops = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
  s = optim.PlateauState.create()
  got = []
  for e in errors:
    s = optim.plateau_update(s, e, patience=2, max_drops=3)
    got.append(int(s.drops))
  assert got == want_drops
  cfg = _opt_config(schedule="plateau")
  assert float(optim.learning_rate(cfg, 0, s, 100)) == pytest.approx(0.01 * 1e-3)


def test_plateau_min_delta():
  s = optim.PlateauState.create()
  for e in (0.5, 0.499, 0.4985):  # improvements smaller than min_delta do not count
    s = optim.plateau_update(s, e, patience=2, max_drops=3, min_delta=0.01)
  assert int(s.drops) == 1


def test_unknown_schedule_is_named():
  with pytest.raises(ValueError, match="cosine"):
    optim.learning_rate(_opt_config(schedule="cosine"), 0, optim.PlateauState.create(), 1)
