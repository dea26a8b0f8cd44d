"""Orbax checkpoints of a train state, and `restore(workdir)` (analysis.load_run builds on it).

This module knows the state only as the pytree it is given: saving takes the state, and
restoring takes the abstract target (train_state.restore_target gives the TrainState's).

A checkpoint holds everything needed to continue exactly: parameters, the optimizer's
buffers, BatchNorm's running averages (variants with BatchNorm), the plateau-schedule state,
the step (which is also the data position: the input pipeline resumes at `start_step`) and the
RNG. A state saved before a field existed that is empty here (batch_stats of a network without
BatchNorm) restores as before. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save keeps the previous one.
Kept: the latest `keep_checkpoints` steps and the best one by validation top-1 error.

Versions: each save records `format_version` (FORMAT_VERSION, the layout of its items) and
`checksum_version` in its meta item; a step declaring a version above this code's is refused
with NewerCheckpointError (it is newer, not damaged: never skipped or set aside), and a
version that is not a positive integer makes the step damaged. A step or checkpoints/ that
this user cannot read is handled like a damaged step (skipped, set aside by a writer), and
an unreadable checkpoints/ or a step asked for by number that does not restore is one line.

Integrity: each save records, in its JSON `meta` item, two 32-bit checksums of every array
of the state (`checksums`: the sum of the array's bits, and a position-weighted sum, both
mod 2^32; exact integer sums, so any mesh computes the same values), and the SHA-256 of the
meta item itself (`meta_sha256`, over its canonical JSON without that field: the eval
metrics, class count, checksums, everything a restore reads from it). A restore recomputes
them on what it read, and a step whose files are missing, truncated, unreadable or hold
other bytes or values than were saved is skipped for the newest one that verifies
(`restore_latest`), with a warning naming the step and the reason. A run that resumes below
such a step moves it to `<workdir>/checkpoints_unreadable/` (never deletes it: Orbax would
otherwise count it as the latest and could delete the good ones). If none verifies, the run
stops with `UnreadableCheckpointsError` listing them. `checksum_version` in the meta says
what is covered: 2 the arrays and the meta; absent (saves before the meta was covered) the
arrays only, and such steps still restore.

A writer also sets aside, with the same warning, every step entry under `checkpoints/` that
is not a real directory (a plain file, a symbolic link, a dangling one or a loop) before
Orbax opens the directory: never deleted, and never in the way of that step's next save.

A save that fails (a full disk: ENOSPC) stops the run with `CheckpointSaveError`, naming the
directory and the space a checkpoint needs, at the next step boundary that logs (`check`);
the checkpoints already committed stay as they are.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging as std_logging
import os
import sys
import traceback
import warnings
from typing import NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from alexnet_jax import disk_space, run_dir, run_lock, train_state
from alexnet_jax.facts import (
    CHECKPOINT_DIR,
    UNREADABLE_DIR,  # steps set aside by a resume (never deleted)
)


class UnreadableCheckpointsError(RuntimeError):
  """The workdir holds checkpoints, and none of them can be restored."""


class CorruptCheckpointError(ValueError):
  """A checkpoint's arrays differ from the checksums recorded when it was saved."""


class CheckpointSaveError(RuntimeError):
  """A save failed (e.g. a full disk); the earlier checkpoints are intact."""


class UnreadableStepError(CorruptCheckpointError, UnreadableCheckpointsError):
  """A step asked for by number that cannot be restored (damaged, unreadable); one line."""


class NewerCheckpointError(UnreadableCheckpointsError):
  """A checkpoint written by a newer alexnet_jax (a format or checksum version above this
  one's): refused, never skipped or set aside, since the newer code reads it."""


# ---- checksums -----------------------------------------------------------------------------
_WEIGHT = np.uint32(0x9E3779B1)  # odd: every position weight below is odd, so invertible


def _bits_u32(x: jax.Array) -> jax.Array:
  """The array's bits as uint32 (8-byte types: a trailing axis of 2 words)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size in (4, 8):
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, {2: jnp.uint16, 1: jnp.uint8}[size]).astype(jnp.uint32)


def _leaf_sums(x: jax.Array) -> jax.Array:
  bits = _bits_u32(x)
  # Linear position of every element from broadcast iotas (no reshape: keeps the sharding).
  pos = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(bits.ndim)):
    pos = pos + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, d) * np.uint32(stride % 2**32)
    stride *= bits.shape[d]
  weight = pos * _WEIGHT | np.uint32(1)
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32)])


@jax.jit
def _all_sums(leaves):
  return jnp.stack([_leaf_sums(x) for x in leaves])


def checksums(tree) -> dict:
  """{array path: [sum, weighted sum]} of every array of `tree` (same on any mesh)."""
  pairs = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]
  pairs = [(k, x) for k, x in pairs if np.size(x)]
  if not pairs:
    return {}
  sums = _all_sums(tuple(jnp.asarray(x) if not isinstance(x, jax.Array) else x for _, x in pairs))
  if not sums.is_fully_addressable:  # multi-process: a reduction's result is replicated
    sums = multihost_utils.process_allgather(sums, tiled=True)[: len(pairs)]
  sums = np.asarray(sums)
  return {k: [int(a), int(b)] for (k, _), (a, b) in zip(pairs, sums)}


# What a save's checksums cover: 2 = the arrays and the meta item (meta_sha256); a meta without
# the field was saved before the meta was covered (the arrays only).
CHECKSUM_VERSION = 2
# The layout of a step (items "state" and "meta"); absent in saves before it was recorded,
# which have this layout too. A newer one is refused (NewerCheckpointError).
FORMAT_VERSION = 1
_VERSIONS = {"format_version": FORMAT_VERSION, "checksum_version": CHECKSUM_VERSION}


def _jsonable(x):
  if isinstance(x, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f"{type(x).__name__} is not JSON serializable")


def meta_digest(meta: dict) -> str:
  """SHA-256 of the meta item's canonical JSON, without its own meta_sha256 field."""
  body = {k: v for k, v in meta.items() if k != "meta_sha256"}
  text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_jsonable)
  return hashlib.sha256(text.encode()).hexdigest()


def seal(meta: dict) -> dict:
  """`meta` as JSON reads it back, with checksum_version and its meta_sha256."""
  meta = json.loads(json.dumps(meta, default=_jsonable))
  meta["format_version"] = FORMAT_VERSION
  meta["checksum_version"] = CHECKSUM_VERSION
  meta["meta_sha256"] = meta_digest(meta)
  return meta


def verify(state, meta: dict, step: int) -> None:
  """Raise CorruptCheckpointError if the restored `state` or `meta` is not what step `step`
  saved."""
  if not isinstance(meta, dict):
    raise CorruptCheckpointError("its meta item is not a JSON object")
  check_versions(meta, step)
  if "checksum_version" in meta or "meta_sha256" in meta:
    if meta.get("meta_sha256") != meta_digest(meta):
      raise CorruptCheckpointError(
          "its meta item (eval metrics, class count, checksums) differs from the SHA-256 "
          "recorded at save time"
      )
  want = meta.get("checksums")
  if want is None:  # saved before checksums existed: at least refuse non-finite values
    bad = [
        jax.tree_util.keystr(p)
        for p, x in jax.tree_util.tree_leaves_with_path(state)
        if jnp.issubdtype(x.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(x)))
    ]
    if bad:
      raise CorruptCheckpointError(f"non-finite values in {', '.join(bad[:3])}")
    logging.warning("checkpoint step %d has no checksums (an older save): not verified", step)
    return
  got = checksums(state)
  bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
  if bad:
    raise CorruptCheckpointError(
        f"{len(bad)} array(s) differ from the checksums recorded at save time "
        f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
    )


def check_versions(meta: dict, step: int, directory: str = "") -> None:
  """NewerCheckpointError for a step written by a newer alexnet_jax; CorruptCheckpointError
  for a version that is not a positive integer."""
  for field, ours in _VERSIONS.items():
    v = meta.get(field)
    if v is None:
      continue
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise CorruptCheckpointError(f"its meta item's {field} is {v!r}, not a version number")
    if v > ours:
      where = f" in {directory}" if directory else ""
      raise NewerCheckpointError(
          f"checkpoint step {step}{where} was written by a newer alexnet_jax ({field} {v}; "
          f"this one reads up to {ours}): update alexnet_jax to read or resume it. Nothing "
          "was changed."
      )


def _reason(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


class Restored(NamedTuple):
  state: object
  step: int
  meta: dict
  skipped: list  # [(step, reason)] of newer checkpoints that did not restore


def _abstract_with_shardings(abstract, shardings):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def _not_the_read_only_notice(record) -> bool:
  """Orbax warns "Given directory is read only" whenever a manager opens for reading, which
  is what read_only asks for (the directory itself is writable): it tells the user nothing."""
  return not str(record.msg).startswith("Given directory is read only")


def _not_a_full_disk_traceback(record) -> bool:
  """Orbax logs a background save that fails with its traceback (two per save), and asyncio
  logs its writes' tasks ("Task exception was never retrieved") as the process ends; for a
  full disk, the run's CheckpointSaveError line says it all."""
  if not record.exc_info or not ("/orbax/" in record.pathname or record.name == "asyncio"):
    return True
  return not disk_space.is_full(record.exc_info[1])


def _unraisable(hook):
  """sys.unraisablehook without "RuntimeError: Event loop is closed" from asyncio's
  call_soon_threadsafe: when one write of a save fails, Orbax closes its writer thread's event
  loop while TensorStore still completes that thread's other writes, and each completion that
  finds the loop closed printed a traceback (dozens per failed save). Nothing is lost: those
  results belong to the abandoned save, whose failure CheckpointSaveError reports."""

  def quiet(u):
    if (
        isinstance(u.exc_value, RuntimeError)
        and str(u.exc_value) == "Event loop is closed"
        and any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(u.exc_traceback))
    ):
      return
    if _abandoned_read(u):
      return
    hook(u)

  quiet.quiets_closed_loops = True
  return quiet


# Orbax reads a step's arrays as one coroutine per array; when one read fails (a damaged
# checkpoint), the restore raises and the others are abandoned, some never started.
_READ_COROUTINE = "_read_array_index_and_device_put"


def _abandoned_read(u) -> bool:
  """An unraisable exception of an abandoned read: closed mid-read when collected, Orbax's
  coroutine turns the GeneratorExit into an Exception quoting the array's whole TensorStore
  spec (80 lines each, dozens per damaged step)."""
  code = getattr(getattr(u, "object", None), "cr_code", None)
  return getattr(code, "co_name", None) == _READ_COROUTINE


def _collect_abandoned_reads() -> None:
  """After a restore failed: the abandoned reads collected now, quietly, rather than printed
  whenever the garbage collector finds them ("coroutine ... was never awaited", or the
  traceback of _abandoned_read). The failure itself is reported once, by restore_latest."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda u: None if _abandoned_read(u) else hook(u)
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings(
          "ignore", f"coroutine '{_READ_COROUTINE}' was never awaited", RuntimeWarning
      )
      gc.collect()
  finally:
    sys.unraisablehook = hook


def _quiet_failed_saves() -> None:
  """Once per process: the filters above (a second manager adds nothing)."""
  logging.get_absl_logger().addFilter(_not_a_full_disk_traceback)
  std_logging.getLogger("asyncio").addFilter(_not_a_full_disk_traceback)
  if not getattr(sys.unraisablehook, "quiets_closed_loops", False):
    sys.unraisablehook = _unraisable(sys.unraisablehook)


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
    self._workdir = os.path.abspath(workdir)
    if os.path.isdir(self.directory):  # Orbax's listing would end in a traceback
      try:
        os.listdir(self.directory)
      except OSError as e:
        raise UnreadableCheckpointsError(
            f"{self.directory} cannot be read ({e.strerror or e}): give this user access to "
            "it (and its steps), or move it away to start the run from scratch. Nothing was "
            "changed."
        ) from None
    if not read_only:  # before Orbax lists the steps (or deletes what it takes for its own)
      if jax.process_index() == 0:
        for name, reason in self._not_step_directories():
          logging.warning(
              "skipping checkpoint step %s in %s: %s. Trying an older one; the files are kept.",
              name,
              self.directory,
              reason,
          )
          self._move_aside(name)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("alexnet_jax: stray checkpoint entries set aside")
    # Look before Orbax does: it deletes temporary directories when it starts.
    incomplete = [] if read_only else self._incomplete_entries()
    if read_only:  # the same function each time: added once
      logging.get_absl_logger().addFilter(_not_the_read_only_notice)
    else:
      _quiet_failed_saves()
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
    self._read_only = read_only
    self._pending = None  # step of a save that may still be in flight
    self._bytes = 0  # the size of the last saved state's arrays
    for path in incomplete:
      logging.warning(
          "ignoring %s: not a complete checkpoint (a save that was "
          "interrupted?); restoring from step %s instead.",
          path,
          self._manager.latest_step(),
      )

  def _not_step_directories(self) -> list[tuple[str, str]]:
    """(name, why) of the step entries (names starting with a digit) that are not real
    directories: Orbax would skip or delete them, and a save of that step would fail."""
    if not os.path.isdir(self.directory):
      return []
    out = []
    for name in sorted(os.listdir(self.directory)):
      path = os.path.join(self.directory, name)
      if not name[:1].isdigit():
        continue
      if os.path.islink(path):
        try:
          target = os.readlink(path)
          os.stat(path)
          why = f"a symbolic link (to {target}), not a step directory"
        except OSError as e:
          why = f"a symbolic link that cannot be followed ({e.strerror or e}), not a step directory"
      elif not os.path.isdir(path):
        why = "a file, not a step directory"
      else:
        continue
      out.append((name, why))
    return out

  def _move_aside(self, name: str) -> str:
    """Move checkpoints/<name> (the entry itself, never a link's target) to UNREADABLE_DIR."""
    target = os.path.join(self._workdir, UNREADABLE_DIR)
    os.makedirs(target, exist_ok=True)
    dest, n = os.path.join(target, name), 1
    while os.path.lexists(dest):
      dest, n = os.path.join(target, f"{name}.{n}"), n + 1
    os.rename(os.path.join(self.directory, name), dest)
    logging.warning("moved unreadable checkpoint step %s to %s (kept, not deleted)", name, dest)
    return dest

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
    """Start an asynchronous save of `state` as `step` (errors: at `check` or `wait`)."""
    run_lock.check_held()  # another trainer took run.lock: write nothing more
    self.wait()  # Orbax waits for the previous save anyway; its failure is reported first
    metrics = (
        {"top1_error": float(eval_metrics["top1_error"])} if eval_metrics is not None else None
    )
    self._bytes = sum(int(np.size(x)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    meta = seal(
        {
            "step": int(step),
            **(meta or {}),
            **({"eval": eval_metrics} if eval_metrics else {}),
            "checksums": checksums(state),
        }
    )
    self._pending = step
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          metrics=metrics,
      )
    except Exception as e:  # pylint: disable=broad-except
      self._pending = None
      raise self._save_error(step, e) from e

  def check(self):
    """Raise CheckpointSaveError if a background save has finished and failed, and
    run_lock.RunLockLostError if another trainer took this run's lock."""
    run_lock.check_held()
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self._finish_pending()

  def wait(self):
    """Block until the save in flight is committed; CheckpointSaveError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._pending = self._pending, None
      raise self._save_error(step, e) from e
    if self._pending is not None:
      self._finish_pending()

  def _finish_pending(self):
    step, self._pending = self._pending, None
    try:
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if step not in self._manager.all_steps():  # Orbax logged the failure and skipped it
      raise self._save_error(step, None)

  def _save_error(self, step, error: BaseException | None) -> CheckpointSaveError:
    free = disk_space.free_bytes(self.directory)
    need = self._bytes
    latest = self.latest_step()
    kept = (
        f"The checkpoints already written are intact (latest: step {latest}); rerun the same "
        f"command to resume from it."
        if latest is not None
        else "No earlier checkpoint exists."
    )
    if disk_space.is_full(error) or (free is not None and free < need):
      return CheckpointSaveError(
          disk_space.message(
              f"checkpoint step {step}",
              self.directory,
              f"a checkpoint of this run needs about {disk_space.megabytes(need)}, and "
              "keep_checkpoints of them are kept",
              "move the workdir",
              kept,
          )
      )
    return CheckpointSaveError(
        f"checkpoint step {step} could not be written to {self.directory}: "
        f"{_reason(error) if error else 'see the error Orbax logged above'}. {kept}"
    )

  def restore(self, abstract_state, shardings, step: int | None = None):
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = _abstract_with_shardings(abstract_state, shardings)
    try:
      return self._restore_state(step, target)
    except ValueError as e:
      fields = flax.serialization.to_state_dict(target)
      empty = [k for k, v in fields.items() if isinstance(v, dict) and not jax.tree.leaves(v)]
      if not empty or "do not match" not in str(e):
        raise
      # Saved before a field of the state existed that holds nothing in this run (the
      # TrainState's batch_stats for a network without BatchNorm): restore the others.
      rest = self._restore_state(step, {k: v for k, v in fields.items() if k not in empty})
      return flax.serialization.from_state_dict(target, {**rest, **{k: {} for k in empty}})

  def _restore_state(self, step: int, target):
    out = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    return out["state"]

  def restore_meta(self, step: int) -> dict:
    """The JSON saved beside the state (num_classes, dataset, eval metrics)."""
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest(self, abstract_state, shardings) -> Restored | None:
    """The newest checkpoint that restores and verifies (None: the directory has none).

    Newer ones that fail are logged and skipped; a writer (not read_only) moves them to
    UNREADABLE_DIR so that its next saves neither collide with them nor let Orbax delete
    the good ones to keep them. UnreadableCheckpointsError if none restores.
    """
    skipped = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        meta = self.restore_meta(step)
        if isinstance(meta, dict):  # before the state: a newer layout may not restore
          check_versions(meta, step, self.directory)
        state = self.restore(abstract_state, shardings, step)
        verify(state, meta, step)
        error = None
      except Exception as e:  # pylint: disable=broad-except
        error = e
      if jax.process_count() > 1:  # every process restores the same step
        ok = multihost_utils.process_allgather(np.asarray(error is None))
        if error is None and not np.all(ok):
          error = RuntimeError("another process could not restore it")
      if isinstance(error, NewerCheckpointError):  # not damaged: for newer code to read
        raise error
      if error is None:
        if skipped and not self._read_only:
          self._set_aside([s for s, _ in skipped])
        return Restored(state, int(step), meta, skipped)
      skipped.append((int(step), _reason(error)))
      error = None  # its traceback holds the abandoned reads
      _collect_abandoned_reads()
      logging.warning(
          "skipping checkpoint step %d in %s: %s. Trying an older one; the files are kept.",
          step,
          self.directory,
          skipped[-1][1],
      )
    if skipped:
      raise UnreadableCheckpointsError(
          f"none of the {len(skipped)} checkpoint(s) in {self.directory} can be restored:\n"
          + "\n".join(f"  step {s}: {r}" for s, r in skipped)
          + f"\nNothing was changed. Move {self.directory} away to start this run from "
          f"scratch, or restore a copy of the checkpoints."
      )
    return None

  def _set_aside(self, steps):
    if jax.process_index() == 0:
      for step in steps:
        self._move_aside(str(step))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("alexnet_jax: unreadable checkpoints set aside")
    self._manager.reload()

  def restore_or(self, init_fn, abstract, shardings):
    """Restore the newest good checkpoint of `abstract`'s shapes onto `shardings`, or call
    init_fn() for a new run. (`abstract` is given, not traced from init_fn: the init is a
    top-level jit with its own compiler options.)"""
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), abstract)
    restored = self.restore_latest(abstract, shardings)
    if restored is None:
      return init_fn()
    logging.info("resumed from %s at step %d", self.directory, restored.step)
    return restored.state

  def close(self):
    self._manager.close()


def _num_classes(manager: CheckpointManager) -> int:
  """fc8's width, from the newest checkpoint whose meta item reads."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return int(manager.restore_meta(step)["num_classes"])
    except Exception:  # pylint: disable=broad-except  (restore_latest says which and why)
      continue
  raise UnreadableCheckpointsError(f"no checkpoint in {manager.directory} has a readable meta")


class RestoredRun(NamedTuple):
  config: ml_collections.ConfigDict
  variables: dict  # {"params": ...} (and "batch_stats" for a network with BatchNorm)
  step: int
  meta: dict  # what training saved beside the state: num_classes, dataset, eval metrics


def restore_run(workdir: str, target, step: int | None = None) -> RestoredRun:
  """A run's config (config.json, upgraded), variables, step and metadata, read-only.

  target(config, num_classes) -> (abstract state, shardings): where the arrays go (the
  caller's devices; Orbax reshards onto them). step None: the newest step that verifies.
  """
  config = run_dir.read_config(workdir)
  manager = CheckpointManager(workdir, keep=config.get("keep_checkpoints", 3), read_only=True)
  try:
    if step is None:  # the newest one that verifies
      if manager.latest_step() is None:
        raise FileNotFoundError(
            f"no checkpoint in {manager.directory}: has the run in {workdir} saved one yet?"
        )
      state, step, meta, _ = manager.restore_latest(*target(config, _num_classes(manager)))
    else:
      try:
        meta = manager.restore_meta(step)
        if isinstance(meta, dict):
          check_versions(meta, step, manager.directory)
        abstract, shardings = target(config, int(meta["num_classes"]))
        state = manager.restore(abstract, shardings, step)
        verify(state, meta, step)
      except NewerCheckpointError:
        raise
      except FileNotFoundError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (damaged or unreadable: one line)
        raise UnreadableStepError(
            f"checkpoint step {step} in {manager.directory} cannot be restored: {_reason(e)}"
        ) from None
  finally:
    manager.close()
  return RestoredRun(config, state.variables, int(step), meta)


def restore(workdir: str, step: int | None = None, mesh=None):
  """(config, variables) of a run's TrainState on `mesh` (default: the first local device).
  To run the network on images, use analysis.load_run(workdir), which also preprocesses
  them as evaluation does:

  run = analysis.load_run("runs/demo")
  probs = run.predict(images)  # uint8 images of any size
  """
  run = restore_run(workdir, train_state.restore_target(mesh), step)
  return run.config, run.variables
