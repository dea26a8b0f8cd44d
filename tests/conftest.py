"""Shared test setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow (tf.data) shares the 2 cores with XLA; keep it from grabbing a GPU if one exists.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# A cache of the session's own (statistics, digits prepared beside nothing): what a user
# prepared into ~/.cache/alexnet_jax must not change what the tests read.
os.environ["ALEXNET_JAX_CACHE"] = tempfile.mkdtemp(prefix="alexnet_jax_test_cache_")

import atexit  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402

atexit.register(shutil.rmtree, os.environ["ALEXNET_JAX_CACHE"], ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)

# JAX's persistent compilation cache for the tests' own compilations: a test that reruns a
# configuration another test (or a fixture) ran loads its steps instead of compiling them
# again (5-30 s each on 2 busy cores). One directory per session, made by the first process
# (pytest-xdist's controller: its test processes inherit the variable) and removed by it.
# Commands the tests run (tests/forkserver.py's zygote, real processes) never see this
# config: they keep their own cache under ALEXNET_JAX_CACHE, as a user's would.
_TEST_CACHE = "ALEXNET_JAX_TEST_COMPILATION_CACHE"
if _TEST_CACHE not in os.environ:
  os.environ[_TEST_CACHE] = tempfile.mkdtemp(prefix="alexnet_jax_test_jit_cache_")
  atexit.register(shutil.rmtree, os.environ[_TEST_CACHE], ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.environ[_TEST_CACHE])
# A size limit turns on JAX's file lock around each read and write (without one, an entry the
# other test process is still writing could be read half-written); each write then reads
# every entry's access time, so only compilations worth keeping are written (thousands of
# small ones would cost more than they save).
jax.config.update("jax_compilation_cache_max_size", 1 << 34)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_collection_finish(session):
  """The objects of every import so far (TensorFlow, JAX, torch: about 650,000) out of the
  garbage collector's reach; they live as long as the process anyway. Each full collection
  scanned them for about a second on 2 busy cores, and pytest collects five times as a test
  process ends: past the 5 s a pytest-xdist worker gets to finish, it is sent SIGINT, which
  printed a KeyboardInterrupt traceback from JAX's gc callback (_xla_gc_callback)."""
  gc.freeze()


# Test processes (pytest -n 2 --dist loadscope) take whole modules from one queue; the
# heaviest must start first, or the last one to start runs alone at the end (a slow test
# costs 30-200 s here, a fast one about 2). pytest.ini turns off xdist's own order (by number
# of tests), which put few-test heavy modules such as test_preemption.py last.
_SLOW_WEIGHT, _FAST_WEIGHT = 60, 2


def pytest_collection_modifyitems(items):
  weight = {}
  for item in items:
    module = item.nodeid.split("::")[0]
    slow = item.get_closest_marker("slow") is not None
    weight[module] = weight.get(module, 0) + (_SLOW_WEIGHT if slow else _FAST_WEIGHT)
  items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])  # stable: modules stay whole


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, f"conftest must give 8 CPU devices, got {devs}"
  return devs


@pytest.fixture(scope="session")
def oxford17_data(tmp_path_factory):
  """Oxford-17's published layout (17flowers.tgz, datasplits.mat) written once per session
  (tests/data_helpers.oxford17): a source caches beside it, so tests only read it."""
  from tests import data_helpers

  return data_helpers.oxford17(tmp_path_factory.mktemp("oxford17"))
