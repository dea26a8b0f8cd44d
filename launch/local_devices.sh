#!/usr/bin/env bash
# One process with N simulated CPU devices: the multi-device mesh (data x tower) on a laptop.
#
# usage: launch/local_devices.sh N [alexnet_jax.main flags...]
#   e.g. launch/local_devices.sh 4 --config=configs/demo.py --workdir=runs/demo4 \
#            --config.mesh.data=2 --config.mesh.tower=2
#
# Environment: PYTHON (default python3). N devices share the machine's cores, so this
# shows the sharding at work, not a speed-up.
set -euo pipefail
usage() { sed -n '4,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
N=$1; shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# CPU hosts: restart with huge pages for XLA:CPU's per-step buffers (alexnet_jax/huge_pages.py).
export ALEXNET_JAX_HUGE_PAGES=${ALEXNET_JAX_HUGE_PAGES:-1}
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$N"
exec "${PYTHON:-python3}" -m alexnet_jax.main "$@"
