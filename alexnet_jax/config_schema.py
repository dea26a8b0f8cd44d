"""Every config key, declared once: its default, the values it may take, whether a resumed run
may change it, its role when a run starts from another (init_from), the paper section it
implements, and what it does.

configs/default.py returns `default_config()`; alexnet_jax/config_checks.py validates with
`problems` and derives the resume rules from `KEYS`; fine-tuning compares the keys
`keys_with(role=...)` names; every reader of a run's config.json goes through `upgrade`.

Resume rules: 'safe' a resumed run may change the key (how long, how often, where, on which
devices); 'allow' it changes the training, accepted with --allow_config_change=KEY; 'never'
the parameter shapes or the data stream would differ, refused whatever is allowed.
Roles: 'architecture' a run started from init_from must have the source's value (the weights
mean something only for the network that learned them); 'input' the input convention the
source's conv1 was trained with (a difference is reported).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import ml_collections

from alexnet_jax.facts import MODEL_SWITCH_KEYS, VIEW_COUNTS, ConfigError

SAFE, ALLOW, NEVER = "safe", "allow", "never"
ARCHITECTURE, INPUT = "architecture", "input"


@dataclasses.dataclass(frozen=True)
class Check:
  """`ok(value)`, and the phrase an error gives for what is allowed ("it must be PHRASE")."""

  ok: Callable[[Any], bool]
  phrase: str
  choices: tuple | None = None


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key (dotted name). `field_type`: the type of a key whose default is None."""

  name: str
  default: Any
  check: Check
  resume: str
  paper: str
  doc: str
  role: str | None = None
  field_type: type | None = None


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(v, n: int | None = None) -> bool:
  return (
      isinstance(v, (list, tuple)) and all(_is_number(x) for x in v) and (n is None or len(v) == n)
  )


def one_of(*choices) -> Check:
  return Check(lambda v: v in choices, "one of " + ", ".join(map(repr, choices)), choices)


def positive_int(phrase: str = "a positive integer") -> Check:
  return Check(lambda v: _is_int(v) and v > 0, phrase)


def number(ok: Callable[[float], bool], phrase: str) -> Check:
  return Check(lambda v: _is_number(v) and ok(v), phrase)


BOOL = Check(lambda v: isinstance(v, bool), "True or False")
INT = Check(_is_int, "an integer")
NON_NEGATIVE_INT = Check(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
MINUS_ONE_OR_POSITIVE = Check(lambda v: v == -1 or (_is_int(v) and v > 0), "-1 or > 0")
TEXT = Check(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def _optional(check: Check) -> Check:
  return Check(lambda v: v is None or check.ok(v), f"None or {check.phrase}")


# One key per entry: Key(name, default, check, resume rule, paper section, doc, role=...).
# fmt: off
KEYS: tuple[Key, ...] = (
    # =================================== Run length and seed ===================================
    Key("seed", 0, INT, NEVER, "",
        "every random stream (init, data order, augmentation, dropout) derives from it"),
    Key("batch_size", 128, positive_int("a positive integer (the global batch)"), NEVER, "§5",
        "global, over all processes and devices"),
    # Micro-batch b of K holds the global batch's rows b, b + K, b + 2K, ...: each device's own
    # rows, so nothing moves between devices, and the same rows on every mesh. Without
    # BatchNorm the update is the whole batch's (to float rounding; every example keeps its
    # augmentation and dropout keys); with BatchNorm each micro-batch is normalised by its own
    # statistics and updates the running averages once (K times a step), as in Goyal et al.
    # and big_vision. 'allow' on resume: with BatchNorm it changes the training.
    Key("gradient_accumulation", 1,
        positive_int("a positive integer that divides batch_size"), ALLOW, "",
        "K: each step's global batch runs as K micro-batches of batch_size / K, one after "
        "the other (a lax.scan in the jitted step; on CPU a jitted call each), and their "
        "mean gradient makes one update"),
    Key("num_epochs", 90.0, number(lambda v: True, "a number"), SAFE, "§5",
        "passes over the training split (used when num_train_steps <= 0)"),
    Key("num_train_steps", -1, INT, SAFE, "", "> 0 overrides num_epochs"),

    # ======================================= Device mesh =======================================
    Key("mesh.data", -1, MINUS_ONE_OR_POSITIVE, SAFE, "",
        "devices on the data axis; -1: those the tower axis leaves"),
    Key("mesh.tower", 2, MINUS_ONE_OR_POSITIVE, SAFE, "§3.2",
        "devices on the tower axis: 2 = the paper's two GPUs; 1 = one device holds both towers"),

    # ========================================= Dataset =========================================
    Key("dataset.name", "imagenet2012", TEXT, NEVER, "§2",
        "'imagenet2012', 'digits', 'folder:/path', 'oxford17:/path' or any TFDS image dataset"),
    Key("dataset.data_dir", None, _optional(TEXT), SAFE, "", "TFDS data directory",
        field_type=str),
    Key("dataset.manual_dir", None, _optional(TEXT), SAFE, "",
        "where ILSVRC2012_img_{train,val}.tar are (None: DATA_DIR/downloads/manual)",
        field_type=str),
    Key("dataset.shuffle_buffer", 16_384, positive_int(), NEVER, "",
        "examples the training stream shuffles over"),
    Key("dataset.stats_max_images", None, _optional(positive_int()), NEVER, "§2, §4.1",
        "training images the mean image and the pixel PCA are computed from (None: all)",
        field_type=int),
    Key("dataset.cache", False, BOOL, SAFE, "",
        "decoded 256x256 uint8 images in RAM: only for small datasets"),
    Key("dataset.exif_transpose", False, BOOL, NEVER, "",
        "folder: JPEGs turned upright by their EXIF (the paper and TFDS ignore it)"),
    # How the shorter side goes to 256 and the central 256x256 is kept: 'round' (the long side
    # rounded to the nearest pixel, the crop offset floored); 'torchvision' (its Resize(256) +
    # CenterCrop: the long side truncated, the crop offset rounded half to even); 'warp' (both
    # sides to 256, aspect ratio lost: how Caffe's ImageNet databases were made).
    Key("dataset.resize", "round", one_of("round", "torchvision", "warp"), NEVER, "§2",
        "how an image becomes 256x256"),
    # Read from each image's header before it is decoded (a GIF counts every frame); larger
    # images are skipped with the undecodable ones. PIL's decompression-bomb limit.
    Key("dataset.max_image_pixels", 89_478_485, positive_int(), NEVER, "",
        "the most pixels an image may declare to be decoded"),
    # 'auto' reads the prepared shards found beside the data when complete and made for this
    # config, else the original images; 'off' never; or the directory to read them from
    # (refused if made from other data or settings). Safe on resume: a resumed run reads the
    # source it started with under 'auto', and a value that reads other data is refused
    # (run_data.py, training_data.json).
    Key("dataset.prepared", "auto",
        Check(lambda v: isinstance(v, str) and v != "",
              "'auto' (shards found beside the data), 'off' or a directory of prepared shards"),
        SAFE, "", "prepared 256x256 shards (python -m alexnet_jax.prepare) to read"),

    # ============================ python -m alexnet_jax.prepare ============================
    Key("prepare.format", "jpeg", one_of("jpeg", "raw"), SAFE, "",
        "'jpeg' (about 8x smaller) or 'raw' uint8 rows (no decoding)"),
    Key("prepare.jpeg_quality", 95,
        Check(lambda v: _is_int(v) and 1 <= v <= 100, "an integer in [1, 100]"), SAFE, "",
        "JPEG quality of the prepared shards"),
    Key("prepare.images_per_shard", 1024, positive_int(), SAFE, "", "images in one shard file"),

    # ====================================== Augmentation ======================================
    Key("augment.random_crop", True, BOOL, ALLOW, "§4.1",
        "train on random crop_size crops of the 256x256 image (all 33x33 offsets at 224)"),
    Key("augment.flip", True, BOOL, ALLOW, "§4.1", "random horizontal reflections"),
    Key("augment.lighting_std", 0.1, number(lambda v: v >= 0, "a number >= 0"), ALLOW, "§4.1",
        "PCA lighting: alpha ~ N(0, lighting_std) per eigenvector; 0 disables"),
    Key("augment.eigen", "dataset", one_of("dataset", "imagenet"), ALLOW, "§4.1",
        "the pixel PCA: 'dataset' (of the training pixels) or 'imagenet' (the published one)"),

    # ================================= What the network is fed =================================
    # In 0..255 pixel units. mean 'dataset': the training split's mean image; 'pixel':
    # mean_rgb (torchvision and the grouped layout: 255 * (0.485, 0.456, 0.406); Caffe without
    # its mean file: (122.68, 116.67, 104.01)); 'run': the run directory's own mean image
    # (Caffe's ilsvrc_2012_mean, written by alexnet_jax.convert; a run started with init_from
    # takes its source's).
    Key("input.mean", "dataset", one_of("dataset", "pixel", "run"), ALLOW, "§2",
        "what is subtracted from every input", role=INPUT),
    Key("input.mean_rgb", (0.0, 0.0, 0.0),
        Check(lambda v: _numbers(v, 3), "3 numbers (R, G, B in pixel units)"), ALLOW, "",
        "the mean pixel subtracted when input.mean='pixel'"),
    Key("input.std_rgb", (),
        Check(lambda v: _numbers(v) and (len(v) == 0 or (len(v) == 3 and min(v) > 0)),
              "() (no division) or 3 numbers > 0 (R, G, B in pixel units)"), ALLOW, "",
        "divides the input after the mean; torchvision: 255 * (0.229, 0.224, 0.225)",
        role=INPUT),
    Key("input.channel_order", "rgb", one_of("rgb", "bgr"), ALLOW, "",
        "'bgr': Caffe's networks read blue, green, red", role=INPUT),
    Key("input.scale", 1.0, number(lambda v: v > 0, "a number > 0"), ALLOW, "§2",
        "multiplies the normalised input; the paper feeds pixel units (1.0)"),
    # 'resize': the Keras tutorial's inputs (the image resized straight to crop_size; with
    # dataset.resize='warp' it was squeezed to 256x256 first): no crop, random or at test.
    Key("input.view", "crop", one_of("crop", "resize"), ALLOW, "§4.1",
        "'crop': crop_size windows of the 256x256 image (random in training, the 1 or 10 "
        "test views); 'resize': the whole image resized to crop_size", role=INPUT),
    Key("input.crop_size", 224,
        Check(lambda v: _is_int(v) and 1 <= v <= 256, "an integer in [1, 256]"), NEVER,
        "§3.5, §4.1", "side of the square crop: 224 (paper, torchvision, grouped); 227 (Caffe)",
        role=ARCHITECTURE),

    # ======================================= The network =======================================
    # A variant fixes the towers, conv widths, conv1 padding, the LRN's form and place and
    # fc6's flatten order: the paper's, or those the published weights that alexnet_jax.convert
    # loads need (alexnet_jax/model.py).
    Key("model.variant", "paper",
        one_of("paper", "one_gpu", "torchvision", "caffe", "pytorch_grouped", "keras_bn"), NEVER,
        "§3.2, §3.5", "'paper' (two towers), 'one_gpu' (the paper's one-tower net), a "
        "published network's layout, or 'keras_bn' (the Keras tutorial's BatchNorm AlexNet)",
        role=ARCHITECTURE),
    Key("model.width", 1.0, number(lambda v: v > 0, "a number > 0 (1.0 = the paper)"), NEVER,
        "§3.5", "multiplier on every conv and fc width (0.25 trains on a CPU)",
        role=ARCHITECTURE),
    Key("model.lrn", True, BOOL, NEVER, "§3.3",
        "local response normalisation after conv1 and conv2 (torchvision: False)",
        role=ARCHITECTURE),
    Key("model.overlapping_pool", True, BOOL, NEVER, "§3.4",
        "3x3 stride-2 pooling; False: 2x2 stride 2", role=ARCHITECTURE),
    Key("model.initializer", "paper", one_of("paper", "he", "glorot"), NEVER, "§5",
        "'paper': N(0, 0.01) weights, unit biases in conv2, conv4, conv5, fc6, fc7; 'he': "
        "He-normal weights, zero biases (leaves the initial plateau at once); 'glorot': "
        "Keras's default (Glorot-uniform weights, zero biases)"),
    Key("model.dropout_rate", 0.5,
        number(lambda v: 0 <= v < 1, "a number in [0, 1) (paper: 0.5)"), NEVER, "§4.2",
        "dropout on the outputs of fc6 and fc7 (and of a hidden fc8: keras_bn)"),
    Key("model.dtype", "float32", one_of("float32", "bfloat16", "float16", "float64"), NEVER,
        "", "compute dtype ('bfloat16' on accelerators); parameters stay float32"),

    # ======================================== Optimizer ========================================
    # 'adam' is keras.optimizers.Adam's rule, 'lars' You et al.'s (alexnet_jax/optim.py); the
    # state's shapes differ, so a resumed run keeps its optimizer.
    Key("optimizer.name", "sgd", one_of("sgd", "adam", "lars"), NEVER, "§5",
        "'sgd' (the paper's momentum SGD), 'adam' (Keras's Adam) or 'lars' (You et al. 2017: "
        "momentum SGD with a learning rate per layer; biases and BatchNorm excluded)"),
    Key("optimizer.learning_rate", 0.01,
        number(lambda v: v > 0, "a number > 0 (paper: 0.01)"), ALLOW, "§5",
        "the initial learning rate (Keras's Adam: 1e-3)"),
    Key("optimizer.momentum", 0.9, number(lambda v: 0 <= v < 1, "a number in [0, 1)"), ALLOW,
        "§5", "SGD momentum"),
    Key("optimizer.b1", 0.9, number(lambda v: 0 <= v < 1, "a number in [0, 1)"), ALLOW, "",
        "Adam's first-moment decay (Keras's beta_1)"),
    Key("optimizer.b2", 0.999, number(lambda v: 0 <= v < 1, "a number in [0, 1)"), ALLOW, "",
        "Adam's second-moment decay (Keras's beta_2)"),
    Key("optimizer.epsilon", 1e-7, number(lambda v: v > 0, "a number > 0"), ALLOW, "",
        "Adam's epsilon, added to sqrt(v) as Keras adds it"),
    Key("optimizer.weight_decay", 5e-4, number(lambda v: v >= 0, "a number >= 0"), ALLOW, "§5",
        "weight decay: sgd and lars in the velocity (§5); adam decoupled, w -= lr * wd * w "
        "(Keras's)"),
    Key("optimizer.decay_biases", False, BOOL, ALLOW, "§5",
        "cuda-convnet2 did not decay biases (sgd, adam; lars never decays them)"),
    Key("optimizer.trust_coefficient", 0.001,
        number(lambda v: v > 0, "a number > 0 (You et al.: 0.001)"), ALLOW, "",
        "lars: eta, the layer's update over its weights' norm: eta ||w|| / (||g|| + wd ||w||)"),
    Key("optimizer.schedule", "plateau", one_of("plateau", "step", "constant", "poly"), ALLOW,
        "§5", "'plateau' (the paper's: drop when validation error stops improving), 'step' (at "
        "drop_epochs), 'constant' or 'poly' (lr * (1 - step / steps) ** power, You et al.)"),
    Key("optimizer.power", 2.0, number(lambda v: v > 0, "a number > 0 (You et al.: 2)"),
        ALLOW, "", "poly: the exponent of the decay to 0 at the last step"),
    Key("optimizer.warmup_epochs", 0.0, number(lambda v: v >= 0, "a number >= 0"), ALLOW, "",
        "> 0: the schedule's rate times step / warmup steps until then (linear from 0; Goyal "
        "et al., You et al.), for any optimizer and schedule"),
    Key("optimizer.drop_factor", 0.1, number(lambda v: 0 < v <= 1, "a number in (0, 1]"),
        ALLOW, "§5", "what a drop multiplies the learning rate by"),
    Key("optimizer.patience", 2, NON_NEGATIVE_INT, ALLOW, "",
        "plateau: evaluations without improvement before a drop"),
    Key("optimizer.min_delta", 0.001, number(lambda v: v >= 0, "a number >= 0"), ALLOW, "",
        "plateau: the improvement that counts (a top-1 fraction)"),
    Key("optimizer.max_drops", 3, NON_NEGATIVE_INT, ALLOW, "§5",
        "plateau: drops before the rate stays (\"reduced three times prior to termination\")"),
    Key("optimizer.drop_epochs", (30.0, 60.0, 80.0),
        Check(lambda v: _numbers(v) and all(x >= 0 for x in v), "a list of numbers >= 0"),
        ALLOW, "", "step: the epochs at which the rate drops"),

    # ============================ Evaluation, logging, checkpoints ============================
    Key("eval_crops", 10, Check(lambda v: v in VIEW_COUNTS,
                                "1 (center crop) or 10 (the paper's views)", VIEW_COUNTS), SAFE,
        "§4.1", "views per test image"),
    Key("eval_batch_size", 128, positive_int(), SAFE, "", "images per evaluation batch (global)"),
    Key("eval_every_steps", -1,
        Check(lambda v: v == -1 or (_is_int(v) and v > 0), "-1 (once per epoch) or > 0"), SAFE,
        "", "steps between evaluations"),
    Key("log_every_steps", 100, positive_int(), SAFE, "", "steps between logged metrics"),
    Key("profile_steps", 0, NON_NEGATIVE_INT, SAFE, "",
        "> 0: trace that many training steps after the first (compilation) window with "
        "jax.profiler into the run's TensorBoard directory (TensorBoard's profile tab, "
        "ui.perfetto.dev); 0: off"),
    Key("checkpoint_every_steps", 5_000, positive_int(), SAFE, "", "steps between checkpoints"),
    Key("keep_checkpoints", 3, positive_int(), SAFE, "",
        "the latest K checkpoints are kept, plus the best by validation top-1"),
    Key("max_eval_batches", -1, MINUS_ONE_OR_POSITIVE, SAFE, "",
        "> 0: evaluate on a prefix only (quick checks)"),

    # ================================ Starting from another run ================================
    Key("init_from", "", Check(lambda v: isinstance(v, str), "a run directory or ''"), NEVER, "",
        "a run directory (trained, or written by alexnet_jax.convert): a new run starts from "
        "its parameters, the class layer re-initialised when the class count differs; "
        "ignored on resume"),
)
# fmt: on
BY_NAME = {k.name: k for k in KEYS}
assert len(BY_NAME) == len(KEYS), "a key is declared twice"


def keys_with(resume: str | None = None, role: str | None = None) -> tuple[str, ...]:
  """The dotted names of the keys with this resume rule and/or role, in declaration order."""
  if resume not in (None, SAFE, ALLOW, NEVER) or role not in (None, ARCHITECTURE, INPUT):
    raise ValueError(
        f"resume must be None, {SAFE!r}, {ALLOW!r} or {NEVER!r} and role None, "
        f"{ARCHITECTURE!r} or {INPUT!r}; got resume={resume!r}, role={role!r}"
    )
  return tuple(
      k.name
      for k in KEYS
      if (resume is None or k.resume == resume) and (role is None or k.role == role)
  )


def default_config() -> ml_collections.ConfigDict:
  """Every key at its default; None-able keys are typed FieldReferences so that a
  --config.KEY=VALUE override is parsed as their type."""
  c = ml_collections.ConfigDict()
  for key in KEYS:
    *sections, leaf = key.name.split(".")
    node = c
    for s in sections:
      if s not in node:
        node[s] = ml_collections.ConfigDict()
      node = node[s]
    if key.default is None:
      node[leaf] = ml_collections.FieldReference(None, field_type=key.field_type)
    else:
      node[leaf] = key.default
  return c


# ---- checks ---------------------------------------------------------------------------------
def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if node is None or part not in node:
      return None
    node = node[part]
  return node


def flat(d, prefix: str = "") -> dict:
  """{dotted key: value} of a nested dict or ConfigDict."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flat(v, key + "."))
    else:
      out[key] = v
  return out


def problems(config) -> list[str]:
  """Every impossible value of `config`, one line each (empty: nothing found). A key the
  config lacks is not checked (partial configs); a key this file does not declare is one."""
  out = []
  for name in flat(config):
    if name not in BY_NAME:
      new = _RENAMED.get(name) or (
          "model.variant" if name.removeprefix("model.") in MODEL_SWITCH_KEYS else None
      )
      where = f" (use config.{new})" if new else ""
      out.append(
          f"config.{name} is not a config key{where}: alexnet_jax/config_schema.py declares "
          f"every key."
      )
  for key in KEYS:
    value = _get(config, key.name)
    if value is None and key.default is not None:
      continue  # absent: partial configs belong to other checks
    if not key.check.ok(value):
      out.append(f"config.{key.name}={value!r} is impossible: it must be {key.check.phrase}.")
  batch, k = _get(config, "batch_size"), _get(config, "gradient_accumulation")
  if _is_int(batch) and _is_int(k) and batch > 0 and k > 0 and batch % k:
    out.append(
        f"config.gradient_accumulation={k} does not divide config.batch_size={batch}: pick a "
        f"K that divides the global batch (micro-batches of batch_size / K)."
    )
  steps, epochs = _get(config, "num_train_steps"), _get(config, "num_epochs")
  if _is_int(steps) and steps <= 0 and not (_is_number(epochs) and epochs > 0):
    out.append(
        f"config.num_train_steps={steps!r} and config.num_epochs={epochs!r} give no training: "
        f"set num_train_steps > 0, or num_epochs > 0 with num_train_steps=-1."
    )
  return out


def validate(config) -> None:
  """Raise ConfigError listing every impossible value (one line each)."""
  found = problems(config)
  if found:
    raise ConfigError("\n".join(found))


# ---- config.json in the previous layout -------------------------------------------------------
# Run directories written by the previous version hold the input keys under augment/model and
# the model switches that model.variant names (alexnet_jax.model.variant_of maps them).
_RENAMED = {
    "augment.mean": "input.mean",
    "augment.mean_rgb": "input.mean_rgb",
    "augment.std_rgb": "input.std_rgb",
    "augment.channel_order": "input.channel_order",
    "augment.scale": "input.scale",
    "model.image_size": "input.crop_size",
}


def upgrade(config_dict: dict) -> dict:
  """A run's config.json (a dict) in this layout: input keys under `input`, the model switches
  as `model.variant`. A config already in this layout comes back equal. A run config (one with
  a `model` section) lacking input keys or a variant gets the defaults, which is what those
  keys' absence meant to every version that wrote config.json.

  Raises ConfigError when the model switches match no variant.
  """
  d = copy.deepcopy(config_dict)
  for old, new in _RENAMED.items():
    section, leaf = old.split(".")
    if leaf in d.get(section, {}):
      value = d[section].pop(leaf)
      d.setdefault("input", {}).setdefault(new.split(".")[1], value)
  model = d.get("model")
  if model is None:
    return d
  switches = {k: model.pop(k) for k in MODEL_SWITCH_KEYS if k in model}
  if switches or "variant" not in model:
    # Deferred: only a config.json in the old layout needs the model (JAX and Flax), and the
    # config checks run before a command loads them.
    from alexnet_jax.model import variant_of

    try:
      variant = variant_of(switches)
    except ValueError as e:
      raise ConfigError(
          f"{e}. Set those keys to one variant's values in config.json, or start "
          f"a new --workdir."
      ) from None
    if model.setdefault("variant", variant) != variant:
      raise ConfigError(
          f"config.json names model.variant={model['variant']!r} but its model switches "
          f"{sorted(switches)} are those of {variant!r}: remove the switches or fix the variant."
      )
  if "optimizer" in d:  # runs recorded before optimizer.name trained with the paper's SGD
    for name in keys_with():
      if name.startswith("optimizer."):
        default = BY_NAME[name].default
        d["optimizer"].setdefault(
            name.split(".")[1], list(default) if isinstance(default, tuple) else default
        )
  if "batch_size" in d:  # runs recorded before gradient accumulation ran whole batches
    d.setdefault("gradient_accumulation", 1)
  if "dataset" in d:  # runs recorded before the resize rule was a key used this one
    d["dataset"].setdefault("resize", "round")
    d["dataset"].setdefault("max_image_pixels", BY_NAME["dataset.max_image_pixels"].default)
  d.setdefault("profile_steps", 0)  # runs recorded before the profiler existed traced nothing
  section = d.setdefault("input", {})
  for name in keys_with():
    if name.startswith("input."):
      default = BY_NAME[name].default
      section.setdefault(
          name.split(".")[1], list(default) if isinstance(default, tuple) else default
      )
  return d
