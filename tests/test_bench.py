"""The benchmark end to end on a tiny model, its timing statistics, the PyTorch contender
against our network, and the package's independence from both."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import AlexNet
from benchmarks import flops, timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIGURES = (
    "train_images_per_sec",
    "torch_train_images_per_sec",
    "ratio_vs_torch",
    "torch_compiled_train_images_per_sec",
    "ratio_vs_torch_compiled",
    "peak_matmul_gflops",
    "mfu",
    *(
        f"input_{name}_images_per_sec_{cores}"
        for cores in ("per_core", "all_cores")
        for name in ("decode", "pipeline", "prepared", "prepared_raw")
    ),
    "input_pipeline_vs_train",
    "augment_overhead_fraction",
    "augment_alone_fraction",
    "eval_10crop_images_per_sec",
    "paired_train_images_per_sec",
    "paired_train_noaug_images_per_sec",
)


def _torch_available():
  try:
    import torch  # noqa: F401

    return True
  except ImportError:
    return False


def test_training_flops_are_the_papers():
  # docs/paper.md: 724.4M multiply-adds forward, 4.35 GFLOP per training image.
  m = AlexNet()
  assert abs(flops.forward_macs(m) - 724.4e6) / 724.4e6 < 1e-3
  assert abs(flops.train_flops_per_image(m) - 4.35e9) / 4.35e9 < 2e-3


def test_benchmark_runs_end_to_end_on_a_tiny_model():
  """`python -m benchmarks.bench` in quick mode: a table, then one JSON object whose
  figures are all positive (the PyTorch ones only when PyTorch is installed)."""
  env = dict(os.environ)
  # One CPU device, as a user runs it (conftest simulates 8); LLVM optimisation off halves
  # the compile time of this quick mode (the figures mean nothing at this size anyway).
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("ALEXNET_JAX_YNN_CONVS", None)
  with_torch = _torch_available()
  cmd = [
      sys.executable,
      "-m",
      "benchmarks.bench",
      "--width=0.125",
      "--batch_size=8",
      "--steps=1",
      "--repeats=1",
      "--eval_batch_size=2",
      "--input_images=16",
      "--input_batches=1",
      "--matmul_size=512",
      "--mesh=1,1",
      "--bf16=on",
      "--overhead_pairs=5",
  ]
  if not with_torch:
    cmd.append("--notorch")
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  lines = out.stdout.strip().splitlines()
  assert "ratio vs PyTorch" in out.stdout  # the readable table comes first
  result = json.loads(lines[-1])
  for key in ("device", "batch_size", "versions"):
    assert result[key], key
  assert result["batch_size"] == 8
  assert result["versions"]["jax"] == jax.__version__
  bf16_figures = (
      "train_images_per_sec_bf16",
      "peak_matmul_gflops_bf16",
      "mfu_bf16",
      "augment_overhead_fraction_bf16",
  )
  for key in FIGURES + bf16_figures:  # --bf16=on: the accelerator-only figures on CPU too
    assert key in result, key
    if key.startswith(("torch", "ratio_vs_torch")):
      if not with_torch:
        assert result[key] is None
        continue
    value = result[key]
    assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
    if key.startswith("augment_overhead_fraction"):
      # A difference of two timings of one step each: positive on average, but on a model
      # this small, noise can take it a little below zero.
      assert value > -0.5, value
    else:
      assert value > 0, (key, value)
  if not with_torch:
    assert "not installed" in result["torch"] or "notorch" in result["torch"]
  # On CPU the overhead is also given in process CPU time, from the same pairs; the 90%
  # interval over 5 pairs is their smallest and largest ratio (test_median_interval_...).
  assert result["overhead_pairs"] == 5
  walls = list(zip(result["paired_aug_step_seconds"], result["paired_noaug_step_seconds"]))
  cpus = list(zip(result["paired_aug_step_cpu_seconds"], result["paired_noaug_step_cpu_seconds"]))
  assert len(walls) == len(cpus) == 5 and all(a > 0 and n > 0 for a, n in walls + cpus)
  ratios = sorted(a / n - 1 for a, n in walls)
  low, high = result["augment_overhead_fraction_ci90"]
  assert low == pytest.approx(ratios[0], abs=2e-3) and high == pytest.approx(ratios[-1], abs=2e-3)
  assert math.isfinite(result["augment_overhead_fraction_cpu_time"])
  if os.path.exists("/proc/stat"):
    assert 0.0 <= result["host_steal_fraction"] < 1.0
  # The CPU convolution choice reaches the steps as their compiler options, not XLA_FLAGS.
  assert result["compiler_options"] and "ynn_fusion_type" not in result["xla_flags"]


# The input benchmark's figures, and its per-core ratios to the bare decode (ratio, figure).
INPUT_FIGURES = (
    *(figure for figure in FIGURES if figure.startswith("input_") and "_vs_" not in figure),
    "input_cores_needed_per_1000_images_per_sec",
    "input_cores_needed_per_1000_images_per_sec_raw_jpegs",
)
INPUT_RATIOS = (
    ("input_pipeline_vs_decode", "input_pipeline_images_per_sec_per_core"),
    ("input_prepared_vs_decode", "input_prepared_images_per_sec_per_core"),
    ("input_prepared_raw_vs_decode", "input_prepared_raw_images_per_sec_per_core"),
)


def test_input_benchmark_runs_alone():
  """`--only=input`: the input figures, their ratios, and nothing of the model's."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "benchmarks.bench", "--only=input", "--input_images=16"]
  cmd += ["--batch_size=8", "--repeats=1", "--input_batches=1", "--input_warmup_batches=1"]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "bare decode" in out.stdout  # the table comes first
  result = json.loads(out.stdout.strip().splitlines()[-1])
  for key in INPUT_FIGURES + tuple(ratio for ratio, _ in INPUT_RATIOS):
    value = result[key]
    assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
  decode = result["input_decode_images_per_sec_per_core"]
  for ratio, figure in INPUT_RATIOS:
    assert result[ratio] == pytest.approx(result[figure] / decode, rel=1e-9, abs=0), ratio
  for needed, figure in (
      ("input_cores_needed_per_1000_images_per_sec", "input_prepared_images_per_sec_per_core"),
      (
          "input_cores_needed_per_1000_images_per_sec_raw_jpegs",
          "input_pipeline_images_per_sec_per_core",
      ),
  ):
    assert result[needed] == pytest.approx(1000 / result[figure], rel=1e-9, abs=0), needed
  assert result["input_targets_met"] == (
      result["input_pipeline_vs_decode"] >= 0.9
      and result["input_prepared_vs_decode"] >= 4
      and result["input_prepared_raw_vs_decode"] >= 20
  )
  assert result["input_cores"] == len(os.sched_getaffinity(0))
  assert result["input_batch_size"] == 8 and result["input_images"] == 16
  # --only really skipped the model and PyTorch.
  for key in (
      "train_images_per_sec",
      "torch_train_images_per_sec",
      "mfu",
      "input_pipeline_vs_train",
  ):
    assert key not in result, key


def test_rates_rotate_and_pinning_moves_every_thread_and_restores_it():
  calls = []
  median, rates = timing.rates_in_rotation(
      {name: (lambda name=name: calls.append(name) or len(calls)) for name in "ab"}, repeats=3
  )
  assert calls == ["a", "b", "b", "a", "a", "b"]
  assert rates == {"a": [1, 4, 5], "b": [2, 3, 6]} and median == {"a": 4, "b": 3}

  def threads():
    return {t: os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}

  before = threads()
  core = max(os.sched_getaffinity(0))
  with timing.pinned({core}):
    assert all(cpus == {core} for cpus in threads().values())
  assert threads() == before


def test_timing_rotates_the_order_and_settles_before_each_timed_run():
  calls = []
  contenders = {name: (lambda n, name=name: calls.append((name, n))) for name in "abc"}
  timed = timing.time_in_rotation(contenders, steps=4, repeats=4)
  # One contender further along each repeat; every timed run (n=4) has an untimed step
  # (n=1) just before it.
  order = ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
  assert calls == [c for name in order for c in ((name, 1), (name, 4))]
  assert all(len(ts) == 4 for ts in timed.wall.values())
  assert all(len(ts) == 4 for ts in timed.cpu.values())


def test_paired_steps_alternate_abba_after_one_untimed_step_each():
  calls = []
  contenders = {name: (lambda n, name=name: calls.append((name, n))) for name in "xyz"}
  timed = timing.time_abba_pairs("x", "y", contenders, pairs=5)
  assert calls == [("x", 1), ("y", 1)] + [(name, 1) for name in "xyyxxyyxxy"]
  assert set(timed.wall) == set(timed.cpu) == {"x", "y"}
  assert all(len(ts) == 5 for ts in list(timed.wall.values()) + list(timed.cpu.values()))


def test_paired_overhead_is_the_median_of_same_repeat_ratios():
  # Pairs (1.1, 1.0), (2.0, 2.2), (3.3, 3.0): ratios +0.1, -0.0909, +0.1 -> median +0.1;
  # a ratio of medians (2.0 / 2.2 - 1) would say -0.09.
  assert timing.median_pair_overhead([1.1, 2.0, 3.3], [1.0, 2.2, 3.0]) == pytest.approx(0.1)


def test_median_interval_is_the_binomial_order_statistic_interval():
  from scipy import stats

  values = [0.3, -0.1, 0.05, 0.2, 0.0, 0.12, -0.04, 0.08, 0.5, 0.01]
  # n=10 at 90%: P(Bin(10, 1/2) <= 1) = 11/1024 <= 0.05 < P(<= 2) = 56/1024, so the 2nd
  # and 9th smallest.
  assert timing.median_interval(values) == (-0.04, 0.3)
  assert timing.median_interval(values[:4]) is None  # 1/16 > 0.05: no interval from 4
  assert timing.median_interval(values[:5]) == (-0.1, 0.3)  # 1/32 <= 0.05: min and max
  rng = np.random.default_rng(0)
  for n in range(5, 41):
    xs = list(rng.normal(size=n))
    k = max(j for j in range(1, n // 2 + 1) if stats.binom.cdf(j - 1, n, 0.5) <= 0.05)
    assert timing.median_interval(xs) == (sorted(xs)[k - 1], sorted(xs)[n - k]), n


def test_steal_fraction_from_a_proc_stat_written_by_hand(tmp_path):
  stat = tmp_path / "stat"
  # user nice system idle iowait irq softirq steal guest guest_nice
  stat.write_text("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 50 0 25 400 5 0 2 18 3 0\n")
  before = timing.read_cpu_jiffies(str(stat))
  assert before == (35, 1000)  # guest time is already counted in user: not added again
  stat.write_text("cpu  190 0 60 900 10 0 5 135 9 0\n")
  after = timing.read_cpu_jiffies(str(stat))
  assert timing.steal_fraction(before, after) == pytest.approx(100 / 300)
  assert timing.read_cpu_jiffies(str(tmp_path / "missing")) is None
  assert timing.steal_fraction(None, after) is None


def test_pytorch_reference_forward_equals_ours():
  """The benchmark compares the same network: on our weights, PyTorch's forward (groups=2
  convolutions, per-tower LRN, NCHW, (C, H, W) flatten) gives our logits to 1e-4."""
  torch = pytest.importorskip(
      "torch", reason="PyTorch is benchmark-only " "(requirements-bench.txt); not installed here"
  )
  from benchmarks import torch_reference

  model = AlexNet(num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  # He-normal-sized weights so that every layer (and the LRN) changes the logits.
  params = jax.tree.map(lambda x: x * 10 if x.ndim > 1 else x + 0.1, variables["params"])
  images = np.asarray(jax.random.normal(jax.random.key(1), (2, 224, 224, 3)) * 60, np.float32)
  ours = np.asarray(model.apply({"params": params}, images))

  net = torch_reference.load_jax_params(torch_reference.AlexNetTorch(1000), params).eval()
  with torch.no_grad():
    theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  assert np.std(ours) > 1e-2  # a non-trivial comparison
  rel = np.max(np.abs(ours - theirs)) / np.max(np.abs(ours))
  assert rel < 1e-4, rel
  # The benchmark runs it channels-last: the same function.
  net = net.to(memory_format=torch.channels_last)
  with torch.no_grad():
    cl = net(
        torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).contiguous(
            memory_format=torch.channels_last
        )
    ).numpy()
  assert np.max(np.abs(ours - cl)) / np.max(np.abs(ours)) < 1e-4


def test_pytorch_lrn_is_the_papers_within_each_tower():
  torch = pytest.importorskip(
      "torch", reason="PyTorch is benchmark-only " "(requirements-bench.txt); not installed here"
  )
  from benchmarks import torch_reference

  x = np.random.default_rng(0).normal(0, 40, (2, 6, 5, 96)).astype(np.float32)
  tf = pytest.importorskip("tensorflow")
  # TensorFlow's LRN is the paper's formula (alpha per squared term), on each tower's half.
  want = np.concatenate(
      [
          tf.nn.local_response_normalization(
              h, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75
          ).numpy()
          for h in np.split(x, 2, axis=-1)
      ],
      axis=-1,
  )
  got = (
      torch_reference.local_response_norm(
          torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), towers=2
      )
      .numpy()
      .transpose(0, 2, 3, 1)
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
