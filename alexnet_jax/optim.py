"""The optimizers: the paper's SGD rule (§5, optimizer.name='sgd'), Keras's Adam ('adam'),
You et al.'s LARS ('lars'), and the learning-rate schedules all three run under.

    v <- momentum * v - weight_decay * eps * w - eps * dL/dw
    w <- w + v

The learning rate eps sits INSIDE the velocity, so a learning-rate drop only scales new
contributions; optax.chain(add_decayed_weights, sgd(momentum=0.9)) would instead scale the
whole accumulated velocity at once (it multiplies eps outside the buffer).

Adam is Keras 3's (keras.optimizers.Adam, learning rate 1e-3, beta 0.9 / 0.999, epsilon
1e-7 by default), written out because Keras adds epsilon to sqrt(v), the uncorrected second
moment (optax.adam adds it to sqrt(v_hat): a 1 / sqrt(1 - b2^t) times larger epsilon early on):

    m <- m + (1 - b1) (g - m);  v <- v + (1 - b2) (g^2 - v)
    w <- w - lr * wd * w - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

The decay term is Keras's decoupled weight decay (its weight_decay argument, off by default;
here optimizer.weight_decay, kernels only unless decay_biases: configs/keras_bn.py sets 0).

LARS is Algorithm 1 of You, Gitman & Ginsburg, "Large Batch Training of Convolutional
Networks" (2017; docs/paper.md#large-batches), per layer l (a parameter array: a tower
layer's kernel holds both towers, as Caffe's grouped layer did):

    lambda_l <- eta * ||w_l|| / (||g_l|| + wd * ||w_l||)
    v_l <- momentum * v_l + eps * lambda_l * (g_l + wd * w_l);   w_l <- w_l - v_l

for kernels; biases and BatchNorm parameters take neither the local rate nor weight decay
(v <- momentum * v + eps * g), as large-batch recipes since do. optax.lars divides by
||g + wd * w|| instead of ||g|| + wd * ||w|| (a larger step whenever g is not parallel to w), so
the local rate is written out here and chained with optax's learning-rate scaling and
momentum trace.

Schedules express the learning rate as base * factor ** drops. The number of drops is a
function of the step for `step` (drops at fixed epochs), and lives in the train state for
`plateau` (the paper's rule: divide by 10 when validation error stops improving), so a
resumed run continues both exactly. `poly` is base * (1 - step / steps) ** power over the
whole run (You et al.: power 2). Any of them can start with a linear warmup: the rate times
step / warmup steps until warmup_epochs (Goyal et al.; You et al. warm AlexNet-BN up for 5).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax


class PaperSGDState(NamedTuple):
  velocity: Any


def paper_sgd(
    learning_rate: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    decay_biases: bool = False,
) -> optax.GradientTransformation:
  """§5's update as an optax transformation; its output update is the new velocity.

  Weight decay applies to kernels only unless `decay_biases` (cuda-convnet2 did not decay
  biases). Wrap with `optax.inject_hyperparams` to change the learning rate per step.
  """

  def init(params):
    return PaperSGDState(velocity=jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params):
    if params is None:
      raise ValueError("paper_sgd needs params (weight decay): call tx.update(g, s, params)")

    def step(path, g, v, w):
      is_bias = getattr(path[-1], "key", None) == "bias"
      wd = 0.0 if (is_bias and not decay_biases) else weight_decay
      return momentum * v - learning_rate * (wd * w + g)

    velocity = jax.tree_util.tree_map_with_path(step, grads, state.velocity, params)
    return velocity, PaperSGDState(velocity=velocity)

  return optax.GradientTransformation(init, update)


class KerasAdamState(NamedTuple):
  count: jax.Array  # updates so far (Keras's `iterations`)
  mu: Any  # first moments
  nu: Any  # second moments


def keras_adam(
    learning_rate: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-7,
    weight_decay: float = 0.0,
    decay_biases: bool = False,
) -> optax.GradientTransformation:
  """keras.optimizers.Adam's update (the module docstring's formula) as an optax
  transformation; `weight_decay` is Keras's decoupled decay, on kernels only unless
  `decay_biases`. Wrap with `optax.inject_hyperparams` to change the learning rate per step."""

  def init(params):
    return KerasAdamState(
        count=jnp.zeros((), jnp.int32),
        mu=jax.tree.map(jnp.zeros_like, params),
        nu=jax.tree.map(jnp.zeros_like, params),
    )

  def update(grads, state, params):
    if params is None:
      raise ValueError("keras_adam needs params (weight decay): call tx.update(g, s, params)")
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, grads)
    nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), state.nu, grads)

    def step(path, m, v, w):
      # In the parameter's dtype, as Keras computes it.
      t, dt = count.astype(w.dtype), w.dtype
      lr, beta1, beta2 = (jnp.asarray(x, dt) for x in (learning_rate, b1, b2))
      alpha = lr * jnp.sqrt(1 - beta2**t) / (1 - beta1**t)
      is_kernel = getattr(path[-1], "key", None) == "kernel"
      wd = weight_decay if (is_kernel or decay_biases) else 0.0
      return -lr * jnp.asarray(wd, dt) * w - alpha * m / (jnp.sqrt(v) + jnp.asarray(eps, dt))

    updates = jax.tree_util.tree_map_with_path(step, mu, nu, params)
    return updates, KerasAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def lars_adapted(params) -> Any:
  """The parameter-shaped tree of bools LARS adapts and decays: True for the kernels of the
  conv and dense layers; False for every bias and every BatchNorm parameter (its scale and
  bias), which the layer-wise rate would blow up (their norms are near 0 or 1)."""

  def adapted(path, _):
    return getattr(path[-1], "key", None) == "kernel"

  return jax.tree_util.tree_map_with_path(adapted, params)


def scale_by_lars(trust_coefficient: float = 0.001, weight_decay: float = 5e-4):
  """g -> lambda * (g + wd * w) on the layers lars_adapted picks, g elsewhere (the module
  docstring's local rate). lambda is 1 when ||w|| or ||g|| is 0 (Caffe's and optax's rule)."""

  def update(grads, state, params):
    if params is None:
      raise ValueError("scale_by_lars needs params: call tx.update(g, s, params)")

    def one(adapt, g, w):
      if not adapt:
        return g
      w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
      local = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm)
      local = jnp.where((w_norm > 0) & (g_norm > 0), local, 1.0)
      return (local * (g + weight_decay * w)).astype(g.dtype)

    return jax.tree.map(one, lars_adapted(params), grads, params), state

  return optax.GradientTransformation(optax.init_empty_state, update)


def lars(
    learning_rate: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    trust_coefficient: float = 0.001,
) -> optax.GradientTransformation:
  """You et al.'s SGD with LARS (Algorithm 1): the local rate, then optax's learning-rate
  scaling and momentum trace, so eps sits inside the velocity as in §5's rule. Wrap with
  `optax.inject_hyperparams` to change the learning rate per step."""
  return optax.chain(
      scale_by_lars(trust_coefficient, weight_decay),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum),
  )


OPTIMIZERS = ("sgd", "adam", "lars")


def make_optimizer(opt_config) -> optax.GradientTransformation:
  """`config.optimizer` -> paper_sgd (name 'sgd'), keras_adam ('adam') or lars ('lars'), whose
  learning rate the train step sets each step (inject_hyperparams)."""
  name = opt_config.get("name", "sgd")
  if name == "sgd":
    return optax.inject_hyperparams(paper_sgd, static_args=("decay_biases",))(
        learning_rate=opt_config.learning_rate,
        momentum=opt_config.momentum,
        weight_decay=opt_config.weight_decay,
        decay_biases=opt_config.decay_biases,
    )
  if name == "adam":
    return optax.inject_hyperparams(keras_adam, static_args=("decay_biases",))(
        learning_rate=opt_config.learning_rate,
        b1=opt_config.b1,
        b2=opt_config.b2,
        eps=opt_config.epsilon,
        weight_decay=opt_config.weight_decay,
        decay_biases=opt_config.decay_biases,
    )
  if name == "lars":
    return optax.inject_hyperparams(lars)(
        learning_rate=opt_config.learning_rate,
        momentum=opt_config.momentum,
        weight_decay=opt_config.weight_decay,
        trust_coefficient=opt_config.trust_coefficient,
    )
  raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {name!r}")


@flax.struct.dataclass
class PlateauState:
  """Evaluation-driven schedule state; kept in the TrainState and in checkpoints."""

  drops: jax.Array  # learning-rate divisions so far
  best: jax.Array  # best validation top-1 error seen
  bad_evals: jax.Array  # evaluations since `best` improved (reset on a drop)

  @classmethod
  def create(cls):
    return cls(
        drops=jnp.zeros((), jnp.int32),
        best=jnp.full((), jnp.inf, jnp.float32),
        bad_evals=jnp.zeros((), jnp.int32),
    )


def plateau_update(
    state: PlateauState, val_error, *, patience: int, max_drops: int, min_delta: float = 0.0
) -> PlateauState:
  """The paper's rule: after `patience` evaluations without an improvement of the
  validation error by more than `min_delta`, divide the learning rate (at most
  `max_drops` times; the paper: 3)."""
  val_error = jnp.asarray(val_error, jnp.float32)
  improved = val_error < state.best - min_delta
  best = jnp.where(improved, val_error, state.best)
  bad = jnp.where(improved, 0, state.bad_evals + 1)
  drop = (bad >= patience) & (state.drops < max_drops)
  return PlateauState(
      drops=state.drops + drop.astype(jnp.int32), best=best, bad_evals=jnp.where(drop, 0, bad)
  )


def learning_rate(
    opt_config, step, plateau: PlateauState, steps_per_epoch: int, num_steps: int | None = None
):
  """eps at `step`: base * factor ** drops, drops from the schedule named in the config; or
  poly's base * (1 - step / num_steps) ** power (num_steps: the run's length); times the
  linear warmup when optimizer.warmup_epochs > 0."""
  lr = _schedule(opt_config, step, plateau, steps_per_epoch, num_steps)
  warmup = int(round(opt_config.get("warmup_epochs", 0.0) * steps_per_epoch))
  if warmup > 0:
    lr = lr * optax.linear_schedule(0.0, 1.0, warmup)(step)
  return lr


def _schedule(opt_config, step, plateau: PlateauState, steps_per_epoch: int, num_steps):
  base, factor = opt_config.learning_rate, opt_config.drop_factor
  if opt_config.schedule == "poly":
    if num_steps is None:
      raise ValueError("optimizer.schedule='poly' needs the run's length (num_steps)")
    power = opt_config.get("power", 2.0)
    return optax.polynomial_schedule(base, 0.0, power, max(num_steps, 1))(step)
  if opt_config.schedule == "plateau":
    drops = plateau.drops
  elif opt_config.schedule == "step":
    boundaries = jnp.asarray(
        [int(round(e * steps_per_epoch)) for e in opt_config.drop_epochs] or [2**31 - 1], jnp.int32
    )
    drops = jnp.sum(jnp.asarray(step) >= boundaries)
  elif opt_config.schedule == "constant":
    drops = 0
  else:
    raise ValueError(
        f"optimizer.schedule must be 'plateau', 'step', 'constant' or 'poly', got "
        f"{opt_config.schedule!r}"
    )
  return base * jnp.asarray(factor, jnp.float32) ** drops
