"""What the benchmark times: each builder returns run(n), which runs n steps and blocks until
they are done (benchmarks.timing's contenders), after compiling and warming up.

Imports JAX and, through alexnet_jax.data, TensorFlow: import it after
alexnet_jax.runtime.setup(). PyTorch is imported only by torch_runner. The input benchmark's
contenders are in benchmarks/inputs.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import augment, evaluation, facts, sharding, train_state, train_step
from alexnet_jax.input_spec import InputSpec


# ---- JAX ----------------------------------------------------------------------------------
def jax_train_runners(cfg, mesh, model, batch_size, dtype_name, augment_alone=False, noaug=True):
  """Runners for the project's train step with ("aug") and without ("noaug", on ready 224
  crops) on-device augmentation, on synthetic device-resident batches, and with
  augment_alone=True one ("augment_alone") for the step's augmentation by itself (float32
  whatever the model's dtype, so timed once). noaug=False builds no "noaug" runner (one
  compilation fewer when only the full step is timed). Returns (runners, the config with
  model.dtype=dtype_name)."""
  cfg = cfg.copy_and_resolve_references()
  cfg.model.dtype = dtype_name
  model = train_state.create_model(cfg, model.num_classes)
  data = sharding.batch_sharding(mesh)
  rng = jax.random.key(1)
  images_u8 = jax.device_put(
      jax.random.randint(rng, (batch_size, 256, 256, 3), 0, 256).astype(jnp.uint8), data
  )
  crops = jax.device_put(
      jax.random.normal(rng, (batch_size, 224, 224, 3), jnp.float32) * 50.0, data
  )
  labels = jax.device_put(jnp.arange(batch_size, dtype=jnp.int32) % model.num_classes, data)
  mean = 120.0 + 10.0 * jax.random.uniform(jax.random.key(2), (256, 256, 3))
  spec = jax.device_put(synthetic_spec(cfg, mean), sharding.replicated(mesh))
  lighting = jax.device_put(
      augment.Lighting(jnp.asarray(facts.IMAGENET_EIGVAL), jnp.asarray(facts.IMAGENET_EIGVEC)),
      sharding.replicated(mesh),
  )

  runners = {}
  # One state threads through both steps: the same parameters in the same memory, so the
  # two differ only in the augmentation (with a state each, their parameters train apart).
  box = {"state": train_state.create_train_state(cfg, model, mesh)}
  steps = (("aug", True, images_u8), ("noaug", False, crops))
  for name, on_device, images in steps if noaug else steps[:1]:
    step = train_step.make_train_step(
        cfg, model, mesh, steps_per_epoch=10**6, augment_on_device=on_device
    )
    batch = {"image": images, "label": labels}

    def run(n, step=step, box=box, batch=batch):
      metrics = None
      for _ in range(n):
        box["state"], metrics = step(box["state"], batch, spec, lighting)
      jax.block_until_ready((box["state"].step, metrics))

    run(2)  # compile + one warm step (the timing schedules add one more before timing)
    runners[name] = run
  if not augment_alone:
    return runners, cfg

  # The step's augmentation alone, on the same batch: the fusion it adds to the step,
  # timed to a few ms instead of inside a 5 s step that varies by +-15%. The same compiler
  # options as the step, so that it compiles to the same code.
  augment_jit = jax.jit(
      functools.partial(train_step.augment_batch, cfg.augment, mesh),
      compiler_options=evaluation.compiler_options(),
  )
  step0 = jnp.zeros((), jnp.int32)

  def run_augment(n):
    out = None
    for _ in range(n):
      out = augment_jit(rng, step0, images_u8, spec, lighting)
    jax.block_until_ready(out)

  run_augment(1)
  runners["augment_alone"] = run_augment
  return runners, cfg


def synthetic_spec(cfg, mean) -> InputSpec:
  """cfg's input convention around a synthetic mean image (no std division)."""
  return InputSpec.create(
      mean,
      scale=cfg.input.scale,
      crop_size=cfg.input.crop_size,
      channel_order=cfg.input.channel_order,
      resize=cfg.dataset.resize,
  )


def eval_runner(cfg, mesh, model, eval_batch):
  """evaluation.make_eval_step with the paper's 10 views, on eval_batch synthetic images."""
  step = evaluation.make_eval_step(cfg, model, mesh, crops=10)
  params = train_state.create_train_state(cfg, model, mesh).params
  data = sharding.batch_sharding(mesh)
  batch = {
      "image": jax.device_put(
          jax.random.randint(jax.random.key(3), (eval_batch, 256, 256, 3), 0, 256).astype(
              jnp.uint8
          ),
          data,
      ),
      "label": jax.device_put(jnp.zeros((eval_batch,), jnp.int32), data),
      "mask": jax.device_put(jnp.ones((eval_batch,), bool), data),
  }
  spec = synthetic_spec(cfg, np.full((256, 256, 3), 120.0, np.float32))

  def run(n):
    out = None
    for _ in range(n):
      out = step(params, batch, spec)
    jax.block_until_ready(out)

  run(1)
  return run


def matmul_runner(n, dtype):
  """An n x n matmul in dtype: the device's peak for the MFU. Compiled with the train step's
  compiler options, as the step's own matmuls are."""
  a = jax.random.normal(jax.random.key(4), (n, n), dtype)
  b = jax.random.normal(jax.random.key(5), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b, compiler_options=evaluation.compiler_options())

  def run(k):
    out = None
    for _ in range(k):
      out = f(a, b)
    jax.block_until_ready(out)

  run(1)
  return run


# ---- PyTorch ------------------------------------------------------------------------------
def torch_runner(params, width, num_classes, batch_size, threads, compiled=False, device="cpu"):
  """The PyTorch train step on `device` ("cpu", or "cuda" for benchmarks/device_check.py),
  loaded with our initial parameters. Returns (run, a note saying what ran), or (None, why
  not) without PyTorch or when torch.compile fails.

  Channels-last tensors: oneDNN's preferred layout, 1.14x faster than NCHW for this network
  with torch_reference's slice LRN, so the contender runs its fastest form (cuDNN's tensor
  cores prefer it too). compiled=True wraps the network in torch.compile (inductor). On CUDA,
  run(n) waits for the device at its end, since PyTorch launches kernels asynchronously.
  """
  try:
    import torch
  except ImportError:
    return None, "PyTorch is not installed (pip install -r requirements-bench.txt)"
  from benchmarks import torch_reference

  torch.set_num_threads(threads)
  net = torch_reference.load_jax_params(
      torch_reference.AlexNetTorch(num_classes, width), jax_to_numpy(params)
  )
  net = net.to(device=device, memory_format=torch.channels_last)
  optimizer = torch_reference.make_optimizer(net)
  if compiled:
    net = torch.compile(net)
  step = torch_reference.make_train_step(net, optimizer)
  gen = torch.Generator().manual_seed(0)
  images = (
      (torch.randn(batch_size, 3, 224, 224, generator=gen) * 50.0)
      .to(device)
      .contiguous(memory_format=torch.channels_last)
  )
  labels = torch.from_numpy(np.arange(batch_size) % num_classes).long().to(device)
  on_cuda = torch.device(device).type == "cuda"

  def run(n):
    for _ in range(n):
      step(images, labels)
    if on_cuda:
      torch.cuda.synchronize(device)

  try:
    run(2)  # compiles under torch.compile (about a minute at full width)
  except Exception as e:  # noqa: BLE001 - inductor needs a C++ compiler; report, don't die
    return None, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
  mode = "torch.compile (inductor)" if compiled else "eager"
  where = torch.cuda.get_device_name(device) if on_cuda else f"{threads} threads"
  return run, f"torch {torch.__version__}, {mode}, channels-last, {where}"


def jax_to_numpy(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
