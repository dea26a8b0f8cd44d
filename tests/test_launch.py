"""launch/: the sweep expansion and its SLURM array job, the scripts' syntax and usage
lines, and when alexnet_jax.distributed decides that a run is multi-process. Fast: nothing
here starts JAX in a subprocess."""

import os
import shlex
import sys

import numpy as np
import pytest

from alexnet_jax import distributed, sharding
from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ["local_devices.sh", "multiprocess_local.sh", "slurm.sbatch", "tpu_vm.sh"]
sys.path.insert(0, LAUNCH)
import sweep  # noqa: E402  (launch/sweep.py)


def _run(args, **kw):
  # Python (sweep.py, alexnet_jax.main) in a forked child of a zygote that preloaded the
  # libraries (tests/forkserver.py); the shell scripts run as real processes (its fallback).
  return forkserver.run(args, cwd=REPO, capture_output=True, text=True, timeout=60, **kw)


def _sweep(*args):
  r = _run([sys.executable, os.path.join(LAUNCH, "sweep.py"), *args])
  assert r.returncode == 0, r.stderr
  return r.stdout


HAND_WRITTEN = [
    [
        "python",
        "-m",
        "alexnet_jax.main",
        "--config=configs/demo.py",
        f"--workdir=runs/sw/optimizer.learning_rate={lr},model.width={w}",
        f"--config.optimizer.learning_rate={lr}",
        f"--config.model.width={w}",
        "--config.num_train_steps=10",
    ]
    for lr in ("0.01", "0.02")
    for w in ("0.25", "0.5")
]
GRID = [
    "--config=configs/demo.py",
    "--workdir=runs/sw",
    "--python=python",
    "--grid",
    "config.optimizer.learning_rate=0.01,0.02",
    "--grid",
    "model.width=0.25,0.5",
]


def test_sweep_2x2_grid_gives_the_four_commands():
  out = _sweep(*GRID, "--mode=print", "--", "--config.num_train_steps=10")
  assert [shlex.split(line) for line in out.splitlines()] == HAND_WRITTEN


def test_sweep_slurm_array_indexes_the_same_four_points(tmp_path):
  script = tmp_path / "sweep.sbatch"
  out = _sweep(
      *GRID,
      "--mode=slurm",
      f"--slurm_script={script}",
      "--sbatch=--gpus-per-node=8",
      "--",
      "--config.num_train_steps=10",
  )
  assert str(script) in out
  assert _run(["bash", "-n", str(script)]).returncode == 0
  text = script.read_text()
  assert "#SBATCH --array=0-3\n" in text and "#SBATCH --gpus-per-node=8\n" in text
  assert 'exec srun "${CMD[@]}"' in text
  for i, expected in enumerate(HAND_WRITTEN):
    r = _run(
        ["bash", str(script)],
        env={**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "SWEEP_DRY_RUN": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == expected, i
  r = _run(
      ["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "4", "SWEEP_DRY_RUN": "1"}
  )
  assert r.returncode == 2 and "no grid point 4" in r.stderr


def test_sweep_from_a_config_sweep_function_and_launcher(tmp_path):
  cfg = tmp_path / "swept.py"
  cfg.write_text(
      "from configs import demo\n"
      "def get_config():\n  return demo.get_config()\n"
      "def sweep():\n"
      "  return {'optimizer.learning_rate': [0.01, 0.05], 'model.lrn': [True]}\n"
  )
  out = _sweep(
      f"--config={cfg}",
      "--workdir=runs/x",
      "--grid",
      "seed=0,1",
      "--launcher=launch/local_devices.sh 4",
  )
  cmds = [shlex.split(line) for line in out.splitlines()]
  assert len(cmds) == 4
  assert cmds[1] == [
      "launch/local_devices.sh",
      "4",
      f"--config={cfg}",
      "--workdir=runs/x/optimizer.learning_rate=0.01,model.lrn=true,seed=1",
      "--config.optimizer.learning_rate=0.01",
      "--config.model.lrn=true",
      "--config.seed=1",
  ]
  assert len({c[3] for c in cmds}) == 4  # one workdir per point
  # --no_config_sweep: the command-line grid alone.
  out = _sweep(
      f"--config={cfg}",
      "--workdir=runs/x",
      "--grid",
      "seed=0,1",
      "--no_config_sweep",
      "--python=py",
  )
  assert [shlex.split(l)[4] for l in out.splitlines()] == [
      "--workdir=runs/x/seed=0",
      "--workdir=runs/x/seed=1",
  ]


def test_sweep_local_mode_runs_each_point_and_reports_failures(tmp_path):
  # A stand-in launcher: exits 1 for one point. Runs one after another.
  fake = tmp_path / "fake.sh"
  fake.write_text(
      '#!/usr/bin/env bash\necho "ran $*" >> "$(dirname "$0")/ran.txt"\n' '[[ "$*" != *seed=1* ]]\n'
  )
  fake.chmod(0o755)
  r = _run(
      [
          sys.executable,
          os.path.join(LAUNCH, "sweep.py"),
          "--config=configs/demo.py",
          f"--workdir={tmp_path}/runs",
          "--grid",
          "seed=0,1,2",
          "--mode=local",
          f"--launcher={fake}",
      ]
  )
  assert r.returncode == 1, r.stdout + r.stderr
  assert "2 of 3 runs succeeded" in r.stdout
  ran = (tmp_path / "ran.txt").read_text().splitlines()
  assert [l.rsplit("=", 1)[-1] for l in ran] == ["0", "1", "2"]


def test_sweep_value_splitting_and_names():
  assert sweep.split_values("0.1,(4.0,8.0),[1, 2],'a,b'") == ["0.1", "(4.0,8.0)", "[1, 2]", "'a,b'"]
  assert sweep.run_name({"dataset.name": "folder:/data/x y"}) == "dataset.name=folder__data_x_y"
  assert sweep.format_value((4.0, 8.0)) == "(4.0,8.0)"
  with pytest.raises(ValueError, match="share a workdir"):
    sweep.commands("c.py", "r", [{"a": "x/y"}, {"a": "x_y"}])


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_print_usage(script):
  path = os.path.join(LAUNCH, script)
  assert os.access(path, os.X_OK)
  assert _run(["bash", "-n", path]).returncode == 0
  r = _run(["bash", path])  # no arguments: the usage line, status 2, nothing started
  assert r.returncode == 2 and "usage:" in r.stderr, r.stderr


def test_launch_readme_has_an_example_per_script():
  with open(os.path.join(LAUNCH, "README.md")) as f:
    text = f.read()
  for name in SCRIPTS + ["sweep.py"]:
    assert f"launch/{name}" in text, name


def test_tpu_vm_runs_the_same_command_on_every_worker():
  r = _run(
      [
          "bash",
          os.path.join(LAUNCH, "tpu_vm.sh"),
          "my-tpu",
          "us-central2-b",
          "--config=configs/paper.py",
          "--workdir=/mnt/runs/a b",
      ],
      env={**os.environ, "DRY_RUN": "1", "PROJECT": "proj"},
  )
  assert r.returncode == 0, r.stderr
  argv = shlex.split(r.stdout)
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in argv and "--project=proj" in argv
  remote = next(a for a in argv if a.startswith("--command="))[len("--command=") :]
  assert "ALEXNET_JAX_DISTRIBUTED=1" in remote
  assert "-m alexnet_jax.main --config=configs/paper.py --workdir=/mnt/runs/a\\ b" in remote


def test_multiprocess_local_rejects_bad_counts():
  r = _run(["bash", os.path.join(LAUNCH, "multiprocess_local.sh"), "two", "2"])
  assert r.returncode == 2 and "usage:" in r.stderr


# ---- when is a run multi-process? (alexnet_jax.distributed.resolve; starts nothing) --------
O = distributed.Options


def test_single_process_by_default():
  assert distributed.resolve(O(), {}) is None
  assert (
      distributed.resolve(
          O(),
          {
              "SLURM_NTASKS": "1",
              "SLURM_PROCID": "0",
              "SLURM_STEP_NODELIST": "n1",
              "SLURM_JOB_ID": "5",
          },
      )
      is None
  )
  assert distributed.resolve(O(), {"TPU_WORKER_HOSTNAMES": "w0"}) is None


def test_explicit_flags_and_launcher_env():
  plan = distributed.resolve(
      O(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3), {}
  )
  assert (plan.source, plan.coordinator_address, plan.num_processes, plan.process_id) == (
      "flags",
      "10.0.0.1:1234",
      4,
      3,
  )
  env = {
      distributed.ENV_COORDINATOR: "127.0.0.1:999",
      distributed.ENV_NUM_PROCESSES: "2",
      distributed.ENV_PROCESS_ID: "1",
  }
  plan = distributed.resolve(O(), env)
  assert (plan.source, plan.coordinator_address, plan.num_processes, plan.process_id) == (
      "env",
      "127.0.0.1:999",
      2,
      1,
  )
  # Flags win over the environment; one process is a single-process run.
  assert (
      distributed.resolve(O(coordinator_address="h:1", num_processes=2, process_id=0), env).source
      == "flags"
  )
  assert (
      distributed.resolve(O(num_processes=1, process_id=0, coordinator_address="h:1"), env) is None
  )
  assert distributed.resolve(O(mode="off"), env) is None
  assert distributed.resolve(O(), {**env, distributed.ENV_DISTRIBUTED: "0"}) is None


def test_incomplete_or_inconsistent_settings_are_errors():
  with pytest.raises(ValueError, match="missing --num_processes, --process_id"):
    distributed.resolve(O(coordinator_address="h:1"), {})
  with pytest.raises(ValueError, match="not in"):
    distributed.resolve(O(coordinator_address="h:1", num_processes=2, process_id=2), {})
  with pytest.raises(ValueError, match="must be an integer"):
    distributed.resolve(
        O(),
        {
            distributed.ENV_COORDINATOR: "h:1",
            distributed.ENV_NUM_PROCESSES: "two",
            distributed.ENV_PROCESS_ID: "0",
        },
    )
  # --distributed=on lets JAX fill in the rest.
  assert distributed.resolve(O(mode="on", coordinator_address="h:1"), {}).source == "flags"


def test_cluster_detection():
  slurm = {
      "SLURM_JOB_ID": "77",
      "SLURM_STEP_NODELIST": "gpu[01-02]",
      "SLURM_NTASKS": "16",
      "SLURM_PROCID": "9",
      "SLURM_LOCALID": "1",
  }
  plan = distributed.resolve(O(), slurm)
  assert (plan.source, plan.num_processes, plan.process_id) == ("slurm", 16, 9)
  assert plan.coordinator_address is None  # JAX derives it from the node list
  assert distributed.resolve(O(), {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}).source == "tpu"
  assert distributed.resolve(O(), {distributed.ENV_DISTRIBUTED: "1"}).source == "forced"
  assert distributed.resolve(O(mode="on"), {}).source == "forced"


def test_main_defines_the_distributed_flags():
  r = _run([sys.executable, "-m", "alexnet_jax.main", "--helpfull"])
  for flag in (
      "--coordinator_address",
      "--num_processes",
      "--process_id",
      "--distributed",
      "--distributed_heartbeat_timeout",
      "--distributed_init_timeout",
  ):
    assert flag in r.stdout, flag


# ---- which rows of each global batch a process feeds (sharding.data_block) -------------
class _Dev:

  def __init__(self, process_index):
    self.process_index = process_index


def _grid(processes, data, tower):
  """A (data, tower) grid of fake devices, in jax.devices() order (process-major)."""
  per = data * tower // processes
  return np.array([_Dev(i // per) for i in range(data * tower)], dtype=object).reshape(data, tower)


@pytest.mark.parametrize(
    "processes,data,tower,expected",
    [
        (1, 4, 2, [(0, 1)]),  # one process holds everything
        (2, 2, 2, [(0, 2), (1, 2)]),  # 2 x 2 devices: each its half
        (2, 1, 2, [(0, 1), (0, 1)]),  # towers split across processes: whole batch
        (4, 2, 2, [(0, 2), (0, 2), (1, 2), (1, 2)]),  # pairs of processes share a data shard
        (2, 8, 1, [(0, 2), (1, 2)]),
    ],
)
def test_data_block(processes, data, tower, expected):
  grid = _grid(processes, data, tower)
  assert [sharding.data_block(grid, 0, p) for p in range(processes)] == expected


def test_data_block_rejects_scattered_shards():
  grid = np.array([[_Dev(0)], [_Dev(1)], [_Dev(0)], [_Dev(1)]], dtype=object)
  with pytest.raises(ValueError, match="contiguous"):
    sharding.data_block(grid, 0, 0)
