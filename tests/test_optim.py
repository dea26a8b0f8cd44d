"""The paper's update rule and schedules against NumPy and hand-worked sequences."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import optim, sharding


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


# ---- Adam (optimizer.name='adam'): Keras 3's rule ---------------------------------------------
def _adam_config(**kw):
  base = dict(name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, epsilon=1e-7, weight_decay=0.0)
  return _opt_config(**{**base, **kw})


def _adam_run(cfg, params, grads_seq, lrs):
  tx = optim.make_optimizer(cfg)
  p, state, out = jax.tree.map(jnp.asarray, params), tx.init(params), []
  for g, lr in zip(grads_seq, lrs):
    state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    out.append(jax.tree.map(np.asarray, p))
  return out


def _adam_problem(seed=1, steps=8):
  rng = np.random.default_rng(seed)
  params = {
      "conv": {
          "kernel": rng.normal(size=(3, 4)).astype(np.float32),
          "bias": rng.normal(size=(4,)).astype(np.float32),
      }
  }
  # Gradients of mixed scales (tiny ones make epsilon's placement show).
  grads = [
      jax.tree.map(
          lambda p: (rng.normal(size=p.shape) * 10.0 ** rng.uniform(-6, 0, p.shape)).astype(
              np.float32
          ),
          params,
      )
      for _ in range(steps)
  ]
  return params, grads


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_equals_numpy_keras_formula_across_a_learning_rate_drop(weight_decay):
  params, grads = _adam_problem()
  lrs = [1e-3] * 4 + [1e-4] * 4
  b1, b2, eps = 0.9, 0.999, 1e-7
  # NumPy in float64, Keras 3's update_step verbatim (decoupled decay first, kernels only).
  w = {k: v.astype(np.float64) for k, v in params["conv"].items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  want = []
  for t, (g, lr) in enumerate(zip(grads, lrs), 1):
    for k in w:
      if k == "kernel":
        w[k] = w[k] - w[k] * weight_decay * lr
      m[k] += (g["conv"][k] - m[k]) * (1 - b1)
      v[k] += (np.square(g["conv"][k].astype(np.float64)) - v[k]) * (1 - b2)
      alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
      w[k] = w[k] - alpha * m[k] / (np.sqrt(v[k]) + eps)
    want.append({k: x.copy() for k, x in w.items()})
  got = _adam_run(_adam_config(weight_decay=weight_decay), params, grads, lrs)
  for i in range(len(lrs)):
    for k in ("kernel", "bias"):
      np.testing.assert_allclose(got[i]["conv"][k], want[i][k], rtol=1e-6, atol=1e-7)
  # optax.adam adds eps to sqrt(v_hat): with these small gradients it moves elsewhere.
  if weight_decay == 0.0:
    ref = optax.adam(1e-3, b1=b1, b2=b2, eps=eps)
    q, s = jax.tree.map(jnp.asarray, params), ref.init(params)
    u, s = ref.update(grads[0], s, q)
    q = optax.apply_updates(q, u)
    assert np.abs(q["conv"]["bias"] - got[0]["conv"]["bias"]).max() > 1e-6


def test_adam_equals_keras_adam_on_the_same_gradients():
  import keras  # pylint: disable=import-outside-toplevel

  params, grads = _adam_problem(seed=2, steps=5)
  got = _adam_run(_adam_config(), params, grads, [1e-3] * 5)
  variables = [keras.Variable(params["conv"][k]) for k in ("kernel", "bias")]
  opt = keras.optimizers.Adam()  # Keras's defaults: 1e-3, 0.9, 0.999, 1e-7
  for i, g in enumerate(grads):
    opt.apply_gradients([(g["conv"]["kernel"], variables[0]), (g["conv"]["bias"], variables[1])])
    for k, var in zip(("kernel", "bias"), variables):
      np.testing.assert_allclose(got[i]["conv"][k], np.asarray(var), rtol=1e-6, atol=1e-7)


def test_optimizer_name_is_checked():
  with pytest.raises(ValueError, match=r"optimizer.name must be one of \('sgd', 'adam', 'lars'\)"):
    optim.make_optimizer(_opt_config(name="rmsprop"))


# ---- LARS (You, Gitman & Ginsburg 2017, Algorithm 1) and the schedules it runs under -------
def _lars_config(**kw):
  return _opt_config(name="lars", trust_coefficient=0.001, weight_decay=5e-4, **kw)


def _lars_problem(seed=0, steps=4):
  """A two-tower conv, a dense layer and a BatchNorm, with gradients of realistic relative size."""
  rng = np.random.default_rng(seed)
  params = {
      "conv1": {
          "kernel": rng.normal(0, 0.05, (2, 3, 3, 3, 4)).astype(np.float32),
          "bias": rng.normal(0, 0.1, (2, 4)).astype(np.float32),
      },
      "bn1": {
          "scale": (1 + rng.normal(0, 0.1, (8,))).astype(np.float32),
          "bias": rng.normal(0, 0.1, (8,)).astype(np.float32),
      },
      "fc8": {
          "kernel": rng.normal(0, 0.01, (8, 5)).astype(np.float32),
          "bias": np.zeros((5,), np.float32),
      },
  }
  grads = [
      jax.tree.map(lambda p: rng.normal(0, 0.02, p.shape).astype(np.float32), params)
      for _ in range(steps)
  ]
  return params, grads


def test_lars_update_equals_algorithm_1_in_numpy():
  params, grads = _lars_problem()
  lrs = [2.0, 5.0, 14.0, 9.0]  # a warmup, then a decay: the base rate of the 8K recipe
  eta, beta, m = 0.001, 5e-4, 0.9
  # NumPy, Algorithm 1 verbatim for kernels (a tower layer's kernel is one layer: both
  # towers' weights in one norm, as Caffe's grouped layer held them); biases and BatchNorm
  # parameters: momentum SGD at the global rate, no decay.
  w = jax.tree.map(lambda x: x.astype(np.float64), params)
  v = jax.tree.map(np.zeros_like, w)
  want = []
  for g, gamma in zip(grads, lrs):
    for layer in w:
      for name in w[layer]:
        gl, wl = g[layer][name].astype(np.float64), w[layer][name]
        if name == "kernel":
          local = eta * np.linalg.norm(wl) / (np.linalg.norm(gl) + beta * np.linalg.norm(wl))
          step = gamma * local * (gl + beta * wl)
        else:
          step = gamma * gl
        v[layer][name] = m * v[layer][name] + step
        w[layer][name] = wl - v[layer][name]
    want.append(jax.tree.map(np.copy, w))

  tx = optim.make_optimizer(_lars_config())
  p, state = jax.tree.map(jnp.asarray, params), tx.init(params)
  for i, (g, lr) in enumerate(zip(grads, lrs)):
    state.hyperparams["learning_rate"] = jnp.asarray(lr)
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    for path, leaf in jax.tree_util.tree_leaves_with_path(p):
      ref = dict(jax.tree_util.tree_leaves_with_path(want[i]))[path]
      np.testing.assert_allclose(leaf, ref, rtol=2e-5, atol=1e-7, err_msg=str(path))
  # The kernels really moved by the local rate: far less than the global rate would move them.
  moved = np.linalg.norm(np.asarray(p["fc8"]["kernel"]) - params["fc8"]["kernel"])
  assert 1e-4 < moved < 0.1 * np.linalg.norm(grads[0]["fc8"]["kernel"]) * sum(lrs)


def test_lars_without_weight_decay_is_optax_lars_and_differs_with_it():
  params, grads = _lars_problem(seed=3, steps=2)
  mask = optim.lars_adapted(params)

  def run(tx):
    p, s = jax.tree.map(jnp.asarray, params), tx.init(params)
    for g in grads:
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
    return p

  ours = lambda wd: optim.lars(3.0, momentum=0.9, weight_decay=wd)  # noqa: E731
  theirs = lambda wd: optax.lars(  # noqa: E731
      3.0,
      weight_decay=wd,
      weight_decay_mask=mask,
      trust_coefficient=0.001,
      trust_ratio_mask=mask,
      momentum=0.9,
  )
  for a, b in zip(jax.tree.leaves(run(ours(0.0))), jax.tree.leaves(run(theirs(0.0)))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
  # With decay, optax.lars's ratio eta ||w|| / ||g + wd w|| is not the paper's.
  a, b = run(ours(5e-2))["conv1"]["kernel"], run(theirs(5e-2))["conv1"]["kernel"]
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-5


def test_lars_masks_pick_exactly_the_biases_and_batchnorm_parameters():
  for variant in ("keras_bn", "paper"):
    keras = variant == "keras_bn"  # 2x2 pooling: its valid convs leave 1x1 maps at conv5
    net = model_lib.AlexNet(
        num_classes=17, variant=model_lib.VARIANTS[variant], width=0.125, overlapping_pool=not keras
    )
    params = sharding.abstract_variables(net)["params"]
    adapted = optim.lars_adapted(params)
    excluded = {
        jax.tree_util.keystr(path)
        for path, flag in jax.tree_util.tree_leaves_with_path(adapted)
        if not flag
    }
    # Independently: every layer's bias, and everything a BatchNorm (bn1..bn8) holds.
    want = set()
    for layer, leaves in params.items():
      for name in leaves:
        if name == "bias" or layer.startswith("bn"):
          want.add(
              jax.tree_util.keystr((jax.tree_util.DictKey(layer), jax.tree_util.DictKey(name)))
          )
    assert excluded == want, variant
    assert len(want) < len(jax.tree.leaves(params))
    bns = {k for k in params if k.startswith("bn")}
    assert (len(bns) == 8) == keras


def test_poly_schedule_with_warmup_against_its_formula():
  cfg = _opt_config(learning_rate=14.0, schedule="poly", power=2.0, warmup_epochs=5.0)
  steps_per_epoch, total = 4, 40  # warmup: 20 steps
  got = [
      float(optim.learning_rate(cfg, t, optim.PlateauState.create(), steps_per_epoch, total))
      for t in range(total + 3)
  ]
  want = [14.0 * (1 - min(t, total) / total) ** 2 * min(1.0, t / 20) for t in range(total + 3)]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert got[0] == 0.0 and got[-1] == 0.0 and got[20] == pytest.approx(14.0 * 0.5**2, rel=1e-6)
  # Warmup multiplies any schedule: the step drops, from the first step at 0.
  step = _opt_config(warmup_epochs=0.25)  # 0.01, / 10 at epoch 0.5; warmup 1 step of 4
  got = [float(optim.learning_rate(step, t, optim.PlateauState.create(), 4)) for t in range(4)]
  np.testing.assert_allclose(got, [0.0, 0.01, 0.001, 0.001], rtol=1e-6)
  with pytest.raises(ValueError, match="needs the run's length"):
    optim.learning_rate(cfg, 0, optim.PlateauState.create(), 4)
