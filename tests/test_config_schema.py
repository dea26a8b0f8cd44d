"""The single declaration of every config key: defaults, checks, resume rules and roles derived
from it, and config.json files in the previous layout read through `upgrade`."""

import ast
import copy
import json
import os

import pytest

from alexnet_jax import config_checks, config_schema
from configs import (
    ablations,
    caffe,
    default,
    demo,
    keras_bn,
    lars,
    paper,
    pytorch_grouped,
    torchvision,
)

# config.json as the previous configs/default.py wrote it (written out by hand: tuples are
# JSON lists, the None-able keys null).
OLD_DEFAULT = {
    "seed": 0,
    "batch_size": 128,
    "num_epochs": 90.0,
    "num_train_steps": -1,
    "mesh": {"data": -1, "tower": 2},
    "dataset": {
        "name": "imagenet2012",
        "data_dir": None,
        "manual_dir": None,
        "shuffle_buffer": 16384,
        "stats_max_images": None,
        "cache": False,
        "exif_transpose": False,
        "resize": "round",
        "prepared": "auto",
    },
    "prepare": {"format": "jpeg", "jpeg_quality": 95, "images_per_shard": 1024},
    "augment": {
        "random_crop": True,
        "flip": True,
        "lighting_std": 0.1,
        "eigen": "dataset",
        "scale": 1.0,
        "mean": "dataset",
        "mean_rgb": [0.0, 0.0, 0.0],
        "std_rgb": [],
        "channel_order": "rgb",
    },
    "model": {
        "width": 1.0,
        "one_tower": False,
        "conv_widths": [],
        "image_size": 224,
        "conv1_padding": [0, 3],
        "lrn": True,
        "lrn_alpha_per_term": True,
        "lrn_k": 2.0,
        "lrn_after_pool": False,
        "lrn_across_towers": False,
        "overlapping_pool": True,
        "fc6_input_order": "hwc",
        "initializer": "paper",
        "dropout_rate": 0.5,
        "dtype": "float32",
    },
    "optimizer": {
        "learning_rate": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "decay_biases": False,
        "schedule": "plateau",
        "drop_factor": 0.1,
        "patience": 2,
        "min_delta": 0.001,
        "max_drops": 3,
        "drop_epochs": [30.0, 60.0, 80.0],
    },
    "eval_crops": 10,
    "eval_batch_size": 128,
    "eval_every_steps": -1,
    "log_every_steps": 100,
    "checkpoint_every_steps": 5000,
    "keep_checkpoints": 3,
    "max_eval_batches": -1,
    "init_from": "",
}


def _old(changes: dict) -> dict:
  """OLD_DEFAULT with {"section.key": value} changes."""
  d = copy.deepcopy(OLD_DEFAULT)
  for dotted, value in changes.items():
    *sections, leaf = dotted.split(".")
    node = d
    for s in sections:
      node = node[s]
    node[leaf] = value
  return d


OLD_DEMO = _old(
    {
        "dataset.name": "digits",
        "dataset.cache": True,
        "batch_size": 64,
        "num_train_steps": 125,
        "mesh.tower": 1,
        "model.width": 0.25,
        "model.initializer": "he",
        "augment.scale": 0.0078125,
        "optimizer.schedule": "step",
        "optimizer.drop_epochs": [4.0],
        "eval_crops": 1,
        "eval_batch_size": 100,
        "eval_every_steps": 125,
        "log_every_steps": 25,
        "checkpoint_every_steps": 125,
    }
)
_TORCHVISION_INPUT = {
    "dataset.resize": "torchvision",
    "augment.mean": "pixel",
    "augment.mean_rgb": [123.675, 116.28, 103.53],
    "augment.std_rgb": [58.395, 57.120000000000005, 57.375],  # 255 * (0.229, 0.224, 0.225)
    "optimizer.learning_rate": 0.001,
    "optimizer.schedule": "constant",
    "mesh.tower": 1,
}
OLD_TORCHVISION = _old(
    {
        **_TORCHVISION_INPUT,
        "model.one_tower": True,
        "model.conv_widths": [64, 192, 384, 256, 256],
        "model.conv1_padding": [2, 2],
        "model.lrn": False,
        "model.fc6_input_order": "chw",
        "eval_crops": 1,
    }
)
OLD_CAFFE = _old(
    {
        "mesh.tower": 1,
        "model.image_size": 227,
        "model.conv1_padding": [0, 0],
        "model.lrn_k": 1.0,
        "model.lrn_alpha_per_term": False,
        "model.lrn_across_towers": True,
        "model.fc6_input_order": "chw",
        "dataset.resize": "warp",
        "augment.mean": "pixel",
        "augment.mean_rgb": [122.67891434, 116.66876762, 104.00698793],
        "augment.channel_order": "bgr",
        "optimizer.learning_rate": 0.001,
        "optimizer.schedule": "constant",
    }
)
OLD_GROUPED = _old(
    {
        **_TORCHVISION_INPUT,
        "model.conv1_padding": [2, 2],
        "model.lrn_after_pool": True,
        "model.lrn_across_towers": True,
        "model.lrn_alpha_per_term": False,
        "model.fc6_input_order": "chw",
        "eval_crops": 1,
    }
)


def _as_json(config) -> dict:
  return config_checks.as_json_dict(config)


def test_every_default_key_has_exactly_one_declaration_with_its_default():
  declared = [k.name for k in config_schema.KEYS]
  assert len(declared) == len(set(declared))
  defaults = config_schema.flat(config_schema.default_config())
  assert sorted(defaults) == sorted(declared)
  for key in config_schema.KEYS:
    assert defaults[key.name] == key.default, key.name
    assert key.resume in ("safe", "allow", "never"), key.name
    assert key.role in (None, "architecture", "input"), key.name
    assert key.doc and key.check.ok(key.default), key.name
  # The previous default.py's keys are all here or named by upgrade.
  assert config_schema.flat(config_schema.upgrade(OLD_DEFAULT)) == _flat_json(default.get_config())


def _flat_json(config) -> dict:
  return config_schema.flat(_as_json(config))


def test_none_able_keys_are_typed_references():
  c = config_schema.default_config()
  c.dataset.data_dir = "/data"  # str field: accepted
  c.dataset.stats_max_images = 500
  with pytest.raises(TypeError):
    c.dataset.stats_max_images = "all"
  assert config_schema.problems(c) == []


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "batch_size",
            0,
            "config.batch_size=0 is impossible: it must be a positive integer "
            "(the global batch).",
        ),
        (
            "input.std_rgb",
            (1.0, 2.0),
            "config.input.std_rgb=(1.0, 2.0) is impossible: it must "
            "be () (no division) or 3 numbers > 0 (R, G, B in pixel units).",
        ),
        ("input.std_rgb", (58.4, 0.0, 57.4), "it must be () (no division) or 3 numbers > 0"),
        (
            "input.mean",
            "image",
            "config.input.mean='image' is impossible: it must be one of "
            "'dataset', 'pixel', 'run'.",
        ),
        (
            "input.crop_size",
            300,
            "config.input.crop_size=300 is impossible: it must be an integer in [1, 256].",
        ),
        (
            "model.variant",
            "vgg",
            "config.model.variant='vgg' is impossible: it must be one of "
            "'paper', 'one_gpu', 'torchvision', 'caffe', 'pytorch_grouped', 'keras_bn'.",
        ),
        ("input.scale", 0.0, "config.input.scale=0.0 is impossible: it must be a number > 0."),
        ("max_eval_batches", 0, "config.max_eval_batches=0 is impossible: it must be -1 or > 0."),
    ],
)
def test_an_impossible_value_is_one_line_naming_the_key(key, value, message):
  c = demo.get_config()
  section, _, leaf = key.rpartition(".")
  (c[section] if section else c)[leaf] = value
  (line,) = config_schema.problems(c)
  assert message in line, line
  with pytest.raises(config_checks.ConfigError, match=key.replace(".", r"\.")):
    config_checks.validate(c)


def test_a_key_of_the_previous_layout_is_named_with_its_new_key():
  c = demo.get_config()
  c.augment.mean = "pixel"
  c.model.one_tower = True
  assert config_schema.problems(c) == [
      "config.augment.mean is not a config key (use config.input.mean): "
      "alexnet_jax/config_schema.py declares every key.",
      "config.model.one_tower is not a config key (use config.model.variant): "
      "alexnet_jax/config_schema.py declares every key.",
  ]


def test_resume_rules_and_roles_are_derived_from_the_declarations():
  assert config_checks.SAFE_ON_RESUME == config_schema.keys_with(resume="safe")
  assert config_checks.NEVER_ON_RESUME == config_schema.keys_with(resume="never")
  never = set(config_checks.NEVER_ON_RESUME)
  assert {"model.variant", "input.crop_size", "batch_size", "seed"} <= never
  assert {"mesh.data", "mesh.tower", "prepare.format", "eval_crops"} <= set(
      config_checks.SAFE_ON_RESUME
  )
  # The input convention changes the training, not the shapes: accepted when allowed.
  assert {"optimizer.learning_rate", "input.mean", "input.scale"} <= set(
      config_schema.keys_with(resume="allow")
  )
  assert config_schema.keys_with(role="architecture") == (
      "input.crop_size",
      "model.variant",
      "model.width",
      "model.lrn",
      "model.overlapping_pool",
  )
  assert config_schema.keys_with(role="input") == (
      "input.mean",
      "input.std_rgb",
      "input.channel_order",
      "input.view",
  )
  assert config_schema.keys_with(resume="never", role="architecture") == config_schema.keys_with(
      role="architecture"
  )


@pytest.mark.parametrize(
    "old, new, variant",
    [
        (OLD_DEFAULT, default.get_config, "paper"),
        # Written by the demo of that time: its recipe is today's demo.py:sgd.
        (OLD_DEMO, lambda: demo.get_config("sgd"), "paper"),
        (OLD_TORCHVISION, torchvision.get_config, "torchvision"),
        (OLD_CAFFE, caffe.get_config, "caffe"),
        (OLD_GROUPED, pytorch_grouped.get_config, "pytorch_grouped"),
    ],
)
def test_upgrade_maps_a_previous_config_json_to_the_new_layout(old, new, variant):
  up = config_schema.upgrade(json.loads(json.dumps(old)))
  assert up["model"]["variant"] == variant
  assert up == _as_json(new())
  assert "mean" not in up["augment"] and "image_size" not in up["model"]
  assert config_schema.upgrade(up) == up  # idempotent


def test_upgrade_of_the_one_gpu_ablation_and_of_the_oldest_layout():
  one_gpu = config_schema.upgrade(_old({"model.one_tower": True, "mesh.tower": 1}))
  expected = ablations.get_config()
  expected.model.variant, expected.mesh.tower = "one_gpu", 1
  assert one_gpu == _as_json(expected)
  # The first config.json layout had no input keys beyond augment.scale and three switches:
  # their absence meant the defaults.
  oldest = _old({"augment.scale": 0.0078125})
  for k in ("mean", "mean_rgb", "std_rgb", "channel_order"):
    del oldest["augment"][k]
  for k in ("conv_widths", "image_size", "conv1_padding", "lrn_after_pool", "lrn_across_towers"):
    del oldest["model"][k]
  del oldest["model"]["fc6_input_order"]
  up = config_schema.upgrade(oldest)
  assert up["input"] == {
      "scale": 0.0078125,
      "mean": "dataset",
      "mean_rgb": [0.0, 0.0, 0.0],
      "std_rgb": [],
      "channel_order": "rgb",
      "view": "crop",
      "crop_size": 224,
  }
  assert up["model"]["variant"] == "paper"


def test_upgrade_is_idempotent_on_every_shipped_config():
  for module in (
      default,
      paper,
      demo,
      ablations,
      torchvision,
      caffe,
      pytorch_grouped,
      keras_bn,
      lars,
  ):
    d = _as_json(module.get_config())
    assert config_schema.upgrade(d) == d, module.__name__


def test_upgrade_of_switches_no_variant_has_names_them():
  # Caffe's LRN with the paper's conv1 padding: no network alexnet_jax builds.
  old = _old({"model.lrn_k": 1.0, "model.lrn_alpha_per_term": False})
  with pytest.raises(config_checks.ConfigError) as e:
    config_schema.upgrade(old)
  msg = str(e.value)
  assert "model.lrn_alpha_per_term=False, model.lrn_k=1.0" in msg, msg
  assert "paper, one_gpu, torchvision, caffe, pytorch_grouped" in msg
  assert "start a new --workdir" in msg
  # A variant that contradicts the switches beside it.
  both = _old({"model.one_tower": True})
  both["model"]["variant"] = "paper"
  with pytest.raises(config_checks.ConfigError, match="are those of 'one_gpu'"):
    config_schema.upgrade(both)


def _old_run(tmp_path, config_json: dict):
  """A workdir as the previous version left it: its config.json and a finished checkpoint."""
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "125").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(config_json, indent=2))
  return str(workdir)


def test_a_run_written_in_the_previous_layout_resumes_with_todays_config(tmp_path):
  workdir = _old_run(tmp_path, OLD_DEMO)  # the demo of that time: today's demo.py:sgd
  assert config_checks.resume_changes(demo.get_config("sgd"), workdir) == {}
  config = demo.get_config("sgd")
  config.num_train_steps = 250
  assert config_checks.resume_changes(config, workdir) == {"num_train_steps": (125, 250)}
  # The network is the recorded run's, whatever is allowed; the input convention (it was
  # augment.scale) changes with --allow_config_change only.
  config.input.scale = 1.0
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.resume_changes(config, workdir)
  assert "input.scale (0.0078125 -> 1.0)" in str(e.value)
  assert "--allow_config_change=input.scale" in str(e.value)
  assert config_checks.resume_changes(config, workdir, allow=["input.*"])["input.scale"] == (
      0.0078125,
      1.0,
  )
  config.model.variant = "one_gpu"
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.resume_changes(config, workdir, allow=["input.*", "model.*"])
  msg = str(e.value)
  assert "model.variant ('paper' -> 'one_gpu')" in msg
  assert "would change the parameter shapes or the data" in msg
  assert "Keys a resume may change: num_epochs, num_train_steps, mesh.*, dataset.data_dir" in msg


def test_a_torchvision_run_in_the_previous_layout_resumes_as_torchvision(tmp_path):
  workdir = _old_run(tmp_path, OLD_TORCHVISION)
  assert config_checks.resume_changes(torchvision.get_config(), workdir) == {}
  with pytest.raises(config_checks.ConfigError, match=r"model.variant \('torchvision' -> 'paper'"):
    config = torchvision.get_config()
    config.model.variant = "paper"
    config_checks.resume_changes(config, workdir)


def test_a_recorded_config_no_variant_matches_is_refused_naming_the_file(tmp_path):
  workdir = _old_run(tmp_path, _old({"model.conv1_padding": [1, 1]}))
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.resume_changes(config_schema.default_config(), workdir)
  assert str(e.value).startswith(f"{workdir}/config.json: the model switches model.")
  assert "model.conv1_padding=(1, 1)" in str(e.value)


# ---- the keys the library reads ---------------------------------------------------------------
# Where the library reads config keys: chains from a name `config` (or `x.config`, not JAX's or
# TensorFlow's) or from a section bound to a name (`inp = config.input`, a parameter
# `augment_config`, ALIASES), and `.get("key")` on them. config.dataset is read through
# data.settings.Settings' fields, config.model through model.MODULE_KEYS (and its variant).
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "alexnet_jax")
SECTIONS = {k.name.split(".")[0] for k in config_schema.KEYS if "." in k.name}
ALIASES = {"opt_config": "optimizer", "inp": "input"}
NOT_OUR_CONFIG = ("pretrained/keras_h5.py",)  # a Keras model's config, also named `config`


def _section_of(node, aliases) -> str | None:
  """'' for the config itself, the section's name for one of its sections, else None."""
  if isinstance(node, ast.Name):
    return "" if node.id == "config" else aliases.get(node.id)
  if isinstance(node, ast.Attribute):
    if node.attr == "config":
      owner = node.value
      return None if isinstance(owner, ast.Name) and owner.id in ("jax", "tf") else ""
    if node.attr in SECTIONS and _section_of(node.value, aliases) == "":
      return node.attr
  return None


def config_reads(source: str) -> set[str]:
  """The dotted config keys `source` reads."""
  tree = ast.parse(source)
  aliases = dict(ALIASES)
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef):
      for a in node.args.args + node.args.kwonlyargs:
        if a.arg.endswith("_config") and a.arg[: -len("_config")] in SECTIONS:
          aliases[a.arg] = a.arg[: -len("_config")]
    if isinstance(node, ast.Assign) and [type(t) for t in node.targets] == [ast.Name]:
      section = _section_of(node.value, aliases)
      if section:
        aliases[node.targets[0].id] = section
  called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      arg = node.args[0] if node.args else None
      if node.func.attr == "get" and isinstance(arg, ast.Constant):
        section = _section_of(node.func.value, aliases)
        if section is not None:
          out.add(f"{section}.{arg.value}" if section else arg.value)
    elif isinstance(node, ast.Attribute) and id(node) not in called:  # not a method call
      section = _section_of(node.value, aliases)
      if section is not None and not (section == "" and node.attr in SECTIONS):
        out.add(f"{section}.{node.attr}" if section else node.attr)
  return out


def _assigned(path: str, name: str):
  """The literal a module assigns to `name` at its top level."""
  with open(path) as f:
    for node in ast.parse(f.read()).body:
      if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
        return ast.literal_eval(node.value)
  raise AssertionError(f"{path} assigns no {name}")


def _class_fields(path: str, name: str) -> list[str]:
  with open(path) as f:
    cls = next(n for n in ast.parse(f.read()).body if getattr(n, "name", None) == name)
  return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)]


def test_config_reads_finds_each_way_the_library_reads_a_key():
  source = """
def f(config, augment_config, opt_config, tf):
  inp = config.input
  jax.config.update("x", 1)
  tf.config.list_physical_devices()
  config.update({})
  return (config.seed, inp.mean, augment_config.flip, opt_config.momentum,
          config.get("init_from"), run.config.optimizer.learning_rate, config.dataset)
"""
  assert config_reads(source) == {
      "seed",
      "input.mean",
      "augment.flip",
      "optimizer.momentum",
      "init_from",
      "optimizer.learning_rate",
  }


def test_the_schema_declares_exactly_the_keys_the_library_reads():
  """No key the library reads is missing from KEYS (a run would fail on it, or read a key
  no check, resume rule or default covers), and no declared key is dead."""
  reads = {}
  for directory, _, names in os.walk(PACKAGE):
    for name in names:
      path = os.path.join(directory, name)
      rel = os.path.relpath(path, PACKAGE)
      if name.endswith(".py") and rel != "config_schema.py" and rel not in NOT_OUR_CONFIG:
        with open(path) as f:
          for key in config_reads(f.read()):
            reads.setdefault(key, []).append(rel)
  settings = _class_fields(os.path.join(PACKAGE, "data", "settings.py"), "Settings")
  for key in [f"dataset.{k}" for k in settings]:
    reads.setdefault(key, []).append("data/settings.py (Settings)")
  module_keys = _assigned(os.path.join(PACKAGE, "model.py"), "MODULE_KEYS")
  for key in [f"model.{k}" for k in (*module_keys, "variant")]:
    reads.setdefault(key, []).append("model.py (MODULE_KEYS)")
  declared = {k.name for k in config_schema.KEYS}
  undeclared = {k: v for k, v in reads.items() if k not in declared}
  assert not undeclared, f"read but not declared in config_schema.KEYS: {undeclared}"
  assert not declared - set(reads), f"declared but never read: {sorted(declared - set(reads))}"


def test_keys_with_refuses_an_unknown_rule_or_role():
  with pytest.raises(ValueError, match="role='arch'"):
    config_schema.keys_with(role="arch")


def test_a_config_json_from_before_optimizer_name_trained_with_sgd():
  old = json.loads(json.dumps(OLD_DEFAULT))
  assert "name" not in old["optimizer"]
  up = config_schema.upgrade(old)
  assert up["optimizer"]["name"] == "sgd"
  assert (up["optimizer"]["b1"], up["optimizer"]["b2"], up["optimizer"]["epsilon"]) == (
      0.9,
      0.999,
      1e-7,
  )
  assert config_schema.BY_NAME["optimizer.name"].resume == "never"  # Adam's state differs
