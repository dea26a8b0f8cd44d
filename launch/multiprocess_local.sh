#!/usr/bin/env bash
# NPROC JAX processes on 127.0.0.1 forming one global mesh of NPROC x DEVICES_PER_PROC
# simulated CPU devices: multi-host training (jax.distributed, gloo collectives) on one machine.
#
# usage: launch/multiprocess_local.sh NPROC DEVICES_PER_PROC [alexnet_jax.main flags...]
#   e.g. launch/multiprocess_local.sh 2 2 --config=configs/demo.py --workdir=runs/mp \
#            --config.mesh.data=2 --config.mesh.tower=2
#
# Each process writes its log to LOG_DIR/process_<i>.log and its pid to process_<i>.pid
# (default LOG_DIR: <workdir>/logs, or ./logs without --workdir); process 0's log is also
# shown here. The exit status is the worst (highest) of the processes' statuses (75: all
# saved a checkpoint after SIGTERM/Ctrl-C, rerun to resume). When one
# process fails, JAX ends the others (--distributed_heartbeat_timeout); any still running
# GRACE_SECONDS later (default 180) are killed here. Environment: PYTHON (default python3), PORT (default: a free port),
# LOG_DIR, GRACE_SECONDS, QUIET=1 (do not show process 0's log).
set -uo pipefail

usage() { sed -n '5,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 2 ]] || usage
NPROC=$1; DEVICES=$2; shift 2
[[ "$NPROC" =~ ^[1-9][0-9]*$ && "$DEVICES" =~ ^[1-9][0-9]*$ ]] || usage

PYTHON=${PYTHON:-python3}
GRACE_SECONDS=${GRACE_SECONDS:-180}
WORKDIR=""
for arg in "$@"; do
  case "$arg" in --workdir=*) WORKDIR=${arg#--workdir=} ;; esac
done
prev=""
for arg in "$@"; do [[ "$prev" == "--workdir" ]] && WORKDIR=$arg; prev=$arg; done
LOG_DIR=${LOG_DIR:-${WORKDIR:+$WORKDIR/logs}}
LOG_DIR=${LOG_DIR:-logs}
mkdir -p "$LOG_DIR"
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
COORD=127.0.0.1:$PORT

# `-m alexnet_jax.main` resolves from any directory; relative paths in the flags
# (--config, --workdir) stay relative to the caller's.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# CPU hosts: restart with huge pages for XLA:CPU's per-step buffers (alexnet_jax/huge_pages.py).
export ALEXNET_JAX_HUGE_PAGES=${ALEXNET_JAX_HUGE_PAGES:-1}

echo "multiprocess_local: $NPROC process(es) x $DEVICES CPU device(s), coordinator $COORD, logs in $LOG_DIR/process_*.log" >&2
declare -a PIDS=()
# SIGINT/SIGTERM: pass SIGTERM to every process (they save one agreed step and exit 75;
# alexnet_jax/preemption.py) and keep collecting statuses; a second signal kills them.
STOPPING=0
on_signal() {
  if ((STOPPING)); then
    echo "multiprocess_local: $1 again: killing all processes" >&2
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    exit 130
  fi
  STOPPING=1
  echo "multiprocess_local: $1: asking every process to save and stop (again to kill them)" >&2
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
}
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM

for ((i = 0; i < NPROC; i++)); do
  (
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES"
    export ALEXNET_JAX_COORDINATOR_ADDRESS=$COORD
    export ALEXNET_JAX_NUM_PROCESSES=$NPROC
    export ALEXNET_JAX_PROCESS_ID=$i
    export PYTHONUNBUFFERED=1
    exec "$PYTHON" -m alexnet_jax.main "$@"
  ) >"$LOG_DIR/process_$i.log" 2>&1 &
  PIDS+=($!)
  echo "$!" >"$LOG_DIR/process_$i.pid"
done

TAIL_PID=""
if [[ "${QUIET:-0}" != 1 ]]; then
  tail -n +1 -F "$LOG_DIR/process_0.log" 2>/dev/null &
  TAIL_PID=$!
fi

# Collect exit statuses as processes finish; after the first failure, give the rest
# GRACE_SECONDS to be ended by JAX, then kill them.
declare -A STATUS=()
first_failed=""
failed_at=""
remaining=$NPROC
while ((remaining > 0)); do
  for i in "${!PIDS[@]}"; do
    [[ -n "${STATUS[$i]:-}" ]] && continue
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      wait "${PIDS[$i]}"; STATUS[$i]=$?
      remaining=$((remaining - 1))
      if [[ ${STATUS[$i]} -ne 0 && -z "$first_failed" ]]; then
        first_failed=$i; failed_at=$SECONDS
        echo "multiprocess_local: process $i exited with status ${STATUS[$i]}; the others should stop within the heartbeat timeout" >&2
      fi
    fi
  done
  if [[ -n "$failed_at" ]] && ((remaining > 0 && SECONDS - failed_at > GRACE_SECONDS)); then
    echo "multiprocess_local: processes still running ${GRACE_SECONDS}s after process $first_failed failed: killing them" >&2
    for i in "${!PIDS[@]}"; do [[ -z "${STATUS[$i]:-}" ]] && kill -KILL "${PIDS[$i]}" 2>/dev/null; done
  fi
  ((remaining > 0)) && sleep 0.5
done
[[ -n "$TAIL_PID" ]] && { sleep 0.5; kill "$TAIL_PID" 2>/dev/null; wait "$TAIL_PID" 2>/dev/null; }

worst=0
summary=""
for i in "${!PIDS[@]}"; do
  summary+=" process_$i=${STATUS[$i]}"
  ((STATUS[$i] > worst)) && worst=${STATUS[$i]}
done
echo "multiprocess_local: exit statuses:$summary${first_failed:+ (first failure: process $first_failed, see $LOG_DIR/process_$first_failed.log)}" >&2
exit "$worst"
