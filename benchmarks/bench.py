"""Throughput benchmark: `python -m alexnet_jax.bench [--batch_size=128] [--steps=3] [--mesh=1,1]`.

Measures, with warm-up (compilation) excluded, the median over --repeats of the mean step
time over --steps steps, alternating the contenders inside each repeat so that drift (other
jobs, thermal) hits all of them alike:

  train_images_per_sec        the project's jitted train step (train.make_train_step: the
                              full model, on-device augmentation, paper SGD, donated state)
                              on synthetic device-resident uint8 256x256 batches
  torch_train_images_per_sec  the same grouped network in PyTorch (torch_reference.py),
                              same batch, SGD momentum 0.9 + weight decay 5e-4, as many
                              threads as XLA uses; ratio_vs_torch = ours / theirs
  torch_compiled_train_images_per_sec  the same under torch.compile (inductor), and
                              ratio_vs_torch_compiled (--notorch_compile skips it)
  peak_matmul_gflops          a large float32 matmul on the same device; mfu =
                              train_images_per_sec x training FLOPs per image / peak
  input_pipeline_images_per_sec  input_pipeline.train_iterator decoding real ~500x375 JPEGs
                              (written once to a temporary folder) to 256x256 batches
  augment_overhead_fraction   (step with on-device augmentation - step on ready 224 crops)
                              / step on ready crops: --overhead_pairs pairs of single steps
                              alternated ABBA in their own phase, both steps threading one
                              train state; the median over pairs, with a distribution-free
                              90% interval (augment_overhead_fraction_ci90)
  augment_overhead_fraction_cpu_time  on CPU, the same pairs in process CPU time (all
                              threads): the step's cost without a shared VM's steal noise
  paired_train_images_per_sec, paired_train_noaug_images_per_sec  the overhead phase's
                              single-step medians, with the augmentation and on ready crops
                              (another phase than train_images_per_sec's: compare the two
                              only with each other)
  augment_alone_fraction      train.augment_batch (the step's augmentation) jitted alone on
                              the same batch, its median time (augment_seconds) / the step
                              on ready crops: its cost, resolved to milliseconds
  host_steal_fraction         share of the machine's CPU time the hypervisor gave to others
                              while the train steps were timed (/proc/stat; None elsewhere)
  eval_10crop_images_per_sec  train.make_eval_step with the paper's 10 views
  on accelerators (or with --bf16=on) also train_images_per_sec_bf16, peak_matmul_gflops_bf16,
  mfu_bf16, augment_overhead_fraction_bf16 and its _ci90_bf16 (model.dtype=bfloat16,
  bfloat16 matmul peak; augment_overhead_fraction_cpu_time_bf16 is None).

Prints a table, then the same figures as ONE JSON object on the last line.

On CPU the benchmark compiles with XLA's own (Eigen) convolutions instead of the YNNPACK
convolution fusions this jaxlib uses by default (--xla_cpu_convs=eigen, the default): the
YNNPACK weight-gradient convolutions ran at 11-27 GFLOP/s here against 75-105 for Eigen
(docs/performance.md). --xla_cpu_convs=ynn measures jaxlib's default.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import NamedTuple

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Global training batch (the paper's 128).")
flags.DEFINE_integer("steps", 3, "Timed steps per repeat and contender.")
flags.DEFINE_integer("repeats", 3, "Repeats; each figure is the median over them.")
flags.DEFINE_integer("overhead_pairs", 16,
                     "Single-step pairs (with / without on-device augmentation) for "
                     "augment_overhead_fraction.", lower_bound=1)
flags.DEFINE_string("mesh", "1,1", "data,tower mesh sizes (-1 fills with the devices left).")
flags.DEFINE_float("width", 1.0, "Model width multiplier (1.0 = the paper; small = quick test).")
flags.DEFINE_integer("num_classes", 1000, "Width of fc8.")
flags.DEFINE_integer("eval_batch_size", 16, "Images per 10-crop eval batch (10x as many views).")
flags.DEFINE_integer("input_images", 384, "JPEGs written for the input-pipeline benchmark.")
flags.DEFINE_integer("input_batches", 6, "Timed input-pipeline batches per repeat.")
flags.DEFINE_integer("matmul_size", 4096, "Side of the square float32 matmul for the peak.")
flags.DEFINE_enum("xla_cpu_convs", "eigen", ["eigen", "ynn"],
                  "CPU only: eigen = XLA's own convolutions (YNNPACK kept for dots); "
                  "ynn = jaxlib's default YNNPACK convolution fusions.")
flags.DEFINE_bool("torch", True, "Run the PyTorch contender (needs requirements-bench.txt).")
flags.DEFINE_bool("torch_compile", True, "Also time the PyTorch contender under torch.compile.")
flags.DEFINE_bool("input_pipeline", True, "Run the tf.data input-pipeline benchmark.")
flags.DEFINE_enum("bf16", "auto", ["auto", "on", "off"],
                  "Also measure bfloat16 (model.dtype=bfloat16): auto = on accelerators only; "
                  "on = also on CPU (slow there: XLA:CPU emulates bf16 convolutions).")

# ImageNet's PCA (input_pipeline.IMAGENET_*), repeated so this module can set XLA flags
# before anything imports JAX.
EIGEN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def _setup_env(xla_cpu_convs: str) -> str:
  """Set XLA_FLAGS before JAX starts its backend. Returns the flags in force."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  xla = os.environ.get("XLA_FLAGS", "")
  if xla_cpu_convs == "eigen" and "ynn_fusion_type" not in xla:
    xla = (xla + " " + EIGEN_CONV_FLAG).strip()
    os.environ["XLA_FLAGS"] = xla
  if xla_cpu_convs == "ynn":  # also keep runtime.compiler_options() off the train step
    os.environ["ALEXNET_JAX_YNN_CONVS"] = "1"
  return xla


# ---- FLOPs --------------------------------------------------------------------------------
def forward_macs(model) -> int:
  """Multiply-adds of one forward pass at 224x224 (PAPER.md: 724.4M for the paper's net)."""
  (c1, c2, c3, c4, c5), (f6, f7) = model.layer_widths()
  t = model.num_towers
  convs = [(55, 11, 3, c1), (27, 5, c1 // t, c2), (13, 3, c2, c3), (13, 3, c3 // t, c4),
           (13, 3, c4 // t, c5)]
  macs = sum(side * side * k * k * cin * cout for side, k, cin, cout in convs)
  return macs + 6 * 6 * c5 * f6 + f6 * f7 + f7 * model.num_classes


def train_flops_per_image(model) -> float:
  """Forward + backward ~ 3 x forward (PAPER.md: 4.35e9 for the paper's net)."""
  return 3 * 2 * forward_macs(model)


# ---- timing -------------------------------------------------------------------------------
class Timings(NamedTuple):
  median: dict   # name -> median over repeats (or pairs) of wall seconds per step
  wall: dict     # name -> every repeat's (or pair's) wall seconds per step
  cpu: dict      # name -> every repeat's (or pair's) process CPU seconds (all threads)


def _median_times(contenders: dict, *, steps: int, repeats: int) -> Timings:
  """contenders: name -> run(steps) (blocks until done). Runs each once per repeat, each
  timed run preceded by one untimed step: whoever ran right after PyTorch paid up to 30%
  for its threads and freed memory (docs/performance.md runs G and I). The order rotates
  every repeat, so that no contender always follows the same one. Records wall time and
  the process's CPU time: on a CPU device the latter is the work done, immune to the
  hypervisor's steal that makes single wall-clock steps vary by +-15% on a shared VM
  (docs/performance.md run I)."""
  names = list(contenders)
  wall = {name: [] for name in names}
  cpu = {name: [] for name in names}
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      run = contenders[name]
      run(1)  # untimed: the previous contender's threads and freed memory settle here
      t0, c0 = time.perf_counter(), time.process_time()
      run(steps)
      wall[name].append((time.perf_counter() - t0) / steps)
      cpu[name].append((time.process_time() - c0) / steps)
  return Timings({name: statistics.median(ts) for name, ts in wall.items()}, wall, cpu)


def _paired_steps(a: str, b: str, contenders: dict, *, pairs: int) -> Timings:
  """Single steps of contenders a and b alternated ABBA (a b, b a, a b, ...), after one
  untimed step of each: entry i of each list is pair i, two steps run back to back. On
  this VM single steps vary by +-10% from one to the next (docs/performance.md run K);
  pairing cancels drift, the median over many pairs the heavy tail of slow steps, which
  would land in a 3-step mean whole."""
  wall, cpu = {a: [], b: []}, {a: [], b: []}
  contenders[a](1)
  contenders[b](1)
  for i in range(pairs):
    for name in ((a, b) if i % 2 == 0 else (b, a)):
      t0, c0 = time.perf_counter(), time.process_time()
      contenders[name](1)
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  return Timings({name: statistics.median(ts) for name, ts in wall.items()}, wall, cpu)


def _paired_overhead(with_aug: list, without: list) -> float:
  """Median over pairs of (with - without) / without, each pair timed back to back: the
  machine's drift (seconds here) cancels within a pair; a ratio of two medians kept it
  (docs/performance.md run G)."""
  return statistics.median(_pair_ratios(with_aug, without))


def _pair_ratios(with_aug: list, without: list) -> list:
  return [(a - n) / n for a, n in zip(with_aug, without)]


def median_interval(values: list, level: float = 0.9) -> tuple[float, float] | None:
  """Distribution-free confidence interval for the median: the order statistics
  (x_(k), x_(n+1-k)) with the largest k whose binomial tail P(Bin(n, 1/2) < k) is at most
  (1 - level) / 2. Assumes nothing about the shape of the step-time noise (heavy-tailed
  here). None when n is too small for any such k (n < 5 at 90%)."""
  n, tail, k = len(values), (1.0 - level) / 2, 0
  cdf = 0.0  # P(Bin(n, 1/2) < k + 1), growing with k
  while k < n // 2:
    cdf += math.comb(n, k) / 2 ** n
    if cdf > tail:
      break
    k += 1
  if k == 0:
    return None
  xs = sorted(values)
  return xs[k - 1], xs[n - k]


def read_cpu_jiffies(path: str = "/proc/stat") -> tuple[int, int] | None:
  """(steal, total) jiffies of all CPUs since boot from Linux's /proc/stat; None elsewhere.

  steal is the time the hypervisor ran someone else while this VM had work: the noise a
  wall-clock benchmark on a shared VM cannot control, so the benchmark reports its share.
  """
  try:
    with open(path) as f:
      fields = f.readline().split()
  except OSError:
    return None
  if not fields or fields[0] != "cpu" or len(fields) < 9:
    return None
  # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
  ticks = [int(x) for x in fields[1:9]]
  return ticks[7], sum(ticks)


def steal_fraction(before, after) -> float | None:
  """Share of CPU time stolen by the hypervisor between two read_cpu_jiffies() readings."""
  if before is None or after is None or after[1] <= before[1]:
    return None
  return (after[0] - before[0]) / (after[1] - before[1])


# ---- JAX contenders -----------------------------------------------------------------------
def _jax_train_runners(jax, jnp, cfg, mesh, model, batch_size, dtype_name,
                       augment_alone=False):
  """Runners for the project's train step with and without on-device augmentation, and
  with augment_alone=True one for the step's augmentation by itself (float32 whatever
  the model's dtype, so timed once)."""
  from alexnet_jax import input_pipeline, runtime, sharding, train

  cfg = cfg.copy_and_resolve_references()
  cfg.model.dtype = dtype_name
  model = train_state.create_model(cfg, model.num_classes)
  data = sharding.batch_sharding(mesh)
  rng = jax.random.key(1)
  images_u8 = jax.device_put(
      jax.random.randint(rng, (batch_size, 256, 256, 3), 0, 256).astype(jnp.uint8), data)
  crops = jax.device_put(
      jax.random.normal(rng, (batch_size, 224, 224, 3), jnp.float32) * 50.0, data)
  labels = jax.device_put(jnp.arange(batch_size, dtype=jnp.int32) % model.num_classes, data)
  mean = 120.0 + 10.0 * jax.random.uniform(jax.random.key(2), (256, 256, 3))
  aug = jax.device_put(
      train.AugmentConstants(mean, jnp.asarray(input_pipeline.IMAGENET_EIGVAL),
                             jnp.asarray(input_pipeline.IMAGENET_EIGVEC)),
      sharding.replicated(mesh))

  runners = {}
  # One state threads through both steps: the same parameters in the same memory, so the
  # two differ only in the augmentation (each with its own had them train apart).
  box = {"state": train_state.create_train_state(cfg, model, mesh)}
  for name, on_device, images in (("aug", True, images_u8), ("noaug", False, crops)):
    step = train.make_train_step(cfg, model, mesh, steps_per_epoch=10**6,
                                 augment_on_device=on_device)
    batch = {"image": images, "label": labels}

    def run(n, step=step, box=box, batch=batch):
      metrics = None
      for _ in range(n):
        box["state"], metrics = step(box["state"], batch, aug)
      jax.block_until_ready((box["state"].step, metrics))

    run(2)  # compile + one warm step (_median_times adds one more before each timed run)
    runners[name] = run
  if not augment_alone:
    return runners, cfg

  # The step's augmentation alone, on the same batch: the fusion it adds to the step,
  # timed to a few ms instead of inside a 5 s step that varies by +-15%.
  augment_jit = jax.jit(functools.partial(train.augment_batch, cfg.augment, mesh),
                        compiler_options=runtime.compiler_options())
  step0 = jnp.zeros((), jnp.int32)

  def run_augment(n):
    out = None
    for _ in range(n):
      out = augment_jit(rng, step0, images_u8, aug)
    jax.block_until_ready(out)

  run_augment(1)
  runners["augment_alone"] = run_augment
  return runners, cfg


def _eval_runner(jax, jnp, cfg, mesh, model, eval_batch):
  from alexnet_jax import sharding, train
  step = train.make_eval_step(cfg, model, mesh, crops=10)
  params = train_state.create_train_state(cfg, model, mesh).params
  data = sharding.batch_sharding(mesh)
  batch = {"image": jax.device_put(jax.random.randint(jax.random.key(3), (eval_batch, 256, 256, 3),
                                                      0, 256).astype(jnp.uint8), data),
           "label": jax.device_put(jnp.zeros((eval_batch,), jnp.int32), data),
           "mask": jax.device_put(jnp.ones((eval_batch,), bool), data)}
  mean = jnp.full((256, 256, 3), 120.0, jnp.float32)

  def run(n):
    out = None
    for _ in range(n):
      out = step(params, batch, mean)
    jax.block_until_ready(out)

  run(1)
  return run


def _matmul_runner(jax, jnp, n, dtype):
  a = jax.random.normal(jax.random.key(4), (n, n), dtype)
  b = jax.random.normal(jax.random.key(5), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)

  def run(k):
    out = None
    for _ in range(k):
      out = f(a, b)
    jax.block_until_ready(out)

  run(1)
  return run


# ---- PyTorch contender --------------------------------------------------------------------
def _torch_runner(params, width, num_classes, batch_size, threads, compiled=False):
  """The PyTorch train step on CPU, loaded with our initial parameters; None if no torch.

  Channels-last tensors (oneDNN's preferred layout; 1.14x over NCHW with the slice LRN,
  docs/performance.md run F); compiled=True wraps the network in torch.compile (inductor).
  """
  try:
    import torch
  except ImportError:
    return None, "PyTorch is not installed (pip install -r requirements-bench.txt)"
  import numpy as np
  from alexnet_jax import torch_reference
  torch.set_num_threads(threads)
  net = torch_reference.load_jax_params(
      torch_reference.AlexNetTorch(num_classes, width), jax_to_numpy(params))
  net = net.to(memory_format=torch.channels_last)
  optimizer = torch_reference.make_optimizer(net)
  if compiled:
    net = torch.compile(net)
  step = torch_reference.make_train_step(net, optimizer)
  gen = torch.Generator().manual_seed(0)
  images = (torch.randn(batch_size, 3, 224, 224, generator=gen) * 50.0).contiguous(
      memory_format=torch.channels_last)
  labels = torch.from_numpy(np.arange(batch_size) % num_classes).long()

  def run(n):
    for _ in range(n):
      step(images, labels)

  try:
    run(2)  # compiles under torch.compile (about a minute at full width)
  except Exception as e:  # noqa: BLE001 - inductor needs a C++ compiler; report, don't die
    return None, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
  mode = "torch.compile (inductor)" if compiled else "eager"
  return run, f"torch {torch.__version__}, {mode}, channels-last, {threads} threads"


def jax_to_numpy(tree):
  import jax
  import numpy as np
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


# ---- input pipeline -----------------------------------------------------------------------
def _sample_photos():
  """Real photographs that ship with scikit-learn / scikit-image (no download)."""
  photos = []
  try:
    from sklearn.datasets import load_sample_images
    photos += list(load_sample_images().images)
  except Exception:  # noqa: BLE001 - any missing optional data is fine
    pass
  try:
    from skimage import data as skdata
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"):
      try:
        img = getattr(skdata, name)()
        if img.ndim == 3 and img.shape[-1] == 3:
          photos.append(img)
      except Exception:  # noqa: BLE001
        pass
  except ImportError:
    pass
  if not photos:
    raise RuntimeError("no sample photos found (scikit-learn or scikit-image needed)")
  return photos


def write_jpeg_folder(root: str, num_images: int, num_classes: int = 4, seed: int = 0) -> str:
  """num_images ImageNet-like JPEGs (about 500x375, landscape or portrait) made from real
  photos by random crops, resizes and colour jitter, in root/<class>/; returns root."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(seed)
  photos = [Image.fromarray(np.asarray(p, np.uint8)) for p in _sample_photos()]
  for c in range(num_classes):
    os.makedirs(os.path.join(root, f"class_{c}"), exist_ok=True)
  for i in range(num_images):
    photo = photos[i % len(photos)]
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    size = (500, 375) if rng.random() < 0.75 else (375, 500)
    size = (size[0] + int(rng.integers(-20, 21)), size[1] + int(rng.integers(-20, 21)))
    img = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BILINEAR)
    arr = np.asarray(img, np.float32) * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 3, (1, 1, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    img.save(os.path.join(root, f"class_{i % num_classes}", f"img_{i:05d}.jpg"),
             quality=int(rng.integers(85, 96)))
  return root


def _input_runner(root, batch_size):
  import ml_collections
  from alexnet_jax import input_pipeline
  cfg = ml_collections.ConfigDict({"name": f"folder:{root}", "data_dir": None, "cache": False,
                                   "shuffle_buffer": 1024, "stats_max_images": 64})
  it = input_pipeline.train_iterator(cfg, global_batch_size=batch_size, seed=0)

  def run(n):
    for _ in range(n):
      b = next(it)
      assert b["image"].shape[1:] == (256, 256, 3), b["image"].shape

  run(2)  # fills the prefetch buffers and autotunes
  return run


def _default_config():
  """configs/default.py (every key the trainer reads, with the paper's values)."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "default.py")
  spec = importlib.util.spec_from_file_location("_alexnet_default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# ---- main ---------------------------------------------------------------------------------
def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _versions(torch_available: bool) -> dict:
  import flax
  import jax
  import jaxlib
  import optax
  import tensorflow as tf
  v = {"python": platform.python_version(), "jax": jax.__version__,
       "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
       "tensorflow": tf.__version__}
  if torch_available:
    import torch
    v["torch"] = torch.__version__
  return v


def _overhead_figures(paired: Timings, aug: str, noaug: str, *, cpu_time: bool) -> dict:
  """augment_overhead_fraction (paired median), its 90% interval, and on CPU the same
  pairs in process CPU time (None elsewhere: there the host's CPU time is not the step's)."""
  ratios = _pair_ratios(paired.wall[aug], paired.wall[noaug])
  return {"augment_overhead_fraction": statistics.median(ratios),
          "augment_overhead_fraction_ci90": median_interval(ratios),
          "augment_overhead_fraction_cpu_time":
              _paired_overhead(paired.cpu[aug], paired.cpu[noaug]) if cpu_time else None}


def run_benchmark(*, batch_size=128, steps=3, repeats=3, mesh="1,1", width=1.0,
                  num_classes=1000, eval_batch_size=16, input_images=384, input_batches=6,
                  matmul_size=4096, use_torch=True, torch_compile=True, input_pipeline=True,
                  bf16="auto", overhead_pairs=16, log=print) -> dict:
  """Runs every measurement; returns the JSON-able results (see the module docstring)."""
  import jax
  import jax.numpy as jnp
  from alexnet_jax import runtime, sharding, train

  runtime.setup()  # keeps TensorFlow off accelerators
  dev = jax.devices()[0]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  on_cpu = dev.platform == "cpu"
  device = (f"{jax.device_count()} x {dev.device_kind}" if not on_cpu else
            f"{jax.device_count()} x CPU ({_cpu_name()}, {cores} cores)")
  data, tower = (int(s) for s in mesh.split(","))
  cfg = _default_config()
  cfg.batch_size = batch_size
  cfg.mesh.data, cfg.mesh.tower = data, tower
  cfg.model.width = width
  msh = sharding.make_mesh(data, tower)
  model = train_state.create_model(cfg, num_classes)
  flops = train_flops_per_image(model)
  log(f"device: {device}; mesh data={msh.shape['data']} tower={msh.shape['tower']}; "
      f"batch {batch_size}; width {width}; {flops / 1e9:.3f} GFLOP per training image")

  log("compiling the train steps (with and without on-device augmentation)...")
  contenders, _ = _jax_train_runners(jax, jnp, cfg, msh, model, batch_size, "float32",
                                     augment_alone=True)
  augment_alone = contenders["augment_alone"]
  jax_steps = {"jax": contenders["aug"], "jax_noaug": contenders["noaug"]}
  contenders = {"jax": contenders["aug"]}
  torch_note = "skipped (--notorch)"
  compiled_note = "skipped (--notorch_compile)"
  if use_torch and not on_cpu:
    torch_note = "skipped: the PyTorch contender runs on CPU only (this device is not)"
  elif use_torch:
    params = train_state.create_train_state(cfg, model, msh).params
    log("building the PyTorch contender...")
    torch_run, torch_note = _torch_runner(params, width, num_classes, batch_size, cores)
    if torch_run is None:
      log(f"PyTorch contender skipped: {torch_note}")
    else:
      contenders["torch"] = torch_run
      if torch_compile:
        log("compiling the PyTorch contender with torch.compile...")
        compiled_run, compiled_note = _torch_runner(params, width, num_classes, batch_size,
                                                    cores, compiled=True)
        if compiled_run is None:
          log(f"torch.compile contender skipped: {compiled_note}")
        else:
          contenders["torch_compiled"] = compiled_run
    del params
  if "torch" not in contenders:
    compiled_note = torch_note
  log(f"timing {', '.join(contenders)}: {repeats} repeats x {steps} steps, alternating...")
  jiffies = read_cpu_jiffies()
  timed = _median_times(contenders, steps=steps, repeats=repeats)
  step_s = timed.median
  del contenders
  log(f"augmentation overhead: {overhead_pairs} pairs of single steps with and without it...")
  paired = _paired_steps("jax", "jax_noaug", jax_steps, pairs=overhead_pairs)
  host_steal = steal_fraction(jiffies, read_cpu_jiffies())
  del jax_steps

  log("timing the augmentation alone, the 10-crop eval step and the peak matmul...")
  augment_s = _median_times({"augment": augment_alone}, steps=10, repeats=repeats).median
  del augment_alone
  others = {"eval10": _eval_runner(jax, jnp, cfg, msh, model, eval_batch_size),
            "matmul": _matmul_runner(jax, jnp, matmul_size, jnp.float32)}
  other_s = _median_times(others, steps=2 if matmul_size > 2048 else 5, repeats=repeats).median
  del others

  r = {}
  r["train_images_per_sec"] = batch_size / step_s["jax"]
  # The overhead phase's own throughputs (its steps ran at another time than the rotation's).
  r["paired_train_images_per_sec"] = batch_size / paired.median["jax"]
  r["paired_train_noaug_images_per_sec"] = batch_size / paired.median["jax_noaug"]
  r["torch_train_images_per_sec"] = (batch_size / step_s["torch"]) if "torch" in step_s else None
  r["ratio_vs_torch"] = (r["train_images_per_sec"] / r["torch_train_images_per_sec"]
                         if r["torch_train_images_per_sec"] else None)
  r["torch_compiled_train_images_per_sec"] = (batch_size / step_s["torch_compiled"]
                                              if "torch_compiled" in step_s else None)
  compiled = r["torch_compiled_train_images_per_sec"]
  r["ratio_vs_torch_compiled"] = r["train_images_per_sec"] / compiled if compiled else None
  r["peak_matmul_gflops"] = 2 * matmul_size ** 3 / other_s["matmul"] / 1e9
  r["mfu"] = r["train_images_per_sec"] * flops / (r["peak_matmul_gflops"] * 1e9)
  r.update(_overhead_figures(paired, "jax", "jax_noaug", cpu_time=on_cpu))
  r["host_steal_fraction"] = host_steal
  r["augment_seconds"] = augment_s["augment"]
  r["augment_alone_fraction"] = augment_s["augment"] / paired.median["jax_noaug"]
  r["eval_10crop_images_per_sec"] = eval_batch_size / other_s["eval10"]

  if input_pipeline:
    log(f"input pipeline: writing {input_images} JPEGs (~500x375) and timing tf.data...")
    with tempfile.TemporaryDirectory(prefix="alexnet_bench_jpegs_") as root:
      write_jpeg_folder(root, input_images)
      ip_s = _median_times({"input": _input_runner(root, batch_size)},
                           steps=input_batches, repeats=repeats).median
    r["input_pipeline_images_per_sec"] = batch_size / ip_s["input"]
    r["input_pipeline_vs_train"] = r["input_pipeline_images_per_sec"] / r["train_images_per_sec"]
  else:
    r["input_pipeline_images_per_sec"] = None

  if bf16 == "on" or (bf16 == "auto" and not on_cpu):
    log("bfloat16: train step and matmul peak...")
    bf, _ = _jax_train_runners(jax, jnp, cfg, msh, model, batch_size, "bfloat16")
    bf_s = _median_times({"jax_bf16": bf["aug"],
                          "matmul_bf16": _matmul_runner(jax, jnp, matmul_size, jnp.bfloat16)},
                         steps=steps, repeats=repeats).median
    bf_paired = _paired_steps("aug", "noaug", bf, pairs=overhead_pairs)
    r["train_images_per_sec_bf16"] = batch_size / bf_s["jax_bf16"]
    r["peak_matmul_gflops_bf16"] = 2 * matmul_size ** 3 / bf_s["matmul_bf16"] / 1e9
    r["mfu_bf16"] = r["train_images_per_sec_bf16"] * flops / (r["peak_matmul_gflops_bf16"] * 1e9)
    r.update({f"{k}_bf16": v for k, v in
              _overhead_figures(bf_paired, "aug", "noaug", cpu_time=False).items()})

  r.update({
      "device": device, "batch_size": batch_size, "mesh": f"{msh.shape['data']},{msh.shape['tower']}",
      "width": width, "steps": steps, "repeats": repeats, "cpu_cores": cores,
      "train_flops_per_image": flops, "train_step_seconds": step_s["jax"],
      "train_step_seconds_all": [round(x, 4) for x in timed.wall["jax"]],
      "overhead_pairs": overhead_pairs,
      # The overhead phase's single steps, pair i at index i.
      "paired_aug_step_seconds": [round(x, 6) for x in paired.wall["jax"]],
      "paired_noaug_step_seconds": [round(x, 6) for x in paired.wall["jax_noaug"]],
      "paired_aug_step_cpu_seconds": [round(x, 6) for x in paired.cpu["jax"]],
      "paired_noaug_step_cpu_seconds": [round(x, 6) for x in paired.cpu["jax_noaug"]],
      "torch": torch_note, "torch_compiled": compiled_note,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "versions": _versions("torch" in step_s),
  })
  return r


def _fmt_interval(ci) -> str:
  return "n/a" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def format_table(r: dict) -> str:
  def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)
  rows = [
      ("train images/s (ours, fp32, with augmentation)", fmt(r["train_images_per_sec"], ".2f")),
      ("  overhead phase: with augmentation / ready 224 crops",
       f'{fmt(r["paired_train_images_per_sec"], ".2f")} / '
       f'{fmt(r["paired_train_noaug_images_per_sec"], ".2f")}'),
      ("train images/s (PyTorch, same network)", fmt(r["torch_train_images_per_sec"], ".2f")),
      ("ratio vs PyTorch", fmt(r["ratio_vs_torch"], ".3f")),
      ("train images/s (PyTorch, torch.compile)", fmt(r["torch_compiled_train_images_per_sec"], ".2f")),
      ("ratio vs PyTorch compiled", fmt(r["ratio_vs_torch_compiled"], ".3f")),
      ("peak fp32 matmul GFLOP/s", fmt(r["peak_matmul_gflops"], ".1f")),
      ("MFU (train FLOPs / matmul peak)", fmt(r["mfu"], ".3f")),
      ("augmentation overhead (fraction of step)", fmt(r["augment_overhead_fraction"], "+.3f")),
      ("  its 90% interval over the pairs", _fmt_interval(r["augment_overhead_fraction_ci90"])),
      ("augmentation overhead (in process CPU time)",
       fmt(r["augment_overhead_fraction_cpu_time"], "+.3f")),
      ("augmentation alone (its jitted time / step on crops)",
       fmt(r["augment_alone_fraction"], ".3f")),
      ("CPU time stolen by the hypervisor while timing", fmt(r["host_steal_fraction"], ".3f")),
      ("eval 10-crop images/s", fmt(r["eval_10crop_images_per_sec"], ".2f")),
      ("input pipeline images/s (JPEG -> 256x256)", fmt(r["input_pipeline_images_per_sec"], ".1f")),
  ]
  for key, label in (("train_images_per_sec_bf16", "train images/s (bf16)"),
                     ("peak_matmul_gflops_bf16", "peak bf16 matmul GFLOP/s"),
                     ("mfu_bf16", "MFU (bf16)"),
                     ("augment_overhead_fraction_bf16", "augmentation overhead (bf16)")):
    if key in r:
      rows.append((label, fmt(r[key], "+.3f" if key.startswith("augment") else ".2f")))
  width = max(len(k) for k, _ in rows)
  lines = [f"AlexNet benchmark on {r['device']}, batch {r['batch_size']}, mesh {r['mesh']}, "
           f"width {r['width']} ({r['repeats']} repeats x {r['steps']} steps, medians; "
           f"overhead: {r['overhead_pairs']} pairs of single steps)"]
  lines += [f"  {k:<{width}}  {v:>10}" for k, v in rows]
  lines.append(f"  torch: {r['torch']}; XLA_FLAGS: {r['xla_flags'] or '(none)'}; "
               f"GLIBC_TUNABLES: {r.get('glibc_tunables') or '(none)'}")
  return "\n".join(lines)


def main(argv):
  del argv
  _setup_env(FLAGS.xla_cpu_convs)
  t0 = time.perf_counter()
  r = run_benchmark(batch_size=FLAGS.batch_size, steps=FLAGS.steps, repeats=FLAGS.repeats,
                    mesh=FLAGS.mesh, width=FLAGS.width, num_classes=FLAGS.num_classes,
                    eval_batch_size=FLAGS.eval_batch_size, input_images=FLAGS.input_images,
                    input_batches=FLAGS.input_batches, matmul_size=FLAGS.matmul_size,
                    use_torch=FLAGS.torch, torch_compile=FLAGS.torch_compile,
                    input_pipeline=FLAGS.input_pipeline, bf16=FLAGS.bf16,
                    overhead_pairs=FLAGS.overhead_pairs,
                    log=lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}",
                                      file=sys.stderr, flush=True))
  print(format_table(r), flush=True)
  print(json.dumps(r, sort_keys=True), flush=True)


if __name__ == "__main__":
  from alexnet_jax import runtime
  runtime.restart_with_huge_pages()  # may restart this process (run K, docs/performance.md)
  app.run(main)
