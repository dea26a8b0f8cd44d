"""Checks of a run's config made before any device work, derived from the declarations in
alexnet_jax/config_schema.py.

- `validate`: impossible values (batch_size <= 0, a negative learning rate, eval_crops 3,
  an unknown initializer or schedule, a key no config has, ...): one line per problem, naming
  the key and what is allowed.
- `check_workdir`: the workdir must be a directory this process can write.
- `resume_changes` / `record`: a resumed run is compared with the config.json its workdir
  recorded (read through config_schema.upgrade). Keys whose resume rule is 'never' change the
  parameter shapes or the data stream and are refused (the restore would fail, or the run
  would continue silently on other data); 'safe' keys only change how long, how often, where
  or on which devices, and are accepted and appended to config_history.jsonl; 'allow' keys
  need --allow_config_change. config.json is rewritten only after the check passed.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile

from alexnet_jax import config_schema, files, run_dir
from alexnet_jax.config_schema import ConfigError, problems, validate  # noqa: F401 (the API)
from alexnet_jax.facts import CHECKPOINT_DIR, CONFIG_FILE, HISTORY_FILE
from alexnet_jax.files import write_atomically

SAFE_ON_RESUME = config_schema.keys_with(resume=config_schema.SAFE)
NEVER_ON_RESUME = config_schema.keys_with(resume=config_schema.NEVER)


def _sections(keys) -> list[str]:
  """`keys` with each section whose keys are all in it written as "section.*"."""
  out = []
  for key in keys:
    section = key.split(".")[0]
    whole = "." in key and all(
        k in keys for k in config_schema.keys_with() if k.startswith(section + ".")
    )
    name = f"{section}.*" if whole else key
    if name not in out:
      out.append(name)
  return out


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
  """The workdir's config.json in this layout (config_schema.upgrade), or None."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  fix = f"it records the run in {workdir}: restore it, or use another --workdir"
  return run_dir.upgrade_config(run_dir.read_json(path, dict, fix), path, fix)


def resume_changes(config, workdir: str, allow=()) -> dict:
  """{key: (recorded, new)} of the keys this launch changes, or ConfigError.

  A workdir without checkpoints has nothing to resume: every change is accepted. `allow`:
  keys (or "prefix.*") the user accepts changing although they change the training (e.g.
  optimizer.learning_rate); the NEVER_ON_RESUME keys are refused whatever `allow` says.
  """
  old = recorded_config(workdir)
  if old is None:
    return {}
  a = config_schema.flat(old)
  b = config_schema.flat(as_json_dict(config))
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
    msg += f"Keys a resume may change: {', '.join(_sections(SAFE_ON_RESUME))}."
    raise ConfigError(msg)
  return changed


def record(config, workdir: str, changes: dict) -> None:
  """Write config.json (this launch's config) and append to config_history.jsonl: the first
  launch, and every launch that changed a key, with the old and new values."""
  first = not os.path.exists(os.path.join(workdir, CONFIG_FILE))
  if not first and not changes:
    return
  text = config.to_json_best_effort(indent=2)
  write_atomically(os.path.join(workdir, CONFIG_FILE), lambda f: f.write(text.encode()))
  entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  if first:
    entry["event"] = "created"
  else:
    entry["event"] = "resumed with changes"
    entry["changes"] = {k: {"from": old, "to": new} for k, (old, new) in changes.items()}
  with files.open_for_append(os.path.join(workdir, HISTORY_FILE), "history", ConfigError) as f:
    f.write(json.dumps(entry) + "\n")
