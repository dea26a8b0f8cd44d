#!/usr/bin/env bash
# The accelerator check (issue 21): on a machine with a GPU, in under 8 minutes on one
# H200-class GPU,
#   1. the paper config's numerics on the GPU against the CPU for a few training steps (same
#      seed, same batches: the losses and the parameter updates agree within the stated
#      tolerances),
#   2. training images/s in float32 and bfloat16 against the PyTorch reference under
#      torch.compile on the same GPU, as ratios,
#   3. the input stream (JPEG decoding and prepared shards) on all host cores,
# and one JSON file with every figure, the device, the versions and the command
# (benchmarks/device_check.py's docstring lists what each part measures).
#
#   bash benchmarks/device_check.sh [--tiny] [--out=device_check.json] [--budget_s=450]
#
# It runs from the repository root (a relative --out is taken from there) with the `python`
# on PATH, or $PYTHON.
# --tiny runs the same checks with tiny settings on the CPU in well under a minute (any
# machine). Without a GPU the full form does the same, and says so in its log and in the
# JSON ("tiny_reason"). Each part runs in its own process under its own time limit: one that
# fails or runs out of time is recorded in the JSON, and the others still run.
#
# Install on a GPU machine (Linux x86-64, an NVIDIA driver for CUDA 12), from the
# repository root:
#   python3.11 -m venv venv && . venv/bin/activate
#   pip install -r requirements-bench.txt   # the project, and torch==2.13.0 for the contender
#   pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"
#   python -c 'import torch; print(torch.__version__, torch.cuda.is_available())'
# PyPI's Linux torch wheel is a CUDA build and brings triton, which torch.compile needs on the
# GPU. If that prints a "+cpu" build or False (a CPU wheel from PyTorch's CPU index), the
# check times JAX alone and records why; get a CUDA build with
#   pip uninstall -y torch
#   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# (the cuXYZ your driver supports). triton compiles a small launcher when torch.compile first
# runs: it needs gcc and Python's headers (apt-get install gcc python3.11-dev).
# Then:
#   bash benchmarks/device_check.sh --out=device_check_h200.json
# Importing triton after TensorFlow can crash the process, so the check imports PyTorch and
# triton before TensorFlow, in processes of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
# The command as given, recorded in the JSON.
export ALEXNET_JAX_DEVICE_CHECK_COMMAND="bash benchmarks/device_check.sh${*:+ $*}"
exec "${PYTHON:-python}" -m benchmarks.device_check "$@"
