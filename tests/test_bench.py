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
from tests import forkserver

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


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path):
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
      "--profile_steps=2",
      f"--profile_dir={tmp_path / 'profile'}",
  ]
  if not with_torch:
    cmd.append("--notorch")
  # In a forked child of a zygote that preloaded TensorFlow and JAX (tests/forkserver.py):
  # the figures are rates, checked only for being positive. device_check.sh below and
  # device_check.run_part start real processes (what they test).
  out = forkserver.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
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
  # --profile_steps: the trace of two steps, where TensorBoard and Perfetto read it, and the
  # time of the step's convolutions in it.
  (traced,) = (tmp_path / "profile" / "plugins" / "profile").iterdir()
  assert result["profile_dir"] == str(traced)
  assert list(traced.glob("*.xplane.pb")) and (traced / "perfetto_trace.json.gz").exists()
  ops = result["profile_ops_ms_per_step"]
  assert ops and all(ms > 0 for ms in ops.values())
  assert any(op.startswith("convolution") for op in ops)
  assert "XLA thunks, summed over threads" in out.stderr


def test_op_times_from_a_perfetto_trace_written_by_hand(tmp_path):
  """Two steps: convolution.1 took 1 ms and 3 ms, fusion.2 0.5 ms on each of two threads in
  one step; another module's thunk and the executor's own events do not count."""
  import gzip

  from benchmarks import tracing

  def thunk(op, dur_us, tid=1, module="jit_train_step"):
    return {
        "ph": "X",
        "tid": tid,
        "dur": dur_us,
        "name": op,
        "args": {"hlo_module": module, "hlo_op": op},
    }

  events = [
      thunk("convolution.1", 1000.0),
      thunk("convolution.1", 3000.0),
      thunk("fusion.2", 500.0, tid=1),
      thunk("fusion.2", 500.0, tid=2),
      thunk("convolution.1", 9000.0, module="jit_eval_step"),
      {"ph": "X", "tid": 1, "dur": 7000.0, "name": "ThunkExecutor::Execute", "args": {}},
      {"ph": "M", "name": "thread_name", "tid": 1, "args": {"name": "tf_XLAEigen"}},
  ]
  with gzip.open(tmp_path / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  ops = tracing.op_times(str(tmp_path), steps=2)
  assert ops == [("convolution.1", 2.0), ("fusion.2", 0.5)]
  table = tracing.format_ops(ops, step_s=0.01)
  assert "2.5 ms per step" in table
  assert "convolution" in table and "0.200 of the step" in table


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


@pytest.mark.slow
def test_input_benchmark_runs_alone():
  """`--only=input`: the input figures, their ratios, and nothing of the model's."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "benchmarks.bench", "--only=input", "--input_images=16"]
  cmd += ["--batch_size=8", "--repeats=1", "--input_batches=1", "--input_warmup_batches=1"]
  out = forkserver.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
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


@pytest.mark.slow
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


# ---- benchmarks/device_check.py: the accelerator check ------------------------------------
def _write_npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def test_device_check_compares_losses_and_updates_against_stated_tolerances(tmp_path):
  """The numerics comparison on hand-made runs: relative loss difference, and per layer the
  largest difference of the parameter updates over the largest reference update."""
  from benchmarks import device_check

  def run(tag, init, final, losses):
    return {
        "losses": losses,
        "init_file": _write_npz(tmp_path / f"{tag}_i.npz", w=np.asarray(init[0]), b=init[1]),
        "final_file": _write_npz(tmp_path / f"{tag}_f.npz", w=np.asarray(final[0]), b=final[1]),
    }

  init = (np.array([1.0, 2.0, -3.0]), np.array([0.5]))
  # Reference updates: w by (0.5, -0.25, 0.1) (largest 0.5), b by 0.2.
  ref = run("ref", init, (np.array([1.5, 1.75, -2.9]), np.array([0.7])), [2.0, 1.0])
  tol = {"loss_rel": 1e-4, "init_abs": 1e-6, "update_rel": 1e-3}
  # w's second update off by 2e-4 (2e-4 / 0.5 = 4e-4), b's by 1e-5 (1e-5 / 0.2 = 5e-5); the
  # second loss off by 5e-5 relative.
  near = run("near", init, (np.array([1.5, 1.7502, -2.9]), np.array([0.70001])), [2.0, 1.00005])
  got = device_check.compare_numerics(ref, near, tol)
  assert got["loss_max_rel_diff"] == pytest.approx(5e-5, rel=1e-6)
  assert got["init_max_abs_diff"] == 0.0
  assert got["update_rel_diff_by_layer"]["w"] == pytest.approx(4e-4, rel=1e-6)
  assert got["update_rel_diff_by_layer"]["b"] == pytest.approx(5e-5, rel=1e-6)
  assert got["update_max_rel_diff"] == pytest.approx(4e-4, rel=1e-6)
  assert got["update_worst_layer"] == "w" and got["passed"] is True
  assert got["params_max_abs_diff"] == pytest.approx(2e-4, rel=1e-6)
  # 1e-3 off on w's first update: 2e-3 relative, over the tolerance.
  far = run("far", init, (np.array([1.501, 1.75, -2.9]), np.array([0.7])), [2.0, 1.0])
  got = device_check.compare_numerics(ref, far, tol)
  assert got["update_max_rel_diff"] == pytest.approx(2e-3, rel=1e-6) and got["passed"] is False
  # A different start (another seed's draw) fails even with the same updates.
  moved = run(
      "moved",
      (init[0] + 1e-5, init[1]),
      (np.array([1.50001, 1.75001, -2.89999]), np.array([0.7])),
      [2.0, 1.0],
  )
  got = device_check.compare_numerics(ref, moved, tol)
  assert got["init_max_abs_diff"] == pytest.approx(1e-5, rel=1e-6) and got["passed"] is False


def test_device_check_records_a_failing_or_overrunning_part_and_goes_on():
  """Each part runs in its own process: a part that raises is 'failed' with its log's last
  lines, one past its limit is killed and 'timed_out'; neither stops the caller."""
  from benchmarks import device_check

  env = dict(os.environ, JAX_PLATFORMS="cpu")
  failed = device_check.run_part("input", "input", {}, env, limit_s=120)  # no settings
  assert failed["status"] == "failed" and failed["error"] == "exited with status 1"
  assert any("KeyError" in line for line in failed["log_tail"]), failed["log_tail"]
  # The probe imports JAX, which takes longer than 0.1 s.
  slow = device_check.run_part("probe", "probe", {}, env, limit_s=0.1)
  assert slow["status"] == "timed_out" and slow["error"] == "timed out after 0 s"
  spent = device_check.run_part("probe", "probe", {}, env, limit_s=0)
  assert spent["status"] == "skipped" and "budget" in spent["error"]
  ok = device_check.run_part("probe", "probe", {}, env, limit_s=120)
  assert ok["status"] == "ok" and ok["result"]["platform"] == "cpu"
  assert ok["result"]["versions"]["jax"] == jax.__version__


@pytest.mark.slow
def test_device_check_tiny_form_runs_every_part_and_writes_one_json(tmp_path):
  """`bash benchmarks/device_check.sh --tiny`: the CPU against itself agrees exactly, every
  timing figure is a positive rate whose ratios are their quotients, the input stream ran on
  this process's cores, and the JSON says what ran and how."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable, XLA_FLAGS="")
  env.pop("ALEXNET_JAX_YNN_CONVS", None)
  out_file = tmp_path / "check.json"
  cmd = ["bash", "benchmarks/device_check.sh", "--tiny", f"--out={out_file}"]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "numerics vs CPU passed: True" in out.stdout
  r = json.loads(out_file.read_text())
  assert r["command"] == f"bash benchmarks/device_check.sh --tiny --out={out_file}"
  assert r["mode"] == "tiny" and r["tiny_reason"] == "--tiny" and r["platform"] == "cpu"
  assert r["device"].startswith("1 x cpu") and r["host"]["cores"] == len(os.sched_getaffinity(0))
  assert r["versions"]["jax"] == jax.__version__ and r["versions"]["python"]
  with_torch = _torch_available()
  expected = {"probe", "numerics_cpu", "numerics_accelerator", "train_timing", "input"}
  assert {k for k, v in r["part_status"].items() if v == "ok"} >= expected, r["part_status"]
  assert (r["part_status"]["torch_probe"] == "ok") == with_torch
  assert r["wall_seconds"] > 0

  # Numerics: the same program on the same CPU, twice: bit for bit, at both precisions.
  n = r["numerics"]
  assert n["passed"] is True
  for precision in ("highest", "default"):
    c = n[precision]
    assert c["passed"] is True and c["steps"] == 3
    assert c["loss_max_rel_diff"] == 0.0 and c["init_max_abs_diff"] == 0.0
    assert c["update_max_rel_diff"] == 0.0 and c["params_max_abs_diff"] == 0.0
    assert c["losses_cpu"] == c["losses_accelerator"]
    assert len(c["update_rel_diff_by_layer"]) == 16  # conv1..fc8, kernel and bias
    # At width 1/8 the paper's initialisation gives near-uniform logits: a first loss near
    # ln(1000).
    assert abs(c["losses_cpu"][0] - math.log(1000)) < 0.5, c["losses_cpu"]
  assert n["highest"]["tolerances"] == {"loss_rel": 1e-4, "init_abs": 1e-6, "update_rel": 1e-3}

  # Training throughput: rates from the recorded step times, ratios their quotients.
  t = r["parts"]["train_timing"]["result"]
  assert t["batch_size"] == 8 and t["width"] == 0.125 and t["platform"] == "cpu"
  names = ("jax_fp32", "jax_bf16") + (("torch_eager", "torch_compiled") if with_torch else ())
  for name in names:
    rate = t[f"{name}_images_per_sec"]
    assert math.isfinite(rate) and rate > 0, (name, rate)
    (seconds,) = t["step_seconds_all_repeats"][name]  # one repeat: its median
    assert rate == pytest.approx(8 / seconds, rel=1e-3), name
  assert t["jax_bf16_tflops"] == pytest.approx(
      t["jax_bf16_images_per_sec"] * flops.train_flops_per_image(AlexNet(width=0.125)) / 1e12
  )
  if with_torch:
    assert t["ratio_fp32_vs_torch_compiled"] == pytest.approx(
        t["jax_fp32_images_per_sec"] / t["torch_compiled_images_per_sec"]
    )
    assert t["ratio_bf16_vs_torch_compiled"] == pytest.approx(
        t["jax_bf16_images_per_sec"] / t["torch_compiled_images_per_sec"]
    )
    assert "torch.compile" in t["notes"]["torch_compiled"] and r["torch_skip_reason"] is None
    assert r["summary"]["ratio_fp32_vs_torch_compiled"] == t["ratio_fp32_vs_torch_compiled"]
  else:
    assert t["ratio_fp32_vs_torch_compiled"] is None and "PyTorch" in r["torch_skip_reason"]

  # The input stream, on every core of this process and on one.
  i = r["parts"]["input"]["result"]
  assert i["input_cores"] == len(os.sched_getaffinity(0)) and i["input_images"] == 16
  for key in INPUT_FIGURES:
    assert math.isfinite(i[key]) and i[key] > 0, (key, i[key])
  assert r["summary"]["input_pipeline_images_per_sec_all_cores"] == (
      i["input_pipeline_images_per_sec_all_cores"]
  )


@pytest.mark.slow  # 6-10 s: in the full suite, out of the fast tier's 5 minutes
def test_the_benchmark_says_what_it_will_run_before_it_starts():
  def plan(*args):
    r = forkserver.run(
        [sys.executable, "-m", "benchmarks.bench", "--dry_run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stderr.strip().splitlines()[-1]

  full = plan()
  assert full.startswith("benchmark plan: the train step (batch 128, width 1.0, mesh 1,1)")
  assert "PyTorch eager and torch.compile" in full and "the input stream" in full
  assert "about 10 minutes on 2 CPU cores" in full
  quick_command = full.split("A quick check instead (about a minute): ")[1]
  assert quick_command.startswith("python -m benchmarks.bench --width=")
  quick = plan(*quick_command.split()[3:])
  assert "PyTorch" not in quick and "input stream" not in quick and "10 minutes" not in quick
  assert plan("--only=input").startswith("benchmark plan: the input stream only (384 JPEGs")
