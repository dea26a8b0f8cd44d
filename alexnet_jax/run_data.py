"""The data a run trains on are part of the run: recorded when it starts, checked on resume.

facts.DATA_FILE (training_data.json) records what identifies the training data:

  source        'originals' (the images themselves) or 'prepared' (python -m alexnet_jax.prepare's
                shards: their directory, format, JPEG quality and plan digest)
  fingerprint   the dataset's signature: for folder: the training files' names, sizes and
                modification times; for TFDS its version and training-split size; the digits'
                size; prepared shards carry their originals' fingerprint
  num_train, num_eval, num_classes, class_names_sha256   the splits' sizes and the classes
  stats         the SHA-256 of the run's statistics (dataset_stats.npz: mean image, RGB
                covariance and eigen-basis, image count, undecodable files)

A resume (the workdir holds a checkpoint) reads the source the run started with: with
dataset.prepared='auto' it reads the originals if the run started on them (prepared shards that
appeared since are not used) and the recorded shards if it started on those (gone or stale: the
resume is refused). It is refused, before anything is written, with one line naming what
changed when the data differ, unless --allow_config_change=training_data. The run's statistics
are never recomputed or replaced in the middle of a run: a resume uses dataset_stats.npz, checked
against the record (also when other data were allowed). A run directory written before this
record existed resumes as it did (statistics from the data) and gets the record then.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os

import numpy as np
from absl import logging

from alexnet_jax import data as data_lib
from alexnet_jax import facts, files, run_dir
from alexnet_jax.config_schema import ConfigError
from alexnet_jax.data import registry, shards

VERSION = 1
# The token --allow_config_change takes to resume on other training data.
ALLOW = "training_data"


class DataChangedError(ConfigError):
  """A resume whose training data (or statistics) would differ from the run's."""


# ---- what identifies the data ----------------------------------------------------------------
def stats_digest(stats: data_lib.DatasetStats) -> str:
  """SHA-256 of the fields dataset_stats.npz holds (dtypes, shapes and bytes): equal for equal
  statistics whenever and however the file was written."""
  h = hashlib.sha256()
  for name, a in run_dir.stats_fields(stats).items():
    a = np.ascontiguousarray(a)
    h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def read_stats(workdir: str) -> data_lib.DatasetStats | None:
  """dataset_stats.npz (None: no file), or RunFileError naming it: truncated, not an npz,
  a field missing or of another shape or type. Each array's header is checked against its
  expected shape before anything is allocated."""
  path = os.path.join(workdir, facts.STATS_FILE)
  if not os.path.exists(path):
    return None
  shapes = {
      "mean_image": facts.MEAN_IMAGE_SHAPE,
      "covariance": (3, 3),
      "eigval": (3,),
      "eigvec": (3, 3),
  }
  shapes.update(num_images=(), bad_files=None)
  fix = (
      "restore it, or delete it: a resume then recomputes it from the dataset and checks it "
      f"against {facts.DATA_FILE}"
  )
  z = run_dir.read_npz(path, shapes, run_dir.MAX_STATS_BYTES, fix)
  if z["bad_files"].ndim != 1 or z["bad_files"].dtype.kind != "U":
    raise run_dir.RunFileError(f"{path}: bad_files is not a list of names; {fix}")
  if not np.issubdtype(z["num_images"].dtype, np.integer):
    raise run_dir.RunFileError(f"{path}: num_images is not an integer; {fix}")
  return data_lib.DatasetStats(
      mean_image=z["mean_image"],
      covariance=z["covariance"],
      eigval=z["eigval"],
      eigvec=z["eigvec"],
      num_images=int(z["num_images"]),
      bad_files=tuple(str(x) for x in z["bad_files"]),
  )


def identity(src: data_lib.Source) -> dict:
  """What identifies `src`'s data (the record's fields but 'stats')."""
  info = src.info
  out = {
      "version": VERSION,
      "dataset": src.name,
      "source": "prepared" if getattr(src.train, "prepared", False) else "originals",
      "description": src.description,
      "fingerprint": src.fingerprint,
      "num_train": info.num_train,
      "num_eval": info.num_eval,
      "num_classes": info.num_classes,
      "class_names_sha256": hashlib.sha256(
          json.dumps([str(n) for n in info.class_names]).encode()
      ).hexdigest(),
  }
  if out["source"] == "prepared":
    plan = shards.read_plan(src.train.root)
    out["prepared"] = {
        "dir": src.train.root,
        "format": plan["format"],
        "jpeg_quality": plan.get("jpeg_quality"),
        "plan_digest": src.train.digest,
    }
  return out


def _source_text(d: dict) -> str:
  """What a record's source was, its text escaped (a record is a file: text from it is)."""
  if d["source"] == "originals":
    return f"the original images ({files.printable(d.get('description', d['dataset']))})"
  p = d["prepared"]
  fmt = f"JPEG quality {p.get('jpeg_quality')}" if p["format"] == "jpeg" else "raw rows"
  return f"the prepared shards in {files.printable(p['dir'])} ({fmt})"


def differences(old: dict, new: dict) -> list[str]:
  """What differs between two identities, as phrases (empty: the same data)."""
  out = []
  same_source = old["source"] == new["source"] and (
      old["source"] == "originals"
      or old["prepared"]["plan_digest"] == new["prepared"]["plan_digest"]
  )
  if not same_source:
    out.append(f"it read {_source_text(old)}, now {_source_text(new)}")
  name = files.printable(old["dataset"])
  if (old["num_train"], old["num_classes"]) != (new["num_train"], new["num_classes"]):
    out.append(
        f"{name} had {old['num_train']} training images in {old['num_classes']} "
        f"classes, now {new['num_train']} in {new['num_classes']}"
    )
  elif old["class_names_sha256"] != new["class_names_sha256"]:
    out.append(f"the class names of {name} differ")
  if old["num_eval"] != new["num_eval"]:
    out.append(f"{old['num_eval']} validation images, now {new['num_eval']}")
  if old["fingerprint"] != new["fingerprint"] and old["num_train"] == new["num_train"]:
    changed = registry.kind_of(old["dataset"]).changed
    out.append(changed or f"its signature was {old['fingerprint']!r}, now {new['fingerprint']!r}")
  return out


# ---- the record --------------------------------------------------------------------------------
def read(workdir: str) -> dict | None:
  """The run's record, or None (a run started before runs kept one)."""
  path = os.path.join(workdir, facts.DATA_FILE)
  if not os.path.exists(path):
    return None
  fix = (
      f"it records the data the run in {workdir} trains on; restore it, or delete it to "
      "resume as if the run predated it."
  )
  record = files.read_json(path, dict, what="record of training data", fix=fix, error=_Unreadable)
  wrong = _record_problem(record)
  if wrong:
    raise DataChangedError(f"{files.printable(path)} cannot be read ({wrong}): {fix}")
  return record


class _Unreadable(DataChangedError):
  pass


# The record's fields that a resume reads, with their JSON types.
_FIELDS = {
    "source": str,
    "dataset": str,
    "fingerprint": str,
    "num_train": int,
    "num_eval": int,
    "num_classes": int,
    "class_names_sha256": str,
}


def _record_problem(record: dict) -> str:
  """What makes `record` not a record of the training data ('' when it is one)."""
  for key, kind in _FIELDS.items():
    if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
      return f"not a record of the training data: {key!r} is missing or not a {kind.__name__}"
  if record["source"] not in ("originals", "prepared"):
    return f"source {files.printable(record['source'])!r} is neither originals nor prepared"
  if record["source"] == "prepared":
    p = record.get("prepared")
    if not isinstance(p, dict) or not all(
        isinstance(p.get(k), str) for k in ("dir", "format", "plan_digest")
    ):
      return "its 'prepared' entry lacks the directory, format or plan digest"
  stats = record.get("stats")
  if stats is not None and not (isinstance(stats, dict) and isinstance(stats.get("sha256"), str)):
    return "its 'stats' entry has no SHA-256"
  return ""


def write(workdir: str, record: dict) -> None:
  run_dir.write_json(os.path.join(workdir, facts.DATA_FILE), record)


def _note_in_history(workdir: str, changes: list[str]) -> None:
  entry = {
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "event": f"resumed on other training data (--allow_config_change={ALLOW})",
      "changes": changes,
  }
  path = os.path.join(workdir, facts.HISTORY_FILE)
  with files.open_for_append(path, "history", DataChangedError) as f:
    f.write(json.dumps(entry) + "\n")


# ---- opening the data of a run -------------------------------------------------------------------
@dataclasses.dataclass
class RunData:
  """The dataset a run reads and the statistics it uses, and what to record."""

  dataset: data_lib.Source
  stats: data_lib.DatasetStats
  keep_stats: bool  # the run's dataset_stats.npz is used as it is: not rewritten
  record: dict
  changes: list  # what an allowed resume changed (empty otherwise)


def _refusal(workdir: str, what: str) -> DataChangedError:
  return DataChangedError(
      f"refusing to resume the run in {workdir}: {what}. Resume on the data it started with "
      f"({os.path.join(workdir, facts.DATA_FILE)} names them), start a new --workdir, or pass "
      f"--allow_config_change={ALLOW} to continue on the data found now (the run keeps its "
      f"statistics, {facts.STATS_FILE})."
  )


def _open(dataset_config, recorded, workdir, allowed) -> data_lib.Source:
  """The dataset; with a record and dataset.prepared='auto', the source the run started on."""
  settings = data_lib.Settings.of(dataset_config)
  if recorded is None or settings.prepared != "auto":
    return data_lib.open_dataset(settings)
  pinned = "off" if recorded["source"] == "originals" else recorded["prepared"]["dir"]
  try:
    return data_lib.open_dataset(dataclasses.replace(settings, prepared=pinned))
  except data_lib.DatasetNotFoundError:
    raise
  except data_lib.DatasetError as e:
    why = " ".join(str(e).split())  # one line
    if not allowed:
      raise _refusal(
          workdir, f"it started on {_source_text(recorded)}, which cannot be read now ({why})"
      ) from None
    logging.warning(
        "the run started on %s, which cannot be read now (%s); reading what "
        "dataset.prepared='auto' finds (--allow_config_change=%s).",
        _source_text(recorded),
        why,
        ALLOW,
    )
    return data_lib.open_dataset(settings)


def open_for_run(config, workdir: str, resuming: bool, allow=()) -> RunData:
  """The run's dataset and statistics. A resume (`resuming`: the workdir holds a checkpoint)
  of a run with a record reads the recorded source and statistics, and raises
  DataChangedError (one line) if its data differ and ALLOW is not in `allow`; nothing is
  written here."""
  allowed = ALLOW in tuple(allow)
  recorded = read(workdir) if resuming else None
  src = _open(config.dataset, recorded, workdir, allowed)
  current = identity(src)
  changes = differences(recorded, current) if recorded is not None else []
  if changes and not allowed:
    raise _refusal(workdir, "the training data changed since it started: " + "; ".join(changes))
  stats, keep = None, False
  if recorded is not None and recorded.get("stats"):
    want = recorded["stats"]["sha256"]
    stats = read_stats(workdir)
    got = stats_digest(stats) if stats is not None else None
    if got == want:
      keep = True
    elif stats is not None and not allowed:
      raise _refusal(
          workdir,
          f"its statistics {os.path.join(workdir, facts.STATS_FILE)} are not the ones it "
          f"started with (SHA-256 {got[:12]}..., recorded {want[:12]}...)",
      )
    elif stats is not None:
      keep = True
      logging.warning(
          "%s differs from the statistics the run started with; using it as it is "
          "(--allow_config_change=%s).",
          facts.STATS_FILE,
          ALLOW,
      )
    else:  # the file was lost: the data's own statistics, if they are the run's
      stats = data_lib.dataset_stats(src)
      if stats_digest(stats) != want and not allowed:
        raise _refusal(
            workdir,
            f"{facts.STATS_FILE} is missing and the statistics of the data now differ from "
            f"the ones it started with",
        )
  else:  # a new run, or one started before runs kept a record: as before
    stats = data_lib.dataset_stats(src)
  if changes:
    logging.warning(
        "resuming %s on other training data (--allow_config_change=%s): %s. %s",
        workdir,
        ALLOW,
        "; ".join(changes),
        f"The run keeps its statistics ({facts.STATS_FILE}, {stats.num_images} images) from "
        "when it started."
        if keep
        else f"Its {facts.STATS_FILE} was missing: the statistics are those of the data now.",
    )
  stats_record = {
      "file": facts.STATS_FILE,
      "sha256": stats_digest(stats),
      "num_images": int(stats.num_images),
  }
  return RunData(src, stats, keep, {**current, "stats": stats_record}, changes)


def record(workdir: str, run_data: RunData) -> None:
  """Write the record (process 0, once the check passed); an allowed change goes into
  config_history.jsonl too."""
  write(workdir, run_data.record)
  if run_data.changes:
    _note_in_history(workdir, run_data.changes)
