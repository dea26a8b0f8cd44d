"""Old run directories' config.json in today's layout (`upgrade`).

The network's input convention lives in config.input; a config.json written with it under
config.augment (and the crop size as model.image_size) is read through `upgrade`, which
every reader of a run's config.json calls (checkpoint restore, the resume check, init_from,
analysis).
"""

from __future__ import annotations

import copy

# (old section, old key) -> new key under config.input
_MOVED_TO_INPUT = {
    ("augment", "mean"): "mean",
    ("augment", "mean_rgb"): "mean_rgb",
    ("augment", "std_rgb"): "std_rgb",
    ("augment", "channel_order"): "channel_order",
    ("augment", "scale"): "scale",
    ("model", "image_size"): "crop_size",
}
# What a config.json that predates a key meant by its absence: the paper's input.
_INPUT_DEFAULTS = {
    "mean": "dataset",
    "mean_rgb": [0.0, 0.0, 0.0],
    "std_rgb": [],
    "channel_order": "rgb",
    "scale": 1.0,
    "crop_size": 224,
}


def upgrade(config: dict) -> dict:
  """A config.json's dict in today's layout (a copy; idempotent on today's configs)."""
  out = copy.deepcopy(dict(config))
  section = dict(out.get("input") or {})
  for (old_section, old_key), key in _MOVED_TO_INPUT.items():
    old = out.get(old_section)
    if isinstance(old, dict) and old_key in old:
      old = dict(old)
      value = old.pop(old_key)
      section.setdefault(key, value)
      out[old_section] = old
  for key, value in _INPUT_DEFAULTS.items():
    section.setdefault(key, copy.deepcopy(value))
  out["input"] = section
  if isinstance(out.get("dataset"), dict):
    out["dataset"] = {"resize": "round", **out["dataset"]}
  return out
