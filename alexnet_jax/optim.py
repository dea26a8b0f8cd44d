"""The optimizers: the paper's SGD rule (§5, optimizer.name='sgd'), Keras's Adam ('adam'), and
the step-down learning-rate schedules both run under.

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

Schedules express the learning rate as base * factor ** drops. The number of drops is a
function of the step for `step` (drops at fixed epochs), and lives in the train state for
`plateau` (the paper's rule: divide by 10 when validation error stops improving), so a
resumed run continues both exactly.
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


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(opt_config) -> optax.GradientTransformation:
  """`config.optimizer` -> paper_sgd (name 'sgd') or keras_adam ('adam'), whose learning rate
  the train step sets each step (inject_hyperparams)."""
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


def learning_rate(opt_config, step, plateau: PlateauState, steps_per_epoch: int):
  """eps at `step`: base * factor ** drops, drops from the schedule named in the config."""
  base, factor = opt_config.learning_rate, opt_config.drop_factor
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
        f"optimizer.schedule must be 'plateau', 'step' or 'constant', got "
        f"{opt_config.schedule!r}"
    )
  return base * jnp.asarray(factor, jnp.float32) ** drops
