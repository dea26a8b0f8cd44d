"""Checks of a run's config made before any device work.

- `validate`: impossible values (batch_size <= 0, a negative learning rate, eval_crops 3,
  an unknown initializer or schedule, ...): one line per problem, naming the key and what is
  allowed.
- `check_workdir`: the workdir must be a directory this process can write.
- `resume_changes` / `record`: a resumed run is compared with the config.json its workdir
  recorded. Keys that change the parameter shapes or the data stream are refused (the
  restore would fail, or the run would continue silently on other data); keys that only
  change how long, how often or where are accepted and appended to config_history.jsonl.
  config.json is rewritten only after the check passed.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile

import ml_collections

from alexnet_jax import config_schema
from alexnet_jax.run_dir import CHECKPOINT_DIR, CONFIG_FILE, HISTORY_FILE

# A resume may change these (dotted keys; "mesh.*" is every key under mesh): how long the run
# is, how often it logs/evaluates/saves, how it evaluates, the device layout (checkpoints
# restore onto any mesh) and where the data live.
SAFE_ON_RESUME = (
    "num_train_steps",
    "num_epochs",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_crops",
    "eval_batch_size",
    "max_eval_batches",
    "mesh.*",
    "dataset.data_dir",
    "dataset.manual_dir",
    "dataset.cache",
    "dataset.prepared",
    "prepare.*",
)
# Never on resume, not even with --allow_config_change: the parameter shapes (model.*) or the
# data stream (which examples, in which order, normalised how) would differ.
NEVER_ON_RESUME = (
    "model.*",
    "input.crop_size",
    "dataset.name",
    "dataset.stats_max_images",
    "dataset.shuffle_buffer",
    "dataset.exif_transpose",
    "dataset.resize",
    "init_from",
    "batch_size",
    "seed",
)

EVAL_CROPS = (1, 10)  # the center crop, or the paper's ten views (§4.1)
CHOICES = {
    "model.initializer": ("paper", "he"),
    "model.dtype": ("float32", "bfloat16", "float16", "float64"),
    "optimizer.schedule": ("plateau", "step", "constant"),
    "augment.eigen": ("dataset", "imagenet"),
    "input.mean": ("dataset", "pixel", "run"),
    "input.channel_order": ("rgb", "bgr"),
    "dataset.resize": ("round", "torchvision", "warp"),
    "prepare.format": ("jpeg", "raw"),
}


class ConfigError(ValueError):
  """An impossible config, workdir or config change; the message is meant for the user."""


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if node is None or part not in node:
      return None
    node = node[part]
  return node


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """Every impossible value of `config`, one line each (empty: nothing found)."""
  out = []

  def need(key, ok, allowed):
    value = _get(config, key)
    if value is None:
      return  # absent keys belong to other configs (and to other checks)
    if not ok(value):
      out.append(f"config.{key}={value!r} is impossible: it must be {allowed}.")

  positive_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
  need("batch_size", positive_int, "a positive integer (the global batch)")
  need("eval_batch_size", positive_int, "a positive integer")
  need("log_every_steps", positive_int, "a positive integer")
  need("checkpoint_every_steps", positive_int, "a positive integer")
  need("keep_checkpoints", positive_int, "a positive integer")
  need("eval_every_steps", lambda v: v == -1 or positive_int(v), "-1 (once per epoch) or > 0")
  need("eval_crops", lambda v: v in EVAL_CROPS, "1 (center crop) or 10 (the paper's views)")
  need("model.width", lambda v: _is_number(v) and v > 0, "a number > 0 (1.0 = the paper)")
  need(
      "model.dropout_rate",
      lambda v: _is_number(v) and 0 <= v < 1,
      "a number in [0, 1) (paper: 0.5)",
  )
  need(
      "optimizer.learning_rate",
      lambda v: _is_number(v) and v > 0,
      "a number > 0 (paper: 0.01)",
  )
  need("optimizer.momentum", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
  need("optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0")
  need("optimizer.drop_factor", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")
  need("augment.lighting_std", lambda v: _is_number(v) and v >= 0, "a number >= 0")
  need("prepare.jpeg_quality", lambda v: positive_int(v) and v <= 100, "an integer in [1, 100]")
  need("prepare.images_per_shard", positive_int, "a positive integer")
  need(
      "dataset.prepared",
      lambda v: isinstance(v, str) and v != "",
      "'auto' (shards found beside the data), 'off' or a directory of prepared shards",
  )
  need("input.scale", lambda v: _is_number(v) and v > 0, "a number > 0")
  for key, allowed in CHOICES.items():
    need(key, lambda v, a=allowed: v in a, "one of " + ", ".join(repr(a) for a in allowed))
  steps, epochs = _get(config, "num_train_steps"), _get(config, "num_epochs")
  if isinstance(steps, int) and steps <= 0 and not (_is_number(epochs) and epochs > 0):
    out.append(
        f"config.num_train_steps={steps!r} and config.num_epochs={epochs!r} give no training: "
        f"set num_train_steps > 0, or num_epochs > 0 with num_train_steps=-1."
    )
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise ConfigError listing every impossible value (one line each)."""
  found = problems(config)
  if found:
    raise ConfigError("\n".join(found))


def check_workdir(workdir: str) -> None:
  """The workdir exists (or can be made) as a directory that this process can write."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(
        f"--workdir={workdir} is a file, not a directory: pass a directory (it is created "
        f"if missing)."
    )
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise ConfigError(
        f"--workdir={workdir} cannot be written ({e.strerror or e}): pass a directory you "
        f"can write."
    ) from None


# ---- a resumed run's config ----------------------------------------------------------------
def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = v
  return out


def as_json_dict(config) -> dict:
  """The config as config.json holds it (tuples are lists, references resolved)."""
  return json.loads(config.to_json_best_effort())


def _matches(key: str, patterns) -> bool:
  return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in patterns)


def has_checkpoints(workdir: str) -> bool:
  """Whether the workdir holds a finished checkpoint step (a run to resume)."""
  d = os.path.join(workdir, CHECKPOINT_DIR)
  return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def recorded_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return config_schema.upgrade(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(
        f"{path} cannot be read ({e}): it records the run in {workdir}; restore it, or use "
        f"another --workdir."
    ) from None


def resume_changes(config, workdir: str, allow=()) -> dict:
  """{key: (recorded, new)} of the keys this launch changes, or ConfigError.

  A workdir without checkpoints has nothing to resume: every change is accepted. `allow`:
  keys (or "prefix.*") the user accepts changing although they change the training (e.g.
  optimizer.learning_rate); the NEVER_ON_RESUME keys are refused whatever `allow` says.
  """
  old = recorded_config(workdir)
  if old is None:
    return {}
  a, b = _flat(old), _flat(as_json_dict(config))
  changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
  if not changed or not has_checkpoints(workdir):
    return changed
  # A key only one side has comes from another version of the configs: accepted (recorded);
  # if it mattered, the restore itself fails on the shapes.
  both = [k for k in changed if k in a and k in b]
  never = [k for k in both if _matches(k, NEVER_ON_RESUME)]
  other = [k for k in both if k not in never and not _matches(k, SAFE_ON_RESUME + tuple(allow))]
  if never or other:
    show = lambda keys: ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in keys)  # noqa: E731
    msg = f"refusing to resume the run in {workdir} with a changed config: "
    if never:
      msg += (
          f"{show(never)} would change the parameter shapes or the data; resume with the "
          f"values in {os.path.join(workdir, CONFIG_FILE)}, or start a new --workdir. "
      )
    if other:
      msg += (
          f"{show(other)} would change the training; pass --allow_config_change="
          f"{','.join(other)} to accept. "
      )
    msg += f"Keys a resume may change: {', '.join(SAFE_ON_RESUME)}."
    raise ConfigError(msg)
  return changed


def _write_atomic(path: str, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)  # a reader never sees half a config


def record(config, workdir: str, changes: dict) -> None:
  """Write config.json (this launch's config) and append to config_history.jsonl: the first
  launch, and every launch that changed a key, with the old and new values."""
  first = not os.path.exists(os.path.join(workdir, CONFIG_FILE))
  if not first and not changes:
    return
  _write_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))
  entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  if first:
    entry["event"] = "created"
  else:
    entry["event"] = "resumed with changes"
    entry["changes"] = {k: {"from": old, "to": new} for k, (old, new) in changes.items()}
  with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
    f.write(json.dumps(entry) + "\n")
