#!/usr/bin/env bash
# The same training command on every worker of a Cloud TPU VM (pod slice): each worker is
# one JAX process; together their TPU cores form one mesh (mesh.data = -1 fills it).
#
# usage: launch/tpu_vm.sh TPU_NAME ZONE [alexnet_jax.main flags...]
#   e.g. launch/tpu_vm.sh my-v4-32 us-central2-b --config=configs/paper.py \
#            --workdir=/mnt/shared/runs/paper --config.model.dtype=bfloat16
#
# Before: copy the repository to REPO_DIR on every worker and install requirements.txt
# (e.g. with `gcloud compute tpus tpu-vm scp --worker=all` and `--command "pip install ..."`).
# --workdir must be a directory every worker sees (NFS/Filestore, or a gcsfuse mount).
# Environment: PROJECT (gcloud project), REPO_DIR (default: alexnet_jax, relative to the
# workers' home), PYTHON (default python3), DRY_RUN=1 (print the gcloud command only).
# Each worker also logs to REPO_DIR/logs/tpu_worker_<hostname>.log. Running it again with
# the same --workdir resumes from the last checkpoint.
set -euo pipefail
usage() { sed -n '5,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 2 ]] || usage
TPU_NAME=$1; ZONE=$2; shift 2
REPO_DIR=${REPO_DIR:-alexnet_jax}
PYTHON=${PYTHON:-python3}

# jax.distributed.initialize() with TPU detection (coordinator = worker 0, from the TPU
# metadata); a worker that dies ends the others within --distributed_heartbeat_timeout.
REMOTE="cd $(printf '%q' "$REPO_DIR") && mkdir -p logs && ALEXNET_JAX_DISTRIBUTED=1 PYTHONPATH=. PYTHONUNBUFFERED=1"
REMOTE+=" $(printf '%q' "$PYTHON") -m alexnet_jax.main"
for arg in "$@"; do REMOTE+=" $(printf '%q' "$arg")"; done
REMOTE+=' 2>&1 | tee -a "logs/tpu_worker_$(hostname).log"; exit ${PIPESTATUS[0]}'

CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$REMOTE")
[[ -n "${PROJECT:-}" ]] && CMD+=(--project="$PROJECT")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
