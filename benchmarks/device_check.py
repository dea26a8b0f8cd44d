"""The accelerator check (run it through benchmarks/device_check.sh, whose header says how to
install what it needs on a GPU machine):

  python -m benchmarks.device_check [--tiny] [--out=device_check.json]

Three checks, each part in a process of its own with its own time limit, so that a part that
crashes (a CUDA or triton failure), hangs or runs out of time is recorded in the JSON as
failed or timed out and the parts after it still run:

  numerics      the paper's config (configs/paper.py: two towers, LRN, overlapping pooling,
                on-device augmentation with lighting, dropout, SGD with momentum and weight
                decay) trained for a few steps from the same seed on the same synthetic
                batches, once on the CPU and once on the accelerator, the accelerator at
                matmul precision "highest" (true float32, the check) and at JAX's default
                (TF32 on recent NVIDIA GPUs, what training uses; reported with a looser
                tolerance). Compared: each step's loss, the initial parameters and the
                parameter updates after the last step, against NUMERICS_TOLERANCES.
                Same setting on both sides (the batch and width below).
  train_timing  the project's jitted train step (benchmarks/contenders.py, with on-device
                augmentation) in float32 and in bfloat16 (model.dtype='bfloat16') against the
                PyTorch reference (benchmarks/torch_reference.py) eager and under
                torch.compile on the same device, alternated in one rotation
                (benchmarks/timing.py): images/s and ratios. PyTorch runs on the accelerator
                only where it has CUDA; otherwise its figures are None with the reason.
  input         the input benchmark (benchmarks/inputs.py through bench.run_input_only): the
                JPEG stream per core and on all the host's cores.

Writes one JSON object (--out) with every figure, the device, the versions and the command,
and prints a short summary. --tiny (and any machine where JAX finds no accelerator, which
the log and the JSON's "tiny_reason" say) runs the same parts with tiny settings on the CPU
in well under a minute: the numerics check then compares the CPU with itself and must agree
exactly, which tests the harness, not an accelerator.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS

# The settings. Full: the paper's model and batch for the timing (the figures the README
# quotes); the numerics at batch 32, since the CPU side runs the whole paper model (a step of
# batch 128 takes seconds on a host CPU, and the comparison is per element, not per batch).
# Tiny: width 1/8 and a few images, so that every part runs on a 2-core CPU in seconds.
FULL = {
    "numerics": {"batch_size": 32, "width": 1.0, "steps": 4},
    "train_timing": {"batch_size": 128, "width": 1.0, "steps": 20, "repeats": 5},
    "input": {"batch_size": 128, "input_images": 384, "batches": 6, "warmup": 3, "repeats": 3},
}
TINY = {
    "numerics": {"batch_size": 8, "width": 0.125, "steps": 3},
    "train_timing": {"batch_size": 8, "width": 0.125, "steps": 1, "repeats": 1},
    "input": {"batch_size": 8, "input_images": 16, "batches": 1, "warmup": 1, "repeats": 1},
}
SEED = 0
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0"
NUM_CLASSES = 1000  # the paper's fc8
# train_timing's contenders: ours in float32 and bfloat16, the PyTorch reference eager and
# under torch.compile.
CONTENDERS = ("jax_fp32", "jax_bf16", "torch_eager", "torch_compiled")

# Pass/fail thresholds of the numerics check, stated in the JSON beside the figures.
#   loss_rel     max over steps of |loss_acc - loss_cpu| / |loss_cpu|
#   init_abs     max |param_acc - param_cpu| at step 0 (the same seed: threefry bits agree
#                on every backend; the normal transform may differ in the last bit)
#   update_rel   max over layers of max|dW_acc - dW_cpu| / max|dW_cpu|, dW = params after the
#                last step - params at step 0: the training signal itself, not the (much
#                larger) parameters it moves
# "highest" is true float32 on both sides: only the order of summation differs. "default"
# rounds the accelerator's matmul and convolution inputs to TF32 (10-bit mantissa, relative
# error 2^-11 per product), so its gradients differ by about 1e-3 of their size.
NUMERICS_TOLERANCES = {
    "highest": {"loss_rel": 1e-4, "init_abs": 1e-6, "update_rel": 1e-3},
    "default": {"loss_rel": 5e-3, "init_abs": 1e-6, "update_rel": 5e-2},
}

# Each part's time limit (seconds, full form), and what the parts after it keep in reserve,
# so that one slow part cannot take the whole budget. The full form's expected times on one
# H200 with 16 host cores: probe ~15, numerics ~60 + ~50, train_timing ~150, input ~80.
PART_LIMITS = {
    "probe": 60,
    "torch_probe": 60,
    "numerics_cpu": 110,
    "numerics_accelerator": 100,
    "train_timing": 200,
    "input": 110,
}
PART_RESERVE = {
    "probe": 0,
    "torch_probe": 0,
    "numerics_cpu": 30,
    "numerics_accelerator": 30,
    "train_timing": 60,
    "input": 45,
}


def _log(msg: str) -> None:
  print(f"[device_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the parts (each runs in its own process) ---------------------------------------------
def _cpu_name() -> str:
  from benchmarks import bench

  return bench._cpu_name()


def _jax_mesh_and_model(batch_size: int, width: float, dtype: str = "float32"):
  """The paper's config (configs/paper.py) at this batch and width on ONE device (the
  check's both sides run the same single-device program; the towers share it)."""
  import jax

  from alexnet_jax import sharding, train_state
  from configs import paper

  cfg = paper.get_config()
  cfg.seed = SEED
  cfg.batch_size = batch_size
  cfg.model.width = width
  cfg.model.dtype = dtype
  cfg.mesh.data, cfg.mesh.tower = 1, 1
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  return cfg, mesh, train_state.create_model(cfg, NUM_CLASSES)


def part_probe(args: dict) -> dict:
  """The device JAX finds by default, the host, and the versions (no TensorFlow import:
  its version comes from the package metadata)."""
  import importlib.metadata as md

  import jax

  devices = jax.devices()
  versions = {"python": platform.python_version()}
  for dist in (
      "jax",
      "jaxlib",
      "jax-cuda12-plugin",
      "jax-cuda12-pjrt",
      "jax-cuda13-plugin",
      "jax-cuda13-pjrt",
      "flax",
      "optax",
      "numpy",
      "tensorflow-cpu",
      "tensorflow",
  ):
    try:
      versions[dist] = md.version(dist)
    except md.PackageNotFoundError:
      pass
  r = {
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "host_cpu": _cpu_name(),
      "host_cores": len(os.sched_getaffinity(0)),
      "versions": versions,
  }
  if r["platform"] == "gpu":
    try:
      smi = subprocess.run(
          [
              "nvidia-smi",
              "--query-gpu=name,driver_version,memory.total",
              "--format=csv,noheader",
          ],
          capture_output=True,
          text=True,
          timeout=20,
      )
      r["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
      r["nvidia_smi"] = f"unavailable: {e}"
  return r


def part_torch_probe(args: dict) -> dict:
  """Whether PyTorch imports and has CUDA, alone in its process: a broken triton install can
  kill the process that imports it, and then only this probe dies."""
  import importlib.metadata as md

  import torch

  r = {
      "torch": torch.__version__,
      "torch_cuda": torch.version.cuda,
      "cuda_available": torch.cuda.is_available(),
  }
  try:
    r["triton"] = md.version("triton")
  except md.PackageNotFoundError:
    r["triton"] = None
  if r["cuda_available"]:
    r["device_name"] = torch.cuda.get_device_name(0)
  return r


def _synthetic_batches(steps: int, batch_size: int):
  """Per-step uint8 256x256 images and labels from numpy's generator: the same bytes on every
  machine, whatever the backend's random number generators do."""
  import numpy as np

  rng = np.random.default_rng(SEED)
  images = rng.integers(0, 256, (steps, batch_size, 256, 256, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (steps, batch_size), dtype=np.int32)
  # A mean image with structure (not a constant), so the subtraction is checked too.
  mean = (120.0 + 10.0 * rng.random((256, 256, 3))).astype(np.float32)
  return images, labels, mean


def _flat_params(params) -> dict:
  import jax
  import numpy as np

  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): np.asarray(jax.device_get(x)) for path, x in leaves}


def part_numerics(args: dict) -> dict:
  """Trains the paper's config for args['steps'] steps at each matmul precision in
  args['precisions'] on this process's default device; saves the initial and final
  parameters to .npz files in args['dir'] and returns the losses."""
  from alexnet_jax import runtime

  runtime.setup()  # before TensorFlow loads: TF off accelerators
  import jax
  import numpy as np

  from alexnet_jax import augment, facts, sharding, train_state, train_step
  from benchmarks import contenders

  cfg, mesh, model = _jax_mesh_and_model(args["batch_size"], args["width"])
  images, labels, mean = _synthetic_batches(args["steps"], args["batch_size"])
  dev = jax.devices()[0]
  batch_sharding = sharding.batch_sharding(mesh)
  spec = jax.device_put(contenders.synthetic_spec(cfg, mean), sharding.replicated(mesh))
  lighting = jax.device_put(
      augment.Lighting(
          jax.numpy.asarray(facts.IMAGENET_EIGVAL, jax.numpy.float32),
          jax.numpy.asarray(facts.IMAGENET_EIGVEC, jax.numpy.float32),
      ),
      sharding.replicated(mesh),
  )
  tag = args["tag"]
  r = {"platform": dev.platform, "device_kind": dev.device_kind, "runs": {}}
  for precision in args["precisions"]:
    t0 = time.perf_counter()
    # "default" leaves JAX's own choice (None); the step is traced, so compiled, under it.
    with jax.default_matmul_precision(None if precision == "default" else precision):
      state = train_state.create_train_state(cfg, model, mesh)
      init_file = os.path.join(args["dir"], f"{tag}_{precision}_init.npz")
      np.savez(init_file, **_flat_params(state.params))
      step = train_step.make_train_step(cfg, model, mesh, steps_per_epoch=10**6)
      losses, grad_norms = [], []
      for i in range(args["steps"]):
        batch = jax.device_put({"image": images[i], "label": labels[i]}, batch_sharding)
        state, metrics = step(state, batch, spec, lighting)
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
      final_file = os.path.join(args["dir"], f"{tag}_{precision}_final.npz")
      np.savez(final_file, **_flat_params(state.params))
    r["runs"][precision] = {
        "losses": losses,
        "grad_norms": grad_norms,
        "init_file": init_file,
        "final_file": final_file,
        "seconds": time.perf_counter() - t0,
    }
    _log(f"numerics on {dev.platform} at precision {precision}: losses {losses}")
    del state
  return r


def part_train_timing(args: dict) -> dict:
  """Images/s of our train step in float32 and bfloat16 and of the PyTorch reference (eager
  and torch.compile) on the same device, alternated in one rotation."""
  torch_reason = args.get("torch_skip_reason")
  if torch_reason is None:
    # PyTorch and triton before TensorFlow: importing triton after TensorFlow can crash the
    # process (a segmentation fault in triton/knobs.py), and torch.compile imports it late.
    import torch

    try:
      import triton  # noqa: F401
    except ImportError:  # CPU builds of PyTorch have none; inductor then writes C++
      pass
    # JAX's default float32 matmul and convolution precision on recent NVIDIA GPUs is TF32;
    # give PyTorch the same (its convolutions default to TF32 already, its matmuls do not).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  from alexnet_jax import runtime

  runtime.setup()
  import jax

  from alexnet_jax import train_state
  from benchmarks import contenders as contenders_lib
  from benchmarks import flops as flops_lib
  from benchmarks import timing

  b, width = args["batch_size"], args["width"]
  cfg, mesh, model = _jax_mesh_and_model(b, width)
  dev = jax.devices()[0]
  on_cpu = dev.platform == "cpu"
  cores = len(os.sched_getaffinity(0))
  contenders, notes = {}, {}

  def build(name, make):
    """make() -> (run or None, note): a contender that fails to build is left out with
    the reason, and the others are still timed."""
    try:
      run, notes[name] = make()
    except Exception as e:  # noqa: BLE001 - recorded in the JSON, not fatal to the part
      run, notes[name] = None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
      _log(f"train_timing: {name} {notes[name]}")
    if run is not None:
      contenders[name] = run

  for name, dtype in (("jax_fp32", "float32"), ("jax_bf16", "bfloat16")):
    _log(f"train_timing: compiling our train step ({dtype}) on {dev.device_kind}...")
    build(
        name,
        lambda dtype=dtype: (
            contenders_lib.jax_train_runners(cfg, mesh, model, b, dtype, noaug=False)[0]["aug"],
            f"model.dtype={dtype}, with on-device augmentation",
        ),
    )
  if torch_reason is None:
    params = train_state.create_train_state(cfg, model, mesh).params
    device = "cpu" if on_cpu else "cuda"
    for name, compiled in (("torch_eager", False), ("torch_compiled", True)):
      _log(f"train_timing: building {name} on {device}...")
      build(
          name,
          lambda compiled=compiled: contenders_lib.torch_runner(
              params, width, NUM_CLASSES, b, cores, compiled=compiled, device=device
          ),
      )
    del params
  else:
    notes.update(torch_eager=torch_reason, torch_compiled=torch_reason)
  _log(f"train_timing: timing {', '.join(contenders)}: {args['repeats']} x {args['steps']}...")
  timed = timing.time_in_rotation(contenders, steps=args["steps"], repeats=args["repeats"])
  ips = {f"{name}_images_per_sec": b / timed.median[name] for name in timed.median}
  for name in CONTENDERS:
    ips.setdefault(f"{name}_images_per_sec", None)

  def ratio(a, c):
    x, y = ips[f"{a}_images_per_sec"], ips[f"{c}_images_per_sec"]
    return x / y if x and y else None

  flops = flops_lib.train_flops_per_image(model)
  return {
      **ips,
      "ratio_fp32_vs_torch_compiled": ratio("jax_fp32", "torch_compiled"),
      "ratio_bf16_vs_torch_compiled": ratio("jax_bf16", "torch_compiled"),
      "ratio_fp32_vs_torch_eager": ratio("jax_fp32", "torch_eager"),
      "ratio_bf16_vs_torch_eager": ratio("jax_bf16", "torch_eager"),
      "ratio_bf16_vs_fp32": ratio("jax_bf16", "jax_fp32"),
      **{
          f"{name}_tflops": ips[f"{name}_images_per_sec"] * flops / 1e12
          if ips[f"{name}_images_per_sec"]
          else None
          for name in ("jax_fp32", "jax_bf16")
      },
      "train_flops_per_image": flops,
      "step_seconds_all_repeats": {k: [round(x, 6) for x in v] for k, v in timed.wall.items()},
      "notes": notes,
      "platform": dev.platform,
      "device_kind": dev.device_kind,
      "batch_size": b,
      "width": width,
      "steps": args["steps"],
      "repeats": args["repeats"],
      "what": "our step includes the paper's on-device augmentation from uint8 256x256; "
      "PyTorch's starts from ready float32 224x224 crops; float32 on both sides allows TF32 "
      "(JAX's default precision)",
  }


def part_input(args: dict) -> dict:
  """The input benchmark on the host: per core and on all cores."""
  from benchmarks import bench

  return bench.run_input_only(
      batch_size=args["batch_size"],
      repeats=args["repeats"],
      input_images=args["input_images"],
      input_batches=args["batches"],
      input_warmup_batches=args["warmup"],
      log=_log,
  )


PARTS = {
    "probe": part_probe,
    "torch_probe": part_torch_probe,
    "numerics": part_numerics,
    "train_timing": part_train_timing,
    "input": part_input,
}


# ---- the orchestrator ---------------------------------------------------------------------
def run_part(name: str, part: str, args: dict, env: dict, limit_s: float) -> dict:
  """Runs one part in a fresh process (its output streamed to stderr, prefixed), waits at
  most limit_s seconds (then kills its whole process group). Returns {"status": "ok",
  "seconds", "result"}, {"status": "failed" | "timed_out", "seconds", "error", "log_tail"},
  or, with no time left (limit_s <= 0), {"status": "skipped", "seconds": 0, "error"}."""
  if limit_s <= 0:
    _log(f"{name}: skipped, the overall time budget is spent")
    return {"status": "skipped", "seconds": 0.0, "error": "the overall time budget is spent"}
  fd, out_file = tempfile.mkstemp(prefix=f"device_check_{name}_", suffix=".json")
  os.close(fd)
  cmd = [
      sys.executable,
      "-m",
      "benchmarks.device_check",
      f"--part={part}",
      f"--part_args={json.dumps(args)}",
      f"--part_out={out_file}",
  ]
  _log(f"{name}: starting (limit {limit_s:.0f} s)")
  t0 = time.perf_counter()
  proc = subprocess.Popen(
      cmd,
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      errors="replace",
      start_new_session=True,  # its own process group: a timeout kills its children too
  )
  tail = collections.deque(maxlen=30)

  def pump():
    for line in proc.stdout:
      tail.append(line.rstrip())
      print(f"  {name} | {line.rstrip()}", file=sys.stderr, flush=True)

  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  try:
    rc = proc.wait(timeout=limit_s)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rc = None
  reader.join(timeout=10)
  seconds = round(time.perf_counter() - t0, 1)
  result, error, status = None, None, "failed"
  if rc is None:
    error, status = f"timed out after {limit_s:.0f} s", "timed_out"
  elif rc != 0:
    error = f"exited with status {rc}"
    if rc < 0 and -rc in signal.valid_signals():
      error += f" (killed by {signal.Signals(-rc).name})"
  else:
    try:
      with open(out_file) as f:
        result = json.load(f)
    except (OSError, ValueError) as e:
      error = f"exited 0 but its result is unreadable: {type(e).__name__}: {e}"
  os.remove(out_file)
  if result is not None:
    return {"status": "ok", "seconds": seconds, "result": result}
  _log(f"{name}: {error}")
  return {"status": status, "seconds": seconds, "error": error, "log_tail": list(tail)}


def compare_numerics(ref: dict, other: dict, tolerances: dict) -> dict:
  """The CPU run `ref` against the accelerator run `other` (part_numerics' runs)."""
  import numpy as np

  n = len(ref["losses"])
  loss_rel = max(abs(a - b) / abs(a) for a, b in zip(ref["losses"], other["losses"]))
  with (
      np.load(ref["init_file"]) as ri,
      np.load(ref["final_file"]) as rf,
      np.load(other["init_file"]) as oi,
      np.load(other["final_file"]) as of,
  ):
    assert sorted(rf.files) == sorted(of.files), (rf.files, of.files)
    init_abs = max(float(np.max(np.abs(ri[k] - oi[k]))) for k in ri.files)
    final_abs = max(float(np.max(np.abs(rf[k] - of[k]))) for k in rf.files)
    update_rel = {}
    for k in rf.files:
      du_ref = rf[k] - ri[k]
      scale = float(np.max(np.abs(du_ref)))
      update_rel[k] = float(np.max(np.abs((of[k] - oi[k]) - du_ref))) / max(scale, 1e-30)
  worst = max(update_rel, key=update_rel.get)
  figures = {
      "loss_max_rel_diff": loss_rel,
      "init_max_abs_diff": init_abs,
      "params_max_abs_diff": final_abs,
      "update_max_rel_diff": update_rel[worst],
      "update_worst_layer": worst,
      "update_rel_diff_by_layer": update_rel,
  }
  passed = (
      loss_rel <= tolerances["loss_rel"]
      and init_abs <= tolerances["init_abs"]
      and update_rel[worst] <= tolerances["update_rel"]
  )
  return {
      **figures,
      "steps": n,
      "losses_cpu": ref["losses"],
      "losses_accelerator": other["losses"],
      "tolerances": tolerances,
      "passed": bool(passed),
  }


def _headline(r: dict) -> dict:
  """The figures a README quotes, flat (None where their part did not run)."""
  parts = r["parts"]

  def get(part, *keys):
    node = parts.get(part, {})
    if node.get("status") != "ok":
      return None
    node = node["result"]
    for k in keys:
      node = node.get(k) if isinstance(node, dict) else None
    return node

  return {
      "numerics_passed": r["numerics"].get("passed"),
      "numerics_loss_max_rel_diff": r["numerics"].get("highest", {}).get("loss_max_rel_diff"),
      "numerics_update_max_rel_diff": r["numerics"].get("highest", {}).get("update_max_rel_diff"),
      "numerics_default_precision_update_max_rel_diff": r["numerics"]
      .get("default", {})
      .get("update_max_rel_diff"),
      "jax_fp32_images_per_sec": get("train_timing", "jax_fp32_images_per_sec"),
      "jax_bf16_images_per_sec": get("train_timing", "jax_bf16_images_per_sec"),
      "torch_compiled_images_per_sec": get("train_timing", "torch_compiled_images_per_sec"),
      "ratio_fp32_vs_torch_compiled": get("train_timing", "ratio_fp32_vs_torch_compiled"),
      "ratio_bf16_vs_torch_compiled": get("train_timing", "ratio_bf16_vs_torch_compiled"),
      "input_pipeline_images_per_sec_all_cores": get(
          "input", "input_pipeline_images_per_sec_all_cores"
      ),
      "input_prepared_images_per_sec_all_cores": get(
          "input", "input_prepared_images_per_sec_all_cores"
      ),
      "input_cores": get("input", "input_cores"),
  }


def check(*, tiny: bool, out: str, budget_s: float | None, command: str) -> dict:
  """Runs every part and writes the JSON object to `out`; returns it."""
  t_start = time.perf_counter()
  r = {
      "command": command,
      "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "repository": REPO,
      "parts": {},
  }
  budget = budget_s

  def limit(name: str) -> float:
    """The part's own limit, cut so that the parts after it keep their reserve."""
    order = list(PART_LIMITS)
    later = sum(PART_RESERVE[p] for p in order[order.index(name) + 1 :])
    left = budget - (time.perf_counter() - t_start) - later
    # Tiny: three times the limits, since a busy 2-core CPU compiles slower than the host
    # of an accelerator.
    return max(0.0, min(PART_LIMITS[name] * (3 if tiny_run else 1), left))

  base_env = dict(os.environ)
  base_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  cpu_env = dict(base_env, JAX_PLATFORMS="cpu")

  # Which device JAX finds by default decides the form: full on an accelerator, tiny else.
  tiny_run = tiny
  budget = budget if budget is not None else (300.0 if tiny else 450.0)
  probe = run_part("probe", "probe", {}, base_env if not tiny else cpu_env, limit("probe"))
  r["parts"]["probe"] = probe
  platform_found = probe["result"]["platform"] if probe["status"] == "ok" else None
  if not tiny and platform_found in (None, "cpu"):
    why = (
        "JAX found no accelerator (platform cpu)"
        if platform_found == "cpu"
        else f"the JAX probe failed ({probe.get('error')})"
    )
    r["tiny_reason"] = f"{why}: ran the tiny settings on the CPU instead of the full check"
    _log(f"WARNING: {r['tiny_reason']}. On a GPU machine, see benchmarks/device_check.sh.")
    tiny_run = True
    budget = budget_s if budget_s is not None else 300.0
  elif tiny:
    r["tiny_reason"] = "--tiny"
  r["mode"] = "tiny" if tiny_run else "full"
  settings = TINY if tiny_run else FULL
  r["settings"] = settings
  if tiny_run:
    # The tiny figures mean nothing in themselves: LLVM's optimisations off halves the CPU
    # compilations that take most of the tiny form's time (the same flags on both sides of
    # the numerics check, so it still compares one program with itself).
    cpu_env["XLA_FLAGS"] = f"{cpu_env.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
    r["tiny_xla_flags"] = TINY_XLA_FLAGS
  accel_env = cpu_env if tiny_run else base_env
  if probe["status"] == "ok":
    p = probe["result"]
    r["device"] = f"{p['device_count']} x {p['device_kind']}" + (
        f" (host {p['host_cpu']}, {p['host_cores']} cores)" if p["platform"] == "cpu" else ""
    )
    r["platform"] = p["platform"] if not tiny_run else "cpu"
    r["host"] = {"cpu": p["host_cpu"], "cores": p["host_cores"]}
    r["versions"] = dict(p["versions"])

  tprobe = run_part("torch_probe", "torch_probe", {}, cpu_env, limit("torch_probe"))
  r["parts"]["torch_probe"] = tprobe
  if tprobe["status"] != "ok":
    torch_skip = "PyTorch did not import: " + (
        tprobe["log_tail"][-1] if tprobe.get("log_tail") else tprobe["error"]
    )
  elif not tiny_run and not tprobe["result"]["cuda_available"]:
    torch_skip = (
        f"PyTorch {tprobe['result']['torch']} has no CUDA: install a CUDA build "
        "(benchmarks/device_check.sh's header) to time torch.compile on the GPU"
    )
  else:
    torch_skip = None
  if tprobe["status"] == "ok":
    r.setdefault("versions", {}).update(
        {k: tprobe["result"][k] for k in ("torch", "torch_cuda", "triton")}
    )
  r["torch_skip_reason"] = torch_skip
  if torch_skip:
    _log(f"the PyTorch contenders are skipped: {torch_skip}")

  with tempfile.TemporaryDirectory(prefix="device_check_numerics_") as tmp:
    n = dict(settings["numerics"], dir=tmp)
    r["parts"]["numerics_cpu"] = run_part(
        "numerics_cpu",
        "numerics",
        dict(n, tag="cpu", precisions=["highest"]),
        cpu_env,
        limit("numerics_cpu"),
    )
    r["parts"]["numerics_accelerator"] = run_part(
        "numerics_accelerator",
        "numerics",
        dict(n, tag="accelerator", precisions=["highest", "default"]),
        accel_env,
        limit("numerics_accelerator"),
    )
    r["numerics"] = {"passed": None}
    cpu, acc = r["parts"]["numerics_cpu"], r["parts"]["numerics_accelerator"]
    if cpu["status"] == "ok" and acc["status"] == "ok":
      ref = cpu["result"]["runs"]["highest"]
      for precision, run in acc["result"]["runs"].items():
        r["numerics"][precision] = compare_numerics(ref, run, NUMERICS_TOLERANCES[precision])
      r["numerics"]["passed"] = r["numerics"]["highest"]["passed"]
      r["numerics"]["sides"] = (
          f"{cpu['result']['device_kind']} ({cpu['result']['platform']}) vs "
          f"{acc['result']['device_kind']} ({acc['result']['platform']})"
      )
      _log(
          f"numerics: passed={r['numerics']['passed']}; highest: loss rel diff "
          f"{r['numerics']['highest']['loss_max_rel_diff']:.2e}, update rel diff "
          f"{r['numerics']['highest']['update_max_rel_diff']:.2e}"
      )
    for part in (cpu, acc):  # the files are gone with the directory
      for run in part.get("result", {}).get("runs", {}).values():
        run.pop("init_file"), run.pop("final_file")

  timing_env = dict(accel_env)
  # JAX takes 75% of the GPU's memory at start; leave PyTorch its share of the same GPU.
  timing_env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
  r["parts"]["train_timing"] = run_part(
      "train_timing",
      "train_timing",
      dict(settings["train_timing"], torch_skip_reason=torch_skip),
      timing_env,
      limit("train_timing"),
  )
  r["parts"]["input"] = run_part("input", "input", settings["input"], cpu_env, limit("input"))
  if "tensorflow" in r["parts"]["input"].get("result", {}).get("versions", {}):
    r.setdefault("versions", {})["tensorflow"] = r["parts"]["input"]["result"]["versions"][
        "tensorflow"
    ]
  r["summary"] = _headline(r)
  r["part_status"] = {name: part["status"] for name, part in r["parts"].items()}
  r["wall_seconds"] = round(time.perf_counter() - t_start, 1)
  with open(out, "w") as f:
    json.dump(r, f, indent=1, sort_keys=True)
  return r


def format_summary(r: dict) -> str:
  def fmt(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec) if not isinstance(v, bool) else str(v)

  s = r["summary"]
  lines = [
      f"device check ({r['mode']}) on {r.get('device', 'unknown device')}, "
      f"{r['wall_seconds']:.0f} s; parts: "
      + ", ".join(f"{k} {v}" for k, v in r["part_status"].items()),
      f"  numerics vs CPU passed: {fmt(s['numerics_passed'])} (loss rel diff "
      f"{fmt(s['numerics_loss_max_rel_diff'])}, update rel diff "
      f"{fmt(s['numerics_update_max_rel_diff'])}; at default precision "
      f"{fmt(s['numerics_default_precision_update_max_rel_diff'])})",
      f"  train images/s: fp32 {fmt(s['jax_fp32_images_per_sec'], '.1f')}, bf16 "
      f"{fmt(s['jax_bf16_images_per_sec'], '.1f')}, torch.compile "
      f"{fmt(s['torch_compiled_images_per_sec'], '.1f')}; ratios fp32 "
      f"{fmt(s['ratio_fp32_vs_torch_compiled'])}, bf16 {fmt(s['ratio_bf16_vs_torch_compiled'])}",
      f"  input images/s on {fmt(s['input_cores'], 'd')} cores: JPEG files "
      f"{fmt(s['input_pipeline_images_per_sec_all_cores'], '.0f')}, prepared shards "
      f"{fmt(s['input_prepared_images_per_sec_all_cores'], '.0f')}",
  ]
  if r.get("torch_skip_reason"):
    lines.append(f"  PyTorch skipped: {r['torch_skip_reason']}")
  if r.get("tiny_reason"):
    lines.append(f"  tiny settings: {r['tiny_reason']}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.part:
    result = PARTS[FLAGS.part](json.loads(FLAGS.part_args))
    with open(FLAGS.part_out, "w") as f:
      json.dump(result, f)
    return
  command = os.environ.get("ALEXNET_JAX_DEVICE_CHECK_COMMAND") or shlex.join(
      ["python", "-m", "benchmarks.device_check", *sys.argv[1:]]
  )
  r = check(tiny=FLAGS.tiny, out=FLAGS.out, budget_s=FLAGS.budget_s, command=command)
  print(format_summary(r), flush=True)
  print(f"wrote {os.path.abspath(FLAGS.out)}", flush=True)


def define_flags() -> None:
  """The command's flags, defined only when it runs: tests import this module beside the
  other commands' flags (evaluate's --out)."""
  flags.DEFINE_bool("tiny", False, "Tiny settings on the CPU (well under a minute), any machine.")
  flags.DEFINE_string("out", "device_check.json", "Where to write the JSON object.")
  flags.DEFINE_float(
      "budget_s", None, "Overall time limit in seconds (default: 450 full, 300 tiny)."
  )
  # Internal: the orchestrator starts each part as `--part=NAME --part_args=JSON --part_out=F`.
  flags.DEFINE_string("part", None, "Internal: run one part and write its JSON to --part_out.")
  flags.DEFINE_string("part_args", "{}", "Internal: the part's settings as JSON.")
  flags.DEFINE_string("part_out", None, "Internal: the part's JSON result file.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
