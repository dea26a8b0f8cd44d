"""Throughput benchmark, run from the repository root:

  python -m benchmarks.bench [--batch_size=128] [--steps=3] [--mesh=1,1]
  python -m benchmarks.bench --only=input [--input_images=384] [--repeats=3]

Measures, with warm-up (compilation) excluded, the median over --repeats of the mean step
time over --steps steps, alternating the contenders inside each repeat so that drift (other
jobs, thermal) hits all of them alike:

  train_images_per_sec        the project's jitted train step (train_step.make_train_step: the
                              full model, on-device augmentation, paper SGD, donated state)
                              on synthetic device-resident uint8 256x256 batches
  torch_train_images_per_sec  the same grouped network in PyTorch (benchmarks/torch_reference.py),
                              same batch, SGD momentum 0.9 + weight decay 5e-4, as many
                              threads as XLA uses; ratio_vs_torch = ours / theirs
  torch_compiled_train_images_per_sec  the same under torch.compile (inductor), and
                              ratio_vs_torch_compiled (--notorch_compile skips it)
  peak_matmul_gflops          a large float32 matmul on the same device; mfu =
                              train_images_per_sec x training FLOPs per image / peak
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
  augment_alone_fraction      train_step.augment_batch (the step's augmentation) jitted alone on
                              the same batch, its median time (augment_seconds) / the step
                              on ready crops: its cost, resolved to milliseconds
  host_steal_fraction         share of the machine's CPU time the hypervisor gave to others
                              while the train steps were timed (/proc/stat; None elsewhere)
  eval_10crop_images_per_sec  evaluation.make_eval_step with the paper's 10 views
  input_*                     the input benchmark (benchmarks/inputs.py; --only=input runs it
                              alone: no model, no PyTorch), below
  on accelerators (or with --bf16=on) also train_images_per_sec_bf16, peak_matmul_gflops_bf16,
  mfu_bf16, augment_overhead_fraction_bf16 and its _ci90_bf16 (model.dtype=bfloat16,
  bfloat16 matmul peak; augment_overhead_fraction_cpu_time_bf16 is None).

Input benchmark: --input_images ImageNet-like JPEGs (benchmarks/jpegs.py: real photos, about
400x350, landscape and portrait, quality 90-95) written to a temporary folder:<dir> dataset
(4 classes; its ~10% hold-out is the eval split), and prepared from it into 256x256 JPEG and
raw shards (alexnet_jax.data.shard_writer). Four sources, each to uint8 256x256 batches of
--batch_size:

  decode        alexnet_jax.data.preprocess_encoded over the training JPEGs' bytes already in
                memory: from_tensor_slices(bytes).repeat().map(preprocess_encoded,
                AUTOTUNE).batch(B), nothing else: the decode + resize any JPEG source pays
  pipeline      data.train_iterator over the folder (dataset.prepared='off'): the training
                stream from the JPEG files
  prepared      data.train_iterator from the JPEG shards (dataset.prepared=their directory)
  prepared_raw  the same from the raw shards (no decoding)

each timed per core (the whole process, every thread, on one core with sched_setaffinity,
restored after; the bare decode also with tf.data's private_threadpool_size=1 and
max_intra_op_parallelism=1) and on all cores (unpinned). Each measurement builds a fresh
iterator (an idle one would refill its buffers in the background, on the pinned core too),
warms it up for --input_warmup_batches untimed batches (tf.data instantiates its functions and
fills its buffers), then times a fixed number of batches, --input_batches x 1 (decode,
pipeline), x 4 (prepared) or x 16 (prepared_raw) so that each timed unit lasts about as long:
images / seconds. The median over --repeats repeats, the 8 contenders alternated inside each
repeat, the order rotating:

  input_{decode,pipeline,prepared,prepared_raw}_images_per_sec_per_core
  input_{decode,pipeline,prepared,prepared_raw}_images_per_sec_all_cores
  input_cores                 the cores of the all-cores figures (the process's affinity)
  input_pipeline_vs_decode, input_prepared_vs_decode, input_prepared_raw_vs_decode
                              per-core figure / the bare decode's per-core figure
  input_targets_met           pipeline/decode >= 0.9 and prepared/decode >= 4 and
                              prepared_raw/decode >= 20 (per core)
  input_cores_needed_per_1000_images_per_sec  1000 / input_prepared_images_per_sec_per_core:
                              host cores an accelerator eating 1000 images/s needs when it
                              reads prepared JPEG shards
  input_cores_needed_per_1000_images_per_sec_raw_jpegs  the same from the original JPEG
                              files: 1000 / input_pipeline_images_per_sec_per_core
  input_pipeline_vs_train     (full benchmark only) input_pipeline_images_per_sec_all_cores /
                              train_images_per_sec: above 1, the JPEG stream keeps up
  input_host_steal_fraction   host_steal_fraction while the input contenders were timed;
                              input_images_per_sec_all_repeats every repeat's rates; and what
                              ran: input_images, input_train_images (the training split's),
                              input_batch_size, input_batches, input_timed_batches (by
                              source), input_warmup_batches, input_repeats
The per-core rates are noisy on a shared VM (bimodal between runs, e.g. 265 vs 405 images/s for
the bare decode): compare figures of one run, and prefer several repeats.

--profile_steps=N traces N train steps (with augmentation, after compilation) with
jax.profiler into --profile_dir (default runs/bench_profile; `tensorboard --logdir=DIR`, its
Profile tab, or DIR/plugins/profile/*/perfetto_trace.json.gz in ui.perfetto.dev) and prints
the XLA operations' time per step from the trace (benchmarks/tracing.py); the JSON gets
profile_dir and profile_ops_ms_per_step (the 40 slowest instructions).

Prints a table, then the same figures as ONE JSON object on the last line (--only=input: the
input table and figures, with device, batch_size, repeats and versions).

The train and eval steps compile with evaluation.compiler_options(): on CPU, XLA's own (Eigen)
convolutions instead of the YNNPACK convolution fusions this jaxlib uses by default (whose
weight-gradient convolutions ran at 11-27 GFLOP/s against 75-105 for Eigen on a 2-core x86
VM; docs/performance.md). --xla_cpu_convs=ynn (or ALEXNET_JAX_YNN_CONVS=1) measures jaxlib's
default. ALEXNET_JAX_HUGE_PAGES=1 restarts the benchmark with transparent huge pages for
malloc's large blocks, as the CPU launch scripts do (alexnet_jax/huge_pages.py).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

from benchmarks import flops as flops_lib
from benchmarks import timing

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Global training batch (the paper's 128).")
flags.DEFINE_integer("steps", 3, "Timed steps per repeat and contender.")
flags.DEFINE_integer("repeats", 3, "Repeats; each figure is the median over them.")
flags.DEFINE_integer(
    "overhead_pairs",
    16,
    "Single-step pairs (with / without on-device augmentation) for " "augment_overhead_fraction.",
    lower_bound=1,
)
flags.DEFINE_string("mesh", "1,1", "data,tower mesh sizes (-1 fills with the devices left).")
flags.DEFINE_float("width", 1.0, "Model width multiplier (1.0 = the paper; small = quick test).")
flags.DEFINE_integer("num_classes", 1000, "Width of fc8.")
flags.DEFINE_integer("eval_batch_size", 16, "Images per 10-crop eval batch (10x as many views).")
flags.DEFINE_integer("input_images", 384, "JPEGs written for the input-pipeline benchmark.")
flags.DEFINE_integer(
    "input_batches", 6, "Timed input batches per repeat and contender (x 4 prepared, x 16 raw)."
)
flags.DEFINE_integer(
    "input_warmup_batches", 3, "Untimed batches of each fresh input iterator before timing."
)
flags.DEFINE_integer("matmul_size", 4096, "Side of the square float32 matmul for the peak.")
flags.DEFINE_enum(
    "xla_cpu_convs",
    None,
    ["eigen", "ynn"],
    "CPU only. eigen: XLA's own convolutions, YNNPACK kept for dots (the steps' "
    "default, evaluation.compiler_options()); ynn: jaxlib's default YNNPACK "
    "convolution fusions (sets ALEXNET_JAX_YNN_CONVS=1). Unset: as "
    "ALEXNET_JAX_YNN_CONVS says. A ynn option in XLA_FLAGS overrides both.",
)
flags.DEFINE_integer(
    "profile_steps",
    0,
    "> 0: trace that many train steps (with augmentation) with jax.profiler into "
    "--profile_dir before timing, and print the XLA operations' time per step from it.",
    lower_bound=0,
)
flags.DEFINE_string(
    "profile_dir",
    "runs/bench_profile",
    "Where --profile_steps writes its trace (tensorboard --logdir=DIR; or DIR/plugins/"
    "profile/*/perfetto_trace.json.gz in ui.perfetto.dev).",
)
flags.DEFINE_bool("dry_run", False, "Print what would be measured and exit.")
flags.DEFINE_bool("torch", True, "Run the PyTorch contender (needs requirements-bench.txt).")
flags.DEFINE_bool("torch_compile", True, "Also time the PyTorch contender under torch.compile.")
flags.DEFINE_bool("input_pipeline", True, "Run the input benchmark (the input_* figures).")
flags.DEFINE_enum(
    "only",
    None,
    ["input"],
    "input: only the input benchmark (no model, no PyTorch): its table and JSON object.",
)
flags.DEFINE_enum(
    "bf16",
    "auto",
    ["auto", "on", "off"],
    "Also measure bfloat16 (model.dtype=bfloat16): auto = on accelerators only; "
    "on = also on CPU (slow there: XLA:CPU emulates bf16 convolutions).",
)

YNN_CONVS_ENV = "ALEXNET_JAX_YNN_CONVS"  # read by evaluation.compiler_options()


def _choose_cpu_convs(xla_cpu_convs: str | None) -> None:
  """Sets or clears ALEXNET_JAX_YNN_CONVS for --xla_cpu_convs (None: leaves it as it is).
  evaluation.compiler_options() reads it when each step is built: call this before."""
  if xla_cpu_convs == "ynn":
    os.environ[YNN_CONVS_ENV] = "1"
  elif xla_cpu_convs == "eigen":
    os.environ.pop(YNN_CONVS_ENV, None)


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

  v = {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "tensorflow": tf.__version__,
  }
  if torch_available:
    import torch

    v["torch"] = torch.__version__
  return v


def _overhead_figures(paired: timing.Timings, aug: str, noaug: str, *, cpu_time: bool) -> dict:
  """augment_overhead_fraction (paired median), its 90% interval, and on CPU the same
  pairs in process CPU time (None elsewhere: there the host's CPU time is not the step's)."""
  ratios = timing.pair_ratios(paired.wall[aug], paired.wall[noaug])
  return {
      "augment_overhead_fraction": statistics.median(ratios),
      "augment_overhead_fraction_ci90": timing.median_interval(ratios),
      "augment_overhead_fraction_cpu_time": timing.median_pair_overhead(
          paired.cpu[aug], paired.cpu[noaug]
      )
      if cpu_time
      else None,
  }


def run_benchmark(
    *,
    batch_size=128,
    steps=3,
    repeats=3,
    mesh="1,1",
    width=1.0,
    num_classes=1000,
    eval_batch_size=16,
    input_images=384,
    input_batches=6,
    input_warmup_batches=3,
    matmul_size=4096,
    use_torch=True,
    torch_compile=True,
    input_pipeline=True,
    bf16="auto",
    overhead_pairs=16,
    profile_steps=0,
    profile_dir="runs/bench_profile",
    log=print,
) -> dict:
  """Runs every measurement; returns the JSON-able results (see the module docstring)."""
  from alexnet_jax import runtime
  # First, before JAX or TensorFlow loads: sets TF_CPP_MIN_LOG_LEVEL (their C++ logs) and
  # keeps TensorFlow off accelerators.
  runtime.setup()
  import jax
  import jax.numpy as jnp

  from alexnet_jax import evaluation, sharding, train_state
  from benchmarks import contenders as contenders_lib
  from configs import default as default_config

  dev = jax.devices()[0]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  on_cpu = dev.platform == "cpu"
  device = (
      f"{jax.device_count()} x {dev.device_kind}"
      if not on_cpu
      else f"{jax.device_count()} x CPU ({_cpu_name()}, {cores} cores)"
  )
  data, tower = (int(s) for s in mesh.split(","))
  cfg = default_config.get_config()  # every key the trainer reads, the paper's values
  cfg.batch_size = batch_size
  cfg.mesh.data, cfg.mesh.tower = data, tower
  cfg.model.width = width
  msh = sharding.make_mesh(data, tower)
  model = train_state.create_model(cfg, num_classes)
  flops = flops_lib.train_flops_per_image(model)
  log(
      f"device: {device}; mesh data={msh.shape['data']} tower={msh.shape['tower']}; "
      f"batch {batch_size}; width {width}; {flops / 1e9:.3f} GFLOP per training image"
  )

  log("compiling the train steps (with and without on-device augmentation)...")
  contenders, _ = contenders_lib.jax_train_runners(
      cfg, msh, model, batch_size, "float32", augment_alone=True
  )
  augment_alone = contenders["augment_alone"]
  traced = None
  if profile_steps > 0:
    from benchmarks import tracing

    log(f"tracing {profile_steps} train step(s) with jax.profiler into {profile_dir}...")
    traced = tracing.trace_steps(contenders["aug"], profile_steps, profile_dir)
  jax_steps = {"jax": contenders["aug"], "jax_noaug": contenders["noaug"]}
  contenders = {"jax": contenders["aug"]}
  torch_note = "skipped (--notorch)"
  compiled_note = "skipped (--notorch_compile)"
  if use_torch and not on_cpu:
    torch_note = "skipped: the PyTorch contender runs on CPU only (this device is not)"
  elif use_torch:
    params = train_state.create_train_state(cfg, model, msh).params
    log("building the PyTorch contender...")
    torch_run, torch_note = contenders_lib.torch_runner(
        params, width, num_classes, batch_size, cores
    )
    if torch_run is None:
      log(f"PyTorch contender skipped: {torch_note}")
    else:
      contenders["torch"] = torch_run
      if torch_compile:
        log("compiling the PyTorch contender with torch.compile...")
        compiled_run, compiled_note = contenders_lib.torch_runner(
            params, width, num_classes, batch_size, cores, compiled=True
        )
        if compiled_run is None:
          log(f"torch.compile contender skipped: {compiled_note}")
        else:
          contenders["torch_compiled"] = compiled_run
    del params
  if "torch" not in contenders:
    compiled_note = torch_note
  log(f"timing {', '.join(contenders)}: {repeats} repeats x {steps} steps, alternating...")
  jiffies = timing.read_cpu_jiffies()
  timed = timing.time_in_rotation(contenders, steps=steps, repeats=repeats)
  step_s = timed.median
  del contenders
  log(f"augmentation overhead: {overhead_pairs} pairs of single steps with and without it...")
  paired = timing.time_abba_pairs("jax", "jax_noaug", jax_steps, pairs=overhead_pairs)
  host_steal = timing.steal_fraction(jiffies, timing.read_cpu_jiffies())
  del jax_steps

  log("timing the augmentation alone, the 10-crop eval step and the peak matmul...")
  augment_s = timing.time_in_rotation({"augment": augment_alone}, steps=10, repeats=repeats).median
  del augment_alone
  others = {
      "eval10": contenders_lib.eval_runner(cfg, msh, model, eval_batch_size),
      "matmul": contenders_lib.matmul_runner(matmul_size, jnp.float32),
  }
  other_s = timing.time_in_rotation(
      others, steps=2 if matmul_size > 2048 else 5, repeats=repeats
  ).median
  del others

  r = {}
  r["train_images_per_sec"] = batch_size / step_s["jax"]
  # The overhead phase's own throughputs (its steps ran at another time than the rotation's).
  r["paired_train_images_per_sec"] = batch_size / paired.median["jax"]
  r["paired_train_noaug_images_per_sec"] = batch_size / paired.median["jax_noaug"]
  r["torch_train_images_per_sec"] = (batch_size / step_s["torch"]) if "torch" in step_s else None
  r["ratio_vs_torch"] = (
      r["train_images_per_sec"] / r["torch_train_images_per_sec"]
      if r["torch_train_images_per_sec"]
      else None
  )
  r["torch_compiled_train_images_per_sec"] = (
      batch_size / step_s["torch_compiled"] if "torch_compiled" in step_s else None
  )
  compiled = r["torch_compiled_train_images_per_sec"]
  r["ratio_vs_torch_compiled"] = r["train_images_per_sec"] / compiled if compiled else None
  r["peak_matmul_gflops"] = 2 * matmul_size**3 / other_s["matmul"] / 1e9
  r["mfu"] = r["train_images_per_sec"] * flops / (r["peak_matmul_gflops"] * 1e9)
  r.update(_overhead_figures(paired, "jax", "jax_noaug", cpu_time=on_cpu))
  r["host_steal_fraction"] = host_steal
  r["augment_seconds"] = augment_s["augment"]
  r["augment_alone_fraction"] = augment_s["augment"] / paired.median["jax_noaug"]
  r["eval_10crop_images_per_sec"] = eval_batch_size / other_s["eval10"]
  r["profile_dir"], r["profile_ops_ms_per_step"] = traced, None
  if traced:
    ops = tracing.op_times(traced, profile_steps)
    log(tracing.format_ops(ops, step_s["jax"]))
    r["profile_ops_ms_per_step"] = {op: round(ms, 3) for op, ms in ops[:40]}

  from benchmarks import inputs

  if input_pipeline:
    r.update(
        inputs.run_input_benchmark(
            batch_size=batch_size,
            input_images=input_images,
            input_batches=input_batches,
            warmup=input_warmup_batches,
            repeats=repeats,
            log=log,
        )
    )
    r["input_pipeline_vs_train"] = (
        r["input_pipeline_images_per_sec_all_cores"] / r["train_images_per_sec"]
    )
  else:
    r.update({k: None for k in inputs.FIGURES + ("input_pipeline_vs_train",)})

  if bf16 == "on" or (bf16 == "auto" and not on_cpu):
    log("bfloat16: train step and matmul peak...")
    bf, _ = contenders_lib.jax_train_runners(cfg, msh, model, batch_size, "bfloat16")
    bf_s = timing.time_in_rotation(
        {
            "jax_bf16": bf["aug"],
            "matmul_bf16": contenders_lib.matmul_runner(matmul_size, jnp.bfloat16),
        },
        steps=steps,
        repeats=repeats,
    ).median
    bf_paired = timing.time_abba_pairs("aug", "noaug", bf, pairs=overhead_pairs)
    r["train_images_per_sec_bf16"] = batch_size / bf_s["jax_bf16"]
    r["peak_matmul_gflops_bf16"] = 2 * matmul_size**3 / bf_s["matmul_bf16"] / 1e9
    r["mfu_bf16"] = r["train_images_per_sec_bf16"] * flops / (r["peak_matmul_gflops_bf16"] * 1e9)
    r.update(
        {
            f"{k}_bf16": v
            for k, v in _overhead_figures(bf_paired, "aug", "noaug", cpu_time=False).items()
        }
    )

  r.update(
      {
          "device": device,
          "batch_size": batch_size,
          "mesh": f"{msh.shape['data']},{msh.shape['tower']}",
          "width": width,
          "steps": steps,
          "repeats": repeats,
          "cpu_cores": cores,
          "train_flops_per_image": flops,
          "train_step_seconds": step_s["jax"],
          "train_step_seconds_all": [round(x, 4) for x in timed.wall["jax"]],
          "overhead_pairs": overhead_pairs,
          # The overhead phase's single steps, pair i at index i.
          "paired_aug_step_seconds": [round(x, 6) for x in paired.wall["jax"]],
          "paired_noaug_step_seconds": [round(x, 6) for x in paired.wall["jax_noaug"]],
          "paired_aug_step_cpu_seconds": [round(x, 6) for x in paired.cpu["jax"]],
          "paired_noaug_step_cpu_seconds": [round(x, 6) for x in paired.cpu["jax_noaug"]],
          "torch": torch_note,
          "torch_compiled": compiled_note,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          # What the steps (and the matmul) compiled with; None: jaxlib's defaults.
          "compiler_options": evaluation.compiler_options(),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "versions": _versions("torch" in step_s),
      }
  )
  return r


def _fmt_interval(ci) -> str:
  return "n/a" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _input_rows(r: dict) -> list:
  """(label, value) table rows of the input figures."""

  def fmt(key, spec):
    v = r.get(key)
    return "n/a" if v is None else format(v, spec)

  rows = []
  for name, label in (
      ("decode", "bare decode + resize (bytes in memory)"),
      ("pipeline", "train_iterator, original JPEG files"),
      ("prepared", "train_iterator, prepared JPEG shards"),
      ("prepared_raw", "train_iterator, prepared raw shards"),
  ):
    rows.append(
        (
            f"input images/s per core / all cores: {label}",
            f"{fmt(f'input_{name}_images_per_sec_per_core', '.1f')} / "
            f"{fmt(f'input_{name}_images_per_sec_all_cores', '.1f')}",
        )
    )
  for name, target in (("pipeline", "0.9"), ("prepared", "4"), ("prepared_raw", "20")):
    rows.append(
        (
            f"  per core, {name} / bare decode (target >= {target})",
            fmt(f"input_{name}_vs_decode", ".3f"),
        )
    )
  rows += [
      ("  all targets met", str(r.get("input_targets_met", "n/a"))),
      (
          "cores per 1000 images/s: prepared JPEG / original JPEGs",
          f"{fmt('input_cores_needed_per_1000_images_per_sec', '.2f')} / "
          f"{fmt('input_cores_needed_per_1000_images_per_sec_raw_jpegs', '.2f')}",
      ),
  ]
  return rows


def format_table(r: dict) -> str:
  def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)

  rows = [
      ("train images/s (ours, fp32, with augmentation)", fmt(r["train_images_per_sec"], ".2f")),
      (
          "  overhead phase: with augmentation / ready 224 crops",
          f'{fmt(r["paired_train_images_per_sec"], ".2f")} / '
          f'{fmt(r["paired_train_noaug_images_per_sec"], ".2f")}',
      ),
      ("train images/s (PyTorch, same network)", fmt(r["torch_train_images_per_sec"], ".2f")),
      ("ratio vs PyTorch", fmt(r["ratio_vs_torch"], ".3f")),
      (
          "train images/s (PyTorch, torch.compile)",
          fmt(r["torch_compiled_train_images_per_sec"], ".2f"),
      ),
      ("ratio vs PyTorch compiled", fmt(r["ratio_vs_torch_compiled"], ".3f")),
      ("peak fp32 matmul GFLOP/s", fmt(r["peak_matmul_gflops"], ".1f")),
      ("MFU (train FLOPs / matmul peak)", fmt(r["mfu"], ".3f")),
      ("augmentation overhead (fraction of step)", fmt(r["augment_overhead_fraction"], "+.3f")),
      ("  its 90% interval over the pairs", _fmt_interval(r["augment_overhead_fraction_ci90"])),
      (
          "augmentation overhead (in process CPU time)",
          fmt(r["augment_overhead_fraction_cpu_time"], "+.3f"),
      ),
      (
          "augmentation alone (its jitted time / step on crops)",
          fmt(r["augment_alone_fraction"], ".3f"),
      ),
      ("CPU time stolen by the hypervisor while timing", fmt(r["host_steal_fraction"], ".3f")),
      ("eval 10-crop images/s", fmt(r["eval_10crop_images_per_sec"], ".2f")),
  ]
  rows += _input_rows(r)
  if r.get("input_pipeline_vs_train") is not None:
    rows.append(
        ("input pipeline (all cores) / train images/s", fmt(r["input_pipeline_vs_train"], ".2f"))
    )
  for key, label in (
      ("train_images_per_sec_bf16", "train images/s (bf16)"),
      ("peak_matmul_gflops_bf16", "peak bf16 matmul GFLOP/s"),
      ("mfu_bf16", "MFU (bf16)"),
      ("augment_overhead_fraction_bf16", "augmentation overhead (bf16)"),
  ):
    if key in r:
      rows.append((label, fmt(r[key], "+.3f" if key.startswith("augment") else ".2f")))
  width = max(len(k) for k, _ in rows)
  lines = [
      f"AlexNet benchmark on {r['device']}, batch {r['batch_size']}, mesh {r['mesh']}, "
      f"width {r['width']} ({r['repeats']} repeats x {r['steps']} steps, medians; "
      f"overhead: {r['overhead_pairs']} pairs of single steps)"
  ]
  lines += [f"  {k:<{width}}  {v:>10}" for k, v in rows]
  lines.append(
      f"  torch: {r['torch']}; XLA_FLAGS: {r['xla_flags'] or '(none)'}; "
      f"compiler options: {r.get('compiler_options') or '(jaxlib defaults)'}; "
      f"GLIBC_TUNABLES: {r.get('glibc_tunables') or '(none)'}"
  )
  return "\n".join(lines)


def run_input_only(
    *,
    batch_size=128,
    repeats=3,
    input_images=384,
    input_batches=6,
    input_warmup_batches=3,
    log=print,
) -> dict:
  """--only=input: the input figures alone (no model, no PyTorch), with what they ran on."""
  from alexnet_jax import runtime

  runtime.setup()  # before TensorFlow loads: its C++ logs, and TensorFlow off accelerators
  import tensorflow as tf

  from benchmarks import inputs

  r = inputs.run_input_benchmark(
      batch_size=batch_size,
      input_images=input_images,
      input_batches=input_batches,
      warmup=input_warmup_batches,
      repeats=repeats,
      log=log,
  )
  r.update(
      {
          "device": f"CPU ({_cpu_name()}, {r['input_cores']} cores)",
          "batch_size": batch_size,
          "repeats": repeats,
          "versions": {"python": platform.python_version(), "tensorflow": tf.__version__},
      }
  )
  return r


def format_input_table(r: dict) -> str:
  lines = [
      f"AlexNet input benchmark on {r['device']}, batch {r['batch_size']}, "
      f"{r['input_images']} JPEGs ({r['input_repeats']} repeats x {r['input_batches']} "
      f"batches x 1/1/4/16, medians; per core = the whole process on one core)"
  ]
  rows = _input_rows(r)
  width = max(len(k) for k, _ in rows)
  return "\n".join(lines + [f"  {k:<{width}}  {v:>17}" for k, v in rows])


QUICK = (
    "python -m benchmarks.bench --width=0.125 --batch_size=32 --steps=1 --repeats=1 "
    "--notorch --noinput_pipeline"
)


def plan() -> str:
  """What this invocation will measure and about how long it takes, said before it starts."""
  if FLAGS.only == "input":
    return (
        f"benchmark plan: the input stream only ({FLAGS.input_images} JPEGs; decode, JPEG "
        f"files, prepared JPEG and raw shards, per core and on all cores), {FLAGS.repeats} "
        f"repeat(s): about 3 minutes on 2 CPU cores."
    )
  parts = [
      f"the train step (batch {FLAGS.batch_size}, width {FLAGS.width}, mesh {FLAGS.mesh})",
  ]
  if FLAGS.torch:
    parts.append("PyTorch" + (" eager and torch.compile" if FLAGS.torch_compile else " eager"))
  if FLAGS.profile_steps:
    parts.append(f"a jax.profiler trace of {FLAGS.profile_steps} step(s) into {FLAGS.profile_dir}")
  parts += ["the augmentation's overhead", "the 10-view eval step", "the matmul peak"]
  if FLAGS.input_pipeline:
    parts.append("the input stream")
  full = FLAGS.width == 1.0 and FLAGS.batch_size >= 128
  return (
      f"benchmark plan: {', '.join(parts)}; {FLAGS.steps} step(s) x {FLAGS.repeats} "
      f"repeat(s). "
      + (
          "At these settings about 10 minutes on 2 CPU cores (minutes on an accelerator). "
          f"A quick check instead (about a minute): {QUICK}"
          if full
          else "Smaller than the paper's model: minutes at most."
      )
  )


def main(argv):
  del argv
  print(plan(), file=sys.stderr, flush=True)
  if FLAGS.dry_run:
    return
  t0 = time.perf_counter()
  log = lambda s: print(  # noqa: E731
      f"[{time.perf_counter() - t0:6.1f}s] {s}", file=sys.stderr, flush=True
  )
  if FLAGS.only == "input":
    r = run_input_only(
        batch_size=FLAGS.batch_size,
        repeats=FLAGS.repeats,
        input_images=FLAGS.input_images,
        input_batches=FLAGS.input_batches,
        input_warmup_batches=FLAGS.input_warmup_batches,
        log=log,
    )
    print(format_input_table(r), flush=True)
    print(json.dumps(r, sort_keys=True), flush=True)
    return
  _choose_cpu_convs(FLAGS.xla_cpu_convs)
  r = run_benchmark(
      batch_size=FLAGS.batch_size,
      steps=FLAGS.steps,
      repeats=FLAGS.repeats,
      mesh=FLAGS.mesh,
      width=FLAGS.width,
      num_classes=FLAGS.num_classes,
      eval_batch_size=FLAGS.eval_batch_size,
      input_images=FLAGS.input_images,
      input_batches=FLAGS.input_batches,
      input_warmup_batches=FLAGS.input_warmup_batches,
      matmul_size=FLAGS.matmul_size,
      use_torch=FLAGS.torch,
      torch_compile=FLAGS.torch_compile,
      input_pipeline=FLAGS.input_pipeline,
      bf16=FLAGS.bf16,
      overhead_pairs=FLAGS.overhead_pairs,
      profile_steps=FLAGS.profile_steps,
      profile_dir=FLAGS.profile_dir,
      log=log,
  )
  print(format_table(r), flush=True)
  print(json.dumps(r, sort_keys=True), flush=True)


if __name__ == "__main__":
  from alexnet_jax import huge_pages
  # First, before JAX loads: with ALEXNET_JAX_HUGE_PAGES=1 this restarts the process so that
  # malloc's large blocks (XLA:CPU's per-step buffers) get transparent huge pages, a faster
  # CPU step (about 9%). The JSON records GLIBC_TUNABLES: compare figures only with the same.
  huge_pages.restart_if_requested()
  app.run(main)
