"""The paper's SGD rule (§5) and its step-down learning-rate schedules.

    v <- momentum * v - weight_decay * eps * w - eps * dL/dw
    w <- w + v

The learning rate eps sits INSIDE the velocity, so a learning-rate drop only scales new
contributions; optax.chain(add_decayed_weights, sgd(momentum=0.9)) would instead scale the
whole accumulated velocity at once (it multiplies eps outside the buffer).

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


def make_optimizer(opt_config) -> optax.GradientTransformation:
  """`config.optimizer` -> paper_sgd whose learning rate the train step sets each step."""
  return optax.inject_hyperparams(paper_sgd, static_args=("decay_biases",))(
      learning_rate=opt_config.learning_rate,
      momentum=opt_config.momentum,
      weight_decay=opt_config.weight_decay,
      decay_biases=opt_config.decay_biases,
  )


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
