"""Multi-process runs: when `jax.distributed` starts, with what, and how failures end it.

A run is multi-process when

1. the flags say so: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`
   (one command per process, e.g. by hand on several hosts); or
2. the environment says so:
   - `ALEXNET_JAX_COORDINATOR_ADDRESS`, `ALEXNET_JAX_NUM_PROCESSES`, `ALEXNET_JAX_PROCESS_ID`
     (what `launch/multiprocess_local.sh` sets for each of its processes);
   - a SLURM job step with more than one task (`srun`: `SLURM_NTASKS` > 1 and
     `SLURM_STEP_NODELIST` set); JAX derives the coordinator (first node of the step), the
     process count and id, and gives each task one GPU (`SLURM_LOCALID`);
   - a Cloud TPU VM pod slice with more than one worker (`TPU_WORKER_HOSTNAMES` lists several
     hosts, or `MEGASCALE_COORDINATOR_ADDRESS` is set); JAX asks the TPU metadata;
   - `ALEXNET_JAX_DISTRIBUTED=1` (set by `launch/tpu_vm.sh` and `launch/slurm.sbatch`), which
     is the same as `--distributed=on`: call `jax.distributed.initialize()` and let JAX's
     cluster detection (SLURM, Open MPI, TPU, Kubernetes) fill in what is not given.
   `--distributed=off` (or `ALEXNET_JAX_DISTRIBUTED=0`) never starts it.

On CPU the cross-process collectives go through gloo (`jax_cpu_collectives_implementation`).

Failure behaviour (no silent hangs):
- a process that cannot reach the coordinator within `--distributed_init_timeout` seconds
  exits with status 1 and a message naming the address (checked with a plain TCP probe
  before JAX connects, and by a watchdog around `jax.distributed.initialize`);
- a process that dies (killed, out of memory, machine lost) stops sending heartbeats; the
  coordination service declares it dead after `--distributed_heartbeat_timeout` seconds and
  every other process terminates ("the JAX distributed service detected fatal errors");
- a process whose Python code raises (see `exit_on_error`) logs the traceback and exits at
  once without the shutdown barrier, so the others stop by the heartbeat rule as well.
A restarted job resumes from the workdir's latest checkpoint (train.train_and_evaluate).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
import time
import traceback
from typing import Mapping

import jax
from absl import flags, logging

ENV_COORDINATOR = "ALEXNET_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "ALEXNET_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "ALEXNET_JAX_PROCESS_ID"
ENV_DISTRIBUTED = "ALEXNET_JAX_DISTRIBUTED"
EXIT_FAILURE = 1

# Defaults for the timeouts (seconds). JAX's own are 300 / 100 / 300.
INIT_TIMEOUT = 300
HEARTBEAT_TIMEOUT = 60
SHUTDOWN_TIMEOUT = 120


def define_flags() -> None:
  """The multi-process flags of alexnet_jax.main (idempotent)."""
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_enum(
      "distributed",
      "auto",
      ["auto", "on", "off"],
      "Start jax.distributed: 'auto' when the flags below or the environment "
      "(launch/multiprocess_local.sh, SLURM with several tasks, a TPU pod) say "
      "the run has several processes; 'on' always (JAX detects the cluster); "
      "'off' never.",
  )
  flags.DEFINE_string(
      "coordinator_address", None, "HOST:PORT of process 0's coordinator (multi-process runs)."
  )
  flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
  flags.DEFINE_list(
      "local_device_ids",
      None,
      "Accelerator ids this process uses (default: JAX's choice; under SLURM " "one GPU per task).",
  )
  flags.DEFINE_integer(
      "distributed_init_timeout",
      INIT_TIMEOUT,
      "Seconds to wait for the coordinator and all processes to join.",
  )
  flags.DEFINE_integer(
      "distributed_heartbeat_timeout",
      HEARTBEAT_TIMEOUT,
      "Seconds without heartbeats after which a process counts as dead and "
      "every other process is terminated.",
  )
  flags.DEFINE_integer(
      "distributed_shutdown_timeout",
      SHUTDOWN_TIMEOUT,
      "Seconds a finishing process waits for the others at exit.",
  )


@dataclasses.dataclass(frozen=True)
class Options:
  mode: str = "auto"  # 'auto' | 'on' | 'off'
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  init_timeout: int = INIT_TIMEOUT
  heartbeat_timeout: int = HEARTBEAT_TIMEOUT
  shutdown_timeout: int = SHUTDOWN_TIMEOUT

  @classmethod
  def from_flags(cls, fl=None) -> "Options":
    fl = flags.FLAGS if fl is None else fl
    ids = fl.local_device_ids
    return cls(
        mode=fl.distributed,
        coordinator_address=fl.coordinator_address,
        num_processes=fl.num_processes,
        process_id=fl.process_id,
        local_device_ids=tuple(int(i) for i in ids) if ids else None,
        init_timeout=fl.distributed_init_timeout,
        heartbeat_timeout=fl.distributed_heartbeat_timeout,
        shutdown_timeout=fl.distributed_shutdown_timeout,
    )


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `initialize` will pass to jax.distributed.initialize, and why."""

  source: str  # 'flags', 'env', 'slurm', 'tpu', 'forced'
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  local_device_ids: tuple[int, ...] | None

  def describe(self) -> str:
    who = (
        f"process {self.process_id} of {self.num_processes}"
        if self.process_id is not None
        else "process ? of ?"
    )
    return (
        f"{who}, coordinator {self.coordinator_address or '(auto-detected)'} "
        f"[from {self.source}]"
    )


def _int(value, what: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _slurm_multi_task(env: Mapping[str, str]) -> bool:
  return (
      "SLURM_STEP_NODELIST" in env
      and "SLURM_PROCID" in env
      and (_int(env.get("SLURM_NTASKS") or env.get("SLURM_STEP_NUM_TASKS"), "SLURM_NTASKS") or 1)
      > 1
  )


def _tpu_pod(env: Mapping[str, str]) -> bool:
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  return len(hosts) > 1 or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def resolve(options: Options, env: Mapping[str, str] | None = None) -> Plan | None:
  """Decide whether (and with which arguments) this process joins a multi-process run.

  Pure: reads `env` (default os.environ), starts nothing. None = a single-process run.
  """
  env = os.environ if env is None else env
  mode = options.mode
  forced = env.get(ENV_DISTRIBUTED, "").strip().lower()
  if mode == "auto" and forced in ("1", "true", "on", "yes"):
    mode = "on"
  if mode == "auto" and forced in ("0", "false", "off", "no"):
    mode = "off"
  if mode == "off":
    return None
  if mode not in ("auto", "on"):
    raise ValueError(f"--distributed must be auto, on or off, got {mode!r}")

  ids = options.local_device_ids
  explicit = (options.coordinator_address, options.num_processes, options.process_id)
  from_env = (
      env.get(ENV_COORDINATOR) or None,
      _int(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES),
      _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID),
  )
  for source, (addr, n, pid) in (("flags", explicit), ("env", from_env)):
    if addr is None and n is None and pid is None:
      continue
    if n == 1 and mode == "auto":
      return None  # explicitly one process
    if mode == "auto" and None in (addr, n, pid):
      names = (
          ("--coordinator_address", "--num_processes", "--process_id")
          if source == "flags"
          else (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
      )
      missing = [nm for nm, v in zip(names, (addr, n, pid)) if v is None]
      raise ValueError(
          f"a multi-process run needs all of {', '.join(names)}; missing "
          f"{', '.join(missing)} (or pass --distributed=on to let JAX detect "
          f"the cluster)"
      )
    if n is not None and pid is not None and not 0 <= pid < n:
      raise ValueError(f"process id {pid} is not in [0, {n}) (from {source})")
    return Plan(source, addr, n, pid, ids)
  if mode == "on":
    return Plan("forced", None, None, None, ids)
  if _slurm_multi_task(env):
    return Plan(
        "slurm",
        None,
        _int(env.get("SLURM_NTASKS"), "SLURM_NTASKS"),
        _int(env.get("SLURM_PROCID"), "SLURM_PROCID"),
        ids,
    )
  if _tpu_pod(env):
    return Plan("tpu", None, None, None, ids)
  return None


def wait_for_coordinator(address: str, timeout: float) -> None:
  """Block until something accepts TCP connections at `address`, or raise with a clear
  message after `timeout` seconds."""
  host, _, port = address.rpartition(":")
  host = host.strip("[]") or "127.0.0.1"
  deadline = time.monotonic() + timeout
  last = None
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2.0):
        return
    except OSError as e:
      last = e
    if time.monotonic() >= deadline:
      raise CoordinatorUnreachableError(
          f"could not reach the JAX coordinator at {address} within {timeout:.0f} s "
          f"({last}). Process 0 must be running and listening there: check that it "
          f"started, that every process got the same coordinator address, and that the "
          f"port is open between the hosts."
      )
    time.sleep(0.25)


class CoordinatorUnreachableError(RuntimeError):
  pass


def _die(message: str) -> None:
  """Print, flush and end this process now (no atexit, no shutdown barrier)."""
  try:
    logging.error("%s", message)
  except Exception:  # pylint: disable=broad-except
    pass
  sys.stderr.write(f"\nFATAL (alexnet_jax.distributed): {message}\n")
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(EXIT_FAILURE)  # pylint: disable=protected-access


_PLAN: Plan | None = None


def initialize(options: Options | None = None, env: Mapping[str, str] | None = None) -> Plan | None:
  """Start jax.distributed if this is a multi-process run (see the module docstring).

  Must run before anything queries JAX devices or computes. Returns the plan it used (None
  for a single-process run).
  """
  global _PLAN
  options = Options() if options is None else options
  plan = resolve(options, env)
  if plan is None:
    return None
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
    # Cross-process collectives of the CPU backend (tests, CPU clusters). Accelerator
    # backends use their own (NCCL, ICI/DCN) and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")

  timeout = max(int(options.init_timeout), 1)
  logging.info(
      "multi-process run: %s; waiting up to %d s for all processes to join",
      plan.describe(),
      timeout,
  )
  if plan.coordinator_address and plan.process_id not in (None, 0):
    try:
      wait_for_coordinator(plan.coordinator_address, timeout)
    except CoordinatorUnreachableError as e:
      _die(f"process {plan.process_id}: {e}")

  done = threading.Event()

  def watchdog():
    if not done.wait(timeout):
      _die(
          f"{plan.describe()}: jax.distributed.initialize did not finish within {timeout} "
          f"s: not every one of the processes joined the coordinator. Check that all of "
          f"them were started with the same coordinator address and process count, and "
          f"the logs of the ones that are missing."
          + (
              " Under SLURM, start every task with srun (SLURM_NTASKS is " f"{plan.num_processes})."
              if plan.source == "slurm"
              else ""
          )
      )

  threading.Thread(target=watchdog, name="distributed-init-watchdog", daemon=True).start()
  try:
    jax.distributed.initialize(
        coordinator_address=plan.coordinator_address,
        num_processes=plan.num_processes,
        process_id=plan.process_id,
        local_device_ids=list(plan.local_device_ids) if plan.local_device_ids else None,
        # JAX's own deadline lies beyond the watchdog's, so the clear message comes first.
        initialization_timeout=timeout + 30,
        heartbeat_timeout_seconds=int(options.heartbeat_timeout),
        shutdown_timeout_seconds=int(options.shutdown_timeout),
    )
  finally:
    done.set()
  _PLAN = plan
  logging.info(
      "jax.distributed ready: process %d of %d, %d local / %d global device(s) " "(%s)",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      jax.default_backend(),
  )
  return plan


def is_multiprocess() -> bool:
  return _PLAN is not None


def exit_on_error(fn, *args, **kwargs):
  """Call fn; in a multi-process run, an exception ends this process at once (status 1)
  after logging it, instead of waiting in the shutdown barrier while the other processes
  wait in a collective. They are then stopped by the heartbeat rule."""
  try:
    return fn(*args, **kwargs)
  except BaseException as e:  # pylint: disable=broad-except
    if not is_multiprocess() or isinstance(e, SystemExit) and not e.code:
      raise
    _die(
        f"process {jax.process_index()} of {jax.process_count()} failed:\n"
        f"{''.join(traceback.format_exception(e))}\nThe other processes stop within "
        f"about --distributed_heartbeat_timeout seconds."
    )
