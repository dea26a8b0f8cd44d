"""AlexNet in JAX/Flax (README.md)."""

import importlib.util as _importlib_util
import os as _os
import sys as _sys

# TensorFlow's C++ log level as the user set it (None: unset), read before any module of the
# package imports JAX: JAX's __init__ sets TF_CPP_MIN_LOG_LEVEL=1 when it is unset, which
# would hide the user's choice from runtime.setup. With JAX imported first (a notebook), a 1
# is taken for JAX's.
TF_LOG_LEVEL_GIVEN = _os.environ.get("TF_CPP_MIN_LOG_LEVEL")
if "jax" in _sys.modules and TF_LOG_LEVEL_GIVEN == "1":
  TF_LOG_LEVEL_GIVEN = None


def _load_triton_before_tensorflow():
  """Where triton is installed (PyPI's CUDA builds of torch bring it: requirements-torch.txt),
  load it before TensorFlow: its C extension segfaults the process when it loads after
  TensorFlow's libraries (triton 3.8, TensorFlow 2.21), which torchvision's import and
  torch.compile do. Loaded first, both work. About 0.2 s, and only where triton is installed."""
  if "triton" in _sys.modules or "tensorflow" in _sys.modules:
    return
  try:
    if _importlib_util.find_spec("triton") is None:
      return
    import triton  # noqa: F401
  except Exception:  # a broken triton only matters to code that imports it
    pass


_load_triton_before_tensorflow()


# `import tensorflow` (by the data layer, analysis, or the user) without the C++ notices that
# its libraries print while loading (alexnet_jax/tf_import.py): importing the library is quiet.
from alexnet_jax import tf_import as _tf_import  # noqa: E402

_tf_import.install()
