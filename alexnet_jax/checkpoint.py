"""Orbax checkpoints of the TrainState, and `restore(workdir)` (analysis.load_run builds on it).

A checkpoint holds everything needed to continue exactly: parameters, the momentum
buffers, the plateau-schedule state, the step (which is also the data position: the input
pipeline resumes at `start_step`) and the RNG. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save keeps the previous one.
Kept: the latest `keep_checkpoints` steps and the best one by validation top-1 error.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from alexnet_jax import sharding, train_state

CHECKPOINT_DIR = "checkpoints"


def _abstract_with_shardings(abstract, shardings):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


class CheckpointManager:
  """The project's policy on top of `ocp.CheckpointManager`."""

  def __init__(
      self, workdir: str, config=None, *, keep: int | None = None, read_only: bool = False
  ):
    """read_only: for readers beside a run (notebooks, evaluation): never creates, deletes
    or cleans up anything, so a save that the run has in flight is left alone."""
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    keep = keep if keep is not None else (config.keep_checkpoints if config else 3)
    policy = pp.AnyPreservationPolicy(
        [
            pp.LatestN(n=keep),
            pp.BestN(
                get_metric_fn=lambda m: m["top1_error"],
                reverse=True,
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    # Look before Orbax does: it deletes temporary directories when it starts.
    incomplete = [] if read_only else self._incomplete_entries()
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            save_interval_steps=0 if read_only else 1,  # Orbax warns if it has to set it
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        ),
    )
    for path in incomplete:
      logging.warning(
          "ignoring %s: not a complete checkpoint (a save that was "
          "interrupted?); restoring from step %s instead.",
          path,
          self._manager.latest_step(),
      )

  def _incomplete_entries(self) -> list[str]:
    """Entries that are not finished steps: Orbax writes `<step>.orbax-checkpoint-tmp-*`
    and renames it to `<step>` only once every file is written."""
    if not os.path.isdir(self.directory):
      return []
    return [
        os.path.join(self.directory, name)
        for name in sorted(os.listdir(self.directory))
        if os.path.isdir(os.path.join(self.directory, name)) and not name.isdigit()
    ]

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self):
    return self._manager.all_steps()

  def save(self, step: int, state, eval_metrics: dict | None = None, meta: dict | None = None):
    metrics = (
        {"top1_error": float(eval_metrics["top1_error"])} if eval_metrics is not None else None
    )
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(
                {
                    "step": int(step),
                    **(meta or {}),
                    **({"eval": eval_metrics} if eval_metrics else {}),
                }
            ),
        ),
        metrics=metrics,
    )

  def restore(self, abstract_state, shardings, step: int | None = None):
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = _abstract_with_shardings(abstract_state, shardings)
    out = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    return out["state"]

  def restore_meta(self, step: int) -> dict:
    """The JSON saved beside the state (num_classes, dataset, eval metrics)."""
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_or(self, init_fn, shardings):
    """Restore the latest checkpoint onto `shardings`, or call init_fn() for a new run."""
    if self._manager.latest_step() is None:
      return init_fn()
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), jax.eval_shape(init_fn)
    )
    state = self.restore(abstract, shardings)
    logging.info("resumed from %s at step %d", self.directory, int(state.step))
    return state

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a run?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


class RestoredRun(NamedTuple):
  config: ml_collections.ConfigDict
  variables: dict  # {"params": ...}
  step: int
  meta: dict  # what training saved beside the state: num_classes, dataset, eval metrics


def restore_run(workdir: str, step: int | None = None, mesh=None) -> RestoredRun:
  """A run's config, variables, step and metadata, on the caller's devices (default: the
  first local device), read-only.

  Orbax reshards onto a target built here from the run's config, so a notebook on one CPU
  restores a run trained on any mesh or number of processes.
  """
  config = load_config(workdir)
  if mesh is None:
    mesh = sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])
  manager = CheckpointManager(workdir, keep=config.get("keep_checkpoints", 3), read_only=True)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f"no checkpoint in {manager.directory}: has the run in " f"{workdir} saved one yet?"
      )
    meta = manager.restore_meta(step)
    model = train_state.create_model(config, meta["num_classes"])
    abstract = train_state.abstract_state(config, model)
    state = manager.restore(abstract, train_state.state_shardings(mesh, abstract), step)
  finally:
    manager.close()
  return RestoredRun(config, {"params": state.params}, int(step), meta)


def restore(workdir: str, step: int | None = None, mesh=None):
  """(config, variables) of a run (see restore_run). To run the network on images, use
  analysis.load_run(workdir), which also preprocesses them as evaluation does:

  run = analysis.load_run("runs/demo")
  probs = run.predict(images)  # uint8 images of any size
  """
  run = restore_run(workdir, step, mesh)
  return run.config, run.variables
