"""Throughput benchmark of the project's train step (`python -m benchmarks.bench`, run from the
repository root), and its PyTorch contender.

Not part of the `alexnet_jax` package: nothing there imports this, so PyTorch
(requirements-bench.txt) stays a benchmark-only dependency.
"""
